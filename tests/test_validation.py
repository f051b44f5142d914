"""Issue 19: what a user can get wrong is found before anything heavy runs, and said in one line with exit 2.

One test per mechanism: the CLI's mapping of OSError (and of a full disk that a library wrapped), the config
file's reader (a directory, not UTF-8, YAML aliases), the bounds of every number a user sets, distinct column
names, the student's teacher layers, max_length against the models' positions, and each data file's columns
(there, and one value per row). A refusal that is meant to come before the teacher pass leaves no output_dir.
"""

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from conftest import one_line_error, tsv, write_config
from kdistill import pipeline
from kdistill.config import DataConfig, load_yaml
from kdistill.data import load_table

ROWS = ["a fine film\t1", "a dull film\t0", "a bright film\t1", "a grey film\t0"]


def refused_before_any_work(capfd, caplog, out: Path, *argv: str) -> str:
    """The one error line of a command that must stop before the run directory is touched (no teacher pass, no
    soft labels, no run_config.json)."""
    line = one_line_error(capfd, caplog, *argv)
    assert not out.exists(), sorted(p.name for p in out.iterdir())
    return line


# --- OSError: the path and what went wrong, in one line ----------------------------------------------------------


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a file whatever its mode; the mapping is tested below")
def test_a_data_file_without_read_permission(capfd, caplog, tmp_path, values):
    train = Path(tsv(tmp_path / "train.tsv", ROWS))
    train.chmod(0)
    config = write_config(tmp_path / "c.yaml", {**values, "train_file": str(train)})
    assert refused_before_any_work(capfd, caplog, tmp_path / "run", "teach", "--config", config) == \
        f"kdistill: error: {train}: permission denied"


def test_an_unreadable_data_file_is_one_line_whoever_runs_it(capfd, caplog, tmp_path, values, monkeypatch):
    """What the test above sees, for root too: the data file's first read (data._has_rows) meets EACCES."""
    from kdistill import data

    train = tsv(tmp_path / "train.tsv", ROWS)

    def refuse(path, *args, **kwargs):
        if os.fspath(path) == train:
            raise PermissionError(errno.EACCES, "Permission denied", train)
        return open(path, *args, **kwargs)

    monkeypatch.setattr(data, "open", refuse, raising=False)  # the module's name `open`, ahead of the builtin
    config = write_config(tmp_path / "c.yaml", {**values, "train_file": train})
    assert refused_before_any_work(capfd, caplog, tmp_path / "run", "teach", "--config", config) == \
        f"kdistill: error: {train}: permission denied"


@pytest.mark.parametrize("code, kind", [
    (errno.EACCES, "permission denied"),
    (errno.EISDIR, "is a directory, not a file"),
    (errno.ENOSPC, "no space left on device; free some space or write elsewhere (output_dir)"),
    (errno.EROFS, "read-only file system; write elsewhere (output_dir)"),
])
def test_an_os_error_is_one_line_naming_the_path_and_the_kind(capfd, caplog, tmp_path, values, monkeypatch, code, kind):
    target = str(tmp_path / "run" / "run_config.json")

    def fail(config):
        raise OSError(code, os.strerror(code), target)

    monkeypatch.setattr(pipeline, "teach", fail)
    config = write_config(tmp_path / "c.yaml", values)
    assert one_line_error(capfd, caplog, "teach", "--config", config) == f"kdistill: error: {target}: {kind}"


def test_an_atomic_write_names_the_file_not_its_temp_file(capfd, caplog, tmp_path, values, monkeypatch):
    """A write refused in output_dir (read-only, full) names the file kdistill was writing, not '.tmp-XXXX.json'."""
    from kdistill import files

    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "run" / ".tmp-k2j4.json"))

    monkeypatch.setattr(files.tempfile, "mkstemp", refuse)
    config = write_config(tmp_path / "c.yaml", values)
    # teach with a fine-tuned teacher records the run first: run_config.json is the file it was writing.
    assert one_line_error(capfd, caplog, "teach", "--config", config) == \
        f"kdistill: error: {tmp_path / 'run' / 'run_config.json'}: permission denied"


