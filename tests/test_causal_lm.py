"""causal_lm (issue 17): plain text packed into blocks, the teacher's top-k cache, the lm_ terms through the trainer,
the vocabulary check and held-out perplexity / fidelity; tiny GPT-2s from configs on tiny Shakespeare's first lines."""

import json

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from kdistill import pipeline
from kdistill.config import make_config
from kdistill.errors import UserError
from kdistill.evaluation import evaluate
from kdistill.lm_data import pack_blocks, train_bpe_tokenizer
from kdistill.losses import TERMS, TermInputs
from kdistill.soft_labels import read_cache
from kdistill.tasks import get_task

from conftest import SHARED

SHAKESPEARE = SHARED / "tinyshakespeare" / "input.txt"
BLOCK = 32


def lines(start: int, stop: int) -> list[str]:
    with open(SHAKESPEARE, encoding="utf-8") as fh:
        return fh.read().splitlines(keepends=True)[start:stop]


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    """Train/validation text files, a byte-level BPE trained on the train lines, and a random 2-layer GPT-2."""
    root = tmp_path_factory.mktemp("lm")
    train, validation = root / "train.txt", root / "validation.txt"
    train.write_text("".join(lines(0, 300)), encoding="utf-8")
    validation.write_text("".join(lines(300, 400)), encoding="utf-8")
    tok = train_bpe_tokenizer(lines(0, 300), 300, str(root / "tok"))
    config = GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=len(tok), n_positions=128,
                        bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    GPT2LMHeadModel(config).save_pretrained(root / "gpt2")
    tok.save_pretrained(root / "gpt2")
    return {"root": root, "train": str(train), "validation": str(validation), "model": str(root / "gpt2"),
            "tokenizer": tok}


def lm_values(lm, out, **overrides) -> dict:
    values = dict(task="causal_lm", train_file=lm["train"], validation_file=lm["validation"], block_size=BLOCK,
                  teacher_model=lm["model"], teacher_epochs=20, teacher_learning_rate=3e-3, teacher_batch_size=16,
                  student_init="from_config", student_config_overrides={"n_layer": 1}, output_dir=str(out),
                  num_train_epochs=3, learning_rate=3e-3, per_device_train_batch_size=16, temperature=1.0,
                  logging_steps=5, save_strategy="no", speed_batches=0, seed=0, use_cpu=True)
    values.update(overrides)
    return values


def test_blocks_are_the_packed_stream_with_shifted_labels(lm):
    config = make_config(lm_values(lm, lm["root"] / "unused"))
    tok = lm["tokenizer"]
    part = pipeline.prepare_split(config, "train", tok, {})
    ids = tok(lines(0, 300), add_special_tokens=False)["input_ids"]
    blocks, dropped = pack_blocks([[i for row in ids for i in row]], BLOCK)
    assert part["input_ids"][:] == blocks and len(blocks) > 50
    assert part["labels"][0] == [*blocks[0][1:], -100]
    batch = get_task("causal_lm").collator(tok)([part[0], part[1]])
    assert batch["item_mask"].sum().item() == 2 * (BLOCK - 1)
    assert not batch["item_mask"][:, -1].any()


@pytest.fixture(scope="module")
def runs(lm, tmp_path_factory):
    """A teacher trained by `teach` (next-token CE), then a top-64 soft student and a hard-label student."""
    root = tmp_path_factory.mktemp("runs")
    soft = make_config(lm_values(lm, root / "soft"))
    taught = pipeline.teach(soft)
    soft_out = pipeline.distill(soft)
    soft_eval = evaluate(soft)
    hard = make_config(lm_values(lm, root / "hard", strategy="hard", teacher_model=str(root / "soft" / "teacher"),
                                 teacher_train=False))
    pipeline.teach(hard)
    pipeline.distill(hard)
    hard_eval = evaluate(hard)
    return {"root": root, "soft": soft, "taught": taught, "soft_out": soft_out, "soft_eval": soft_eval,
            "hard_eval": hard_eval}


