"""`kdistill demo`: Hinton et al.'s soft-vs-hard experiments, offline, on scikit-learn's 8x8 digits.

Hinton, Vinyals & Dean (2015), "Distilling the Knowledge in a Neural Network", section 3, replayed on the 1,797
handwritten digits that ship with scikit-learn. Teacher (a small CNN) and students (small MLPs) are plain
`torch.nn.Module`s trained by the same `DistillationTrainer`, losses and metrics as text distillation.

1. a fixed-seed, stratified train / validation / test split;
2. a CNN teacher regularised as Hinton's was (dropout, random 1-pixel shifts);
3. an MLP student under hard / soft / mixed at several temperatures and seeds, with 95% t-intervals, the share of
   the hard-student-to-teacher gap the soft labels close, the soft labels' diagnostics, and two remedies: out-of-fold
   soft labels, and a check that the training budget is long enough for soft targets;
4. dark knowledge: a student that never sees one digit, taught by soft labels only, then a bias shift for that
   digit;
5. few labels: a hard-label student on 5% of the labels against a soft-label student on everything.

Every choice (temperature, remedy, bias shift) is made on the validation split; test numbers are only reported.
"""

from __future__ import annotations

import gc
import logging
import math
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
from scipy import stats
from safetensors.torch import save_file
from torch import Tensor, nn

from . import metrics
from .config import DistillationConfig
from .models.digits import DigitsCNN, DigitsMLP
from .pipeline import make_trainer
from .soft_labels import cache_path, fingerprint, read_cache, write_cache
from .stats import CONFIDENCE, t_interval
from .students import count_parameters
from .tasks import get_task
from .tasks.image import ImageRows

logger = logging.getLogger(__name__)

TASK = get_task("image_classification")
DIAGNOSTIC_TEMPERATURES = (1.0, 2.0, 4.0, 8.0, 16.0)


@dataclass
class DemoConfig:
    """Sizes and knobs of the demo; `DemoConfig.reduced()` is the size the tests and `--quick` use."""

    output_dir: str = "runs/demo"
    seed: int = 0
    num_seeds: int = 5
    temperatures: tuple[float, ...] = (2.0, 4.0, 8.0)
    alpha: float = 0.5
    validation_size: int = 300
    test_size: int = 600
    teacher_steps: int = 450  # about 32 epochs of the 897 training rows
    teacher_batch_size: int = 64
    teacher_learning_rate: float = 5e-3
    teacher_dropout: float = 0.3
    student_hidden: int = 128
    # Soft labels train slowly: at 300 steps of 64 the soft students still made 11-19 training errors and lost to
    # hard labels on test; at 400 steps of 256 they fit (0-4) and won. `short_student_steps` shows that effect.
    student_steps: int = 400
    student_batch_size: int = 256
    student_learning_rate: float = 2e-2
    short_student_steps: int = 100
    folds: int = 5
    omitted_digit: int = 3
    label_fraction: float = 0.05
    quick: bool = False

    @classmethod
    def reduced(cls, **overrides) -> "DemoConfig":
        """One seed, two temperatures, fewer steps: seconds instead of minutes, same code paths."""
        values = dict(
            num_seeds=1, temperatures=(2.0, 8.0), teacher_steps=300, student_steps=200, short_student_steps=50,
            folds=3, quick=True,
        )
        values.update(overrides)
        return cls(**values)

    def student_seeds(self) -> list[int]:
        return [self.seed * 1000 + i for i in range(self.num_seeds)]


# --------------------------------------------------------------------------------------------------- data


@dataclass
class Digits:
    """The digits as tensors plus named row-index splits (indices into `images`)."""

    images: Tensor  # [N, 1, 8, 8] float in [0, 1]
    labels: Tensor  # [N] long
    splits: dict[str, np.ndarray]

    def rows(self, split: str) -> np.ndarray:
        return self.splits[split]


def digits_rows(digits: Digits, rows: np.ndarray, hide_labels: bool = False) -> ImageRows:
    """Rows of `digits` as the image task's dataset; `hide_labels` makes them unlabelled transfer data."""
    return ImageRows(digits.images, digits.labels, rows, hide_labels)


