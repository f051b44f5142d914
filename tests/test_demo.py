"""`kdistill demo` on scikit-learn's digits: its pieces at a reduced size (one seed, few steps), its statistics,
and the command end to end. The reduced pieces assert only the directions that hold at that size."""

import json
import os

import numpy as np
import pytest
import torch
from scipy import stats

from kdistill import demo, demo_transfer
from kdistill.stats import gap_closed, t_interval
from kdistill.tasks.image import random_shift
from kdistill.cli import main
from kdistill.report.demo import FILES


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """The split, a reduced config and a teacher trained at that size (a few seconds)."""
    config = demo.DemoConfig.reduced(output_dir=str(tmp_path_factory.mktemp("demo")))
    digits = demo.load_digits_splits(config.seed, config.validation_size, config.test_size)
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # as run_demo does: tiny models run faster on one thread
    teacher = demo.teach(config, digits)
    yield config, digits, teacher
    torch.set_num_threads(before)  # later test files get the default back


def test_split_is_fixed_stratified_and_disjoint():
    a, b = demo.load_digits_splits(0), demo.load_digits_splits(0)
    rows = np.concatenate(list(a.splits.values()))
    assert len(rows) == len(set(rows.tolist())) == 1797
    assert all(np.array_equal(a.splits[k], b.splits[k]) for k in a.splits)
    assert not np.array_equal(demo.load_digits_splits(1).splits["test"], a.splits["test"])
    counts = np.bincount(a.labels[a.rows("test")].numpy(), minlength=10)
    assert counts.min() >= 57 and counts.max() <= 62  # 600 test rows, about 60 per digit


def test_random_shift_moves_each_image_by_at_most_the_shift():
    images = torch.zeros(64, 1, 8, 8)
    images[:, 0, 4, 4] = 1.0
    shifted = random_shift(images, 1, torch.Generator().manual_seed(0))
    ys, xs = shifted[:, 0].nonzero(as_tuple=True)[1:]
    assert shifted.sum() == 64  # one pixel each, none lost at this distance from the border
    assert ys.sub(4).abs().max() <= 1 and xs.sub(4).abs().max() <= 1
    assert len({(int(y), int(x)) for y, x in zip(ys, xs)}) > 1  # not the same shift for all


def test_collator_attaches_teacher_logits_by_row(setup):
    _, digits, teacher = setup
    rows = digits.rows("train")[[5, 0, 17]]
    batch = demo.TASK.collator(teacher_logits=teacher.logits)([demo.digits_rows(digits, rows)[i] for i in range(3)])
    assert batch["pixel_values"].shape == (3, 1, 8, 8)
    assert torch.equal(batch["teacher_logits"], teacher.logits[rows])
    assert torch.equal(batch["labels"], digits.labels[rows])
    hidden = demo.digits_rows(digits, rows, hide_labels=True)[0]
    assert hidden["labels"] == -100


def test_t_interval_matches_scipy():
    values = [16.0, 15.0, 14.0, 17.0, 15.0]
    ci = t_interval(values)
    low, high = stats.t.interval(0.95, 4, loc=np.mean(values), scale=stats.sem(values))
    assert ci["low"] == pytest.approx(low) and ci["high"] == pytest.approx(high)
    assert t_interval([3.0])["low"] is None


def test_gap_closed_share_and_interval():
    hard, teacher = [20.0, 22.0, 19.0, 21.0, 23.0], 10.0
    assert gap_closed(hard, hard, teacher)["share"] == pytest.approx(0.0)
    assert gap_closed(hard, [10.0] * 5, teacher)["share"] == pytest.approx(1.0)
    soft = [15.0, 17.0, 13.0, 16.0, 19.0]
    gap = gap_closed(hard, soft, teacher)
    assert gap["share"] == pytest.approx((np.mean(hard) - np.mean(soft)) / (np.mean(hard) - teacher))
    assert gap["low"] < gap["share"] < gap["high"]
    # A student already as good as the teacher leaves no gap: no share rather than a division by ~0.
    assert gap_closed([10.0, 9.0], [12.0, 11.0], 10.0)["share"] is None


def test_models_learn_at_reduced_size(setup):
    config, digits, teacher = setup
    hard = demo.evaluate_students(config, digits, digits.rows("train"), teacher.logits, strategy="hard")
    # Reduced size, seed 0 (measured 2026-11-28): teacher 14 and hard student 17 test errors of 600; chance is 540.
    assert teacher.test_errors < 60
    assert hard["test_errors"]["mean"] < 60
    assert hard["train_errors"]["mean"] < 10


