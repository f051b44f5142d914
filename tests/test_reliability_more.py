"""Reliability, cases beyond issue 19's list, one per mechanism it asked for: a config file is read once and
within bounds (size, nesting); no number is inf or NaN; a validation or test label the training data lacks is
refused before the teacher's pass; an export's labels are checked against its model; a directory inside one
another process holds is refused (real processes). Each asserts the one line and the exit code."""

import json
import os
import shutil
import threading
from pathlib import Path

import pytest

from conftest import one_line_error, tsv, write_config
from kdistill.cli import main
from kdistill.config_sections import MAX_CONFIG_BYTES, MAX_CONFIG_DEPTH
from test_deploy import word_export  # noqa: F401 - a fixture: an export of a tiny 3-label BERT
from test_locking import holder_of, kill, start


# --- config files ------------------------------------------------------------------------------------------------


def test_a_config_file_larger_than_the_bound_is_refused_unparsed(capfd, caplog, tmp_path):
    # A 12 MB flat list took 134 s and 1.4 GB before this bound; an endless pipe never ended.
    big = tmp_path / "big.yaml"
    big.write_text("data:\n  train_file: x.tsv\n  junk:\n" + "  - 1\n" * (MAX_CONFIG_BYTES // 6 + 1))
    assert one_line_error(capfd, caplog, "teach", "--config", str(big)) == (
        f"kdistill: error: config file {big} is larger than 256 KiB; a config file is a few KB (give data in data "
        "files, not in the config)")


@pytest.mark.parametrize("opening, closing", [("{a: ", "}"), ("[", "]")], ids=["mappings", "lists"])
def test_a_config_nested_too_deep_is_one_line(capfd, caplog, tmp_path, opening, closing):
    # 20000 levels overflowed the YAML composer's recursion: a RecursionError traceback, exit 1.
    deep = tmp_path / "deep.yaml"
    deep.write_text("distill:\n  lr_scheduler_kwargs: " + opening * 20000 + "1" * (opening != "[") + closing * 20000)
    assert one_line_error(capfd, caplog, "teach", "--config", str(deep)) == (
        f"kdistill: error: config file {deep}, line 2: nested more than {MAX_CONFIG_DEPTH} levels deep; a config is "
        "sections of fields")


def test_a_config_from_a_pipe_is_read_once(capfd, caplog, tmp_path, values):
    """`--config <(...)` or a FIFO gives its text once: the second read of it (the full parse) saw an empty file and
    said 'set train_file', or blocked forever on a FIFO nobody writes again."""
    fifo = tmp_path / "config.fifo"
    os.mkfifo(fifo)
    text = Path(write_config(tmp_path / "c.yaml", {**values, "strategy": "soft"})).read_text()
    text = text.replace("distill:\n", "distill:\n  no_such_field: 1\n")  # found by the full parse, after preflight

    def writer():
        with open(fifo, "w") as fh:
            fh.write(text)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        line = one_line_error(capfd, caplog, "distill", "--config", str(fifo))
    finally:
        thread.join(timeout=5)
    assert line.startswith(f"kdistill: error: unknown config key 'no_such_field' in {fifo} section 'distill'.")
    assert not Path(values["output_dir"]).exists()


# --- numbers -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("flag, value, message", [
    # exited 0 with every weight NaN
    ("learning_rate", "inf", "distill: learning_rate must be a finite number, got inf"),
    ("weight_decay", "inf", "distill: weight_decay must be a finite number, got inf"),
    # an OverflowError traceback from the Trainer, after the soft-label pass
    ("num_train_epochs", "inf", "distill: num_train_epochs must be a finite number, got inf"),
    ("max_grad_norm", "nan", "distill: max_grad_norm must be at least 0, got nan"),
])
def test_no_number_is_inf_or_nan(capfd, caplog, tmp_path, values, flag, value, message):
    config = write_config(tmp_path / "c.yaml", values)
    assert one_line_error(capfd, caplog, "distill", "--config", config, f"--{flag}", value) == \
        f"kdistill: error: {message}"
    assert not Path(values["output_dir"]).exists()


def test_an_infinite_number_in_the_config_file_is_refused(capfd, caplog, tmp_path, values):
    config = tmp_path / "c.yaml"
    write_config(config, values)
    config.write_text(config.read_text().replace("distill:\n", "distill:\n  adam_epsilon: .inf\n"))
    assert one_line_error(capfd, caplog, "distill", "--config", str(config)) == \
        "kdistill: error: distill: adam_epsilon must be a finite number, got inf"


# --- data ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("verb, field", [("distill", "validation_file"), ("teach", "test_file")])
def test_an_evaluation_label_the_training_data_lacks_is_refused_before_the_teacher_pass(
        capfd, caplog, tmp_path, values, verb, field):
    # Found after the teacher's soft-label pass before (its cache was left in output_dir).
    odd = tsv(tmp_path / "odd.tsv", ["a fine film\t1", "a dull film\t0", "an odd one\t2"])
    config = write_config(tmp_path / "c.yaml", {**values, "strategy": "soft", field: odd})
    assert one_line_error(capfd, caplog, verb, "--config", config) == \
        f"kdistill: error: {odd}: label(s) '2' are not among the model's labels (0, 1)"
    assert not Path(values["output_dir"]).exists()


# --- exports -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("labels, message", [
    # a ValueError traceback from numpy at the first prediction
    ({"negative": 0, "neutral": 0, "positive": 1}, "labels.json: label ids must be 0..2, each once, found [0, 0, 1]"),
    ({"negative": 0, "neutral": "x", "positive": 2}, 'labels.json: label ids must be 0..2, each once, found [0, "x", 2]'),
    ({"negative": 0, "positive": 1}, "model.onnx gives 3 scores per text but labels.json names 2 labels; re-export "
                                     "the run with kdistill export"),
], ids=["repeated-id", "not-an-id", "too-few"])
def test_an_export_whose_labels_do_not_fit_its_model_is_refused(capfd, caplog, tmp_path, word_export, labels, message):  # noqa: F811
    broken = tmp_path / "export"
    shutil.copytree(word_export, broken)
    (broken / "labels.json").write_text(json.dumps(labels))
    where = f"{broken}/" if message.startswith("labels.json") else f"{broken}: "
    for verb in (["predict", str(broken), "a fine film"], ["serve", str(broken), "--port", "0"]):
        assert one_line_error(capfd, caplog, *verb) == f"kdistill: error: {where}{message}"


# --- one writer ----------------------------------------------------------------------------------------------------


def test_a_run_inside_a_directory_another_process_holds_is_refused(capfd, caplog, tmp_path, values):
    """`kdistill distill` into a cell of a running sweep: the sweep holds its directory, the cell's lock file is
    another one, and the run went ahead."""
    sweep = tmp_path / "sweep"
    holder = start(tmp_path, ["dir", str(sweep), str(tmp_path / "held")])
    try:
        cell = sweep / "hard-s0"
        config = write_config(tmp_path / "c.yaml", {**values, "output_dir": str(cell)})
        line = one_line_error(capfd, caplog, "distill", "--config", config)
        held = holder_of(sweep)
        assert line == (f"kdistill: error: output_dir {cell} is inside {sweep}, which is in use by kdistill process "
                        f"{holder.pid} ({held['command']}, since {held['started']}); wait for it to end, or use "
                        "another output_dir")
        assert sorted(os.listdir(sweep)) == [".kdistill.lock"]  # the cell it made for its lock is gone again
    finally:
        kill(holder)
