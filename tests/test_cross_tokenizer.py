"""Cross-tokenizer causal-LM distillation (issue 17): the uld term reads a BPE teacher's top-k cache at the
positions a character-level student's tokens align with by character offsets."""

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from kdistill import pipeline
from kdistill.config import make_config
from kdistill.errors import UserError
from kdistill.lm_data import align_by_offsets, char_tokenizer, train_bpe_tokenizer
from kdistill.losses.lm import teacher_buckets
from kdistill.soft_labels.produce import ConcatSources
from kdistill.tasks import get_task
from kdistill.tasks.causal_lm import stream_offsets, teacher_items

from conftest import SHARED

SHAKESPEARE = SHARED / "tinyshakespeare" / "input.txt"


class HandTokenizer:
    """A teacher tokenizer given by hand: each text's tokens as strings (ids 0, 1, ... in order of appearance)."""

    def __init__(self, tokens: dict[str, list[str]]):
        self.tokens, self.vocab = tokens, {}

    def __call__(self, texts, add_special_tokens=False, return_offsets_mapping=False):
        ids, offsets = [], []
        for text in texts:
            pieces, at = self.tokens[text], 0
            assert "".join(pieces) == text
            ids.append([self.vocab.setdefault(p, len(self.vocab)) for p in pieces])
            offsets.append([(at, at := at + len(p)) for p in pieces])
        return {"input_ids": ids, "offset_mapping": offsets}


TEXTS = ["the cat\n", "sat\n"]
HAND = HandTokenizer({"the cat\n": ["the", " cat", "\n"], "sat\n": ["sat", "\n"]})


def test_collator_alignment_is_align_by_offsets_on_a_hand_example(tmp_path):
    student = char_tokenizer(TEXTS, str(tmp_path / "char"))
    # Teacher tokens the| cat|\n|sat|\n end at 3, 7, 8, 11, 12; blocks of 2 keep the first 4 (2 cache rows).
    assert stream_offsets(TEXTS, HAND) == [(0, 3), (3, 7), (7, 8), (8, 11), (11, 12)]
    aligned = align_by_offsets(stream_offsets(TEXTS, HAND), stream_offsets(TEXTS, student))
    assert aligned == [-1, -1, 0, -1, -1, -1, 1, 2, -1, -1, 3, 4]
    items = teacher_items(TEXTS, student, HAND, block_size=2, teacher_rows=2, teacher_offset=5)
    # Items are flat (row * 2 + position) from row 5; teacher token 4 fell in the dropped tail.
    assert items == [[-1, -1], [10, -1], [-1, -1], [11, 12], [-1, -1], [13, -1]]

    torch.manual_seed(0)
    k = 3
    rows = [(torch.randn(2, k).sort(descending=True).values, torch.randint(0, 9, (2, k)), -torch.rand(2) - 0.5)
            for _ in range(7)]
    part = get_task("causal_lm").prepare(
        __import__("datasets").Dataset.from_dict({"text": TEXTS}), student,
        type("Data", (), {"text_column": "text", "block_size": 2})(), None)
    part = part.add_column("teacher_items", items)
    batch = get_task("causal_lm").collator(student, ConcatSources([rows]))([part[i] for i in range(len(part))])
    assert batch["teacher_aligned_mask"].tolist() == [[i >= 0 for i in row] for row in items]
    for b, row in enumerate(items):
        for t, item in enumerate(row):
            want = torch.zeros(k)
            if item >= 0:
                values, _, tail = rows[item // 2]
                want = teacher_buckets(values, tail)[item % 2, :-1].exp()
            assert torch.allclose(batch["teacher_aligned_probs"][b, t], want), (b, t)
    assert "teacher_topk_values" not in batch


def test_different_vocabularies_without_uld_name_uld():
    task = get_task("causal_lm")
    student = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=70, n_positions=8))
    with pytest.raises(UserError, match=r"use the cross-tokenizer term uld \(objective: \{uld: 0.5, hard_ce: 0.5\}\)"):
        task.check_models(student, 300, {"lm_forward_kl": 1.0})
    task.check_models(student, 300, {"uld": 0.5, "hard_ce": 0.5})  # no vocabulary is compared
    with pytest.raises(UserError, match="lm_forward_kl reads the teacher token by token; use uld with hard_ce only"):
        task.check_models(student, 300, {"uld": 0.5, "lm_forward_kl": 0.5})


def uld_run(tmp_path, teacher_text, student_text) -> dict:
    """A 1-layer GPT-2 teacher with a byte-level BPE trained on `teacher_text`, a character tokenizer over
    `student_text`, and the run values (without data or teacher epochs) for a 1-layer character student on uld."""
    bpe = train_bpe_tokenizer(teacher_text, 300, str(tmp_path / "teacher"))
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=len(bpe), n_positions=128,
                               bos_token_id=bpe.eos_token_id, eos_token_id=bpe.eos_token_id)
                    ).save_pretrained(tmp_path / "teacher")
    chars = char_tokenizer(student_text, str(tmp_path / "char"))
    return dict(task="causal_lm", teacher_model=str(tmp_path / "teacher"), teacher_learning_rate=5e-3,
                teacher_batch_size=16, student_init="from_config", student_tokenizer=str(tmp_path / "char"),
                student_config_overrides={"n_layer": 1, "vocab_size": len(chars)},
                objective={"uld": 0.8, "hard_ce": 0.2}, output_dir=str(tmp_path / "run"), num_train_epochs=4,
                learning_rate=3e-3, per_device_train_batch_size=16, logging_steps=4, save_strategy="no",
                speed_batches=0, seed=0, use_cpu=True)


