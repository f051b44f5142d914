"""causal_lm data beyond packed text files (issue 17): nanoGPT's character split of one file (train_fraction), the
shipped shakespeare_lm config's teacher command, and prompt/response JSONL (labels only on responses, the teacher's
top-k on them, truncation reported); tiny GPT-2s from configs."""

import json
import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from kdistill import pipeline
from kdistill.config import ConfigError, make_config
from kdistill.data import load_split
from kdistill.evaluation import evaluate
from kdistill.lm_data import IGNORE_INDEX, split_text, train_bpe_tokenizer

from conftest import SHARED

ROOT = Path(__file__).resolve().parents[1]
SHAKESPEARE = SHARED / "tinyshakespeare" / "input.txt"


def head_text(lines: int) -> str:
    with open(SHAKESPEARE, encoding="utf-8") as fh:
        return "".join(fh.read().splitlines(keepends=True)[:lines])


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    """A text file of tiny Shakespeare's first 400 lines, a byte-level BPE trained on it and a random 2-layer GPT-2."""
    root = tmp_path_factory.mktemp("lmx")
    text = root / "text.txt"
    text.write_text(head_text(400), encoding="utf-8")
    tok = train_bpe_tokenizer(head_text(300), 300, str(root / "gpt2"))
    config = GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=len(tok), n_positions=128,
                        bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    GPT2LMHeadModel(config).save_pretrained(root / "gpt2")
    return {"root": root, "text": str(text), "model": str(root / "gpt2"), "tokenizer": tok}


def values(lm, out, **overrides) -> dict:
    v = dict(task="causal_lm", train_file=lm["text"], train_fraction=0.9, block_size=32, teacher_model=lm["model"],
             teacher_train=False, student_init="from_config", student_config_overrides={"n_layer": 1},
             output_dir=str(out), num_train_epochs=2, learning_rate=3e-3, per_device_train_batch_size=8,
             temperature=1.0, logging_steps=5, save_strategy="no", speed_batches=0, seed=0, use_cpu=True)
    v.update(overrides)
    return v


# ---------------------------------------------------------------------------------------------- train_fraction


def test_train_fraction_splits_the_file_by_characters(lm):
    config = make_config(values(lm, lm["root"] / "unused"))
    head, tail = split_text(head_text(400), 0.9)
    assert "".join(load_split(config.data, "train")["text"]) == head
    assert "".join(load_split(config.data, "validation")["text"]) == tail
    assert "".join(load_split(config.data, "test")["text"]) == tail
    assert not head.endswith("\n")  # the cut falls inside a line: by characters, not lines
    # The student's blocks and the teacher pass's inputs are the same blocks of the train part.
    tok = lm["tokenizer"]
    train = pipeline.prepare_split(config, "train", tok, {})
    task = pipeline.task_of(config)
    teacher_rows = [r for chunk in task.teacher_inputs(load_split(config.data, "train"), tok, config.data, 7, "t", "t")
                    for r in chunk]
    assert [r["input_ids"] for r in teacher_rows] == train["input_ids"]


@pytest.mark.parametrize("overrides, message", [
    ({"task": "sequence_classification"},
     "data: train_fraction splits a causal_lm text file by characters; for task sequence_classification give a "
     "validation_file"),
    ({"train_fraction": 1.0}, "data: train_fraction must be in (0, 1), got 1.0"),
    ({"train_fraction": 0}, "data: train_fraction must be in (0, 1), got 0"),
    ({"validation_file": "v.txt"},
     "data: train_fraction validates on the end of train_file, and validation_file is set too; give one of them"),
    ({"train_file": "rows.jsonl"},
     "data: train_fraction splits a plain-text train_file (.txt) by characters; for other data give a "
     "validation_file"),
])
def test_train_fraction_refusals_are_one_line(lm, overrides, message):
    with pytest.raises(ConfigError) as err:
        make_config(values(lm, lm["root"] / "unused", **overrides))
    assert str(err.value) == message