def test_topk_cache_written_and_read_back(runs, lm):
    config = runs["soft"]
    assert config.distill.soft_loss == "forward_kl"  # the preset's KL, in its top-k form
    (source,) = pipeline.teacher_soft_labels(config, ("validation",))["validation"]
    cache = sorted((runs["root"] / "soft" / "soft_labels").glob("validation-*.safetensors"))
    assert len(cache) == 1
    stored = read_cache(str(cache[0]), _fp(cache[0]))
    assert stored.payload == "topk" and stored.top_k == 64 and stored.classes == len(lm["tokenizer"])
    assert stored.value_dtype == "float16" and stored.items == stored.rows * BLOCK
    values, indices, tail = source[0]
    assert values.shape == (BLOCK, 64) and indices.shape == (BLOCK, 64) and tail.shape == (BLOCK,)
    assert bool((values[:, :-1] >= values[:, 1:]).all()) and bool((tail <= 0).all())
    # The teacher's own top-64 at the block's first position, recomputed.
    teacher, tok = pipeline.load_teacher(config, str(runs["root"] / "soft" / "teacher"), {})
    part = pipeline.prepare_split(config, "validation", tok, {})
    with torch.no_grad():
        logits = teacher(input_ids=torch.tensor([part["input_ids"][0]])).logits[0].float()
    assert torch.equal(indices[0, :8], logits[0].topk(64).indices[:8])
    assert torch.allclose(values[0], logits[0].topk(64).values, atol=2e-2)
    cache_info = runs["soft_out"]["soft_label_cache"]
    # fp16 values and uint16 indices (a vocabulary under 65,536: 4 bytes a logit), a float32 tail, plus the header
    # and offsets.
    assert cache_info["top_k"] == 64 and 64 * 4 + 4 <= cache_info["bytes_per_token"] < 64 * 4 + 4 + 40


def _fp(path):
    from kdistill.soft_labels.cache import _read_header

    return _read_header(str(path))[1]["fingerprint"]


def test_soft_student_learns_and_is_closer_to_its_teacher(runs):
    curve = runs["soft_out"]["loss_curve"]
    assert curve[-1][1] < curve[0][1]
    assert "eval_loss" in runs["soft_out"]
    soft, hard = runs["soft_eval"]["student"], runs["hard_eval"]["student"]
    assert soft["mean_kl"] < hard["mean_kl"]
    assert runs["taught"]["train_loss"] > 0 and "eval_loss" in runs["taught"]


def test_eval_json_keys(runs):
    with open(runs["root"] / "soft" / "eval.json", encoding="utf-8") as fh:
        result = json.load(fh)
    student = result["student"]
    for key in ("loss", "perplexity", "loss_per_character", "accuracy", "agreement", "mean_kl", "tokens"):
        assert key in student, key
    assert student["perplexity"] == pytest.approx(torch.tensor(student["loss"]).exp().item(), rel=1e-5)
    assert student["loss_per_character"] < student["loss"]  # a BPE token spells more than one character
    assert {"accuracy", "top_k_coverage"} <= set(result["teacher"])


def test_topk_with_k_equal_vocabulary_is_the_dense_kl():
    torch.manual_seed(0)
    student, teacher = torch.randn(2, 5, 11, requires_grad=True), torch.randn(2, 5, 11)
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[:, -1] = False
    from kdistill.soft_labels.writer import topk_payload

    v, i, t = topk_payload(teacher, 11)
    dense = TERMS["soft_kl"].fn(TermInputs(student, teacher_logits=teacher, temperature=2.0, mask=mask, num_items=8))
    topk = TERMS["lm_forward_kl"].fn(TermInputs(student, temperature=2.0, mask=mask, num_items=8,
                                                teacher_topk_values=v, teacher_topk_indices=i, teacher_topk_tail=t))
    assert topk.item() == pytest.approx(dense.item(), rel=1e-5)