def test_a_data_file_that_is_a_directory(capfd, caplog, tmp_path, values):
    folder = tmp_path / "train.tsv"
    folder.mkdir()
    config = write_config(tmp_path / "c.yaml", {**values, "train_file": str(folder)})
    assert refused_before_any_work(capfd, caplog, tmp_path / "run", "teach", "--config", config) == \
        f"kdistill: error: data: train_file {folder} is a directory; give a data file"


@pytest.mark.parametrize("free, says", [
    (0, "no space left on device ({message}); free some space or write elsewhere (output_dir)"),
    (10 << 30, "failed ({message}); check the disk it is on (full, over quota or failing)"),
])
def test_a_full_disk_while_a_checkpoint_is_saved_says_so(capfd, caplog, tmp_path, values, monkeypatch, free, says):
    """torch.save's zip writer reports a full disk as a RuntimeError (the message of a real run on a full tmpfs);
    the free space where it wrote tells a full disk from another failed write."""
    from kdistill import errors

    message = "[enforce fail at inline_container.cc:672] . unexpected pos 6144 vs 6036"

    def save(obj, f, *args, **kwargs):  # torch.save(obj, f): `f` is where the CLI finds the path
        raise RuntimeError(message)

    monkeypatch.setattr(torch, "save", save)
    monkeypatch.setattr(errors, "_free_bytes", lambda path: free)
    config = write_config(tmp_path / "c.yaml", {**values, "strategy": "hard", "save_strategy": "steps",
                                                 "save_steps": 1, "disable_tqdm": True})
    line = one_line_error(capfd, caplog, "distill", "--config", config)
    written = tmp_path / "run" / "student" / "checkpoint-1" / "training_args.bin"
    separator = ": " if free == 0 else " "
    assert line == f"kdistill: error: writing {written}{separator}" + says.format(message=message)


def test_a_full_disk_under_safetensors_says_so(tmp_path):
    """safetensors' error (as a real save on a full tmpfs raised it) names no errno: its words are enough."""
    from safetensors import SafetensorError

    from kdistill.errors import write_failure_line

    def save_file(tensors, filename):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    with pytest.raises(SafetensorError) as err:
        save_file({}, str(tmp_path / "model.safetensors"))
    assert write_failure_line(err.value) == (
        f"writing {tmp_path / 'model.safetensors'}: no space left on device (Error while serializing: I/O error: No "
        "space left on device (os error 28)); free some space or write elsewhere (output_dir)")
    assert write_failure_line(RuntimeError("a bug")) is None


def test_a_bug_is_still_a_traceback(tmp_path, values, monkeypatch):
    """Only what a user can fix becomes one line: any other exception propagates (and prints its traceback)."""
    from kdistill.cli import main

    def fail(config):
        raise RuntimeError("a bug")

    monkeypatch.setattr(pipeline, "teach", fail)
    with pytest.raises(RuntimeError, match="a bug"):
        main(["teach", "--config", write_config(tmp_path / "c.yaml", values)])


# --- the config file ---------------------------------------------------------------------------------------------


def test_a_config_that_is_a_directory(capfd, caplog, tmp_path):
    assert one_line_error(capfd, caplog, "teach", "--config", str(tmp_path)) == \
        f"kdistill: error: config file {tmp_path} is a directory; give a YAML file"


def test_a_config_with_a_byte_that_is_not_utf8_in_a_comment(capfd, caplog, tmp_path, values):
    path = Path(write_config(tmp_path / "c.yaml", values))
    text = path.read_bytes()
    path.write_bytes(b"# le caf\xe9\n" + text)
    assert one_line_error(capfd, caplog, "teach", "--config", str(path)) == (
        f"kdistill: error: config file {path} is not valid UTF-8 text (line 1, byte 8: invalid continuation byte); "
        "save it as UTF-8")


