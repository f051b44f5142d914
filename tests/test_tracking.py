"""Experiment tracking through the Trainer's own integrations: a tiny distillation with `report_to: tensorboard` or
`report_to: wandb` (offline, no network) records the objective's per-term curves (loss_hard_ce, loss_soft_kl) beside
the loss, at the steps the run logged them."""

import json

import pytest

import kdistill
from conftest import tiny_run_values

TERMS = ("loss", "loss_hard_ce", "loss_soft_kl")


def _train(tmp_path, tiny_bert, report_to: str) -> dict:
    """A mixed-objective student (so both terms have curves), logged every 2 of its 4 steps; the train metrics."""
    values = tiny_run_values(tmp_path / "run", tiny_bert, teacher_train=False, strategy="mixed", max_train_samples=64,
                             per_device_train_batch_size=16, logging_steps=2, num_train_epochs=1, validation_file=None,
                             report_to=report_to, run_name="tiny-mixed")
    return kdistill.distill(kdistill.make_config(values))


def _logged(result: dict) -> dict[str, list[tuple[int, float]]]:
    """Each term's curve as the run's log_history holds it: (step, value)."""
    return {k: [(e["step"], e[k]) for e in result["log_history"] if k in e] for k in TERMS}


def test_tensorboard_event_files_hold_every_term_curve(tmp_path, tiny_bert):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = _train(tmp_path, tiny_bert, "tensorboard")
    expected = _logged(result)
    assert [step for step, _ in expected["loss_soft_kl"]] == [2, 4]
    # The Trainer's TensorBoard directory: <output_dir>/student/runs/<date and host>/.
    (events,) = list((tmp_path / "run" / "student" / "runs").rglob("events.out.tfevents.*"))
    accumulator = EventAccumulator(str(events.parent))
    accumulator.Reload()
    for term in TERMS:
        scalars = accumulator.Scalars(f"train/{term}")
        assert [(s.step, pytest.approx(s.value, rel=1e-5)) for s in scalars] == expected[term], term


def _wandb_history(path) -> list[dict]:
    """The history rows (what wandb.log was given) of an offline run's transaction log, `run-<id>.wandb`.

    The file is a LevelDB-style log (":W&B", magic 0xBEE1, version 0, then 32 KiB blocks of records: CRC-32, length
    (2 bytes, little-endian), type 1 full / 2 first / 3 middle / 4 last), each record a serialised
    `wandb_internal_pb2.Record`; wandb 0.31 has no Python reader of its own, and offline it writes no summary file.
    """
    from wandb.proto import wandb_internal_pb2

    data, block = path.read_bytes(), 32 * 1024
    assert data[:7] == b":W&B\xe1\xbe\x00", data[:7]
    pos, pending, rows = 7, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        if left < 7 or (length == 0 and kind == 0):  # the rest of a block too short for a record: zero padding
            pos += left
            continue
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            if record.WhichOneof("record_type") == "history":
                rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                             for item in record.history.item})
    return rows


def test_wandb_offline_run_holds_every_term_curve(tmp_path, tiny_bert, monkeypatch):
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")  # nothing leaves the machine; the run is written under WANDB_DIR
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_PROJECT", "kdistill-test")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    try:
        result = _train(tmp_path, tiny_bert, "wandb")
    finally:
        wandb.finish()  # the Trainer's callback leaves the run open for the caller; finishing flushes its log
    (log,) = list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))
    history = _wandb_history(log)
    for term, curve in _logged(result).items():
        got = [(row["train/global_step"], row[f"train/{term}"]) for row in history if f"train/{term}" in row]
        assert [(step, pytest.approx(value, rel=1e-6)) for step, value in got] == curve, term
