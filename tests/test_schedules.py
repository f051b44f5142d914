"""schedules.py: a weight, temperature or alpha as a pure function of the step; its config syntax, its use in the
trainer (the loss's temperature, the logged curves) and in a compare grid."""

import dataclasses
import json
import math
import os

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

from kdistill import DistillationConfig, DistillationTrainer, compare, schedules
from kdistill.config import ConfigError, UserError, make_config, parse_config
from kdistill.losses import soft_kl
from kdistill.report import compare as compare_report
from kdistill.tasks import get_task

from conftest import read_sst2_sentences


def test_schedules_endpoints():
    ramp = schedules.linear(2.0, 6.0)
    assert (ramp(0, 100), ramp(50, 100), ramp(100, 100), ramp(150, 100)) == (2.0, 4.0, 6.0, 6.0)
    assert schedules.value_at(3.5, 7, 10) == 3.5 and schedules.value_at(schedules.constant(1.5), 0, 0) == 1.5


def _at(schedule, steps, max_steps=100):
    return [schedule(s, max_steps) for s in steps]


def test_each_kind_at_its_endpoints_and_midpoint():
    assert _at(schedules.constant(4), (0, 50, 100)) == [4.0, 4.0, 4.0]
    assert _at(schedules.linear(8, 1), (0, 50, 100, 150)) == [8.0, 4.5, 1.0, 1.0]
    # start/end bound the change: held at `from` before start, at `to` from end on.
    assert _at(schedules.linear(2, 6, start=10, end=30), (0, 10, 20, 30, 90)) == [2.0, 2.0, 4.0, 6.0, 6.0]
    # Half a cosine wave: the midpoint is the mean of the ends; a quarter of the way, 1 + 7 (1 + cos(pi/4)) / 2.
    assert _at(schedules.cosine(8, 1), (0, 50, 100)) == pytest.approx([8.0, 4.5, 1.0], abs=1e-12)
    assert schedules.cosine(8, 1)(25, 100) == pytest.approx(1 + 7 * (1 + math.sqrt(0.5)) / 2)
    # step: `from` on the steps before `at`, `to` from `at` on.
    assert _at(schedules.step(1, 0, at=50), (0, 49, 50, 100)) == [1.0, 1.0, 0.0, 0.0]
    assert _at(schedules.annealing(4, end=80), (0, 40, 80)) == [4.0, 4 / 3, 1.0]
    # Before training the run's length is not known (max_steps 0): a schedule to the last step is at its start.
    assert schedules.linear(8, 1)(0, 0) == 8.0 and schedules.linear(8, 1).initial == 8.0


def test_annealing_follows_the_papers_stages():
    # Jafari et al. 2021: stage k of tau_max scales the teacher's logits by Phi(T) = 1 - (T - 1) / tau_max with
    # T = tau_max - k + 1, i.e. softens them at 1 / Phi(T). tau_max 10, step 35 of 100: stage 4, T = 7,
    # Phi = 1 - 6/10 = 0.4, temperature 2.5.
    assert schedules.annealing(10)(35, 100) == 2.5
    tau = 4
    paper = [1 / (1 - (t - 1) / tau) for t in (4, 3, 2, 1)]  # 4, 2, 4/3, 1: one value per quarter of the run
    assert _at(schedules.annealing(tau), (0, 25, 50, 75)) == pytest.approx(paper)
    assert schedules.annealing(tau)(100, 100) == 1.0