def test_yaml_aliases_are_refused_with_their_line(capfd, caplog, tmp_path):
    """A 1 KB file of nested aliases expands into gigabytes when the config is serialised: refused as it is read."""
    bomb = ["data:", "  train_file: t.tsv", "  column_names: &a0 [x, x, x, x, x, x, x, x, x]"]
    bomb += [f"  a{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}]"
             for i in range(1, 10)]
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(bomb) + "\n", encoding="utf-8")
    assert one_line_error(capfd, caplog, "teach", "--config", str(path)) == (
        f"kdistill: error: config file {path}, line 3: YAML anchors and aliases (&a0) are not allowed in config "
        "files; write the value out")
    alias_only = tmp_path / "alias.yaml"
    alias_only.write_text("data:\n  train_file: t.tsv\n  text_column: *name\n", encoding="utf-8")
    with pytest.raises(ValueError, match=rf"{alias_only}, line 3: YAML anchors and aliases \(\*name\)"):
        load_yaml(alias_only)


# --- numbers, names and layers: before anything loads ------------------------------------------------------------


@pytest.mark.parametrize("field, value, message", [
    ("per_device_train_batch_size", 0, "distill: per_device_train_batch_size must be at least 1, got 0"),
    ("per_device_eval_batch_size", -1, "distill: per_device_eval_batch_size must be at least 1, got -1"),
    ("num_train_epochs", -1, "distill: num_train_epochs must be > 0 (or max_steps set), got -1"),
    ("learning_rate", -0.001, "distill: learning_rate must be at least 0, got -0.001"),
    ("gradient_accumulation_steps", 0, "distill: gradient_accumulation_steps must be at least 1, got 0"),
    ("max_train_samples", 0, "data: max_train_samples must be at least 1, got 0"),
    ("max_length", 64.5, "data: max_length must be a whole number, got 64.5"),
    ("teacher_batch_size", 0, "teacher: teacher_batch_size must be at least 1, got 0"),
    ("student_num_layers", 0, "student: student_num_layers must be at least 1, got 0"),
    ("alpha", 2, "distill: alpha must be in [0, 1], got 2"),
    ("bilstm_dropout", 1, "student: bilstm_dropout must be in [0, 1), got 1"),
    ("seed", -3, "distill: seed must be at least 0, got -3"),
    ("train_sampling_strategy", "bogus", "distill: train_sampling_strategy must be one of group_by_length, random, "
                                         "sequential, batch_rebalance, got 'bogus'"),
    ("temperature", [2], "distill: temperature must be a number, got [2]"),
])
def test_a_number_out_of_bounds_is_named(capfd, caplog, tmp_path, values, field, value, message):
    config = write_config(tmp_path / "c.yaml", {**values, field: value})
    assert refused_before_any_work(capfd, caplog, tmp_path / "run", "run", "--config", config) == \
        f"kdistill: error: {message}"


def test_epochs_from_a_flag_are_checked_too(capfd, caplog, tmp_path, values):
    """-1 epochs trained 0 steps and saved the untrained student as finished."""
    config = write_config(tmp_path / "c.yaml", values)
    assert refused_before_any_work(capfd, caplog, tmp_path / "run", "distill", "--config", config,
                                   "--num_train_epochs", "-1") == \
        "kdistill: error: distill: num_train_epochs must be > 0 (or max_steps set), got -1.0"


@pytest.mark.parametrize("fields, message", [
    ({"label_column": "sentence"}, "data: text_column and label_column are both 'sentence'"),
    ({"text_pair_column": "sentence"}, "data: text_column and text_pair_column are both 'sentence'"),
    ({"text_pair_column": "label"}, "data: text_pair_column and label_column are both 'label'"),
])
def test_one_column_named_twice(capfd, caplog, tmp_path, values, fields, message):
    config = write_config(tmp_path / "c.yaml", {**values, **fields})
    assert refused_before_any_work(capfd, caplog, tmp_path / "run", "distill", "--config", config) == \
        f"kdistill: error: {message}; each must name a column of its own"


