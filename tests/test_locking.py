"""One writer per output directory (kdistill.lock), with real processes; --overwrite never deletes an input; a rerun
of a finished run writes nothing; export of any finished run, made whole or not at all."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import one_line_error, snapshot, tiny_run_values, write_config
from kdistill import export, lock
from kdistill.cli import main
from test_reliability import ENV, STALLING_CLI

SRC = str(Path(__file__).resolve().parents[1] / "src")
CHILD_ENV = {**ENV, "PYTHONPATH": os.pathsep.join([SRC, ENV.get("PYTHONPATH", "")])}

# A process that takes a lock through the library, says so (the marker file) and then holds it until killed.
HOLDER = """
import sys, time
from pathlib import Path
from kdistill.lock import directory_lock, file_lock
kind, path, marker = sys.argv[1:4]
with (directory_lock(path) if kind == "dir" else file_lock(path, path)):
    Path(marker).touch()
    if kind == "file":  # the file the lock guards, written while it is held, once the test says go
        while not Path(marker + ".go").exists():
            time.sleep(0.02)
        Path(path).write_text("written by the holder")
    else:
        time.sleep(600)
"""


def _wait_for(marker: Path, child: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 180
    while not marker.exists():
        assert child.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, "the child never got there"
        time.sleep(0.02)


def start(tmp_path: Path, argv: list[str], script: str = HOLDER) -> subprocess.Popen:
    """A child process running `script` with `argv`, once it has reached its marker (argv's third item)."""
    (tmp_path / "child.py").write_text(script)
    log = tmp_path / "child.log"
    child = subprocess.Popen([sys.executable, str(tmp_path / "child.py"), *argv], stdout=log.open("w"),
                             stderr=subprocess.STDOUT, env=CHILD_ENV)
    _wait_for(Path(argv[2]) if script is HOLDER else Path(argv[0]), child, log)
    return child


def kill(child: subprocess.Popen) -> None:
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert child.returncode == -signal.SIGKILL


def holder_of(directory: Path) -> dict:
    return json.loads((directory / lock.LOCK_FILE).read_text())


# --- one writer per output directory --------------------------------------------------------------------------------


def test_a_second_kdistill_process_is_refused_in_one_line_naming_the_holder(tmp_path, values):
    out = Path(values["output_dir"])
    holder = start(tmp_path, ["dir", str(out), str(tmp_path / "held")])
    try:
        assert holder_of(out)["pid"] == holder.pid
        config = write_config(tmp_path / "c.yaml", {**values, "strategy": "soft"})
        second = subprocess.run([sys.executable, "-m", "kdistill.cli", "distill", "--config", config],
                                capture_output=True, text=True, env=CHILD_ENV, timeout=300)
        assert second.returncode == 2
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1, second.stderr
        assert lines[0].startswith(f"kdistill: error: output_dir {out} is in use by kdistill process {holder.pid} "
                                   f"(child.py dir {out} {tmp_path / 'held'}, since ")
        assert lines[0].endswith("); wait for it to end, or use another output_dir")
        assert [p.name for p in out.iterdir()] == [lock.LOCK_FILE]  # the refused process wrote nothing
    finally:
        kill(holder)


def test_a_lock_left_by_a_killed_process_is_taken_over_and_released(tmp_path, caplog):
    out = tmp_path / "out"
    holder = start(tmp_path, ["dir", str(out), str(tmp_path / "held")])
    kill(holder)
    assert holder_of(out)["pid"] == holder.pid  # a SIGKILLed process removes nothing: its lock file stays
    caplog.set_level("INFO", logger="kdistill")
    with lock.directory_lock(str(out)):
        assert holder_of(out)["pid"] == os.getpid()
        (out / "made").touch()
    assert f"taking over the lock of kdistill process {holder.pid}" in caplog.text
    assert sorted(p.name for p in out.iterdir()) == ["made"]  # released: the lock file went with it


def test_a_directory_a_refused_or_failed_command_made_is_removed_again(tmp_path):
    out = tmp_path / "a" / "b"
    with pytest.raises(RuntimeError):
        with lock.directory_lock(str(out)):
            assert (out / lock.LOCK_FILE).is_file()
            raise RuntimeError("bad input")
    assert not (tmp_path / "a").exists()  # as the directory was before the command


def test_distill_holds_its_output_dir_while_training_and_a_killed_one_is_resumed(tmp_path, capfd, caplog, values):
    """The issue's case: two `kdistill distill` into one output_dir. The second is refused while the first trains;
    once the first is killed, the next run takes the lock over (and resumes from the first one's checkpoint)."""
    run = {**values, "strategy": "soft", "save_strategy": "steps", "save_steps": 1, "per_device_train_batch_size": 8}
    config = write_config(tmp_path / "c.yaml", run)
    marker = tmp_path / "stalled"
    first = start(tmp_path, [str(marker), "3", "0", "distill", "--config", config], script=STALLING_CLI)
    out = Path(run["output_dir"])
    try:
        assert holder_of(out)["pid"] == first.pid
        assert holder_of(out)["command"].endswith(f"distill --config {config}")
        before = snapshot(out)
        line = one_line_error(capfd, caplog, "distill", "--config", config)
        assert line.startswith(f"kdistill: error: output_dir {out} is in use by kdistill process {first.pid} (")
        assert snapshot(out) == before  # nothing deleted, rotated or resumed under the first one's feet
    finally:
        kill(first)
    caplog.set_level("INFO", logger="kdistill")
    assert main(["distill", "--config", config]) == 0
    messages = [r.getMessage() for r in caplog.records]
    assert any(f"taking over the lock of kdistill process {first.pid}" in m for m in messages)
    # It stalled in step 3's on_step_end, before that step's checkpoint: checkpoint-2 is the last one.
    assert any(m.startswith(f"resuming from {out / 'student' / 'checkpoint-2'}") for m in messages)
    assert not (out / lock.LOCK_FILE).exists()


def test_a_second_compare_into_a_sweep_directory_is_refused(tmp_path, capsys, tiny_bert, values):
    sweep = tmp_path / "sweep"
    doc = {key: values[key] for key in ("train_file", "validation_file", "test_file", "text_column")}
    path = write_config(tmp_path / "sweep.yaml", {**doc, "teacher_model": tiny_bert, "output_dir": str(sweep)})
    with open(path, "a", encoding="utf-8") as fh:
        fh.write("grid:\n  strategies: [hard]\n  seeds: [0]\n")
    holder = start(tmp_path, ["dir", str(sweep), str(tmp_path / "held")])
    try:
        assert main(["compare", "--config", path]) == 2
        assert capsys.readouterr().err.strip().startswith(
            f"kdistill: error: sweep directory {sweep} is in use by kdistill process {holder.pid} (")
        assert [p.name for p in sweep.iterdir()] == [lock.LOCK_FILE]
    finally:
        kill(holder)


def test_a_cache_file_being_written_by_another_process_is_waited_for(tmp_path):
    cache = tmp_path / "soft_labels" / "train-x.safetensors"
    marker = tmp_path / "held"
    holder = start(tmp_path, ["file", str(cache), str(marker)])
    Path(str(marker) + ".go").touch()  # the holder writes the file now; whether before or after this process asks
    with lock.file_lock(str(cache), "cache"):
        assert cache.read_text() == "written by the holder"  # the lock came only once the holder was done
    holder.wait(timeout=60)
    assert holder.returncode == 0
    assert sorted(p.name for p in cache.parent.iterdir()) == [cache.name]


# --- --overwrite never deletes an input of the run ------------------------------------------------------------------


@pytest.mark.parametrize("field", ["teacher_model", "train_file", "soft_label_cache"])
def test_overwrite_never_deletes_an_input_of_the_run(capfd, caplog, tmp_path, run_copy, field):
    out, values = run_copy
    inside = out / "student" / "kept"
    if field == "teacher_model":
        inside = out / "student"  # distil a student of the student, into the directory that holds it
    elif field == "train_file":
        inside.mkdir()
        shutil.copy(values["train_file"], inside / "train.tsv")
        inside = inside / "train.tsv"
    else:
        shutil.copytree(out / "soft_labels", inside)
    before = snapshot(out)
    config = write_config(tmp_path / "c.yaml", {**values, field: str(inside), "strategy": "hard"})
    line = one_line_error(capfd, caplog, "distill", "--config", config, "--overwrite")
    assert line == (f"kdistill: error: output_dir {out}: --overwrite would delete {out / 'student'}, which holds this "
                    f"run's {field} {inside}; move it out of {out / 'student'}, or use another output_dir")
    assert snapshot(out) == before


def test_overwrite_of_a_taught_teacher_that_is_the_backbone_is_refused(capfd, caplog, tmp_path, run_copy):
    out, values = run_copy
    shutil.copytree(values["teacher_model"], out / "teacher")  # teach again, starting from the run's own teacher
    before = snapshot(out)
    config = write_config(tmp_path / "c.yaml", {**values, "teacher_train": True, "teacher_model": str(out / "teacher")})
    line = one_line_error(capfd, caplog, "teach", "--config", config, "--overwrite")
    assert f"--overwrite would delete {out / 'teacher'}, which holds this run's teacher_model {out / 'teacher'}" in line
    assert snapshot(out) == before


# --- a finished run, rerun or evaluated again: nothing written (so it works read-only) ------------------------------


def _stats(directory: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(directory)): (p.stat().st_ino, p.stat().st_mtime_ns)
            for p in sorted(directory.rglob("*")) if p.is_file()}