def test_shakespeare_config_teacher_command_makes_a_gpt2_and_its_bpe(tmp_path, lm):
    text = (ROOT / "configs" / "shakespeare_lm.yaml").read_text(encoding="utf-8")
    command = re.search(r'^#   python -c "(.*)"$', text, re.M).group(1)
    assert "'../shared/data/tinyshakespeare/input.txt'" in command and "'runs/shakespeare_lm_init'" in command
    assert "teacher_model: runs/shakespeare_lm_init" in text
    out = tmp_path / "init"
    # The same command on a small file (BPE training on the full text would take the test's time, not its logic).
    command = command.replace("../shared/data/tinyshakespeare/input.txt", lm["text"]).replace(
        "runs/shakespeare_lm_init", str(out)).replace("n_layer=6, n_embd=384, n_head=6", "n_layer=1, n_embd=32, n_head=2")
    subprocess.run([sys.executable, "-c", command], check=True, cwd=tmp_path)
    config = json.loads((out / "config.json").read_text())
    vocab = json.loads((out / "tokenizer.json").read_text())["model"]["vocab"]
    assert config["n_positions"] == 256 and config["vocab_size"] == len(vocab) > 256
    assert config["pad_token_id"] == vocab["<|pad|>"] and config["eos_token_id"] == vocab["<|endoftext|>"]


# ---------------------------------------------------------------------------------------------- prompt/response


ROWS = [
    {"prompt": "Who speaks first?\n", "response": "First Citizen: Before we proceed any further, hear me speak."},
    {"prompt": "What do all say?\n", "response": "Speak, speak."},
    {"prompt": "What is resolved?\n", "response": "You are all resolved rather to die than to famish?"},
    {"prompt": "And then?\n", "response": "Resolved. resolved."},
    {"prompt": "Who is the chief enemy?\n", "response": "First, you know Caius Marcius is chief enemy to the people."},
    {"prompt": "Do we know it?\n", "response": "We know't, we know't."},
]


def jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def pairs(lm):
    root = lm["root"]
    return {"train": jsonl(root / "train.jsonl", ROWS * 3), "validation": jsonl(root / "valid.jsonl", ROWS[:4])}


def pair_values(lm, pairs, out, **overrides) -> dict:
    v = values(lm, out, train_file=pairs["train"], validation_file=pairs["validation"], train_fraction=None,
               max_length=64)
    v.update(overrides)
    return v