def test_vocabulary_mismatch_is_refused(lm):
    task = get_task("causal_lm")
    student = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=151_936, n_positions=8))
    with pytest.raises(UserError) as err:
        task.check_models(student, 152_064, {"lm_forward_kl": 1.0})
    assert str(err.value) == (
        "the teacher's vocabulary has 152,064 tokens but the student's 151,936 (the width of their output layers, "
        "lm_head), and same-tokenizer distillation compares them token id by token id; give the student the "
        "teacher's tokenizer and vocabulary size (student_init: from_teacher, or student_config_overrides: "
        "{vocab_size: 152064}), or pad the smaller one's embeddings to the other's size (a padded vocabulary, such "
        "as Qwen2.5-7B's 152,064 rows against its tokenizer's 151,936, keeps the extra rows unused); or, for a "
        "student with another tokenizer, use the cross-tokenizer term uld (objective: {uld: 0.5, hard_ce: 0.5})")



def test_presets_and_payload_follow_the_task(lm, tmp_path):
    from kdistill.errors import ConfigError

    mixed = make_config(lm_values(lm, tmp_path, strategy="mixed", alpha=0.25))
    assert mixed.soft_label_top_k() == 64
    assert mixed.distill.objective_weights() == {"lm_forward_kl": 0.25, "hard_ce": 0.75}
    dense = make_config(lm_values(lm, tmp_path, soft_label_top_k=0))
    assert dense.soft_label_top_k() is None and dense.distill.objective_weights() == {"soft_kl": 1.0}
    with pytest.raises(ConfigError, match="soft_kl reads the teacher's full logits"):
        make_config(lm_values(lm, tmp_path, objective={"soft_kl": 1.0}))
    with pytest.raises(ConfigError, match="lm_jsd reads a top-k soft-label cache"):
        make_config(lm_values(lm, tmp_path, soft_label_top_k=0, soft_loss="jsd"))


def test_from_teacher_student_copies_gpt2_layers(lm):
    from kdistill.students import from_teacher

    teacher = GPT2LMHeadModel.from_pretrained(lm["model"])
    student = from_teacher(teacher, [1])
    assert student.config.n_layer == 1
    assert torch.equal(student.transformer.h[0].attn.c_attn.weight, teacher.transformer.h[1].attn.c_attn.weight)


def test_two_top_k_teachers_train_a_student_on_each_ones_divergence_weighted(runs, lm, tmp_path):
    """`teachers:` with two top-k caches: the collator keeps each teacher (a teacher dim before k), the lm_ term is
    their weighted divergences, and evaluation scores the student against the teachers' mixture."""
    trained = str(runs["root"] / "soft" / "teacher")
    values = lm_values(lm, tmp_path / "run", teacher_train=False, teacher_model=trained,
                       teachers=json.dumps([{"model": trained, "weight": 3}, {"model": lm["model"], "weight": 1}]))
    config = make_config(values)
    sources = pipeline.teacher_soft_labels(config, ("train",))["train"]
    assert len(sources) == 2
    task = get_task("causal_lm")
    tok = lm["tokenizer"]
    part = pipeline.prepare_split(config, "train", tok, {})
    from kdistill.soft_labels.produce import ConcatSources

    batch = task.collator(tok, [ConcatSources([s]) for s in sources], weights=[3.0, 1.0])([part[0], part[1]])
    assert batch["teacher_topk_values"].shape == (2, BLOCK, 2, 64)
    assert batch["teacher_topk_tail"].shape == (2, BLOCK, 2)
    assert batch["teacher_topk_weights"].tolist() == [3.0, 1.0]
    for t, source in enumerate(sources):
        values, indices, tail = source[0]
        assert torch.equal(batch["teacher_topk_indices"][0, :, t], indices.long())
        assert torch.equal(batch["teacher_topk_tail"][0, :, t], tail.float())
    out = pipeline.distill(config)
    curve = [loss for _, loss in out["loss_curve"]]
    assert curve[-1] < curve[0], curve
    evaluated = evaluate(config)
    assert evaluated["student"]["loss"] > 0 and 0 <= evaluated["student"]["agreement"] <= 1
    assert len(evaluated["teachers"]) == 2 and 0 < evaluated["teacher_disagreement"] <= 1
    # The ensemble is scored as the teachers' mixture: its top-1 is neither teacher's everywhere.
    assert 0 < evaluated["teacher"]["accuracy"] < 1 and evaluated["student"]["mean_kl"] > 0
    from kdistill.metrics import TopKMixture, mixture_topk

    test = pipeline.teacher_soft_labels(config, ("test",), together=False)["test"]
    mixed = torch.cat([mixture_topk(TopKMixture(rows, [3, 1]))[0][:, 0] for rows in zip(*test)])
    for source in test:
        alone = torch.cat([row[1][:, 0] for row in source])
        assert bool((mixed != alone).any()) and bool((mixed == alone).any())