def test_char_student_learns_from_a_bpe_teacher_through_uld(tmp_path):
    with open(SHAKESPEARE, encoding="utf-8") as fh:
        lines = fh.read().splitlines(keepends=True)[:160]
    train, validation = tmp_path / "train.txt", tmp_path / "validation.txt"
    train.write_text("".join(lines[:120]), encoding="utf-8")
    validation.write_text("".join(lines[120:]), encoding="utf-8")
    values = dict(uld_run(tmp_path, lines[:120], lines[:160]), train_file=str(train),
                  validation_file=str(validation), block_size=32, teacher_epochs=30)
    config = make_config(values)
    pipeline.teach(config)
    out = pipeline.distill(config)
    uld = [entry["loss_uld"] for entry in out["log_history"] if "loss_uld" in entry]
    hard = [entry["loss_hard_ce"] for entry in out["log_history"] if "loss_hard_ce" in entry]
    assert len(uld) >= 3 and uld[-1] < 0.9 * uld[0], uld
    assert hard[-1] < hard[0]
    assert 0 < uld[-1] < 2  # an L1 distance between two distributions, scaled by the aligned share of tokens
    assert [e for e in out["log_history"] if "eval_loss_uld" in e]  # the validation blocks are aligned too
    # Evaluation scores each model on its own tokens; fidelity, item by item, has no common items to compare.
    from kdistill.evaluation import evaluate

    evaluated = evaluate(config)
    assert evaluated["fidelity"].startswith("across tokenizers (uld)")
    s = evaluated["student"]
    assert "agreement" not in s and s["loss"] > 0  # token-by-token agreement needs one vocabulary
    # Fidelity at character-aligned positions: BPE tokens end at about one character in three here.
    assert 0.1 < s["aligned_positions"] < 1 and 0 <= s["next_text_agreement"] <= 1 and 0 < s["aligned_uld"] < 2
    # The trained student agrees with its teacher's next text more often than a random student of its shape.
    import shutil

    from transformers import AutoModelForCausalLM

    fresh = tmp_path / "fresh"
    shutil.copytree(tmp_path / "run", fresh, ignore=shutil.ignore_patterns("soft_labels"))
    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_pretrained(fresh / "student")
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.02)
    model.save_pretrained(fresh / "student")
    untrained = evaluate(make_config({**values, "output_dir": str(fresh),
                                      "soft_label_cache": str(tmp_path / "run" / "soft_labels")}))["student"]
    assert s["next_text_agreement"] > untrained["next_text_agreement"] + 0.05, (s, untrained)
    assert s["aligned_uld"] < untrained["aligned_uld"]
    assert evaluated["student"]["loss_per_character"] == pytest.approx(evaluated["student"]["loss"], rel=1e-6)
    assert "accuracy" in evaluated["teacher"]


def test_uld_needs_a_top_k_cache(tmp_path):
    from kdistill.errors import ConfigError

    (tmp_path / "train.txt").write_text("".join(TEXTS), encoding="utf-8")
    with pytest.raises(ConfigError, match="distill: uld reads a top-k soft-label cache; set soft_label_top_k"):
        make_config(dict(task="causal_lm", train_file=str(tmp_path / "train.txt"), teacher_model=str(tmp_path),
                         output_dir=str(tmp_path / "run"), objective={"uld": 1.0}, soft_label_top_k=0))


# ------------------------------------------------------------------------------------------------ prompt/response


class HandWithEos(HandTokenizer):
    def __init__(self, tokens, eos_token_id):
        super().__init__(tokens)
        self.eos_token_id = eos_token_id


def _pairs(rows):
    import datasets

    return datasets.Dataset.from_dict({"prompt": [p for p, _ in rows], "response": [r for _, r in rows]})