def load_digits_splits(seed: int, validation_size: int = 300, test_size: int = 600) -> Digits:
    """scikit-learn's 1,797 digits, split train / validation / test, stratified by digit, with `seed`."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    raw = load_digits()
    images = torch.tensor(raw.images / 16.0, dtype=torch.float32).unsqueeze(1)
    labels = torch.tensor(raw.target, dtype=torch.long)
    rows = np.arange(len(labels))
    rest, test = train_test_split(rows, test_size=test_size, random_state=seed, stratify=raw.target)
    train, validation = train_test_split(
        rest, test_size=validation_size, random_state=seed, stratify=raw.target[rest]
    )
    splits = {"train": np.sort(train), "validation": np.sort(validation), "test": np.sort(test)}
    return Digits(images, labels, splits)


# ----------------------------------------------------------------------------------------------- training


def fit(
    model: nn.Module,
    dataset: ImageRows,
    seed: int,
    strategy: str = "hard",
    temperature: float = 1.0,
    alpha: float = 0.5,
    teacher_logits: Tensor | None = None,
    max_shift: int = 0,
    max_steps: int = 300,
    batch_size: int = 64,
    learning_rate: float = 3e-3,
    max_grad_norm: float = 0.0,
) -> nn.Module:
    """Train `model` on `dataset` with DistillationTrainer (the engine every kdistill model trains with).

    Args:
        teacher_logits: [N, C] logits indexed by row, for "soft" and "mixed".
        max_shift: random-shift augmentation in pixels (the teacher's regulariser).
        max_grad_norm: gradient clipping (0: none).
        max_steps: optimisation steps rather than epochs, so models on data sets of different sizes (all rows,
            5% of them, k-1 folds) get the same budget.
    """
    # The Trainer wants an output_dir; with save_strategy="no" and no logging it leaves it empty.
    work_dir = tempfile.mkdtemp(prefix="kdistill-demo-")
    args = DistillationConfig(
        output_dir=work_dir,
        strategy=strategy,
        temperature=temperature,
        alpha=alpha,
        max_steps=max_steps,
        per_device_train_batch_size=batch_size,
        learning_rate=learning_rate,
        weight_decay=0.0,
        max_grad_norm=max_grad_norm,
        seed=seed,
        data_seed=seed,
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
        # group_by_length needs input_ids; images all have the same size.
        train_sampling_strategy="random",
    )
    trainer = make_trainer(TASK, model, args, dataset, teacher_logits=teacher_logits,
                           collate={"max_shift": max_shift, "seed": seed})
    try:
        trainer.train()
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    return model


def predict(model: nn.Module, images: Tensor) -> Tensor:
    """Logits for a stack of images, in eval mode (dropout off)."""
    return TASK.predict(model, images)


def errors(logits: Tensor, labels: Tensor) -> int:
    return int((logits.argmax(-1) != labels).sum())


def train_teacher(config: DemoConfig, digits: Digits, rows: np.ndarray, seed: int) -> DigitsCNN:
    """A CNN teacher on `rows` with gold labels, dropout and random 1-pixel shifts, `config.teacher_steps` steps."""
    torch.manual_seed(seed)
    model = DigitsCNN(dropout=config.teacher_dropout)
    return fit(
        model, digits_rows(digits, rows), seed,
        strategy="hard", max_shift=1, max_steps=config.teacher_steps, batch_size=config.teacher_batch_size,
        learning_rate=config.teacher_learning_rate,
        # Clipping steadies the teacher: at 450 steps and lr 3e-3, 3 seeds made 5-13 test errors with it, 10-16 without.
        max_grad_norm=1.0,
    )


def train_student(
    config: DemoConfig,
    digits: Digits,
    rows: np.ndarray,
    seed: int,
    strategy: str = "hard",
    temperature: float = 1.0,
    teacher_logits: Tensor | None = None,
    hide_labels: bool = False,
    steps: int | None = None,
) -> DigitsMLP:
    """An MLP student on `rows`: no augmentation, dropout or clipping; `steps` (default `config.student_steps`)."""
    torch.manual_seed(seed)
    model = DigitsMLP(config.student_hidden)
    return fit(
        model, digits_rows(digits, rows, hide_labels=hide_labels), seed,
        strategy=strategy, temperature=temperature, alpha=config.alpha, teacher_logits=teacher_logits,
        max_steps=steps or config.student_steps, batch_size=config.student_batch_size,
        learning_rate=config.student_learning_rate,
    )


def store_soft_labels(config: DemoConfig, name: str, teachers: list[nn.Module], logits: Tensor, settings: dict) -> Tensor:
    """Save the teacher(s) and their logits under a fingerprint (soft_labels/), and read the logits back.

    The students learn from what was read back: the teacher's outputs are data, as in text distillation.
    """
    teacher_dir = os.path.join(config.output_dir, "teachers", name)
    os.makedirs(teacher_dir, exist_ok=True)
    for i, teacher in enumerate(teachers):
        state = {k: v.contiguous() for k, v in teacher.state_dict().items()}
        save_file(state, os.path.join(teacher_dir, f"model-{i}.safetensors"))
    fp = fingerprint(teacher_dir, None, {"data": "sklearn.datasets.load_digits", "rows": len(logits), **settings})
    path = cache_path(os.path.join(config.output_dir, "soft_labels"), name, fp)
    write_cache(path, logits, fp)
    stored = read_cache(path, fp)
    assert stored is not None, path
    return stored.dense()


# ------------------------------------------------------------------------------------------------ statistics


def gap_closed(hard: list[float], soft: list[float], teacher: float, confidence: float = CONFIDENCE) -> dict:
    """Share of the hard-student-to-teacher gap that soft labels close, with a Fieller interval.

    share = mean(hard - soft) / mean(hard - teacher) over paired seeds (the same seed starts both students).
    Fieller's interval for a ratio of means holds every r for which a t-test does not reject
    mean(d - r g) = 0, with d = hard - soft and g = hard - teacher; it is unbounded when the gap itself is
    not clearly above zero (bounds None).
    """
    d = np.asarray(hard, dtype=np.float64) - np.asarray(soft, dtype=np.float64)
    g = np.asarray(hard, dtype=np.float64) - teacher
    n = len(d)
    if g.mean() <= 0:  # the hard student is already as good as the teacher: there is no gap to close
        return {"share": None, "low": None, "high": None, "gap_errors": float(g.mean())}
    out = {"share": float(d.mean() / g.mean()), "low": None, "high": None, "gap_errors": float(g.mean())}
    if n < 2:
        return out
    t2 = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) ** 2
    cov = np.cov(np.stack([d, g]), ddof=1) / n
    a = g.mean() ** 2 - t2 * cov[1, 1]
    b = d.mean() * g.mean() - t2 * cov[0, 1]
    c = d.mean() ** 2 - t2 * cov[0, 0]
    disc = b * b - a * c
    if a > 0 and disc >= 0:
        root = math.sqrt(disc)
        out["low"], out["high"] = float((b - root) / a), float((b + root) / a)
    return out


# ------------------------------------------------------------------------------------------------- the steps


@dataclass
class Teacher:
    """A trained teacher's logits on every row (in-sample on its own training rows) and its error counts."""

    logits: Tensor
    test_errors: int
    validation_errors: int
    parameters: int
    oof_logits: Tensor | None = None  # training rows labelled by fold teachers that never saw them


def teach(config: DemoConfig, digits: Digits) -> Teacher:
    """Step 2: the CNN teacher on the training split, and its soft labels for every row."""
    model = train_teacher(config, digits, digits.rows("train"), config.seed)
    settings = {"seed": config.seed, "steps": config.teacher_steps, "source": "in-sample"}
    logits = store_soft_labels(config, "teacher", [model], predict(model, digits.images), settings)
    y, test, val = digits.labels, digits.rows("test"), digits.rows("validation")
    return Teacher(
        logits=logits,
        test_errors=errors(logits[test], y[test]),
        validation_errors=errors(logits[val], y[val]),
        parameters=count_parameters(model),
    )


def out_of_fold_logits(config: DemoConfig, digits: Digits, teacher: Teacher) -> Tensor:
    """The remedy: each training row is labelled by a teacher trained on the other k-1 folds.

    A teacher scored on rows it trained on can be surer of them than of new rows, so its soft labels there
    can be closer to one-hot than its real uncertainty; fold teachers show the uncertainty they have on rows
    they never saw. Validation and test rows keep the full teacher's logits (students only look up training rows).
    """
    from sklearn.model_selection import StratifiedKFold

    train = digits.rows("train")
    logits = teacher.logits.clone()
    folds = StratifiedKFold(config.folds, shuffle=True, random_state=config.seed)
    models = []
    for k, (fit_pos, held_pos) in enumerate(folds.split(train, digits.labels[train].numpy())):
        model = train_teacher(config, digits, train[fit_pos], config.seed + 1 + k)
        held = train[held_pos]
        logits[held] = predict(model, digits.images[held])
        models.append(model)
    settings = {"seed": config.seed, "steps": config.teacher_steps, "source": f"out-of-fold, k={config.folds}"}
    return store_soft_labels(config, "teacher-oof", models, logits, settings)


def soft_label_diagnostics(digits: Digits, sources: dict[str, Tensor]) -> dict:
    """Mean top probability and entropy of each soft-label source on the transfer set, per temperature.

    The full teacher on the validation split (rows it never saw) is the reference for how unsure it is of new
    digits; `teacher_error_rate` is the share of rows whose soft label puts its top mass on a wrong digit.
    """
    train, val, y = digits.rows("train"), digits.rows("validation"), digits.labels
    sets = {f"{name}, transfer set": (logits[train], y[train]) for name, logits in sources.items()}
    sets["teacher, validation (unseen)"] = (sources["teacher"][val], y[val])
    return {
        name: {f"{t:g}": metrics.soft_label_stats(logits, t, labels) for t in DIAGNOSTIC_TEMPERATURES}
        for name, (logits, labels) in sets.items()
    }


def evaluate_students(config: DemoConfig, digits: Digits, rows: np.ndarray, reference: Tensor, **spec) -> dict:
    """Train one student per seed on `rows` (`spec`: `train_student`'s arguments); errors on its training rows,
    validation and test, and test agreement with the `reference` teacher's logits, each with an interval.
    """
    y, val, test = digits.labels, digits.rows("validation"), digits.rows("test")
    per_seed: dict[str, list[float]] = {"train_errors": [], "validation_errors": [], "test_errors": [], "agreement": []}
    for seed in config.student_seeds():
        logits = predict(train_student(config, digits, rows, seed, **spec), digits.images)
        per_seed["train_errors"].append(errors(logits[rows], y[rows]))
        per_seed["validation_errors"].append(errors(logits[val], y[val]))
        per_seed["test_errors"].append(errors(logits[test], y[test]))
        per_seed["agreement"].append(metrics.agreement(logits[test], reference[test]))
    return {name: t_interval(values) for name, values in per_seed.items()}


def run_key(strategy: str, temperature: float | None = None, source: str | None = None) -> str:
    """'hard', 'soft T=4 [teacher]', 'mixed T=2 [out-of-fold]', 'hard [short budget]', ..."""
    key = strategy if temperature is None else f"{strategy} T={temperature:g}"
    return f"{key} [{source}]" if source else key


def soft_vs_hard(config: DemoConfig, digits: Digits, teacher: Teacher) -> dict:
    """Step 3: hard labels against soft and mixed ones over temperatures and seeds, then the remedies.

    The grid is hard labels plus soft and mixed at each temperature, with the teacher's labels. At the setting
    validation prefers, two remedies follow: out-of-fold soft labels, and a check on the training budget (hard
    and that setting trained for `short_student_steps` only). Seeds are paired: seed s starts every setting from
    the same weights and batch order, so the gap-closed share compares like with like. Settings are ranked by
    mean validation errors only.
    """
    train = digits.rows("train")
    runs: dict[str, dict] = {}

    def add(key: str, **spec) -> None:
        runs[key] = evaluate_students(config, digits, train, teacher.logits, **spec)
        logger.info("step 3: %s: test errors %s", key, runs[key]["test_errors"]["values"])

    def best(keys: list[str]) -> str:  # lowest mean validation errors; ties go to the earlier (simpler) setting
        return min(keys, key=lambda k: runs[k]["validation_errors"]["mean"])

    add("hard", strategy="hard")
    for strategy in ("soft", "mixed"):
        for t in config.temperatures:
            add(run_key(strategy, t, "teacher"), strategy=strategy, temperature=t, teacher_logits=teacher.logits)
    best_plain = best([k for k in runs if k != "hard"])
    strategy, t = best_plain.split()[0], temperature_of(best_plain)
    for s in ("soft", "mixed"):
        add(run_key(s, t, "out-of-fold"), strategy=s, temperature=t, teacher_logits=teacher.oof_logits)
    short = config.short_student_steps
    add(run_key("hard", None, "short budget"), strategy="hard", steps=short)
    add(run_key(strategy, t, "teacher, short budget"), strategy=strategy, temperature=t,
        teacher_logits=teacher.logits, steps=short)

    for key, run in runs.items():
        if not key.startswith("hard"):
            # Each budget against the hard student of the same budget.
            baseline = runs["hard [short budget]" if "short budget" in key else "hard"]
            run["gap_closed"] = gap_closed(
                baseline["test_errors"]["values"], run["test_errors"]["values"], teacher.test_errors
            )
    candidates = [k for k in runs if "short budget" not in k]
    return {
        "runs": runs,
        "diagnostics": soft_label_diagnostics(digits, {"teacher": teacher.logits, "out-of-fold": teacher.oof_logits}),
        "best_plain": best_plain,
        "best_remedy": best([k for k in runs if k.endswith("[out-of-fold]")]),
        "chosen": best(candidates),
    }


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


def run_demo(config: DemoConfig) -> dict:
    """All five steps; writes report.md, plots and results.json into `config.output_dir`. Returns the results."""
    from .report.demo import write_report

    start = time.perf_counter()
    threads = torch.get_num_threads()
    # Models this small spend longer synchronising threads than computing: on this 2-core machine, with another
    # job running, a student took 1.2 s on one thread and 30 s on two (spinning threads fight for the cores).
    torch.set_num_threads(1)
    # Each Trainer.train() ends in a full gc.collect(); freezing the objects that exist now (the imported
    # libraries) keeps those ~100 collections from walking them again: about a fifth of the demo's time.
    gc.freeze()
    try:
        digits = load_digits_splits(config.seed, config.validation_size, config.test_size)
        sizes = {name: len(rows) for name, rows in digits.splits.items()}
        logger.info("step 1: digits split %s, stratified, seed %d", sizes, config.seed)
        teacher = teach(config, digits)
        logger.info("step 2: teacher CNN: %d test errors of %d", teacher.test_errors, sizes["test"])
        teacher.oof_logits = out_of_fold_logits(config, digits, teacher)
        step3 = soft_vs_hard(config, digits, teacher)
        step4 = dark_knowledge(config, digits, teacher.logits)
        soft_t = temperature_of(step3["best_plain"])
        step5 = few_labels(config, digits, teacher, soft_t, step3["runs"].get(run_key("soft", soft_t, "teacher")))
    finally:
        gc.unfreeze()
        torch.set_num_threads(threads)
    results = {
        "config": asdict(config),
        "split": {"seed": config.seed, "stratified": True, **sizes},
        "teacher": {
            "test_errors": teacher.test_errors,
            "validation_errors": teacher.validation_errors,
            "parameters": teacher.parameters,
        },
        "student_parameters": count_parameters(DigitsMLP(config.student_hidden)),
        "soft_vs_hard": step3,
        "dark_knowledge": step4,
        "few_labels": step5,
        "seconds": time.perf_counter() - start,
    }
    write_report(config.output_dir, results)
    return results


def temperature_of(key: str) -> float:
    """The temperature in a run key such as 'soft T=4 [teacher]'."""
    return float(key.split("T=")[1].split()[0])
