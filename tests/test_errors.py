"""Bad input through the real CLI: one line `kdistill: error: ...` on stderr, exit 2, no traceback, and nothing
already on disk (eval.json, the soft-label cache, the student) changed."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import assert_user_error, run_cli, snapshot, tsv, write_config


# --- data files ----------------------------------------------------------------------------------------------


def test_missing_data_file(capsys, tmp_path, values):
    missing = tmp_path / "nope.tsv"
    config = write_config(tmp_path / "c.yaml", {**values, "train_file": str(missing)})
    assert_user_error(*run_cli(capsys, "teach", "--config", config), f"data file not found: {missing}")


def test_missing_text_column(capsys, tmp_path, values):
    config = write_config(tmp_path / "c.yaml", {**values, "text_column": "text"})
    assert_user_error(*run_cli(capsys, "teach", "--config", config), "no column 'text' (columns: sentence, label)")


def test_missing_label_column(capsys, tmp_path, values):
    config = write_config(tmp_path / "c.yaml", {**values, "label_column": "gold"})
    assert_user_error(*run_cli(capsys, "teach", "--config", config), "no column 'gold' (columns: sentence, label)")


def test_empty_data_file(capsys, tmp_path, values):
    empty = tmp_path / "empty.tsv"
    empty.write_bytes(b"")
    config = write_config(tmp_path / "c.yaml", {**values, "train_file": str(empty)})
    assert_user_error(*run_cli(capsys, "teach", "--config", config), f"{empty}: the file is empty")


def test_header_only_data_file(capsys, tmp_path, values):
    header_only = tsv(tmp_path / "header.tsv", [])
    config = write_config(tmp_path / "c.yaml", {**values, "train_file": header_only})
    assert_user_error(*run_cli(capsys, "teach", "--config", config), f"{header_only}: the file holds no rows")


def test_eval_label_the_model_does_not_know_leaves_eval_json(capsys, tmp_path, run_copy):
    out, values = run_copy
    before = snapshot(out)
    assert "eval.json" in before
    test_file = tsv(tmp_path / "test.tsv", ["a fine film\t1", "a dull film\t0", "a strange film\t7"])
    config = write_config(tmp_path / "c.yaml", {**values, "test_file": test_file})
    code, err = run_cli(capsys, "eval", "--config", config)
    assert_user_error(code, err, f"{test_file}: label(s) '7' are not among the model's labels (0, 1)")
    assert snapshot(out) == before


# --- config and flags ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "flags, fragment",
    [
        (["--temperature", "0"], "distill: temperature must be > 0, got 0.0"),
        (["--temperature", "-2"], "distill: temperature must be > 0, got -2.0"),
        (["--alpha", "1.5"], "distill: alpha must be in [0, 1], got 1.5"),
        (["--alpha", "-0.5"], "distill: alpha must be in [0, 1], got -0.5"),
        (["--temperature", "abc"], "argument --temperature: invalid float value: 'abc'"),
        (["--temprature", "4"], "unknown option '--temprature'"),
    ],
)
def test_bad_flag(capsys, tmp_path, values, flags, fragment):
    config = write_config(tmp_path / "c.yaml", values)
    code, err = run_cli(capsys, "distill", "--config", config, *flags)
    assert_user_error(code, err, fragment)
    assert len([line for line in err.splitlines() if line.strip()]) == 1  # no usage dump
    assert not (tmp_path / "run").exists()


def test_unknown_config_key(capsys, tmp_path, values):
    config = Path(write_config(tmp_path / "c.yaml", values))
    doc = yaml.safe_load(config.read_text(encoding="utf-8"))
    doc["student"]["student_layerz"] = [0]
    config.write_text(yaml.safe_dump(doc), encoding="utf-8")
    code, err = run_cli(capsys, "distill", "--config", str(config))
    assert_user_error(code, err, "unknown config key 'student_layerz'")
    assert "Did you mean student_layers" in err


def test_missing_config_file(capsys, tmp_path):
    assert_user_error(*run_cli(capsys, "distill", "--config", str(tmp_path / "no.yaml")), "config file not found")


# --- soft-label cache (the format itself: test_soft_labels.py) ---------------------------------------------------


def tamper(path: Path) -> None:
    """Change one byte of a cache file's data (a low mantissa bit of its last logit), keeping its metadata and hash.

    The cache's own checks are tested in test_soft_labels.py; here, what the CLI makes of a changed file."""
    raw = bytearray(path.read_bytes())
    raw[-4] ^= 0x01
    path.write_bytes(bytes(raw))


def test_distill_with_tampered_cache_stops_and_changes_nothing(capsys, tmp_path, run_copy):
    out, values = run_copy
    (train_cache,) = (out / "soft_labels").glob("train-*.safetensors")
    tamper(train_cache)
    shutil.rmtree(out / "student")  # not yet distilled: a finished student of this config is reused, the cache unread
    before = snapshot(out)
    code, err = run_cli(capsys, "distill", "--config", write_config(tmp_path / "c.yaml", values))
    assert_user_error(code, err, f"soft-label cache {train_cache} does not match its fingerprint")
    assert snapshot(out) == before


# --- the installed entry point ---------------------------------------------------------------------------------


def test_console_script_prints_one_line(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(f"data:\n  train_file: {tmp_path / 'nope.tsv'}\n  text_column: sentence\n", encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, "-m", "kdistill.cli", "teach", "--config", str(config)],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"},
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("kdistill: error: data file not found:")
    assert proc.stdout == ""


def test_a_missing_relative_path_says_where_it_was_looked_for(capsys, tmp_path, values, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = write_config(tmp_path / "c.yaml", {**values, "train_file": "data/train.tsv"})
    assert_user_error(*run_cli(capsys, "teach", "--config", config),
                      f"data file not found: data/train.tsv (relative paths are read from the working directory, "
                      f"{tmp_path}, not from the config file's)")
    config = write_config(tmp_path / "d.yaml", {**values, "teacher_model": "./models/teacher", "teacher_train": False})
    assert_user_error(*run_cli(capsys, "teach", "--config", config),
                      f"teacher ./models/teacher: no such directory (relative paths are read from the working "
                      f"directory, {tmp_path}, not from the config file's)")