def test_names_and_specs_round_trip():
    cases = {
        "constant 4": {"schedule": "constant", "value": 4.0},
        "linear 8→1": {"schedule": "linear", "from": 8.0, "to": 1.0, "start": 0, "end": None},
        "cosine 8→1 over steps 100-900": {"schedule": "cosine", "from": 8.0, "to": 1.0, "start": 100, "end": 900},
        "linear 0.9→0.1 from step 50": {"schedule": "linear", "from": 0.9, "to": 0.1, "start": 50, "end": None},
        "step 1→0 at step 500": {"schedule": "step", "from": 1.0, "to": 0.0, "at": 500},
        "annealing 10→1": {"schedule": "annealing", "from": 10.0, "start": 0, "end": None},
    }
    for name, spec in cases.items():
        schedule = schedules.parse(spec)
        assert (schedule.name, schedule.describe(), str(schedule)) == (name, name, name)
        assert schedule.spec() == spec and schedules.parse(schedule.spec()) == schedule
    # Defaults filled in: the short form and the long one are the same schedule.
    assert schedules.parse({"schedule": "linear", "from": 8, "to": 1}) == schedules.linear(8, 1)
    assert schedules.label(4.0) == "4" and schedules.label(schedules.linear(8, 1)) == "linear 8→1"
    assert schedules.to_data(0.5) == 0.5 and schedules.to_data(schedules.constant(2))["value"] == 2.0


def test_complement_is_one_minus_the_schedule():
    alpha = schedules.cosine(0.9, 0.1, start=10, end=50)
    hard = alpha.complement()
    assert hard.name == "cosine 0.1→0.9 over steps 10-50"
    for s in (0, 10, 20, 30, 50, 70):
        assert hard(s, 100) == pytest.approx(1 - alpha(s, 100), abs=1e-12)


W = "distill: temperature"


@pytest.mark.parametrize("spec, message", [
    ({"schedule": "cos", "from": 8, "to": 1}, f"{W}: unknown schedule 'cos'; valid: constant, linear, cosine, step, annealing"),
    ({"from": 8, "to": 1}, f"{W}: a schedule mapping needs 'schedule', one of constant, linear, cosine, step, annealing"),
    ({"schedule": "linear", "from": 8}, f"{W}: a linear schedule needs 'to'"),
    ({"schedule": "step", "to": 1}, f"{W}: a step schedule needs 'from' and 'at'"),
    ({"schedule": "linear", "from": 8, "to": 1, "at": 3},
     f"{W}: a linear schedule takes from, to, start, end, not 'at'"),
    ({"schedule": "cosine", "from": float("inf"), "to": 1}, f"{W}: from must be a finite number, got inf"),
    ({"schedule": "linear", "from": "8", "to": 1}, f"{W}: from must be a finite number, got '8'"),
    ({"schedule": "linear", "from": 8, "to": 1, "start": 50, "end": 10}, f"{W}: end (10) is before start (50)"),
    ({"schedule": "linear", "from": 8, "to": 1, "end": 2.5},
     f"{W}: end must be a step number, a whole number >= 0 (or null: the run's last step), got 2.5"),
    ({"schedule": "linear", "from": 8, "to": 0}, f"{W}: linear 8→0 reaches 0; it must stay > 0"),
    ({"schedule": "step", "from": 2, "to": -1, "at": 5}, f"{W}: step 2→-1 at step 5 reaches -1; it must stay > 0"),
    ({"schedule": "annealing", "from": 2.5},
     f"{W}: annealing's from is its number of stages (the paper's maximum temperature), a whole number >= 1, got 2.5"),
    ([8, 1], f"{W} must be a number or a schedule mapping such as {{schedule: linear, from: 8, to: 1}}, got [8, 1]"),
])
def test_bad_temperature_schedules_say_what_is_wrong(spec, message):
    with pytest.raises(ConfigError) as err:
        schedules.parse(spec, W, low=0.0, open_low=True)
    assert str(err.value) == message
    if isinstance(spec, dict):  # the config says the same, with the field it came from
        with pytest.raises(ConfigError) as err:
            make_config(train_file="t.tsv", temperature=spec)
        assert str(err.value) == message


