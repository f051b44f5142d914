"""Reliability: bad input ends in one line and exit 2 with nothing overwritten; real faults (kill -9 while training
or while writing soft labels) are survived; the same seed gives the same run; pickles in a run are never executed.

Input errors already covered by test_errors.py (missing file or column, empty or header-only file, unknown label,
bad flags, tampered cache) are not repeated here; the output directory's refusals and the check of a checkpoint's
pickles are in test_rundir.py.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

from conftest import Payload, make_word_tokenizer, one_line_error, snapshot, tiny_run_values, tsv, write_config
from kdistill import pipeline
from kdistill.soft_labels import produce
from kdistill.cli import main
from kdistill.config import DataConfig, make_config
from kdistill.data import load_table
from kdistill.tasks.base import ItemCollator
from kdistill.soft_labels import write_cache

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@pytest.fixture(scope="module", autouse=True)
def one_thread_like_the_children():
    """Child processes run on one thread (ENV). In-process runs compared with them bit for bit must too: with two
    threads a matmul may sum in another order (a resumed run's weights were 4.5e-8 off when this file ran alone)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --- data files --------------------------------------------------------------------------------------------------


def test_latin1_file_names_the_encoding_option_in_one_line(capfd, caplog, tmp_path, values):
    latin1 = tmp_path / "latin1.tsv"
    raw = "sentence\tlabel\nun caf\xe9 tr\xe8s bon\t1\nun film lent\t0\n".encode("latin-1")
    latin1.write_bytes(raw)
    config = write_config(tmp_path / "c.yaml", {**values, "train_file": str(latin1)})
    # datasets' own ERROR record and its progress bar (on the file descriptor) would make it three lines.
    assert one_line_error(capfd, caplog, "teach", "--config", config) == (
        f"kdistill: error: {latin1}: not valid utf-8 text (line 2, byte {raw.index(0xE9)}: invalid continuation byte); "
        "set the data option encoding to the file's encoding (e.g. encoding: latin-1)"
    )
    # With the option the same file reads, and the text is decoded right.
    table = load_table(str(latin1), DataConfig(train_file=str(latin1), text_column="sentence", encoding="latin-1"))
    assert table["sentence"][:] == ["un café très bon", "un film lent"]


def test_unknown_encoding_is_refused(capfd, caplog, tmp_path, values):
    config = write_config(tmp_path / "c.yaml", {**values, "encoding": "klingon"})
    assert one_line_error(capfd, caplog, "teach", "--config", config).endswith(
        "data: unknown encoding 'klingon' (e.g. utf-8, latin-1, cp1252)")


@pytest.mark.parametrize("rows, fragment", [
    (["\t1", "a dull film\t0"], "1 row(s) have an empty 'sentence'; remove them or fix the file"),
    (["a fine film\t", "a dull film\t0"], "1 row(s) have no 'label'; remove them or fix the file"),
    (["a fine film\t0.5", "a dull film\t0"], "label 0.5 is a fraction; labels must be integers or strings"),
    (["a fine film\t1", "a dull film\tneg", "a film\t0"],
     "the labels mix integers (0, 1) and strings ('neg'); use one kind for every row"),
], ids=["empty-text", "missing-label", "fraction", "mixed-tsv"])
def test_bad_rows(capfd, caplog, tmp_path, values, rows, fragment):
    train = tsv(tmp_path / "train.tsv", rows)
    line = one_line_error(capfd, caplog, "teach", "--config", write_config(tmp_path / "c.yaml", {**values, "train_file": train}))
    assert line == f"kdistill: error: {train}: {fragment}"
    assert not (tmp_path / "run").exists()


def test_mixed_labels_in_json(capfd, caplog, tmp_path, values):
    train = tmp_path / "train.jsonl"
    train.write_text('{"sentence": "a fine film", "label": 1}\n{"sentence": "a dull film", "label": "neg"}\n')
    line = one_line_error(capfd, caplog, "teach", "--config", write_config(tmp_path / "c.yaml", {**values, "train_file": str(train)}))
    assert line.endswith("the labels mix integers (1) and strings ('neg'); use one kind for every row")


def test_whole_number_float_labels_are_integers(tmp_path, values):
    """1.0 and 0.0 (what a float column holds) are read as the classes 1 and 0: documented in README's Data."""
    train = tsv(tmp_path / "train.tsv", ["a fine film\t1.0", "a dull film\t0.0", "a film\t1.0"])
    config = make_config({**values, "train_file": train})
    assert pipeline.label_map(config) == {"0": 0, "1": 1}


def test_truncation_is_reported_once_per_split(caplog, tmp_path, values):
    caplog.set_level("INFO", logger="kdistill")
    run = {**values, "max_length": 8, "strategy": "soft"}
    assert main(["run", "--config", write_config(tmp_path / "c.yaml", run)]) == 0
    messages = [r.getMessage() for r in caplog.records if "and were truncated" in r.getMessage()]
    # The train split is tokenised for the soft-label pass and for the student, the test split for the soft-label
    # pass, the evaluation and (speed) again: one line each, since teacher and student share a tokenizer here.
    per_source = {m.split(":")[0] for m in messages}
    assert sorted(per_source) == sorted({values["train_file"], values["validation_file"], values["test_file"]})
    assert len(messages) == 3, messages
    train = next(m for m in messages if m.startswith(values["train_file"]))
    assert re.fullmatch(r".*: \d+ of 64 texts reached max_length=8 tokens \(teacher tokenizer\) and were truncated", train)


# --- models ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("contents, fragment", [
    ({}, "directory holds no model (no config.json)"),
    ({"config.json": '{"model_type": "bert"}'}, "could not be loaded: Error no file named model.safetensors"),
    ({"config.json": "{not json"}, "could not be loaded: It looks like the config file"),
    ({"config.json": '{"model_type": "bert"}', "model.safetensors": "truncated"}, "could not be loaded:"),
], ids=["empty-dir", "no-weights", "bad-config", "bad-weights"])
def test_teacher_directory_that_is_not_a_model(capfd, caplog, tmp_path, values, contents, fragment):
    teacher = tmp_path / "teacher"
    teacher.mkdir()
    for name, text in contents.items():
        (teacher / name).write_text(text)
    config = write_config(tmp_path / "c.yaml", {**values, "teacher_model": str(teacher), "strategy": "soft"})
    line = one_line_error(capfd, caplog, "distill", "--config", config)
    assert line.startswith(f"kdistill: error: teacher {teacher}"), line
    assert fragment in line


