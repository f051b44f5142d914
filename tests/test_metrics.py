import math

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score

from kdistill.metrics import (
    accuracy,
    agreement,
    classification_metrics,
    disagreement_margins,
    expected_calibration_error,
    macro_f1,
    max_sq_distance,
    mean_kl,
    soft_label_stats,
    softmax,
)


def _two_class_logits(p_class0):
    """Logits whose softmax is [p, 1 - p] per row."""
    p = np.asarray(p_class0, dtype=np.float64)
    return np.stack([np.log(p), np.log(1 - p)], axis=1)


def test_softmax_stable_and_tempered():
    p = softmax(np.array([[1000.0, 1000.0, 0.0]]))
    assert np.allclose(p, [[0.5, 0.5, 0.0]])
    hot = softmax(np.array([[2.0, 0.0]]), temperature=2.0)
    assert hot[0, 0] == pytest.approx(math.exp(1) / (math.exp(1) + 1))


def test_accuracy_and_agreement():
    logits = np.array([[2.0, 1.0], [0.0, 3.0], [5.0, 1.0], [0.0, 1.0]])
    labels = np.array([0, 1, 1, 1])
    assert accuracy(logits, labels) == pytest.approx(0.75)
    assert accuracy(np.array([0, 1, 0, 0]), labels) == pytest.approx(0.5)
    assert accuracy(torch.tensor(logits), torch.tensor(labels)) == pytest.approx(0.75)
    teacher = np.array([[1.0, 2.0], [0.0, 3.0], [5.0, 1.0], [2.0, 1.0]])
    assert agreement(logits, teacher) == pytest.approx(0.5)


def test_macro_f1_with_missing_class():
    labels = np.array([0, 0, 1, 1])
    logits = np.eye(3)[[0, 1, 1, 1]]  # predictions 0, 1, 1, 1; class 2 never appears
    # class 0: P=1, R=1/2 -> 2/3; class 1: P=2/3, R=1 -> 4/5; class 2: 0
    assert macro_f1(logits, labels, num_labels=3) == pytest.approx((2 / 3 + 4 / 5 + 0) / 3)
    expected = f1_score(labels, [0, 1, 1, 1], labels=[0, 1, 2], average="macro", zero_division=0)
    assert macro_f1(logits, labels, num_labels=3) == pytest.approx(expected)
    assert macro_f1(logits, labels) == pytest.approx((2 / 3 + 4 / 5) / 2)


def test_ece_hand_example():
    # confidences 0.95 (right), 0.95 (wrong), 0.65 (right), 0.75 (wrong); 10 bins
    logits = _two_class_logits([0.95, 0.95, 0.65, 0.75])
    labels = np.array([0, 1, 0, 1])
    # bin (0.9, 1]: 2/4 * |0.5 - 0.95| = 0.225
    # bin (0.6, 0.7]: 1/4 * |1 - 0.65| = 0.0875
    # bin (0.7, 0.8]: 1/4 * |0 - 0.75| = 0.1875
    assert expected_calibration_error(logits, labels, n_bins=10) == pytest.approx(0.5)


def test_ece_upper_edge_is_inclusive():
    # conf 0.5 exactly (right) and 0.75 (wrong), 2 bins: 0.5 belongs to (0, 0.5].
    logits = np.array([[0.0, 0.0], _two_class_logits([0.75])[0]])
    labels = np.array([0, 1])
    # separate bins: 1/2 * |1 - 0.5| + 1/2 * |0 - 0.75| = 0.625 (one shared bin would give 0.125)
    assert expected_calibration_error(logits, labels, n_bins=2) == pytest.approx(0.625)


def test_ece_confident_and_correct_is_zero():
    logits = np.array([[50.0, 0.0, 0.0], [0.0, 50.0, 0.0], [0.0, 0.0, 50.0]])
    assert expected_calibration_error(logits, np.array([0, 1, 2])) == pytest.approx(0.0, abs=1e-9)


def test_max_sq_distance_and_mean_kl():
    teacher = np.array([[0.0, 0.0], [1.0, 2.0]])
    student = np.array([[math.log(0.9), math.log(0.1)], [1.0, 2.0]])
    # item 0: [0.5, 0.5] vs [0.9, 0.1] -> 0.16 + 0.16; item 1 identical -> 0
    assert max_sq_distance(student, teacher) == pytest.approx(0.32)
    assert max_sq_distance(teacher, teacher) == 0.0
    assert mean_kl(teacher, teacher) == pytest.approx(0.0, abs=1e-12)
    kl0 = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)
    assert mean_kl(student, teacher) == pytest.approx(kl0 / 2)


def test_soft_label_stats():
    logits = np.array([[20.0, 0.0, 0.0], [0.0, 20.0, 0.0], [0.0, 0.0, 20.0]])
    cold = soft_label_stats(logits, labels=np.array([0, 2, -100]))
    assert cold["mean_top_prob"] > 0.99
    assert cold["normalized_entropy"] < 0.01
    assert cold["teacher_error_rate"] == pytest.approx(0.5)  # item with -100 ignored
    hot = soft_label_stats(logits, temperature=10.0)
    assert hot["mean_top_prob"] < cold["mean_top_prob"]
    assert hot["mean_entropy"] > cold["mean_entropy"]
    assert "teacher_error_rate" not in hot
    uniform = soft_label_stats(np.zeros((2, 4)))
    assert uniform["mean_entropy"] == pytest.approx(math.log(4))
    assert uniform["normalized_entropy"] == pytest.approx(1.0)


