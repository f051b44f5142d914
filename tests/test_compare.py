"""`kdistill compare` and `kdistill report`: the statistics by hand, the verdict's logic, the sweep file's errors, and
a real 2 x 2 x 2 sweep on a tiny BERT that is interrupted and resumed."""

import json
import math
import os

import pytest
import torch
import yaml

from kdistill import compare
from kdistill.report import compare as compare_report
from kdistill.cli import main
from kdistill.errors import UserError
from kdistill.stats import paired_difference, t_interval
from conftest import SST2, make_tiny_bert

T975_DF2 = 4.302652729911275  # Student t, 97.5% quantile, 2 degrees of freedom (tables)


def _run(student, setting, seed, accuracy, **metrics):
    strategy = setting.split()[0]
    temperature = float(setting.split("T=")[1].split()[0]) if "T=" in setting else None
    return {"student": student, "setting": setting, "strategy": strategy, "temperature": temperature,
            "alpha": 0.5 if strategy == "mixed" else None, "seed": seed,
            "metrics": {"accuracy": accuracy, **metrics}, "train_seconds": 1.0}


def test_t_interval_and_paired_difference_by_hand():
    ci = t_interval([0.80, 0.82, 0.84])
    assert ci["mean"] == pytest.approx(0.82)
    assert ci["std"] == pytest.approx(0.02)
    half = T975_DF2 * 0.02 / math.sqrt(3)
    assert (ci["low"], ci["high"]) == pytest.approx((0.82 - half, 0.82 + half))
    # Paired over the shared seeds only (seed 3 has no partner).
    diff = paired_difference({1: 0.85, 2: 0.86, 3: 0.99}, {1: 0.80, 2: 0.83})
    assert diff["seeds"] == [1, 2]
    assert diff["values"] == pytest.approx([0.05, 0.03])
    assert paired_difference({1: 0.5}, {2: 0.5}) is None


def test_aggregates_match_a_hand_computation_on_a_fixed_results_file(tmp_path):
    runs = [_run("s", "hard", seed, acc, validation_accuracy=acc) for seed, acc in zip((1, 2, 3), (0.80, 0.82, 0.84))]
    runs += [_run("s", "soft T=4", seed, acc, validation_accuracy=acc)
             for seed, acc in zip((1, 2, 3), (0.83, 0.86, 0.86))]
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"runs": runs}))
    results = compare_report.summarise(json.loads(path.read_text()))
    soft = next(c for c in results["cells"] if c["setting"] == "soft T=4")
    assert soft["n"] == 3 and soft["seeds"] == [1, 2, 3]
    assert soft["accuracy"]["mean"] == pytest.approx(0.85)
    assert soft["accuracy"]["std"] == pytest.approx(math.sqrt(((-0.02) ** 2 + 0.01 ** 2 + 0.01 ** 2) / 2))
    (diff,) = results["comparisons"]
    # Paired differences 0.03, 0.04, 0.02: mean 0.03, sd 0.01.
    assert diff["values"] == pytest.approx([0.03, 0.04, 0.02])
    assert diff["mean"] == pytest.approx(0.03)
    assert diff["high"] - diff["mean"] == pytest.approx(T975_DF2 * 0.01 / math.sqrt(3))
    assert "beat hard labels by +3.0 points (95% CI 0.5 to 5.5, 3 seeds)" in results["verdict"][0]
    assert "chosen on validation" in results["verdict"][0]