def test_student_tokenizer_larger_than_its_embeddings(capfd, caplog, tmp_path, values, word_tokenizer):
    big = make_word_tokenizer(tmp_path / "big_tok", vocab_size=6000)
    config = write_config(tmp_path / "c.yaml", {**values, "strategy": "hard", "student_tokenizer": big})
    line = one_line_error(capfd, caplog, "distill", "--config", config)
    n_big = len(json.loads((Path(big) / "tokenizer.json").read_text())["model"]["vocab"])
    n_model = json.loads((Path(values["teacher_model"]) / "config.json").read_text())["vocab_size"]
    assert n_big > n_model, (n_big, n_model)
    assert f"student's tokenizer has {n_big} tokens but its embeddings hold {n_model}" in line
    assert not (tmp_path / "run" / "student").exists()


def _rewrite_cache(path: Path, logits: torch.Tensor) -> None:
    """A cache file with a valid fingerprint and content hash but other contents (e.g. made by another kdistill)."""
    with safe_open(str(path), framework="pt") as fh:
        fp = fh.metadata()["fingerprint"]
    write_cache(str(path), logits, fp)


def test_cache_with_other_class_count_is_refused(capfd, caplog, tmp_path, run_copy):
    out, values = run_copy
    shutil.rmtree(out / "student")  # not yet distilled (a finished student would be reused, the cache unread)
    (train_cache,) = (out / "soft_labels").glob("train-*.safetensors")
    _rewrite_cache(train_cache, torch.zeros(64, 3))
    before = snapshot(out)
    line = one_line_error(capfd, caplog, "distill", "--config", write_config(tmp_path / "c.yaml", values))
    assert line.endswith("soft labels for train have 3 classes but the data has 2; teacher and student must share the label set")
    assert snapshot(out) == before