def test_rerunning_or_evaluating_a_finished_run_writes_nothing(tmp_path, capsys, run_copy):
    out, values = run_copy
    config = write_config(tmp_path / "c.yaml", values)
    # The copy's record names the directory it was made in: the first rerun here records this one (a real change).
    assert main(["run", "--config", config]) == 0
    before, files = _stats(out), snapshot(out)
    for path in [out, *out.rglob("*")]:  # read-only (as root that stops nothing: hence the checks on the files)
        path.chmod(path.stat().st_mode & ~0o222)
    try:
        assert main(["run", "--config", config]) == 0
        assert main(["eval", str(out)]) == 0
    finally:
        for path in [out, *out.rglob("*")]:
            path.chmod(path.stat().st_mode | 0o200)
    assert capsys.readouterr().out.count(f"written: {out / 'eval.json'}") == 3
    # run_config.json, labels.json and eval.json were not rewritten: same inode, same mtime, same bytes.
    assert _stats(out) == before
    assert snapshot(out) == files


# --- export: any finished run, written whole or not at all ----------------------------------------------------------


@pytest.fixture(scope="module")
def distilled_run(tmp_path_factory, tiny_bert) -> Path:
    """`kdistill distill` alone (no teach): labels.json only under student/, as in every `compare` cell."""
    out = tmp_path_factory.mktemp("distilled") / "run"
    values = tiny_run_values(out, tiny_bert, teacher_train=False, max_train_samples=64, max_eval_samples=32,
                             num_train_epochs=1, speed_batches=0, strategy="hard")
    assert main(["distill", "--config", write_config(out.parent / "c.yaml", values)]) == 0
    assert not (out / "labels.json").exists() and (out / "student" / "labels.json").is_file()
    return out