def test_prompt_response_labels_are_masked_on_the_prompt(lm, pairs):
    config = make_config(pair_values(lm, pairs, lm["root"] / "unused"))
    tok = lm["tokenizer"]
    part = pipeline.prepare_split(config, "validation", tok, {})
    assert len(part) == 4
    for row, example in zip(part, ROWS):
        prompt = tok(example["prompt"], add_special_tokens=False)["input_ids"]
        response = tok(example["response"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        assert row["input_ids"] == prompt + response  # one example per row, no packing
        # Position t predicts token t + 1: -100 until the last prompt position, which predicts the response's first.
        assert row["labels"] == [IGNORE_INDEX] * (len(prompt) - 1) + response + [IGNORE_INDEX]
        assert row["characters"] == len(example["response"])  # the eos decodes to nothing
    collate = pipeline.task_of(config).collator(tok)
    batch = collate([dict(r) for r in part.select(range(2))])
    longest = max(part["length"][:2])
    assert batch["input_ids"].shape == (2, longest)
    short = min(range(2), key=lambda i: part["length"][i])
    n = part["length"][short]
    assert batch["attention_mask"][short].tolist() == [1] * n + [0] * (longest - n)
    assert batch["labels"][short, n:].eq(IGNORE_INDEX).all()


def test_truncated_and_skipped_rows_are_reported(lm, tmp_path, caplog):
    tok = lm["tokenizer"]
    long_prompt = "word " * 40
    rows = [ROWS[0], {"prompt": long_prompt, "response": "short."}, {"prompt": "", "response": "x"}]
    path = jsonl(tmp_path / "rows.jsonl", rows)
    config = make_config(values(lm, tmp_path / "out", train_file=path, train_fraction=None, max_length=12))
    with caplog.at_level(logging.INFO, logger="kdistill.tasks.causal_lm"):
        part = pipeline.prepare_split(config, "train", tok, {})
    # Row 3's response is one token and its eos: the first position is never a target, so eos alone is learnt; row
    # 1 and 2 are cut to 12 tokens, row 2 keeping its whole response and the end of its prompt.
    assert [len(ids) for ids in part["input_ids"]] == [12, 12, 2]
    response = tok("short.", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert part["input_ids"][1][-len(response):] == response
    message = next(r.getMessage() for r in caplog.records if "prompt/response rows" in r.getMessage())
    assert message == (f"{path}: 2 of 3 prompt/response rows longer than max_length=12 tokens (student tokenizer) "
                       "were truncated; 0 skipped with no response token left")
    with caplog.at_level(logging.INFO, logger="kdistill.tasks.causal_lm"):
        huge = jsonl(tmp_path / "huge.jsonl", [{"prompt": "a", "response": "word " * 20}, ROWS[1]])
        config = make_config(values(lm, tmp_path / "out", train_file=huge, train_fraction=None, max_length=8))
        pipeline.prepare_split(config, "train", tok, {})
    assert any("2 of 2 prompt/response rows" in r.getMessage() and "0 skipped" in r.getMessage()
               for r in caplog.records)


@pytest.fixture(scope="module")
def pair_run(lm, pairs, tmp_path_factory):
    out = tmp_path_factory.mktemp("pairs") / "run"
    config = make_config(pair_values(lm, pairs, out, strategy="mixed", soft_loss="forward_kl", soft_label_top_k=8,
                                     logging_steps=1,
                                     num_train_epochs=3))
    result = pipeline.distill(config)
    return config, result


def test_prompt_response_distill_end_to_end(pair_run, lm):
    config, result = pair_run
    (source,) = pipeline.teacher_soft_labels(config, ("train",))["train"]
    tok = lm["tokenizer"]
    part = pipeline.prepare_split(config, "train", tok, {})
    assert len(source) == len(part) == 18
    # Examples of different lengths share a padded batch in the teacher pass; each keeps its own positions, and at
    # the last prompt position (which predicts the response's first token) its top 8 are the unpadded row's.
    teacher, _ = pipeline.load_teacher(config, lm["model"], {})
    for row in (0, 1):
        values_, indices, tail = source[row]
        assert values_.shape == (part["length"][row], 8) and tail.shape == (part["length"][row],)
        with torch.no_grad():
            logits = teacher(input_ids=torch.tensor([part["input_ids"][row]])).logits[0].float()
        at = part["labels"][row].index(next(t for t in part["labels"][row] if t != IGNORE_INDEX))
        assert torch.equal(indices[at], logits[at].topk(8).indices)
        assert torch.allclose(values_[at], logits[at].topk(8).values, atol=2e-2)
    curve = result["loss_curve"]
    assert curve[-1][1] < curve[0][1]


def test_prompt_response_eval_has_rouge_l_and_tokens_per_second(pair_run, lm, pairs):
    config, _ = pair_run
    config = make_config({**pair_values(lm, pairs, config.distill.output_dir, strategy="mixed",
                                        soft_loss="forward_kl", soft_label_top_k=8, logging_steps=1,
                                        num_train_epochs=3), "speed_batches": 1, "per_device_eval_batch_size": 2})
    result = evaluate(config)
    from kdistill.evaluation import _load_student
    from kdistill.generate import Decoding, complete
    from kdistill.metrics import mean_rouge_l

    student, tok, _ = _load_student(config, str(Path(config.distill.output_dir) / "student"))
    prompts, references = [r["prompt"] for r in ROWS[:4]], [r["response"] for r in ROWS[:4]]
    longest = max(len(tok(r, add_special_tokens=False)["input_ids"]) for r in references)
    again = complete(student, tok, prompts, Decoding(max_new_tokens=longest + 1, batch_size=2))
    assert result["student"]["rouge_l"] == pytest.approx(mean_rouge_l(again, references))
    assert 0 <= result["teacher"]["rouge_l"] <= 1
    for who in ("student", "teacher"):
        assert result[who]["scoring_tokens_per_s"] > 0 and result[who]["generation_tokens_per_s_b1"] > 0
    assert result["speedup_generation"] == pytest.approx(result["student"]["generation_tokens_per_s_b1"] /
                                                         result["teacher"]["generation_tokens_per_s_b1"])
    assert set(json.loads((Path(config.distill.output_dir) / "eval.json").read_text())["student"]) >= {
        "rouge_l", "scoring_tokens_per_s", "generation_tokens_per_s_b1", "loss", "perplexity"}


def test_token_ids_are_the_tokenizers_own_and_a_truncating_backend_is_left_to_it(lm):
    from kdistill.students import load_tokenizer
    from kdistill.tasks.causal_lm import token_ids

    tok = load_tokenizer(lm["model"], "tokenizer")
    lines = head_text(400).splitlines(keepends=True) + ["", "  spaced  ", "caf\u00e9 \u2014 na\u00efve"]
    want = tok(lines, add_special_tokens=False)["input_ids"]
    assert token_ids(tok, lines) == want and sum(map(len, want)) > 1000
    tok.backend_tokenizer.enable_truncation(max_length=3)  # a backend left truncating: not asked directly
    try:
        assert token_ids(tok, lines) == want
    finally:
        tok.backend_tokenizer.no_truncation()
