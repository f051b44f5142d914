"""`kdistill demo`, steps 4 and 5: what soft labels carry when the labels are missing.

4. dark knowledge: a student that never sees one digit, taught by soft labels only, then a bias shift for that
   digit (Hinton et al. 2015, section 3);
5. few labels: a hard-label student on 5% of the labels against a soft-label student on everything.

They run on the pieces of `kdistill.demo` (its config, split, students and stored soft labels).
"""

from __future__ import annotations

import logging

import numpy as np
from torch import Tensor

from .demo import DemoConfig, Digits, Teacher, errors, evaluate_students, predict, store_soft_labels, train_student, \
    train_teacher
from .stats import t_interval

logger = logging.getLogger("kdistill.demo")


def shift_curve(logits: Tensor, labels: Tensor, digit: int, shifts: np.ndarray, only_digit: bool = False) -> np.ndarray:
    """Accuracy after adding each of `shifts` to the logit of `digit` (on the rows of `digit` only, if asked)."""
    if only_digit:
        logits, labels = logits[labels == digit], labels[labels == digit]
    out = []
    for s in shifts:
        shifted = logits.clone()
        shifted[:, digit] += float(s)
        out.append(float((shifted.argmax(-1) == labels).float().mean()))
    return np.asarray(out)


def prior_matching_shift(student_logits: Tensor, teacher_logits: Tensor, digit: int, shifts: np.ndarray) -> tuple[int, float]:
    """Index of the smallest shift of `digit`'s logit at which the student predicts `digit` at least as often as
    the teacher does on the same rows (the last shift if none does), and the teacher's rate. No labels are used.
    """
    teacher_rate = float((teacher_logits.argmax(-1) == digit).float().mean())
    for i, s in enumerate(shifts):
        shifted = student_logits.clone()
        shifted[:, digit] += float(s)
        if float((shifted.argmax(-1) == digit).float().mean()) >= teacher_rate:
            return i, teacher_rate
    return len(shifts) - 1, teacher_rate


def dark_knowledge(config: DemoConfig, digits: Digits, teacher_logits: Tensor) -> dict:
    """Step 4: a student that never sees `config.omitted_digit`, trained on soft labels only.

    The bias added to the omitted digit's logit is set by prior matching (`prior_matching_shift`): the student
    should predict the digit as often as the teacher does on every non-test image (train and validation, labels
    unused). Maximising validation accuracy, the earlier rule (Hinton et al. chose the shift that "optimizes overall
    performance"), rests on the ~30 validation rows of that digit and is flat over a wide range of shifts; it is
    still computed and reported beside the rule. The temperature is the one whose students reach the best
    validation accuracy after their shift. Test is only reported; its curves over all shifts are kept to plot the
    trade-off, never to choose.
    """
    digit, y = config.omitted_digit, digits.labels
    train, val, test = digits.rows("train"), digits.rows("validation"), digits.rows("test")
    transfer = train[(y[train] != digit).numpy()]
    unlabelled = np.concatenate([train, val])  # where the student's rate of the digit is matched to the teacher's
    shifts = np.round(np.arange(0.0, 8.0001, 0.25), 2)
    by_t = {}
    for t in config.temperatures:
        seeds = []
        for seed in config.student_seeds():
            model = train_student(
                config, digits, transfer, seed, strategy="soft", temperature=t, teacher_logits=teacher_logits,
                hide_labels=True,
            )
            logits = predict(model, digits.images)
            val_curve = shift_curve(logits[val], y[val], digit, shifts)
            by_validation = int(np.argmax(val_curve))  # the first, i.e. smallest, of the best shifts
            best, teacher_rate = prior_matching_shift(logits[unlabelled], teacher_logits[unlabelled], digit, shifts)
            test_curve = shift_curve(logits[test], y[test], digit, shifts)
            digit_curve = shift_curve(logits[test], y[test], digit, shifts, only_digit=True)
            seeds.append({
                "seed": seed,
                "shift": float(shifts[best]),
                "teacher_rate": teacher_rate,
                "validation_accuracy_after": float(val_curve[best]),
                "digit_accuracy_before": float(digit_curve[0]),
                "digit_accuracy_after": float(digit_curve[best]),
                "shift_by_validation_accuracy": float(shifts[by_validation]),
                "digit_accuracy_after_by_validation_accuracy": float(digit_curve[by_validation]),
                "test_errors_before": round((1 - test_curve[0]) * len(test)),
                "test_errors_after": round((1 - test_curve[best]) * len(test)),
                "curves": {"validation": val_curve.tolist(), "test": test_curve.tolist(), "test_digit": digit_curve.tolist()},
            })
        summary = {
            k: t_interval([s[k] for s in seeds])
            for k in ("shift", "validation_accuracy_after", "digit_accuracy_before", "digit_accuracy_after",
                      "test_errors_before", "test_errors_after", "shift_by_validation_accuracy",
                      "digit_accuracy_after_by_validation_accuracy")
        }
        by_t[f"{t:g}"] = {"temperature": t, "seeds": seeds, **summary}
        logger.info(
            "step 4: T=%g: test %ds right before -> after the shift: %s -> %s", t, digit,
            [round(s["digit_accuracy_before"], 3) for s in seeds], [round(s["digit_accuracy_after"], 3) for s in seeds],
        )
    chosen = max(by_t, key=lambda k: by_t[k]["validation_accuracy_after"]["mean"])
    return {
        "digit": digit,
        "transfer_rows": len(transfer),
        "test_digit_rows": int((y[test] == digit).sum()),
        "validation_digit_rows": int((y[val] == digit).sum()),
        "unlabelled_rows": len(unlabelled),
        "shifts": shifts.tolist(),
        "by_temperature": by_t,
        "chosen_temperature": chosen,
    }