def test_export_of_a_distill_only_run(tmp_path, distilled_run):
    run = tmp_path / "run"
    shutil.copytree(distilled_run, run)
    assert main(["export", str(run), "--format", "onnx", "--speed_batches", "0", "--rows", "16"]) == 0
    report = json.loads((run / "export" / "export_report.json").read_text())
    assert report["labels"] == {"0": 0, "1": 1} and report["parity"]["passed"]
    assert report["out"] == str(run / "export")
    assert not [p for p in run.iterdir() if p.name.startswith((".tmp-", ".old-", lock.LOCK_FILE))]


def test_an_export_that_fails_midway_leaves_the_old_export_and_no_half_one(tmp_path, distilled_run, monkeypatch):
    run = tmp_path / "run"
    shutil.copytree(distilled_run, run)
    argv = ["export", str(run), "--format", "onnx", "--speed_batches", "0", "--rows", "16"]
    assert main(argv) == 0
    old = snapshot(run / "export")
    # What a kill mid-export leaves (a staging directory beside the target), then an export that dies before its
    # report: the old export stays whole, and no staging directory is left, the dead one's included.
    (run / ".tmp-export-killed").mkdir()
    (run / ".tmp-export-killed" / "model.onnx").write_text("half")

    def die(*args, **kwargs):
        raise KeyboardInterrupt  # as a Ctrl-C while the card is written

    monkeypatch.setattr(export.run, "model_card", die)
    assert main([*argv, "--int8"]) == 130
    assert snapshot(run / "export") == old
    assert not [p for p in run.iterdir() if p.name.startswith((".tmp-", ".old-"))]
    monkeypatch.undo()
    assert main([*argv, "--int8"]) == 0  # and a finished one replaces it
    assert (run / "export" / "model.int8.onnx").is_file()


def test_an_export_holds_its_target_not_the_directory_around_it(tmp_path, distilled_run, monkeypatch):
    # --out tmp/exports/a: while it is written, another kdistill process may still write tmp/exports/b (an export to
    # /tmp/x once refused every kdistill run under /tmp); the export holds a.lock (a second export of it waits).
    run, shared = tmp_path / "run", tmp_path / "exports"
    shutil.copytree(distilled_run, run)
    script = ("import sys\nfrom kdistill.errors import UserError\nfrom kdistill.lock import directory_lock\n"
              "try:\n    with directory_lock(sys.argv[1]):\n        pass\nexcept UserError as err:\n"
              "    print(err)\n    sys.exit(3)\n")  # exit 3 and the refusal if refused
    seen = {}
    real = export.run._export

    def export_and_look(*args, **kwargs):
        child = subprocess.run([sys.executable, "-c", script, str(shared / "b")], capture_output=True, text=True,
                               env=ENV, timeout=120)
        seen["b"] = (child.returncode, child.stdout.strip())
        seen["held"] = (shared / "a.lock").is_file()
        return real(*args, **kwargs)

    monkeypatch.setattr(export.run, "_export", export_and_look)
    assert main(["export", str(run), "--format", "onnx", "--speed_batches", "0", "--rows", "16",
                 "--out", str(shared / "a")]) == 0
    assert seen == {"b": (0, ""), "held": True}
    assert (shared / "a" / "export_report.json").is_file()
    assert sorted(p.name for p in shared.iterdir()) == ["a"]  # no lock or staging file left beside it


def test_export_refuses_a_target_it_would_replace_with_other_files_in_it(tmp_path, capsys, distilled_run):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    assert main(["export", str(distilled_run), "--format", "onnx", "--out", str(mine)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"kdistill: error: --out {mine} holds files that are not a kdistill export, and an export replaces the "
        "directory whole; give an empty or new directory")
    assert main(["export", str(distilled_run), "--format", "onnx", "--out", str(distilled_run)]) == 2
    assert "is the run directory or holds it" in capsys.readouterr().err
    assert (mine / "notes.txt").read_text() == "keep me"