def test_verdict_says_when_soft_does_not_win_and_why():
    runs = [_run("s", "hard", seed, acc) for seed, acc in zip((1, 2, 3), (0.80, 0.82, 0.84))]
    runs += [_run("s", "soft T=2", seed, acc) for seed, acc in zip((1, 2, 3), (0.81, 0.81, 0.85))]
    runs += [_run("s", "mixed T=2 a=0.5", seed, acc) for seed, acc in zip((1, 2, 3), (0.80, 0.82, 0.84))]
    one_hot = {"train": {"1": {"mean_top_prob": 0.99, "normalized_entropy": 0.02, "teacher_error_rate": 0.01},
                         "2": {"mean_top_prob": 0.97, "normalized_entropy": 0.1, "teacher_error_rate": 0.01}}}
    results = compare_report.summarise({"runs": runs, "diagnostics": one_hot})
    (verdict,) = results["verdict"]
    assert "do not measurably beat hard labels" in verdict
    assert "chosen on test" in verdict  # no validation accuracy in these runs: the selection is flagged optimistic
    assert "nearly one-hot (mean top probability 0.990 at T=1, 0.970 at T=2" in verdict
    assert "is not distinguishable from" in verdict

    worse = [_run("s", "hard", s, 0.85 + 0.001 * s) for s in (1, 2, 3)] + [_run("s", "soft T=2", s, 0.80 + 0.002 * s) for s in (1, 2, 3)]
    (verdict,) = compare_report.summarise({"runs": worse})["verdict"]
    assert verdict.startswith("On this data, hard labels beat the best soft-label setting (soft T=2) by +4.8 points")


def test_a_two_stage_sweep_is_judged_on_the_replicated_setting():
    # Stage 1: every setting with seed 1; stage 2: hard and soft T=2 again with seeds 2 and 3. mixed T=8 edges
    # ahead on validation with its single seed, but a verdict needs an interval: soft T=2 is judged.
    runs = [_run("s", "hard", seed, acc, validation_accuracy=acc) for seed, acc in zip((1, 2, 3), (0.80, 0.82, 0.84))]
    runs += [_run("s", "soft T=2", seed, acc, validation_accuracy=acc)
             for seed, acc in zip((1, 2, 3), (0.83, 0.86, 0.86))]
    runs.append(_run("s", "mixed T=8 a=0.5", 1, 0.90, validation_accuracy=0.95))
    results = compare_report.summarise({"runs": runs})
    cells = results["cells"]
    assert compare_report.best_cell(cells, ("soft", "mixed"))["setting"] == "mixed T=8 a=0.5"
    assert compare_report.best_replicated(cells, ("soft", "mixed"))["setting"] == "soft T=2"
    (verdict,) = results["verdict"]
    assert "soft labels at T=2 beat hard labels by +3.0 points (95% CI 0.5 to 5.5, 3 seeds)" in verdict
    assert "chosen on validation, among the settings run with 3 seeds" in verdict

    # With one seed everywhere there is no interval, and the verdict says so instead of calling it a tie.
    (verdict,) = compare_report.summarise({"runs": [_run("s", "hard", 1, 0.80), _run("s", "soft T=2", 1, 0.81)]})["verdict"]
    assert verdict.startswith("With one seed there is no verdict for the s student")
    assert "includes 0" not in verdict


def test_pareto_front():
    # (latency, accuracy): the teacher is slow and best, b is fast and good, c is slower and worse than b.
    assert compare_report.pareto_front([(10.0, 90.0), (2.0, 85.0), (3.0, 84.0), (2.0, 85.0)]) == [0, 1, 3]


def test_cells_of_a_grid():
    sweep = compare.parse_sweep({
        "data": {"train_file": "x.tsv"},
        "students": [{"name": "a"}, {"name": "b", "student_num_layers": 1}],
        "grid": {"strategies": ["hard", "soft", "mixed", "scratch"], "temperatures": [2, 4], "alphas": [0.5],
                 "seeds": [1, 2]},
    })
    cells = sweep.cells()
    # Per student and seed: hard, soft T=2, soft T=4, mixed T=2, mixed T=4, scratch.
    assert len(cells) == 2 * 2 * 6
    assert [c.setting for c in cells[:6]] == ["hard", "soft T=2", "soft T=4", "mixed T=2 a=0.5", "mixed T=4 a=0.5", "scratch"]
    assert cells[3].path == os.path.join("runs", "a", "mixed-T2-a0.5", "seed1")