def test_classification_metrics_excludes_minus_100():
    student = torch.tensor([[3.0, 0.0], [0.0, 3.0], [3.0, 0.0]])
    teacher = torch.tensor([[3.0, 0.0], [3.0, 0.0], [0.0, 3.0]])
    labels = torch.tensor([0, 1, -100])  # the last item would be wrong for any real label
    m = classification_metrics(student, labels, teacher_logits=teacher, num_labels=2)
    assert set(m) == {
        "accuracy", "macro_f1", "ece", "agreement", "kl_to_teacher", "epsilon", "teacher_accuracy"
    }
    assert m["accuracy"] == pytest.approx(1.0)
    assert m["macro_f1"] == pytest.approx(1.0)
    assert m["teacher_accuracy"] == pytest.approx(0.5)
    # Fidelity metrics need no labels, so the -100 item counts there.
    assert m["agreement"] == pytest.approx(1 / 3)
    assert m["epsilon"] == pytest.approx(max_sq_distance(student, teacher))
    assert m["kl_to_teacher"] == pytest.approx(mean_kl(student, teacher))
    assert set(classification_metrics(student, labels)) == {"accuracy", "macro_f1", "ece"}


def test_one_hot_warning_fires_only_for_nearly_one_hot_soft_labels():
    from kdistill.metrics import one_hot_warning, soft_label_stats

    sure = torch.tensor([[12.0, 0.0], [0.0, 12.0]])
    warning = one_hot_warning(soft_label_stats(sure, 1.0), 1.0)
    assert warning is not None and "nearly one-hot" in warning and "transfer_file" in warning
    # The same logits at T=8 are soft enough (top probability about 0.82).
    assert one_hot_warning(soft_label_stats(sure, 8.0), 8.0) is None


def test_disagreement_margins_counts_flips_and_near_ties():
    # Reference probabilities of class 1: 0.9 (margin 0.8), 0.55 (0.1), 0.52 (0.04), 0.2 (0.6), 0.5 (0.0).
    ref = _two_class_logits([0.1, 0.45, 0.48, 0.8, 0.5])
    other = ref.copy()
    other[1] = ref[1][::-1]  # flips the 0.1-margin row
    other[2] = ref[2][::-1]  # and the 0.04-margin row
    out = disagreement_margins(ref, other)
    assert out["rows"] == 5 and out["disagreements"] == 2
    assert out["largest_margin"] == pytest.approx(0.1, abs=1e-6)
    assert out["rows_within"] == 3  # the two flipped rows and the exact tie
    same = disagreement_margins(ref, ref)
    assert same["disagreements"] == 0 and same["largest_margin"] == 0.0 and same["rows_within"] == 0


def test_temperature_scaling_recovers_the_temperature_the_labels_were_drawn_at():
    from kdistill.metrics import fit_temperature, nll

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(20000, 4, generator=g) * 3
    labels = torch.multinomial(torch.softmax(logits / 2.5, -1), 1, generator=g).squeeze(-1)  # an overconfident model
    t_fit = fit_temperature(logits, labels)
    assert t_fit == pytest.approx(2.5, rel=0.05)
    assert nll(logits, labels, t_fit) < nll(logits, labels, 1.0)
    assert nll(logits, labels, t_fit) <= min(nll(logits, labels, t_fit * 0.9), nll(logits, labels, t_fit * 1.1))
    under = fit_temperature(logits / 4, labels)  # an underconfident one is sharpened: T below 1
    assert under == pytest.approx(2.5 / 4, rel=0.05)


def test_disagreement_rate_is_the_share_of_items_whose_top_classes_are_not_all_the_same():
    from kdistill.metrics import disagreement_rate

    a = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 1.0], [0.0, 5.0]])  # classes 0, 1, 0, 1
    b = torch.tensor([[1.0, 0.0], [1.0, 0.0], [3.0, 1.0], [0.0, 5.0]])  # classes 0, 0, 0, 1
    c = np.array([0, 1, 1, 1])  # predicted classes, as they are
    assert disagreement_rate([a, b]) == pytest.approx(1 / 4)
    assert disagreement_rate([a, b, c]) == pytest.approx(2 / 4)  # items 1 and 2
    assert disagreement_rate([a]) == 0.0
    with pytest.raises(ValueError, match="they must cover the same items"):
        disagreement_rate([a, b[:3]])


def test_rouge_l_matches_lins_worked_examples():
    from kdistill.metrics import mean_rouge_l, rouge_l

    # Lin 2004, section 3.1: against "police killed the gunman", S2 "police kill the gunman" shares an LCS of 3
    # tokens (R = P = 3/4), S3 "the gunman kill police" one of 2 ("the gunman": R = P = 1/2).
    reference = "police killed the gunman".split()
    assert rouge_l("police kill the gunman".split(), reference) == pytest.approx(0.75)
    assert rouge_l("the gunman kill police".split(), reference) == pytest.approx(0.5)
    # "the gunman": LCS 2, R = 2/4, P = 2/2; beta = 2 weighs recall: F = 5 * 0.5 * 1 / (0.5 + 4 * 1) = 5/9.
    assert rouge_l("the gunman".split(), reference, beta=2.0) == pytest.approx(5 / 9)
    assert rouge_l([], reference) == 0.0 and rouge_l("a b".split(), reference) == 0.0
    assert mean_rouge_l(["police kill the gunman", ""], ["police killed the gunman", "x"]) == pytest.approx(0.375)