def test_cache_with_other_row_count_is_refused(capfd, caplog, tmp_path, run_copy):
    out, values = run_copy
    (test_cache,) = (out / "soft_labels").glob("test-*.safetensors")
    _rewrite_cache(test_cache, torch.zeros(5, 2))
    before = snapshot(out)
    line = one_line_error(capfd, caplog, "eval", "--config", write_config(tmp_path / "c.yaml", values))
    assert "the teacher's logits for the test data have shape (5, 2) but the data has 32 rows" in line
    assert snapshot(out) == before


# --- faults: kill -9, with real processes ------------------------------------------------------------------------

# Runs the real CLI in a child process that stops dead (sleeps) at a chosen point, so the test can SIGKILL it there:
# a deterministic kill point, not a race against the clock.
STALLING_CLI = """
import os, sys, time
import kdistill.trainer
import kdistill.soft_labels.writer
from kdistill.cli import main
from transformers import TrainerCallback

marker, stop_step, stop_in_cache_write = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"

def stall():
    open(marker, "w").close()
    time.sleep(600)

class Stall(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == stop_step:
            stall()

init = kdistill.trainer.DistillationTrainer.__init__
def patched_init(self, *args, **kwargs):
    init(self, *args, **kwargs)
    self.add_callback(Stall)
kdistill.trainer.DistillationTrainer.__init__ = patched_init

if stop_in_cache_write:
    copy = kdistill.soft_labels.writer._copy_data
    def half_written(src, dst, digest):
        copy(src, dst, digest)  # the header and the first tensor: what a kill mid-write leaves in the temp file
        dst.flush()
        stall()
    kdistill.soft_labels.writer._copy_data = half_written

sys.exit(main(sys.argv[4:]))
"""