@pytest.mark.parametrize("layers, message", [
    ([1, 1], "student: student_layers lists layer(s) 1 more than once ([1, 1]); a student copies each teacher layer "
             "at most once"),
    ([0, 5], "student: student_layers must be indices in 0..1 (the teacher {teacher} has 2 layers), got [0, 5]"),
    ([], "student: student_layers must be a non-empty list of teacher layer indices (0-based), got []"),
])
def test_student_layers_are_checked_before_the_teacher_pass(capfd, caplog, tmp_path, values, layers, message):
    config = write_config(tmp_path / "c.yaml", {**values, "student_num_layers": None, "student_layers": layers,
                                                 "strategy": "soft"})
    assert refused_before_any_work(capfd, caplog, tmp_path / "run", "distill", "--config", config) == \
        "kdistill: error: " + message.format(teacher=values["teacher_model"])


def test_student_num_layers_beyond_the_teacher(capfd, caplog, tmp_path, values):
    config = write_config(tmp_path / "c.yaml", {**values, "student_num_layers": 3, "strategy": "soft"})
    assert refused_before_any_work(capfd, caplog, tmp_path / "run", "distill", "--config", config) == \
        "kdistill: error: student: student_num_layers must be between 1 and 2, got 3"


def test_from_teacher_refuses_a_repeated_layer_itself(tiny_bert):
    """The library's own check (a Python caller who built no config): a dict of layers cannot hold a repeat."""
    from transformers import AutoModelForSequenceClassification

    from kdistill.students import from_teacher

    teacher = AutoModelForSequenceClassification.from_pretrained(tiny_bert)
    with pytest.raises(ValueError, match=r"lists layer\(s\) 1 more than once \(\[0, 1, 1\]\)"):
        from_teacher(teacher, [0, 1, 1])


@pytest.fixture
def teacher_without_length_limit(tmp_path, tiny_bert) -> str:
    """The tiny BERT (130 positions) with a tokenizer that sets no model_max_length."""
    copy = tmp_path / "teacher"
    shutil.copytree(tiny_bert, copy)
    path = copy / "tokenizer_config.json"
    settings = json.loads(path.read_text(encoding="utf-8"))
    del settings["model_max_length"]
    path.write_text(json.dumps(settings), encoding="utf-8")
    return str(copy)


def test_max_length_beyond_the_position_embeddings(capfd, caplog, tmp_path, values, teacher_without_length_limit):
    """Before: a shape error deep in the teacher pass ('The expanded size of the tensor (302) must match ... (130)')."""
    config = write_config(tmp_path / "c.yaml", {**values, "teacher_model": teacher_without_length_limit,
                                                 "max_length": 400, "strategy": "soft"})
    assert refused_before_any_work(capfd, caplog, tmp_path / "run", "distill", "--config", config) == (
        f"kdistill: error: data: max_length 400 is more than the 130 positions of the teacher "
        f"{teacher_without_length_limit} (max_position_embeddings), and its tokenizer sets no model_max_length to "
        "cut texts to; set max_length to at most 130")


def test_max_length_within_the_tokenizers_limit_passes(tmp_path, values, tiny_bert):
    """The tiny BERT's tokenizer cuts texts to 128 tokens, within its 130 positions: max_length 400 is fine."""
    from kdistill.config import make_config
    from kdistill.validate import check_run

    check_run(make_config({**values, "max_length": 400}))


# --- data files: every file's columns, one value per row ---------------------------------------------------------


def parquet(path: Path, columns: dict) -> str:
    pq.write_table(pa.table(columns), path)
    return str(path)


