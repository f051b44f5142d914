"""Out-of-fold soft labels: every training row is labelled by exactly one teacher, and that teacher never trained
on it; the result is one cache the student distils from like any other."""

import json

import pytest
import torch

import kdistill
from kdistill import pipeline
from kdistill.config import ConfigError
from conftest import read_sst2_rows, tiny_run_values


def test_fold_assignment_is_balanced_seeded_and_covers_every_row():
    folds = pipeline.fold_assignment(10, 3, seed=0)
    assert sorted(folds.count(f) for f in range(3)) == [3, 3, 4]
    assert folds == pipeline.fold_assignment(10, 3, seed=0) != pipeline.fold_assignment(10, 3, seed=1)


def test_teacher_folds_settings_are_checked():
    with pytest.raises(ConfigError, match="0 \\(off\\) or at least 2"):
        kdistill.make_config(train_file="x.tsv", teacher_folds=1)
    with pytest.raises(ConfigError, match="set teacher_backbone"):
        kdistill.make_config(train_file="x.tsv", teacher_folds=3, teacher_train=False)
    kdistill.make_config(train_file="x.tsv", teacher_folds=3, teacher_train=False, teacher_backbone="pkg:x")


def test_every_row_is_labelled_by_one_teacher_that_never_saw_it(tmp_path, tiny_bert, monkeypatch):
    config = kdistill.make_config(tiny_run_values(tmp_path, tiny_bert, max_train_samples=150, teacher_epochs=1,
                                                  teacher_folds=3, strategy="soft"))
    kdistill.teach(config)
    trained_on, real = [], pipeline._train_fold_teacher

    def spy(config, label2id, tokenizer, train, fold):
        trained_on.append((fold, set(train["idx"][:])))
        return real(config, label2id, tokenizer, train, fold)

    monkeypatch.setattr(pipeline, "_train_fold_teacher", spy)
    logits = kdistill.make_soft_labels(config, ("train",))["train"]
    assert logits.shape == (150, 2)
    (record_file,) = (tmp_path / "soft_labels").glob("train-oof-*.json")
    record = json.loads(record_file.read_text())
    fold_of = record["fold_of_row"]
    assert len(fold_of) == 150 and set(fold_of) == {0, 1, 2}
    assert [f for f, _ in trained_on] == [0, 1, 2]
    for fold, rows in trained_on:
        labelled = {i for i, f in enumerate(fold_of) if f == fold}
        assert rows.isdisjoint(labelled) and rows | labelled == set(range(150))
    # The record's counts are those of the rows each teacher was really given (the spy's), not derived from fold_of.
    assert [(p["fold"], p["trained_on"], p["labelled"]) for p in record["per_fold"]] == [
        (fold, len(rows), 150 - len(rows)) for fold, rows in trained_on]
    # The in-sample teacher's labels differ from these: they are another cache.
    in_sample = kdistill.make_soft_labels(kdistill.make_config(
        tiny_run_values(tmp_path, tiny_bert, max_train_samples=150, teacher_epochs=1, strategy="soft")), ("train",))
    assert not in_sample["train"].equal(logits)

    monkeypatch.setattr(pipeline, "_train_fold_teacher", lambda *a: pytest.fail("the cache was not reused"))
    assert kdistill.make_soft_labels(config, ("train",))["train"].equal(logits)
    result = kdistill.distill(config)
    # The student's diagnostics describe these out-of-fold labels at its temperature (T=2), recomputed here; the
    # in-sample teacher's labels give other values (mean top probability 0.507 against 0.511 when written).
    stats = result["soft_label_stats"]["train"]
    _, labels = read_sst2_rows("train", 150)
    top = float(torch.softmax(logits / 2.0, -1).max(-1).values.double().mean())
    assert stats["mean_top_prob"] == pytest.approx(top, abs=1e-6)
    wrong = float((logits.argmax(-1) != torch.tensor(labels)).double().mean())
    assert stats["teacher_error_rate"] == pytest.approx(wrong, abs=1e-9)
    in_sample_top = float(torch.softmax(in_sample["train"] / 2.0, -1).max(-1).values.double().mean())
    assert stats["mean_top_prob"] != pytest.approx(in_sample_top, abs=1e-6)