def kill_at(tmp_path: Path, argv: list[str], stop_step: int = -1, in_cache_write: bool = False) -> None:
    """Run `kdistill ARGV` in a child process, wait until it reaches the stop point, then SIGKILL it."""
    script = tmp_path / "stalling_cli.py"
    script.write_text(STALLING_CLI)
    marker = tmp_path / "stalled"
    log = open(tmp_path / "child.log", "w")
    child = subprocess.Popen(
        [sys.executable, str(script), str(marker), str(stop_step), "1" if in_cache_write else "0", *argv],
        stdout=log, stderr=subprocess.STDOUT, env=ENV,
    )
    try:
        deadline = time.monotonic() + 180
        while not marker.exists():
            assert child.poll() is None, (tmp_path / "child.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the child never reached its stop point"
            time.sleep(0.05)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        if child.poll() is None:
            child.kill()
        child.wait()
        log.close()
    assert child.returncode == -signal.SIGKILL


# `reference`, the uninterrupted run the tests below compare with, is a conftest.py fixture (test_rundir uses it too).


def distilled(out: Path) -> tuple[dict[str, torch.Tensor], dict]:
    results = json.loads((out / "student" / "distill_results.json").read_text())
    return load_file(out / "student" / "model.safetensors"), results


def test_same_config_and_seed_give_the_same_run(tmp_path, monkeypatch, reference):
    ref_out, values = reference
    out = tmp_path / "again"
    batches = []
    collate = ItemCollator.__call__
    monkeypatch.setattr(ItemCollator, "__call__", lambda self, rows: batches.append([r["idx"] for r in rows])
                        or collate(self, rows))
    assert main(["distill", "--config", write_config(tmp_path / "c.yaml", {**values, "output_dir": str(out)})]) == 0
    # Each epoch sees every row once, in another order (the length-grouped sampler is reseeded per epoch).
    first, second = batches[:8], batches[8:16]
    assert sorted(sum(first, [])) == sorted(sum(second, [])) == list(range(64))
    assert first != second
    (weights, results), (ref_weights, ref_results) = distilled(out), distilled(ref_out)
    assert weights.keys() == ref_weights.keys()
    assert all(torch.equal(weights[k], ref_weights[k]) for k in weights)
    assert results["loss_curve"] == ref_results["loss_curve"]
    assert (results["eval_loss"], results["eval_accuracy"]) == (ref_results["eval_loss"], ref_results["eval_accuracy"])


def test_killed_training_resumes_from_its_last_checkpoint_and_ends_where_an_unkilled_run_does(
    tmp_path, caplog, reference, tiny_bert
):
    ref_out, values = reference
    out = tmp_path / "run"
    config = write_config(tmp_path / "c.yaml", {**values, "output_dir": str(out)})
    kill_at(tmp_path, ["distill", "--config", config], stop_step=12)
    student = out / "student"
    assert (student / "checkpoint-10" / "trainer_state.json").is_file()
    assert not (student / "model.safetensors").exists()  # the run did not finish
    # What a kill while saving checkpoint 15 would have left: weights half written, no trainer_state.json.
    partial = student / "checkpoint-15"
    partial.mkdir()
    (partial / "model.safetensors").write_bytes((student / "checkpoint-10" / "model.safetensors").read_bytes()[:1000])

    caplog.set_level("INFO", logger="kdistill")
    assert main(["distill", "--config", config]) == 0
    logged = [r.getMessage() for r in caplog.records]
    assert any(f"checkpoint {partial} is incomplete" in m for m in logged)
    assert any(m.startswith(f"resuming from {student / 'checkpoint-10'}") for m in logged)
    (weights, results), (ref_weights, ref_results) = distilled(out), distilled(ref_out)
    # Exact equality: model, optimizer, scheduler and RNG states come back from the checkpoint, and the sampler
    # replays the interrupted epoch's order from the same seed, skipping the batches already done.
    assert all(torch.equal(weights[k], ref_weights[k]) for k in ref_weights)
    assert results["loss_curve"] == ref_results["loss_curve"]  # steps 1-10 come from the checkpoint's state
    assert (results["eval_loss"], results["eval_accuracy"]) == (ref_results["eval_loss"], ref_results["eval_accuracy"])


def test_killed_soft_label_write_leaves_no_cache_and_the_next_run_recomputes_it(tmp_path, reference):
    ref_out, values = reference
    cache = tmp_path / "cache"
    run = {**values, "output_dir": str(tmp_path / "run"), "soft_label_cache": str(cache)}
    config = write_config(tmp_path / "c.yaml", run)
    kill_at(tmp_path, ["distill", "--config", config], in_cache_write=True)
    # The kill hit while the first split's file was half written: only a temp file, under a name never read, and the
    # writer's lock file (kdistill.lock), which the kernel released when the writer died.
    temp, held = sorted(cache.iterdir(), key=lambda p: p.name.endswith(".lock"))
    assert temp.name.startswith(".tmp-") and temp.suffix == ".safetensors"
    assert held.name.endswith(".safetensors.lock") and json.loads(held.read_text())["pid"] > 0
    with pytest.raises(Exception):
        load_file(temp)  # truncated: it would not even parse

    logits = pipeline.make_soft_labels(make_config(run))
    reference_cache = Path(values["soft_label_cache"])
    for split, values_now in logits.items():
        (path,) = cache.glob(f"{split}-*.safetensors")
        (ref_path,) = reference_cache.glob(f"{split}-*.safetensors")
        assert path.name == ref_path.name  # same fingerprint: same teacher, data and settings
        assert torch.equal(load_file(path)["values"], load_file(ref_path)["values"])  # the cache is a safetensors file
        assert torch.equal(values_now, load_file(ref_path)["values"])
    assert temp.exists()  # left alone: another process may be writing it (see the report)
    assert not held.exists()  # the dead writer's lock was taken over, and released once the cache was written


# --- security: nothing in a run directory or a model directory is executed ---------------------------------------


def test_the_payload_is_live(tmp_path):
    """The control for the tests below (and test_rundir's poisoned checkpoint): loading such a file the unsafe way
    does run it."""
    torch.save(Payload(tmp_path / "ran"), tmp_path / "evil.pt")
    torch.load(tmp_path / "evil.pt", weights_only=False)
    assert (tmp_path / "ran").exists()


def test_poisoned_teacher_weights_are_not_executed(capfd, caplog, tmp_path, values, tiny_bert):
    teacher = tmp_path / "teacher"
    shutil.copytree(tiny_bert, teacher)
    (teacher / "model.safetensors").unlink()
    marker = tmp_path / "ran"
    torch.save(Payload(marker), teacher / "pytorch_model.bin")  # the legacy format transformers still reads
    config = write_config(tmp_path / "c.yaml", {**values, "teacher_model": str(teacher), "strategy": "soft"})
    line = one_line_error(capfd, caplog, "distill", "--config", config)
    assert line.startswith(f"kdistill: error: teacher {teacher} could not be loaded:")
    assert not marker.exists()


@pytest.mark.parametrize("model_type, trust", [("evil-bert", False), ("bert", False), ("evil-bert", True)])
def test_teacher_code_is_not_run_unless_trusted(capfd, caplog, tmp_path, values, tiny_bert, model_type, trust):
    """A model directory whose config.json maps Auto classes to its own Python file."""
    teacher = tmp_path / "teacher"
    shutil.copytree(tiny_bert, teacher)
    marker = tmp_path / "ran"
    (teacher / "evil.py").write_text(
        f"open({str(marker)!r}, 'w').close()\n"
        "from transformers import BertConfig, BertForSequenceClassification\n"
        "class EvilConfig(BertConfig):\n    model_type = 'evil-bert'\n"
        "class EvilModel(BertForSequenceClassification):\n    config_class = EvilConfig\n"
    )
    config_json = json.loads((teacher / "config.json").read_text())
    config_json["model_type"] = model_type
    config_json["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModelForSequenceClassification": "evil.EvilModel"}
    (teacher / "config.json").write_text(json.dumps(config_json))
    config = write_config(tmp_path / "c.yaml", {**values, "teacher_model": str(teacher), "strategy": "soft",
                                                "trust_remote_code": trust})
    if trust:  # the user's choice: the code runs
        assert main(["distill", "--config", config]) == 0
        assert marker.exists()
        return
    if model_type == "bert":
        # A type transformers knows is loaded with its own class; the directory's code is ignored.
        assert main(["distill", "--config", config]) == 0
    else:
        line = one_line_error(capfd, caplog, "distill", "--config", config)
        assert line == (f"kdistill: error: teacher {teacher} could not be loaded: it ships its own Python code, which "
                        "kdistill does not run unless you set trust_remote_code: true (only for code you have read "
                        "or trust)")
    assert not marker.exists()


# --- scale: data-parallel training under torchrun (2 CPU processes, gloo) -----------------------------------------


def dropout_free_teacher(directory: Path, tokenizer_dir: str) -> str:
    """A tiny BERT classifier without dropout, so a 2-process run and a 1-process run may agree to rounding."""
    tokenizer = PreTrainedTokenizerFast.from_pretrained(tokenizer_dir)
    config = BertConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=130, num_labels=2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return str(directory)


def test_torchrun_two_processes_match_one_process_with_the_same_global_batch(tmp_path, word_tokenizer):
    teacher = dropout_free_teacher(tmp_path / "teacher", word_tokenizer)
    common = dict(teacher_train=False, max_train_samples=64, max_eval_samples=32, num_train_epochs=2,
                  per_device_eval_batch_size=16, logging_steps=1, speed_batches=0, strategy="mixed")
    single = tmp_path / "single"
    assert main(["run", "--config", write_config(
        tmp_path / "single.yaml", tiny_run_values(single, teacher, per_device_train_batch_size=8, **common))]) == 0
    ddp = tmp_path / "ddp"
    config = write_config(tmp_path / "ddp.yaml", tiny_run_values(ddp, teacher, per_device_train_batch_size=4, **common))
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "kdistill.cli", "run", "--config", config],
        capture_output=True, text=True, timeout=300, env=ENV,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("written: ") == 1  # evaluation ran on the first process only

    (weights, results), (ref_weights, ref_results) = distilled(ddp), distilled(single)
    # Tolerance: the two processes' gradients are summed by an all-reduce instead of inside one backward pass, so
    # floats may round differently. Measured: max |weight difference| 1.2e-7, equal eval loss and accuracy,
    # train loss 3.7e-9 apart (2026-12, torch 2.13 CPU, transformers 5.24).
    assert max(float((weights[k] - ref_weights[k]).abs().max()) for k in ref_weights) < 1e-5
    assert results["eval_accuracy"] == ref_results["eval_accuracy"]
    assert results["eval_loss"] == pytest.approx(ref_results["eval_loss"], rel=1e-5)
    assert results["train_loss"] == pytest.approx(ref_results["train_loss"], rel=1e-5)
    assert [s for s, _ in results["loss_curve"]] == list(range(1, 17))  # 16 steps of 8 rows: the same global batch
    # The soft and hard parts of the loss are logged for the whole global batch, not for the first process's half
    # (which gave loss_hard up to 13% off here). Logged values are rounded to 6 decimals, hence abs=2e-6.
    for part in ("loss_hard_ce", "eval_loss_hard_ce", "loss_soft_kl", "eval_loss_soft_kl"):
        curve, ref_curve = ([e[part] for e in r["log_history"] if part in e] for r in (results, ref_results))
        assert len(curve) == len(ref_curve) > 0, part
        assert curve == pytest.approx(ref_curve, rel=1e-4, abs=2e-6), part
    assert json.loads((ddp / "eval.json").read_text())["student"]["accuracy"] == \
        json.loads((single / "eval.json").read_text())["student"]["accuracy"]

    # The soft-label cache: each process labelled every second row, the first process wrote the gathered logits
    # once, and they are what a single process writes.
    caches = {p.name for p in (ddp / "soft_labels").iterdir()}
    assert caches == {p.name for p in (single / "soft_labels").iterdir()}
    for name in caches:
        with safe_open(str(ddp / "soft_labels" / name), "pt") as a, safe_open(str(single / "soft_labels" / name), "pt") as b:
            # Same fingerprint and rows. The logits agree to float rounding, not bit for bit: each process batched
            # its rows by length among its own share, so rows met other padding (measured: max |difference|
            # 4.2e-9 on 32-64 rows, 2026-11-28), and with them the content hash differs.
            meta_a, meta_b = a.metadata(), b.metadata()
            assert {k: v for k, v in meta_a.items() if k != "sha256"} == {k: v for k, v in meta_b.items() if k != "sha256"}
            diff = float((a.get_tensor("values") - b.get_tensor("values")).abs().max())
            assert diff < 1e-5