@pytest.mark.parametrize("columns, message", [
    ({"sentence": [["a fine film", "x"], ["a dull film"]], "label": [1, 0]},
     "column 'sentence' holds lists (list<element: string>), but each row's text must be a string; flatten the "
     "column or point text_column at another"),
    ({"sentence": ["a fine film", "a dull film"], "label": [{"id": 0, "name": "x"}, {"id": 1, "name": "y"}]},
     "column 'label' holds structs (struct<id: int64, name: string>), but each row's label must be a string, an "
     "integer or a boolean; flatten the column or point label_column at another"),
])
def test_a_parquet_column_of_lists_or_structs_is_refused_before_the_teacher_pass(
        capfd, caplog, tmp_path, values, columns, message):
    """Before: the list was trained on as the text "['a fine film', 'x']", the struct became a class, found only
    after the teacher pass with the error blaming the validation file. Here the validation file is the bad one."""
    validation = parquet(tmp_path / "dev.parquet", columns)
    config = write_config(tmp_path / "c.yaml", {**values, "validation_file": validation, "strategy": "soft"})
    assert refused_before_any_work(capfd, caplog, tmp_path / "run", "distill", "--config", config) == \
        f"kdistill: error: {validation}: {message}"


def test_a_missing_column_of_a_later_file_is_found_before_the_teacher_pass(capfd, caplog, tmp_path, values):
    test_file = parquet(tmp_path / "test.parquet", {"text": ["a fine film"], "label": [1]})
    config = write_config(tmp_path / "c.yaml", {**values, "test_file": test_file, "strategy": "soft"})
    assert refused_before_any_work(capfd, caplog, tmp_path / "run", "distill", "--config", config) == (
        f"kdistill: error: {test_file}: no column 'sentence' (columns: text, label); set text_column / label_column, "
        "or column_names for a file without a header")


def test_a_json_lines_column_of_lists_is_refused(capfd, caplog, tmp_path, values):
    transfer = tmp_path / "transfer.jsonl"
    transfer.write_text('{"sentence": ["a fine film", "x"]}\n{"sentence": ["a dull film"]}\n', encoding="utf-8")
    config = write_config(tmp_path / "c.yaml", {**values, "transfer_file": str(transfer), "strategy": "soft"})
    assert refused_before_any_work(capfd, caplog, tmp_path / "run", "distill", "--config", config) == (
        f"kdistill: error: {transfer}: column 'sentence' holds lists (list<item: string>), but each row's text must "
        "be a string; flatten the column or point text_column at another")


def test_the_full_read_refuses_what_a_first_row_did_not_show(tmp_path):
    """A JSON array file has no first row to peek at: datasets' read of it is checked the same way."""
    path = tmp_path / "train.json"
    path.write_text(json.dumps([{"sentence": "a fine film", "label": {"id": 1}},
                                {"sentence": "a dull film", "label": {"id": 0}}]), encoding="utf-8")
    with pytest.raises(ValueError, match=r"column 'label' holds structs \(struct<id: int64>\), but each row's label"):
        load_table(str(path), DataConfig(train_file=str(path), text_column="sentence"))


@pytest.mark.parametrize("text, message", [
    ("data:\n  train_fil: t.tsv\n", "unknown config key 'train_fil' in {config} section 'data'. Did you mean train_file"),
    ("data:\n  train_file: {train}\ndistill:\n  temperature: -1\n", "distill: temperature must be > 0, got -1"),
    ("data:\n  train_file: {train}\nstudent:\n  student_layers: [1, 1]\n", "student: student_layers lists layer(s) 1"),
    ("data:\n  train_file: {missing}\n", "data file not found: {missing}"),
])
def test_a_config_files_mistake_is_found_before_torch_loads(tmp_path, text, message):
    """Issue 18: a typo answered in well under 2 s, because neither torch nor transformers is imported to find it."""
    train, missing = tmp_path / "train.tsv", tmp_path / "missing.tsv"
    train.write_text("sentence\tlabel\na fine film\t1\n", encoding="utf-8")
    config = tmp_path / "c.yaml"
    config.write_text(text.format(train=train, missing=missing), encoding="utf-8")
    code = ("import sys\nfrom kdistill.cli import main\ncode = main(['run', '--config', sys.argv[1]])\n"
            "print(code, sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    src = str(Path(__file__).resolve().parents[1] / "src")
    result = subprocess.run([sys.executable, "-c", code, str(config)], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": src})
    assert result.stdout.strip() == "2 []"
    assert result.stderr.startswith("kdistill: error: " + message.format(config=config, missing=missing))
    assert len(result.stderr.strip().splitlines()) == 1