def test_teacher_sets_run_each_distilled_setting_once_per_set():
    sets = [{"name": "one", "teachers": [{"model": "a"}]},
            {"name": "both", "teachers": [{"model": "a"}, {"model": "b", "weight": 2}], "ensemble_combine": "logits"}]
    doc = {"data": {"train_file": "x.tsv"}, "teacher": {"teacher_train": False, "teacher_model": "a"},
           "grid": {"strategies": ["hard", "soft"], "temperatures": [2], "seeds": [1], "teacher_sets": sets}}
    sweep = compare.parse_sweep(doc)
    assert [c.setting for c in sweep.cells()] == ["hard", "soft T=2 [one]", "soft T=2 [both]"]
    assert sweep.cells()[2].path == os.path.join("runs", "student", "both", "soft-T2", "seed1")
    assert sweep.teacher_sets["both"] == {"teachers": [{"model": "a", "weight": 1.0}, {"model": "b", "weight": 2}],
                                          "ensemble_combine": "logits"}
    with pytest.raises(UserError, match=r"teacher_sets\[0\] \(one\): teachers lists fine-tuned teachers; set "
                                        "teacher_train: false"):
        compare.parse_sweep({**doc, "teacher": {}})
    with pytest.raises(UserError, match="unknown config key 'weights' in sweep grid.teacher_sets"):
        compare.parse_sweep({**doc, "grid": {**doc["grid"], "teacher_sets": [{**sets[0], "weights": [1]}]}})
    with pytest.raises(UserError, match="grid.strategies needs soft or mixed"):
        compare.parse_sweep({**doc, "grid": {**doc["grid"], "strategies": ["hard"]}})