def test_example_items_align_prompt_and_response_by_characters_and_truncate_each_side_alike(tmp_path):
    from kdistill.tasks.causal_lm import example_items

    rows = [("the cat", " sat\n"), ("sat", "")]
    student = char_tokenizer(["the cat sat\n"], str(tmp_path / "char"))  # has an eos: every row keeps a target
    pieces = {"the cat": ["the", " cat"], " sat\n": [" sat", "\n"], "sat": ["sat"], "": []}
    data = type("Data", (), {"prompt_column": "prompt", "response_column": "response", "max_length": 64})()
    # Teacher tokens end at 3, 7 (prompt), 11, 12 (response) and its eos spells nothing; the student's characters
    # ending there are paired with them, its eos with none.
    teacher = HandWithEos(pieces, eos_token_id=99)
    got_rows, items = example_items(_pairs(rows), student, teacher, data, teacher_rows=2, teacher_offset=4)
    assert got_rows == [4, 5]
    assert items[0] == [-1, -1, 0, -1, -1, -1, 1, -1, -1, -1, 2, 3, -1]
    # "sat" + eos: after "sat" both have read the whole row and predict their eos (teacher position 0)
    assert items[1] == [-1, -1, 0, -1]
    # max_length 10: the student's 13 tokens lose the prompt's first 3 characters, the teacher's 5 fit.
    data.max_length = 10
    _, items = example_items(_pairs(rows[:1]), student, teacher, data, teacher_rows=1)
    assert items[0] == [-1, -1, -1, 1, -1, -1, -1, 2, 3, -1]
    # A teacher with no eos leaves the empty response's row out (nothing to predict); the student's row then reads
    # no teacher position, and the next row's teacher row is counted without it.
    data.max_length = 64
    rows3 = [("sat", ""), ("the cat", " sat\n")]
    got_rows, items = example_items(_pairs(rows3), student, HandWithEos(pieces, None), data, teacher_rows=1,
                                    teacher_offset=7)
    assert got_rows == [7, 7] and items[0] == [-1] * 4
    assert items[1] == [-1, -1, 0, -1, -1, -1, 1, -1, -1, -1, 2, 3, -1]
    with pytest.raises(UserError, match="the teacher's soft labels hold 2 rows but its tokenizer makes 1 examples"):
        example_items(_pairs(rows3), student, HandWithEos(pieces, None), data, teacher_rows=2)


def test_char_student_learns_from_a_bpe_teacher_through_uld_on_prompt_response_rows(tmp_path):
    import json

    from transformers import AutoTokenizer

    from kdistill.data import load_split

    with open(SHAKESPEARE, encoding="utf-8") as fh:
        lines = [line for line in fh.read().splitlines() if line.strip()][:240]
    rows = [{"prompt": lines[i] + "\n", "response": lines[i + 1] + "\n"} for i in range(0, 240, 2)]
    for name, part in (("train.jsonl", rows[:100]), ("valid.jsonl", rows[100:])):
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in part), encoding="utf-8")
    text = "".join(r["prompt"] + r["response"] for r in rows)
    values = dict(uld_run(tmp_path, text, text), train_file=str(tmp_path / "train.jsonl"),
                  validation_file=str(tmp_path / "valid.jsonl"), max_length=96, teacher_epochs=20)
    config = make_config(values)
    pipeline.teach(config)
    # What the collator gives the uld term: on real rows a share of the response's positions is paired (the loss
    # reads only those, its mask being labels != -100 and this one), and the probabilities are the teacher's cached
    # top-k at T=1.
    student_tok = AutoTokenizer.from_pretrained(tmp_path / "char")
    task = get_task("causal_lm")
    sources = pipeline.teacher_soft_labels(config, ("train",))
    part = pipeline.prepare_split(config, "train", student_tok, {}, 0)
    aligned = task.align_to_teacher(part, load_split(config.data, "train"), student_tok,
                                    AutoTokenizer.from_pretrained(tmp_path / "teacher"), config.data,
                                    len(sources["train"][0]), 0)
    batch = task.collator(student_tok, ConcatSources([sources["train"][0]]))([aligned[i] for i in range(8)])
    mask, labels = batch["teacher_aligned_mask"], batch["labels"]
    assert mask.any(-1).all()
    paired_response = (mask & labels.ne(-100)).sum() / labels.ne(-100).sum()
    assert paired_response > 0.1, float(paired_response)  # BPE tokens end at about one character in three here
    sums = batch["teacher_aligned_probs"].sum(-1)[mask]
    assert bool((sums > 0).all() and (sums <= 1 + 1e-5).all())  # the top-k's share of the mass, never more

    out = pipeline.distill(config)
    uld = [entry["loss_uld"] for entry in out["log_history"] if "loss_uld" in entry]
    assert len(uld) >= 3 and uld[-1] < 0.9 * uld[0], uld
    assert [e for e in out["log_history"] if "eval_loss_uld" in e]


def test_same_next_text_reads_first_characters_and_the_end_of_text():
    from kdistill.tasks.causal_lm import _same_next_text

    mine, theirs = ["", " ", "t", "h"], ["", " the", "t", "x"]
    mine, theirs = [m[:1] for m in mine], [t[:1] for t in theirs]
    assert _same_next_text(1, 1, mine, theirs, 0, 0)  # " " and " the" begin alike
    assert _same_next_text(2, 2, mine, theirs, 0, 0) and not _same_next_text(3, 3, mine, theirs, 0, 0)
    assert _same_next_text(0, 0, mine, theirs, 0, 0)  # both end the text
    assert not _same_next_text(0, 1, mine, theirs, 0, 0)
    assert not _same_next_text(7, 1, mine, theirs, 0, 0)  # a padded output row past the tokenizer spells nothing