def test_bad_alpha_and_weight_schedules_say_what_is_wrong():
    with pytest.raises(ConfigError) as err:
        make_config(train_file="t.tsv", strategy="mixed", alpha={"schedule": "linear", "from": 1.2, "to": 0})
    assert str(err.value) == "distill: alpha: linear 1.2→0 reaches 1.2; it must stay in [0, 1]"
    with pytest.raises(ConfigError) as err:
        make_config(train_file="t.tsv", alpha_schedule='{"schedule": "annealing", "from": 4}')
    assert str(err.value) == ("distill: alpha_schedule: annealing is a temperature schedule; valid here: constant, "
                              "linear, cosine, step")
    with pytest.raises(ConfigError) as err:
        make_config(train_file="t.tsv", objective={"soft_kl": {"schedule": "linear", "from": 1, "to": -1}})
    assert str(err.value) == "distill: objective weight of 'soft_kl': linear 1→-1 reaches -1; it must stay >= 0"
    with pytest.raises(ConfigError) as err:
        make_config(train_file="t.tsv", temperature_schedule="{schedule: linear}")
    assert str(err.value).startswith("distill: temperature_schedule is not valid JSON")
    with pytest.raises(ConfigError) as err:
        make_config(train_file="t.tsv", temperature=4, temperature_schedule='{"schedule": "linear", "from": 8, "to": 1}')
    assert str(err.value) == ("distill: temperature 4 and temperature_schedule (linear 8→1) are both set; give one "
                              "of them")


CANONICAL = {"schedule": "cosine", "from": 8.0, "to": 1.0, "start": 0, "end": None}