@pytest.mark.parametrize("change, message", [
    (lambda s: s["grid"].update(strategy=["hard"]), "unknown config key 'strategy'"),
    (lambda s: s["grid"].update(strategies=[]), "the grid is empty"),
    (lambda s: s["grid"].update(seeds=[]), "the grid is empty"),
    (lambda s: s["grid"].update(strategies=["hard", "sotf"]), "unknown strategy 'sotf'"),
    (lambda s: s.update(students=[{"name": "a", "layers": 2}]), "unknown config key 'layers'"),
    (lambda s: s.update(students=[{"name": "../up"}]), "student name '../up'"),
    (lambda s: s.update(extra={}), "unknown config key 'extra'"),
    (lambda s: s["grid"].update(strategies=["soft"], temperatures=[]), "soft and mixed need grid.temperatures"),
])
def test_bad_sweep_files_fail_with_one_line(tmp_path, capsys, change, message):
    sweep = {"data": {"train_file": str(SST2 / "train.tsv")}, "grid": {"strategies": ["hard"], "seeds": [1]}}
    change(sweep)
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    assert main(["compare", "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("kdistill: error:") and message in err, err


def test_grid_fields_are_not_flags(tmp_path, capsys):
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({"data": {"train_file": str(SST2 / "train.tsv")},
                                    "grid": {"strategies": ["hard"], "seeds": [1]}}))
    assert main(["compare", "--config", str(path), "--temperature", "3"]) == 2
    assert "set by the grid" in capsys.readouterr().err


def test_report_of_a_directory_without_results_fails_with_one_line(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "no results.json" in capsys.readouterr().err


@pytest.fixture(scope="module")
def sweep_file(tmp_path_factory, tiny_bert):
    out = tmp_path_factory.mktemp("sweep")
    doc = {
        "data": {"train_file": str(SST2 / "train.tsv"), "validation_file": str(SST2 / "dev.tsv"),
                 "test_file": str(SST2 / "test.tsv"), "text_column": "sentence", "max_train_samples": 300,
                 "max_eval_samples": 100, "max_length": 48},
        "teacher": {"teacher_model": tiny_bert, "teacher_epochs": 2, "teacher_learning_rate": 1e-3},
        "students": [{"name": "one", "student_num_layers": 1}, {"name": "two", "student_num_layers": 2}],
        "distill": {"output_dir": str(out / "sweep"), "num_train_epochs": 1, "learning_rate": 1e-3,
                    "per_device_train_batch_size": 32, "logging_steps": 2, "save_strategy": "no",
                    "speed_batches": 2, "use_cpu": True},
        "grid": {"strategies": ["hard", "soft"], "temperatures": [2], "seeds": [0, 1]},
    }
    path = out / "sweep.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path, out / "sweep"


def test_sweep_runs_resumes_and_reports(sweep_file, monkeypatch, capsys):
    path, out = sweep_file
    real_run_cell, calls = compare.run_cell, []

    def interrupted_after_three(config, cell):
        if len(calls) == 3:
            raise KeyboardInterrupt
        calls.append(cell)
        return real_run_cell(config, cell)

    monkeypatch.setattr(compare, "run_cell", interrupted_after_three)
    assert main(["compare", "--config", str(path)]) == 130
    finished = sorted(str(p) for p in out.glob("runs/*/*/seed*/cell.json"))
    assert len(finished) == 3
    stamps = {p: os.path.getmtime(p) for p in finished}

    resumed = []

    def counting(config, cell):
        resumed.append(cell)
        return real_run_cell(config, cell)

    monkeypatch.setattr(compare, "run_cell", counting)
    assert main(["compare", "--config", str(path), "--no_keep_models"]) == 0
    assert len(resumed) == 8 - 3 and not set(resumed) & set(calls)  # nothing finished is run again
    assert {p: os.path.getmtime(p) for p in finished} == stamps
    # --no_keep_models: the runs of this invocation lost their weights, except each student's first run.
    weights = {str(p.relative_to(out)).split("/student")[0] for p in out.glob("runs/*/*/seed*/student/model.safetensors")}
    assert {"runs/one/hard/seed0", "runs/two/hard/seed0"} <= weights
    assert weights.isdisjoint(c.path for c in resumed if c.path != "runs/two/hard/seed0")
    printed = capsys.readouterr().out
    assert "For the one student" in printed or "for the one student" in printed

    results = json.loads((out / "results.json").read_text())
    assert len(results["runs"]) == 8
    assert {(c["student"], c["setting"]) for c in results["cells"]} == {
        ("one", "hard"), ("one", "soft T=2"), ("two", "hard"), ("two", "soft T=2")}
    run = results["runs"][0]
    for key in ("accuracy", "macro_f1", "agreement", "kl_to_teacher", "epsilon", "ece", "validation_accuracy"):
        assert 0 <= run["metrics"][key] < float("inf"), key
    assert set(results["speed"]) == {"one", "two"}
    assert results["speed"]["one"]["student"]["parameters"] < results["speed"]["two"]["student"]["parameters"]
    assert set(results["diagnostics"]) == {"train", "validation", "test"}
    assert set(results["diagnostics"]["train"]) == {"1", "2"}
    # TensorBoard event files, with the hard and soft parts of the loss among the scalars.
    for setting, part in (("soft-T2", b"train/loss_soft_kl"), ("hard", b"train/loss_hard_ce")):
        events = list(out.glob(f"runs/one/{setting}/seed0/student/runs/*/events.out.tfevents.*"))
        assert events and any(part in e.read_bytes() for e in events), setting

    for name in ("report.md", "report.html", *compare_report.PLOTS):
        assert (out / name).stat().st_size > 0, name
    page = (out / "report.html").read_text()
    assert page.count('src="data:image/png;base64,') == 4
    assert "Verdict." in (out / "report.md").read_text()
    # A cell is a finished run like any other: it exports (its label map lies in student/, as distill writes it).
    cell = out / "runs" / "one" / "hard" / "seed0"
    assert main(["export", str(cell), "--format", "onnx", "--speed_batches", "0", "--rows", "16"]) == 0
    assert json.loads((cell / "export" / "export_report.json").read_text())["parity"]["passed"]


def test_report_rebuilds_from_results_json_alone(sweep_file, tmp_path, capsys):
    _, out = sweep_file
    if not (out / "results.json").exists():
        pytest.skip("needs the sweep of the test above")
    original = json.loads((out / "results.json").read_text())
    assert main(["report", str(out), "--out", str(tmp_path)]) == 0
    rebuilt = json.loads((tmp_path / "results.json").read_text())
    assert rebuilt["verdict"] == original["verdict"] and rebuilt["cells"] == original["cells"]
    assert (tmp_path / "report.html").stat().st_size > 0


def test_a_sweep_with_out_of_fold_soft_labels_makes_them_once(sweep_file, tmp_path, monkeypatch):
    from kdistill import pipeline

    path, _ = sweep_file
    doc = yaml.safe_load(path.read_text())
    doc["teacher"]["teacher_folds"] = 2
    doc["distill"]["output_dir"] = str(tmp_path / "oof")
    doc["students"] = doc["students"][:1]
    doc["grid"] = {"strategies": ["soft"], "temperatures": [2], "seeds": [0, 1]}
    oof_yaml = tmp_path / "oof.yaml"
    oof_yaml.write_text(yaml.safe_dump(doc))
    folds, real = [], pipeline._train_fold_teacher
    monkeypatch.setattr(pipeline, "_train_fold_teacher", lambda *a: folds.append(a[-1]) or real(*a))
    assert main(["compare", "--config", str(oof_yaml)]) == 0
    assert folds == [0, 1]  # two fold teachers, once for the whole sweep
    assert len(list((tmp_path / "oof" / "soft_labels").glob("train-oof-*.safetensors"))) == 1
    results = json.loads((tmp_path / "oof" / "results.json").read_text())
    assert len(results["runs"]) == 2


def test_a_choice_made_on_a_validation_file_that_is_the_test_file_is_called_so(tmp_path, caplog):
    from kdistill import data as data_module
    from kdistill.config import make_config

    runs = [_run("s", "hard", seed, acc, validation_accuracy=acc) for seed, acc in zip((1, 2, 3), (0.80, 0.82, 0.84))]
    runs += [_run("s", "soft T=4", seed, acc, validation_accuracy=acc)
             for seed, acc in zip((1, 2, 3), (0.83, 0.86, 0.86))]
    (verdict,) = compare_report.summarise({"runs": runs, "validation_is_test": True})["verdict"]
    assert verdict.endswith("(settings chosen on the test set (the validation file is the test file: the difference "
                            "is optimistic)).")
    test = tmp_path / "test.tsv"
    test.write_text("sentence\tlabel\na\t0\nb\t1\n")
    copy = tmp_path / "copy.tsv"
    copy.write_bytes(test.read_bytes())
    other = tmp_path / "other.tsv"
    other.write_text("sentence\tlabel\na\t0\nb\t0\n")
    same = make_config(train_file=str(test), validation_file=str(copy), test_file=str(test)).data
    assert data_module.validation_is_test(same)
    assert not data_module.validation_is_test(make_config(train_file=str(test), validation_file=str(other),
                                                          test_file=str(test)).data)
    with caplog.at_level("WARNING"):
        data_module.warn_if_validation_is_test(same)
        data_module.warn_if_validation_is_test(same)
    assert [r.getMessage() for r in caplog.records if "same data" in r.getMessage()] == [
        f"validation_file and test_file are the same data ({test}): whatever is chosen on validation (early "
        "stopping, a sweep's best setting) is chosen on the test set, and test figures are optimistic; give a "
        "validation file of its own"]


def test_a_bounded_metric_gets_an_interval_inside_its_range():
    from kdistill.stats import bootstrap_interval, t_interval

    ece = [0.01, 0.02, 0.25]  # a t-interval over these three seeds goes below 0
    assert t_interval(ece)["low"] < 0
    boot = bootstrap_interval(ece)
    assert 0.01 <= boot["low"] < boot["mean"] < boot["high"] <= 0.25
    assert boot["mean"] == pytest.approx(0.28 / 3) and boot == bootstrap_interval(ece)  # seeded: reproducible
    runs = [_run("s", "hard", seed, 0.8, validation_accuracy=0.8) for seed in (1, 2, 3)]
    for run, value in zip(runs, ece):
        run["metrics"]["ece"] = value
    (cell,) = compare_report.aggregate(runs)
    assert cell["ece"]["method"] == "bootstrap" and cell["ece"]["low"] >= 0
    assert "method" not in cell["accuracy"]  # accuracy keeps its t-interval


def test_nearly_uniform_soft_labels_are_named_as_the_reason_and_warned_about():
    from kdistill.metrics import soft_label_stats, uniform_limit, uniform_warning

    assert uniform_limit(2) == pytest.approx(0.65) and uniform_limit(6) == pytest.approx(1 / 6 + 0.25)
    runs = [_run("s", "hard", seed, acc) for seed, acc in zip((1, 2, 3), (0.80, 0.82, 0.84))]
    runs += [_run("s", "soft T=2", seed, acc) for seed, acc in zip((1, 2, 3), (0.79, 0.80, 0.84))]
    # The question-type teacher of the issue: 6 classes, mean top probability 0.38 at T=2.
    flat = {"train": {"1": {"mean_top_prob": 0.55, "normalized_entropy": 0.6, "num_classes": 6},
                      "2": {"mean_top_prob": 0.38, "normalized_entropy": 0.85, "num_classes": 6}}}
    (verdict,) = compare_report.summarise({"runs": runs, "diagnostics": flat})["verdict"]
    assert ("They are nearly uniform instead (mean top probability 0.380 at T=2, against 0.167 for a uniform guess "
            "over 6 classes)") in verdict
    sure = soft_label_stats(torch.tensor([[4.0, 0.0], [0.0, 4.0]]), 1.0)
    assert uniform_warning(sure, 1.0) is None
    unsure = soft_label_stats(torch.tensor([[0.2, 0.0, 0.1], [0.0, 0.3, 0.1]]), 2.0)
    assert uniform_warning(unsure, 2.0).startswith(
        "the teacher's soft labels on train at T=2 are nearly uniform (mean top probability 0.35")


def test_a_sweep_compares_one_teacher_with_an_ensemble(sweep_file, tmp_path, word_tokenizer, tiny_bert):
    """grid.teacher_sets: the same soft setting from one teacher and from two, each teacher's soft labels cached once
    for both sets; the report names each set's teacher, and the ensemble's members and their disagreement."""
    path, _ = sweep_file
    other = make_tiny_bert(tmp_path / "other", word_tokenizer, seed=5)
    doc = yaml.safe_load(path.read_text())
    doc["teacher"] = {"teacher_train": False, "teacher_model": tiny_bert}
    doc["data"].update(max_train_samples=64, max_eval_samples=32)
    doc["distill"].update(output_dir=str(tmp_path / "sets"), speed_batches=0)
    doc["students"] = doc["students"][:1]
    doc["grid"] = {"strategies": ["soft"], "temperatures": [2], "seeds": [0],
                   "teacher_sets": [{"name": "one", "teachers": [{"model": tiny_bert}]},
                                    {"name": "both", "teachers": [{"model": tiny_bert}, {"model": other}]}]}
    sets_yaml = tmp_path / "sets.yaml"
    sets_yaml.write_text(yaml.safe_dump(doc))
    assert main(["compare", "--config", str(sets_yaml)]) == 0
    out = tmp_path / "sets"
    results = json.loads((out / "results.json").read_text())
    assert [r["setting"] for r in results["runs"]] == ["soft T=2 [one]", "soft T=2 [both]"]
    assert (out / "runs" / "one" / "both" / "soft-T2" / "seed0" / "cell.json").is_file()
    assert len(list((out / "soft_labels").glob("train-*.safetensors"))) == 2  # tiny_bert's shared by both sets
    both, one = results["teacher_sets"]["both"], results["teacher_sets"]["one"]
    assert [e["path"] for e in both["teachers"]] == [tiny_bert, other] and "teachers" not in one
    assert both["teachers"][0]["accuracy"] == one["accuracy"]  # the same teacher, on the same cache
    report = (out / "report.md").read_text()
    assert "teacher sets one, both" in report
    assert f"Teacher set **both** on the same test rows: accuracy {100 * both['accuracy']:.2f}%" in report
    assert f"their top-1 classes differ on {100 * both['teacher_disagreement']:.2f}% of the test items" in report