def test_top_k_pass_under_torchrun_deals_out_blocks_and_writes_the_one_process_cache(runs, lm, tmp_path):
    """Two CPU processes (gloo): each labels every other block of each chunk, the shares are gathered back in order
    and the first process writes the cache; it holds what one process writes."""
    import subprocess
    import sys

    from conftest import write_config
    from test_reliability import ENV

    trained = str(runs["root"] / "soft" / "teacher")
    ddp = tmp_path / "ddp"
    config = write_config(tmp_path / "ddp.yaml", lm_values(lm, ddp, teacher_model=trained, teacher_train=False,
                                                           num_train_epochs=1))
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "kdistill.cli", "distill", "--config", config],
                          capture_output=True, text=True, timeout=300, env=ENV)
    assert proc.returncode == 0, "\n".join(line for line in proc.stderr.splitlines() if "rank1" in line)[-4000:]
    one = make_config(lm_values(lm, tmp_path / "one", teacher_model=trained, teacher_train=False))
    (reference,) = pipeline.teacher_soft_labels(one, ("train",), together=False)["train"]
    (cache,) = sorted((ddp / "soft_labels").glob("train-*.safetensors"))
    stored = read_cache(str(cache), _fp(cache))
    assert stored.payload == "topk" and len(stored) == len(reference) > 2
    got = pipeline.teacher_soft_labels(make_config(lm_values(lm, ddp, teacher_model=trained, teacher_train=False,
                                                             num_train_epochs=1)), ("train",))["train"][0]
    for row in range(len(reference)):  # in row order: block r of the file is block r of the one-process pass
        (v, i, t), (rv, ri, rt) = got[row], reference[row]
        assert torch.allclose(v, rv, atol=2e-2) and torch.allclose(t, rt, atol=1e-4)
        assert float((i[:, 0] == ri[:, 0]).float().mean()) > 0.95


def test_diagnostic_rows_bound_a_language_models_logits_not_its_rows(monkeypatch):
    monkeypatch.setattr(pipeline, "DIAGNOSTIC_FLOATS", 1000)
    assert pipeline.diagnostic_rows(torch.zeros(500, 2), 500) == 500  # a classifier's rows: 1,000 floats
    assert pipeline.diagnostic_rows(torch.zeros(900, 2), 900) == 500
    blocks = [torch.zeros(10, 30) for _ in range(8)]  # 8 blocks of 10 tokens over 30 classes: 300 floats a block
    assert pipeline.diagnostic_rows(blocks, 8) == 3
    assert pipeline.diagnostic_rows([torch.zeros(100, 30)], 1) == 1  # at least one row
    monkeypatch.setattr(pipeline, "DIAGNOSTIC_ROWS", 2)
    assert pipeline.diagnostic_rows(torch.zeros(500, 2), 500) == 2


def test_a_dense_cache_s_diagnostics_read_only_the_leading_blocks(runs, lm, tmp_path, monkeypatch):
    """Full-vocabulary soft labels (soft_label_top_k: 0): the diagnostics read as many blocks as DIAGNOSTIC_FLOATS
    allows (all of tiny Shakespeare's blocks over a 4,096 vocabulary once ran a 24 GiB machine out of memory)."""
    classes = len(lm["tokenizer"])
    monkeypatch.setattr(pipeline, "DIAGNOSTIC_FLOATS", 5 * BLOCK * classes)
    config = make_config(lm_values(lm, tmp_path / "dense", soft_label_top_k=0, teacher_train=False, max_steps=2,
                                   teacher_model=str(runs["root"] / "soft" / "teacher")))
    out = pipeline.distill(config)
    stats = out["soft_label_stats"]["train"]
    assert stats["rows"] == 5
    assert 0 < stats["mean_top_prob"] < 1 and 0 <= stats["teacher_error_rate"] <= 1