def test_a_schedule_reads_the_same_from_yaml_a_flag_and_python(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("data:\n  train_file: t.tsv\ndistill:\n  temperature: {schedule: cosine, from: 8, to: 1}\n"
                    "  objective:\n    soft_kl: {schedule: step, from: 1, to: 0.5, at: 10}\n    hard_ce: 0.5\n")
    from_yaml = parse_config([], str(path)).distill
    from_flag = parse_config(["--train_file", "t.tsv", "--temperature_schedule", json.dumps(CANONICAL)]).distill
    from_python = make_config(train_file="t.tsv", temperature={"schedule": "cosine", "from": 8, "to": 1}).distill
    as_object = make_config(train_file="t.tsv", temperature=schedules.cosine(8, 1)).distill
    for d in (from_yaml, from_flag, from_python, as_object):
        assert json.loads(d.temperature_schedule) == CANONICAL
        assert d.temperature == 8.0  # the starting value, for what needs one number
        assert d.scheduled("temperature") == schedules.cosine(8, 1)
    # The objective's weights: a schedule object where the YAML wrote a mapping, numbers as they were.
    assert from_yaml.objective_weights() == {"soft_kl": schedules.step(1, 0.5, at=10), "hard_ce": 0.5}
    # A copy (dataclasses.replace, as every pipeline step makes) and the run's record read back the same.
    again = dataclasses.replace(from_yaml, output_dir=str(tmp_path / "x"))
    assert (again.temperature, again.temperature_schedule) == (from_yaml.temperature, from_yaml.temperature_schedule)
    recorded = json.loads(json.dumps(from_yaml.to_dict(), default=str))
    assert json.loads(recorded["temperature_schedule"]) == CANONICAL


def test_a_fixed_temperature_stays_a_plain_number():
    d = parse_config(["--train_file", "t.tsv", "--temperature", "4", "--strategy", "mixed", "--alpha", "0.3"]).distill
    assert (d.temperature, d.temperature_schedule, d.alpha_schedule) == (4.0, None, None)
    assert d.scheduled("temperature") == 4.0 and d.objective_weights() == {"soft_kl": 0.3, "hard_ce": 0.7}


def test_mixed_alpha_schedule_weighs_soft_by_alpha_and_hard_by_its_complement():
    d = make_config(train_file="t.tsv", strategy="mixed",
                    alpha={"schedule": "linear", "from": 1, "to": 0, "end": 10}).distill
    weights = d.objective_weights()
    assert list(weights) == ["soft_kl", "hard_ce"]  # the preset's order: soft part first
    at = {s: (weights["soft_kl"](s, 20), weights["hard_ce"](s, 20)) for s in (0, 5, 10, 15)}
    assert at == {0: (1.0, 0.0), 5: (0.5, 0.5), 10: (0.0, 1.0), 15: (0.0, 1.0)}
    assert d.alpha == 1.0


def test_an_alpha_schedule_beside_another_strategy_or_an_objective_is_said_once(caplog):
    from kdistill import config as config_module

    config_module._WARNED.clear()
    schedule = {"schedule": "linear", "from": 1, "to": 0, "end": 10}
    soft = make_config(train_file="t.tsv", strategy="soft", alpha=schedule).distill
    with caplog.at_level("WARNING", logger="kdistill.config"):
        assert soft.objective_weights() == {"soft_kl": 1.0}
        soft.objective_weights()
    said = [r.getMessage() for r in caplog.records if "alpha_schedule" in r.getMessage()]
    assert said == ["alpha_schedule weighs strategy mixed's soft and hard parts; with strategy soft it does nothing "
                    "(give a term's weight a schedule in objective instead)"]
    caplog.clear()
    with caplog.at_level("WARNING", logger="kdistill.config"):
        make_config(train_file="t.tsv", strategy="mixed", alpha=schedule).distill.objective_weights()
    assert not [r for r in caplog.records if "alpha_schedule" in r.getMessage()]


# ------------------------------------------------------------------------------------------------ in the trainer


def _tiny_student(tokenizer):
    torch.manual_seed(0)
    return BertForSequenceClassification(BertConfig(
        vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))


def _trainer(tmp_path, tokenizer, **distill):
    enc = tokenizer(read_sst2_sentences(16), truncation=True, max_length=32)
    labels = [i % 2 for i in range(16)]
    rows = [{"input_ids": ids, "attention_mask": mask, "idx": i, "labels": label, "length": len(ids)}
            for i, (ids, mask, label) in enumerate(zip(enc["input_ids"], enc["attention_mask"], labels))]
    teacher_logits = torch.randn(16, 2, generator=torch.Generator().manual_seed(1)) * 3
    args = DistillationConfig(
        output_dir=str(tmp_path / "student"), per_device_train_batch_size=4, max_steps=4, logging_steps=1,
        optim="sgd", learning_rate=0.5, lr_scheduler_type="constant", train_sampling_strategy="sequential",
        save_strategy="no", report_to="none", use_cpu=True, disable_tqdm=True, seed=0, **distill,
    )
    collator = get_task("sequence_classification").collator(tokenizer, teacher_logits)
    return DistillationTrainer(model=_tiny_student(tokenizer), args=args, train_dataset=rows, data_collator=collator)


def _losses(trainer) -> list[float]:
    return [e["loss"] for e in trainer.state.log_history if "loss" in e]


# The four logged losses of the fixed T=3 soft run in _trainer, computed by this same function with kdistill before
# schedules existed (main at 5949c24, CPU, torch's default threads 1): a fixed temperature trains as it did.
FIXED_T3_LOSSES = [0.561513364315033, 1.2322237491607666, 0.7366371154785156, 0.7981191277503967]


def test_scheduled_temperature_and_weights_are_logged_at_each_step(tmp_path, word_tokenizer):
    tokenizer = PreTrainedTokenizerFast.from_pretrained(word_tokenizer)
    trainer = _trainer(tmp_path, tokenizer, strategy="mixed", temperature={"schedule": "linear", "from": 8, "to": 1},
                       alpha={"schedule": "linear", "from": 1, "to": 0})
    trainer.train()
    logs = [e for e in trainer.state.log_history if "loss" in e]
    assert [e["step"] for e in logs] == [1, 2, 3, 4]
    # As the Trainer's learning_rate: the value logged at step N is the schedule's at N, which step N+1 trains with.
    assert [e["temperature"] for e in logs] == pytest.approx([8 - 7 * s / 4 for s in (1, 2, 3, 4)])
    assert [e["weight_soft_kl"] for e in logs] == pytest.approx([0.75, 0.5, 0.25, 0.0])
    assert [e["weight_hard_ce"] for e in logs] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert all("temperature" not in e for e in trainer.state.log_history if "loss" not in e)


def test_the_loss_uses_the_temperature_of_its_step(tmp_path, word_tokenizer):
    tokenizer = PreTrainedTokenizerFast.from_pretrained(word_tokenizer)
    trainer = _trainer(tmp_path, tokenizer, strategy="soft", temperature={"schedule": "cosine", "from": 8, "to": 2})
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    trainer.model.eval()
    trainer.state.global_step, trainer.state.max_steps = 2, 4  # half-way: cosine 8→2 is at 5
    loss = float(trainer.compute_loss(trainer.model, batch).detach())
    with torch.no_grad():
        logits = trainer.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert trainer._temperature() == pytest.approx(5.0)
    assert loss == pytest.approx(float(soft_kl(logits, batch["teacher_logits"], 5.0)), rel=1e-6)
    assert abs(loss - float(soft_kl(logits, batch["teacher_logits"], 8.0))) > 1e-3


def test_a_fixed_temperature_trains_as_before(tmp_path, word_tokenizer):
    tokenizer = PreTrainedTokenizerFast.from_pretrained(word_tokenizer)
    fixed = _trainer(tmp_path, tokenizer, strategy="soft", temperature=3.0)
    fixed.train()
    constant = _trainer(tmp_path, tokenizer, strategy="soft", temperature={"schedule": "constant", "value": 3})
    constant.train()
    assert _losses(fixed) == _losses(constant)  # bit for bit
    assert all("temperature" not in e for e in fixed.state.log_history)  # nothing scheduled: no extra curve
    assert [e["temperature"] for e in constant.state.log_history if "loss" in e] == [3.0] * 4
    assert _losses(fixed) == pytest.approx(FIXED_T3_LOSSES, rel=1e-5)


# ------------------------------------------------------------------------------------------------ in a compare grid


def test_a_grid_lists_schedules_and_names_them():
    linear = {"schedule": "linear", "from": 8, "to": 1}
    sweep = compare.parse_sweep({
        "data": {"train_file": "x.tsv"},
        "grid": {"strategies": ["hard", "soft", "mixed"], "temperatures": [2, linear],
                 "alphas": [0.5, {"schedule": "cosine", "from": 0.9, "to": 0.1}], "seeds": [1]},
    })
    cells = sweep.cells()
    assert [c.setting for c in cells] == ["hard", "soft T=2", "soft T=linear 8→1", "mixed T=2 a=0.5",
                                          "mixed T=2 a=cosine 0.9→0.1", "mixed T=linear 8→1 a=0.5",
                                          "mixed T=linear 8→1 a=cosine 0.9→0.1"]
    scheduled = cells[2]
    assert scheduled.path == os.path.join("runs", "student", "soft-Tlinear-8to1", "seed1")
    assert cells[1].path == os.path.join("runs", "student", "soft-T2", "seed1")  # numbers keep the directories they always had
    record = scheduled.record()
    assert record["temperature"] is None and record["temperature_schedule"] == schedules.linear(8, 1).spec()
    assert cells[1].record() == {"student": "student", "strategy": "soft", "temperature": 2.0, "alpha": None, "seed": 1,
                                 "teachers": None}
    assert sweep.grid_values("temperatures") == [2.0, schedules.linear(8, 1).spec()]


def test_a_cell_config_carries_its_schedule(tmp_path):
    sweep = compare.parse_sweep({
        "data": {"train_file": "x.tsv"}, "distill": {"output_dir": str(tmp_path), "use_cpu": True},
        "grid": {"strategies": ["soft"], "temperatures": [4, {"schedule": "step", "from": 8, "to": 2, "at": 3}],
                 "seeds": [0]},
    })
    base = make_config({**sweep.flat, "output_dir": str(tmp_path)})
    fixed, stepped = (compare.cell_config(base, c, sweep, "teacher", []).distill for c in sweep.cells())
    assert (fixed.temperature, fixed.temperature_schedule) == (4.0, None)
    assert stepped.temperature == 8.0 and stepped.scheduled("temperature") == schedules.step(8, 2, at=3)


def test_a_bad_schedule_in_a_grid_is_one_clear_error():
    with pytest.raises(UserError) as err:
        compare.parse_sweep({"data": {"train_file": "x.tsv"}, "grid": {
            "strategies": ["soft"], "temperatures": [{"schedule": "linear", "from": 2, "to": 0}], "seeds": [1]}})
    assert str(err.value) == "sweep: grid.temperatures[0]: linear 2→0 reaches 0; it must stay > 0"


def test_the_report_shows_a_schedule_by_its_name(tmp_path):
    runs = []
    for setting, temperature, spec, accs in (("hard", None, None, (0.80, 0.82)), ("soft T=2", 2.0, None, (0.81, 0.84)),
                                             ("soft T=linear 8→1", None, schedules.linear(8, 1).spec(), (0.83, 0.85))):
        for seed, acc in zip((1, 2), accs):
            run = {"student": "s", "setting": setting, "strategy": setting.split()[0], "temperature": temperature,
                   "alpha": None, "seed": seed, "metrics": {"accuracy": acc}, "train_seconds": 1.0}
            if spec:
                run["temperature_schedule"] = spec
            runs.append(run)
    grid = {"strategies": ["hard", "soft"], "temperatures": [2.0, schedules.linear(8, 1).spec()], "alphas": [],
            "seeds": [1, 2]}
    results = compare_report.write_report(str(tmp_path), {"runs": runs, "grid": grid})
    cell = next(c for c in results["cells"] if c["setting"] == "soft T=linear 8→1")
    assert cell["temperature"] is None and cell["temperature_schedule"]["schedule"] == "linear"
    report = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "| s | soft T=linear 8→1 | 2 |" in report
    assert "temperatures [2, linear 8→1]" in report
    assert "soft T=linear 8→1" in compare_report.format_summary(results)


# ------------------------------------------------------------------------------------------------ a run's records


def test_a_run_records_its_schedules_by_spec_and_name(values, tmp_path):
    from kdistill import pipeline
    from kdistill.report.model_card import _setting, model_facts
    from kdistill.rundir import recorded_values

    values.update(strategy="soft", temperature={"schedule": "linear", "from": 8, "to": 1}, logging_steps=1,
                  max_train_samples=64, per_device_train_batch_size=32, num_train_epochs=1)
    config = make_config(values)
    out = pipeline.distill(config)
    with open(tmp_path / "run" / "student" / "distill_results.json", encoding="utf-8") as fh:
        results = json.load(fh)
    spec = schedules.linear(8, 1).spec()
    assert results["schedules"] == {"temperature": {"spec": spec, "name": "linear 8→1"}}
    assert results["temperature"] == 8.0 and results["objective"] == {"soft_kl": 1.0}
    # Two steps (64 rows, batches of 32), logged at each: the temperature half-way and at the end.
    assert [(e["step"], e["temperature"]) for e in out["log_history"] if "loss" in e] == [(1, 4.5), (2, 1.0)]
    # The run's record reads back to the same schedule (`kdistill eval RUN_DIR`, a resumed run).
    again = make_config(recorded_values(str(tmp_path / "run"))).distill
    assert again.scheduled("temperature") == schedules.linear(8, 1)
    with open(tmp_path / "run" / "run_config.json", encoding="utf-8") as fh:
        record = json.load(fh)
    assert model_facts(record, None)["temperature_schedule"] == spec
    # The model card's Distillation line names it (an unscheduled alpha as its number).
    assert (_setting(record["distill"], "temperature"), _setting(record["distill"], "alpha")) == ("linear 8→1", "0.5")
