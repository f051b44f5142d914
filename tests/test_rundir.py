"""rundir.py: the run directory. A run refuses an output_dir holding another run (run_config.json says which config
made it) unless --overwrite; a rerun of the same config reuses what is there; a checkpoint holding pickled objects is
refused before resuming; a finished run is read back (load_run) and its stored paths found (locate) from wherever it
now lies."""

import json
import shutil

import pytest
import torch

from conftest import Payload, one_error_line, one_line_error, snapshot, write_config
from kdistill import rundir
from kdistill.cli import main


# --- the output directory: check_output_dir and take_output_dir (run_config.json) ---------------------------------


def test_output_dir_with_another_run_is_refused_then_overwritten(capfd, caplog, tmp_path, run_copy):
    out, values = run_copy
    before = snapshot(out)
    config = write_config(tmp_path / "c.yaml", {**values, "strategy": "hard"})
    line = one_line_error(capfd, caplog, "distill", "--config", config)
    assert line == (f"kdistill: error: output_dir {out}: it holds a run made with distill.strategy='soft', not 'hard'; "
                    "use another output_dir, or pass --overwrite to replace that run")
    assert snapshot(out) == before
    assert main(["distill", "--config", config, "--overwrite"]) == 0
    assert not (out / "eval.json").exists()  # the old run's evaluation went with its student
    assert json.loads((out / "run_config.json").read_text())["distill"]["strategy"] == "hard"
    assert json.loads((out / "student" / "distill_results.json").read_text())["strategy"] == "hard"


def test_output_dir_with_other_data_for_its_teacher_is_refused(capfd, caplog, tmp_path, values):
    """A fine-tuned teacher in output_dir/teacher was taught on other rows: distilling from it would mix runs."""
    run = {**values, "teacher_train": True, "teacher_epochs": 1, "strategy": "soft"}
    assert main(["teach", "--config", write_config(tmp_path / "a.yaml", run)]) == 0
    taught = snapshot(tmp_path / "run")
    assert main(["teach", "--config", write_config(tmp_path / "a.yaml", run)]) == 0  # the same config: reused
    assert snapshot(tmp_path / "run") == taught
    capfd.readouterr()
    caplog.clear()
    config = write_config(tmp_path / "b.yaml", {**run, "max_train_samples": 32})
    line = one_line_error(capfd, caplog, "distill", "--config", config)
    assert "it holds a run made with data.max_train_samples=64, not 32" in line


def test_rerunning_a_finished_run_reuses_it(caplog, tmp_path, run_copy):
    out, values = run_copy
    before = snapshot(out)
    caplog.set_level("INFO", logger="kdistill")
    assert main(["distill", "--config", write_config(tmp_path / "c.yaml", values)]) == 0
    assert snapshot(out) == before
    assert any(r.getMessage().startswith(f"student: reusing the one trained in {out / 'student'}") for r in caplog.records)


def test_output_dir_that_is_a_file(capfd, caplog, tmp_path, values):
    path = tmp_path / "afile"
    path.write_text("keep me")
    config = write_config(tmp_path / "c.yaml", {**values, "output_dir": str(path), "strategy": "hard"})
    line = one_line_error(capfd, caplog, "distill", "--config", config)
    assert line.endswith(f"output_dir {path} is a file, not a directory; give a directory (it is created if missing)")
    assert path.read_text() == "keep me"


# --- checkpoints: check_checkpoint, before resume_point hands one to the Trainer ------------------------------------
# (That Payload does run when unpickled the unsafe way is checked in test_reliability.test_the_payload_is_live.)


@pytest.mark.parametrize("name", ["optimizer.pt", "scheduler.pt", "rng_state.pth", "training_args.bin"])
def test_poisoned_checkpoint_file_is_not_executed_on_resume(capfd, caplog, tmp_path, reference, name):
    ref_out, values = reference
    out = tmp_path / "run"
    shutil.copytree(ref_out, out)
    student = out / "student"
    # Resume from the middle of the run (step 10 of 16, mid-epoch), where every state file is read.
    for checkpoint in student.glob("checkpoint-*"):
        if checkpoint.name != "checkpoint-10":
            shutil.rmtree(checkpoint)
    (student / "model.safetensors").unlink()  # as a run killed after step 10 leaves it
    (student / "distill_results.json").unlink()
    marker = tmp_path / "ran"
    torch.save(Payload(marker), student / "checkpoint-10" / name)
    config = write_config(tmp_path / "c.yaml", {**values, "output_dir": str(out)})
    if name == "training_args.bin":
        # The Trainer writes this file but never reads it back on resume.
        assert main(["distill", "--config", config]) == 0
    else:
        line = one_line_error(capfd, caplog, "distill", "--config", config)
        assert line == (f"kdistill: error: checkpoint {student / 'checkpoint-10'}: {name} holds objects other than "
                        "tensors, which kdistill does not unpickle (it was not loaded); delete that checkpoint, or pass "
                        "--overwrite to start over")
    assert not marker.exists()


# --- reading a finished run back: load_run, locate ----------------------------------------------------------------


def test_exporting_a_directory_that_is_not_a_run_fails_with_one_line(tmp_path, capsys):
    (tmp_path / "student").mkdir()
    assert main(["export", str(tmp_path), "--format", "onnx"]) == 2
    line = one_error_line(capsys)
    assert f"{tmp_path} is not a kdistill run directory (no run_config.json, labels.json, student/config.json)" in line


def test_paths_in_run_config_are_found_from_where_the_run_now_lies(tmp_path, monkeypatch):
    # A run made in base/ with output_dir runs/x and data ../data/f.tsv, read from another directory.
    (tmp_path / "base" / "runs" / "x").mkdir(parents=True)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "f.tsv").write_text("sentence\tlabel\na\t0\n")
    run = rundir.Run(str(tmp_path / "base" / "runs" / "x"), {"distill": {"output_dir": "runs/x"}}, {}, None)
    monkeypatch.chdir(tmp_path / "base" / "runs")
    assert rundir.locate("../data/f.tsv", run) == str(tmp_path / "data" / "f.tsv")
    assert rundir.locate("../nowhere.tsv", run) == "../nowhere.tsv"  # left as given; the loader names it