def few_labels(
    config: DemoConfig, digits: Digits, teacher: Teacher, temperature: float, soft_run: dict | None = None
) -> dict:
    """Step 5: gold labels for only `label_fraction` of the training split; the rest is unlabelled transfer data.

    Compared, each over the student seeds: a hard-label student on the labelled few; a soft-label student on
    every training row (labels hidden) taught by the step-2 teacher, which learnt from all the gold labels, as in
    Hinton et al.'s 3%-of-the-data speech experiment; and, as the stricter semi-supervised check, a soft-label
    student whose teacher saw only the labelled few.

    Args:
        soft_run: step 3's `soft T=<temperature> [teacher]` result, reused for the full-teacher arm: the soft loss
            never reads the gold labels, so hiding them trains the very same students (same seeds, same batches).
    """
    from sklearn.model_selection import train_test_split

    y, train, test = digits.labels, digits.rows("train"), digits.rows("test")
    labelled, _ = train_test_split(
        train, train_size=config.label_fraction, random_state=config.seed, stratify=y[train].numpy()
    )
    labelled = np.sort(labelled)
    small = train_teacher(config, digits, labelled, config.seed + 100)
    settings = {"seed": config.seed + 100, "steps": config.teacher_steps, "source": "in-sample, labelled few"}
    small_logits = store_soft_labels(config, "teacher-few-labels", [small], predict(small, digits.images), settings)
    arms = {
        "hard, labelled few": dict(rows=labelled, strategy="hard"),
        "soft, all rows, full teacher": dict(rows=train, teacher_logits=teacher.logits),
        "soft, all rows, few-label teacher": dict(rows=train, teacher_logits=small_logits),
    }
    out: dict = {
        "labelled_rows": len(labelled),
        "unlabelled_rows": len(train) - len(labelled),
        "temperature": temperature,
        "few_label_teacher_test_errors": errors(small_logits[test], y[test]),
        "arms": {},
    }
    for name, spec in arms.items():
        rows = spec.pop("rows")
        if name == "soft, all rows, full teacher" and soft_run is not None:
            out["arms"][name] = {k: v for k, v in soft_run.items() if k != "gap_closed"}
            continue
        if "teacher_logits" in spec:
            spec.update(strategy="soft", temperature=temperature, hide_labels=True)
        out["arms"][name] = evaluate_students(config, digits, rows, teacher.logits, **spec)
        logger.info("step 5: %s: test errors %s", name, out["arms"][name]["test_errors"]["values"])
    hard = np.asarray(out["arms"]["hard, labelled few"]["test_errors"]["values"])
    for name in list(out["arms"])[1:]:
        # Paired by seed: a difference interval above zero means the soft student makes fewer test errors.
        soft = np.asarray(out["arms"][name]["test_errors"]["values"])
        out["arms"][name]["fewer_errors_than_hard"] = t_interval((hard - soft).tolist())
    return out