def test_only_the_first_process_writes_kdistills_files(tmp_path, monkeypatch, values):
    """What a process of rank > 0 does: computes, trains, writes none of run_config.json, labels.json, the soft-label
    cache, distill_results.json or eval.json (the Trainer itself saves on rank 0 only: args.should_save)."""
    from kdistill import evaluation, rundir

    for module in (rundir, pipeline, produce, evaluation):  # each asks rundir.is_main, imported by name
        monkeypatch.setattr(module, "is_main", lambda config: False)
    config = make_config({**values, "strategy": "soft"})
    pipeline.teach(config)
    result = pipeline.distill(config)
    assert result["train_rows"] == 64
    assert evaluation.evaluate(config) == {}
    out = Path(config.output_dir)
    written = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}
    assert not written & {"run_config.json", "labels.json", "eval.json", "student/labels.json",
                          "student/distill_results.json"}
    assert not list(out.glob("soft_labels/*"))


def test_soft_labels_computed_in_chunks_equal_one_pass(tmp_path, monkeypatch, values):
    """The streaming teacher pass (SOFT_LABEL_CHUNK_ROWS rows at a time) gives the logits of a single pass, in row
    order. Rows are batched by length within a chunk, so padding, and with it float rounding, may differ."""
    whole = pipeline.make_soft_labels(make_config({**values, "soft_label_cache": str(tmp_path / "a")}), ("train",))
    monkeypatch.setattr(produce, "SOFT_LABEL_CHUNK_ROWS", 7)  # 64 rows: 9 chunks, the last of 1 row
    chunked = pipeline.make_soft_labels(make_config({**values, "soft_label_cache": str(tmp_path / "b")}), ("train",))
    assert chunked["train"].shape == whole["train"].shape == (64, 2)
    torch.testing.assert_close(chunked["train"], whole["train"], atol=1e-5, rtol=1e-5)