def test_soft_students_never_read_the_gold_labels(setup):
    # Step 5 reuses step 3's soft students for its unlabelled arm; that is only sound if hiding labels changes nothing.
    config, digits, teacher = setup
    rows = digits.rows("train")
    spec = dict(strategy="soft", temperature=2.0, teacher_logits=teacher.logits)
    seen = demo.evaluate_students(config, digits, rows, teacher.logits, **spec)
    hidden = demo.evaluate_students(config, digits, rows, teacher.logits, hide_labels=True, **spec)
    assert seen == hidden


def test_soft_label_confidence_falls_as_temperature_rises(setup):
    _, digits, teacher = setup
    diagnostics = demo.soft_label_diagnostics(digits, {"teacher": teacher.logits})
    for by_t in diagnostics.values():
        top = [s["mean_top_prob"] for s in by_t.values()]
        entropy = [s["normalized_entropy"] for s in by_t.values()]
        assert all(a > b for a, b in zip(top, top[1:])), top
        assert all(a < b for a, b in zip(entropy, entropy[1:])), entropy


def test_dark_knowledge_student_recognises_the_digit_it_never_saw(setup):
    config, digits, teacher = setup
    result = demo_transfer.dark_knowledge(config, digits, teacher.logits)
    chosen = result["by_temperature"][result["chosen_temperature"]]
    # Chance is 10%; at this size a net that never saw a 3 gets roughly half to three quarters of them.
    assert chosen["digit_accuracy_after"]["mean"] > 0.10
    assert chosen["shift"]["mean"] >= 0
    assert result["transfer_rows"] == int((digits.labels[digits.rows("train")] != 3).sum())


def test_soft_student_on_unlabelled_rows_beats_the_few_label_hard_student(setup):
    config, digits, teacher = setup
    result = demo_transfer.few_labels(config, digits, teacher, temperature=2.0)
    hard = result["arms"]["hard, labelled few"]["test_errors"]["mean"]
    soft = result["arms"]["soft, all rows, full teacher"]["test_errors"]["mean"]
    assert result["labelled_rows"] == 44
    assert soft < hard


def test_same_seed_same_numbers(setup):
    config, digits, teacher = setup
    rows = digits.rows("train")
    spec = dict(strategy="mixed", temperature=4.0, teacher_logits=teacher.logits)
    first = demo.evaluate_students(config, digits, rows, teacher.logits, **spec)
    second = demo.evaluate_students(config, digits, rows, teacher.logits, **spec)
    assert first == second
    # The teacher's dropout and random shifts are seeded too.
    short = demo.DemoConfig.reduced(output_dir=config.output_dir, teacher_steps=30)
    a = demo.predict(demo.train_teacher(short, digits, rows, seed=3), digits.images)
    b = demo.predict(demo.train_teacher(short, digits, rows, seed=3), digits.images)
    assert torch.equal(a, b)


@pytest.mark.slow
def test_cli_demo_quick_writes_the_report(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--output_dir", str(out)]) == 0
    for name in FILES:
        assert (out / name).stat().st_size > 0, name
    printed = capsys.readouterr().out
    assert "student MLP, hard labels" in printed and "dark knowledge" in printed
    results = json.loads((out / "results.json").read_text())
    assert results["split"] == {"seed": 0, "stratified": True, "train": 897, "validation": 300, "test": 600}
    report = (out / "report.md").read_text()
    assert "reduced `--quick` run" in report and "## 4. Dark knowledge" in report
    # The report, the teachers' weights and their soft labels; nothing of the Trainer's is left behind.
    assert set(os.listdir(out)) == {*FILES, "teachers", "soft_labels"}


def test_cli_demo_bad_flag_is_one_line(capsys):
    assert main(["demo", "--seed", "zero"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("kdistill: error: demo:") and "\n" not in err


def test_prior_matching_shift_matches_the_teachers_rate_without_labels():
    # The teacher calls 2 of 4 rows a 3; the student needs a shift of 1.5 on class 3 before it calls 2 rows a 3.
    teacher = torch.tensor([[0.0, 0, 0, 5], [0.0, 0, 0, 5], [5.0, 0, 0, 0], [5.0, 0, 0, 0]])
    student = torch.tensor([[1.0, 0, 0, 0], [2.0, 0, 0, 0.6], [3.0, 0, 0, 0], [4.0, 0, 0, 0]])
    shifts = np.arange(0.0, 3.01, 0.5)
    index, rate = demo_transfer.prior_matching_shift(student, teacher, 3, shifts)
    assert rate == 0.5 and shifts[index] == 1.5
    # A student that never gets there takes the largest shift.
    assert demo_transfer.prior_matching_shift(student - 100 * torch.eye(4)[3], teacher, 3, shifts)[0] == len(shifts) - 1
