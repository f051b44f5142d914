"""The steps a user runs, as plain functions: teach, soft labels, distill (evaluate is in `evaluation`).

Each step asks the task (`kdistill.tasks`) how rows become inputs, labels and batches, the run directory
(`kdistill.rundir`) where things lie, and `kdistill.soft_labels.produce` for the teachers' cached outputs; a
`DistillationTrainer` does every training, the teacher's, the fold teachers' and the student's (`make_trainer`).
"""

import dataclasses
import json
import logging
import os
import shutil
import time
from typing import Any

import torch

from . import metrics, schedules
from .config import RunConfig, UserError
from .data import load_split, save_label_map, split_file, warn_if_validation_is_test
from .files import write_json
from .losses import FEATURE_TERMS, ensemble_logits, layer_map, needs_teacher
from .rundir import (
    checkpoint_step,
    check_output_dir,
    holding_output_dir,
    is_main,
    paths,
    resume_point,
    take_output_dir,
    teacher_dir,
    teachers,
)
from .soft_labels import hash_files, predict_logits
from .soft_labels.produce import (
    SPLITS,
    ConcatSources,
    Scaled,
    backbone,
    classes,
    dense,
    is_topk,
    leading,
    per_row,
    out_of_fold,
    teacher_outputs,
    teacher_seed,
)
from .students import (
    build_student,
    check_label_count,
    copied_layers,
    count_parameters,
    load_classifier,
    load_tokenizer,
    vocabulary_texts,
)
from .tasks import get_task
from .trainer import DistillationTrainer
from .validate import check_run

logger = logging.getLogger(__name__)

__all__ = ["SPLITS", "combine_soft_labels", "distill", "label_map", "make_soft_labels", "make_trainer", "prepare_split",
           "teach", "teacher_soft_labels"]


def task_of(config: RunConfig):
    return get_task(config.data.task)


def label_map(config: RunConfig) -> dict[str, int]:
    """The label map of the training data (stable: the same data gives the same map)."""
    train = load_split(config.data, "train")
    if train is None:
        raise UserError("data: no training data configured")
    warn_if_validation_is_test(config.data)
    task = task_of(config)
    label2id = task.build_label_map(train, config.data, config.data.train_file or "the training data")
    # A validation or test label the training data lacks, said now rather than after the teacher's pass over the
    # training rows (the labels are one column of each file; the tables are read again, from datasets' cache, later).
    seen = {config.data.train_file}
    for split in ("validation", "test"):
        path = split_file(config.data, split)
        if path is not None and path not in seen:
            seen.add(path)
            task.encode_labels(load_split(config.data, split), config.data, label2id, path)
    return label2id


def _trust(config: RunConfig) -> dict[str, bool]:
    return {"trust_remote_code": config.teacher.trust_remote_code}


# Teachers loaded in this process, by the content of their files (soft_labels.hash_files, memoised): one
# `kdistill run` (its soft-label pass, a from_teacher student, evaluation) loads a teacher's weights once.
_TEACHERS: dict[tuple, Any] = {}


def load_teacher(config: RunConfig, path: str, label2id: dict[str, int] | None = None):
    """The teacher model at `path` (loaded once per process and content) and its tokenizer."""
    key = (hash_files([path]), tuple(sorted((label2id or {}).items())))
    if key not in _TEACHERS:
        model = load_classifier(path, "teacher", label2id, **_trust(config), auto_model=task_of(config).auto_model)
        tokenizer = load_tokenizer(path, "teacher tokenizer", **_trust(config))
        _check_vocabulary(model, tokenizer, "teacher")
        model.to(config.distill.device)
        _TEACHERS.clear()  # one teacher at a time is what a run needs; a sweep of many must not pile them up
        _TEACHERS[key] = (model, tokenizer)
    return _TEACHERS[key]


def prepare_split(config: RunConfig, split: str, tokenizer, label2id: dict[str, int], offset: int = 0,
                  who: str = "student tokenizer"):
    """A split's rows as the task's model inputs, labels (-100 for transfer rows), `idx` from `offset` and `length`."""
    table = load_split(config.data, split)
    if table is None:
        return None
    task = task_of(config)
    source = split_file(config.data, split) or split
    labels = None if split == "transfer" else task.encode_labels(table, config.data, label2id, source)
    return task.prepare(table, tokenizer, config.data, labels, index_offset=offset, source=source, who=who)


def _check_vocabulary(model, tokenizer, what: str) -> None:
    """A tokenizer with more ids than the model has embeddings would fail mid-training with an index error."""
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    rows = getattr(embeddings, "num_embeddings", None)
    if rows is not None and len(tokenizer) > rows:
        raise UserError(
            f"{what}'s tokenizer has {len(tokenizer)} tokens but its embeddings hold {rows}; "
            "use the tokenizer the model was made with (student_tokenizer), or student_init=from_config"
        )


def make_trainer(task, model, args, train_dataset, eval_dataset=None, tokenizer=None, teacher_logits=None,
                 online_teachers=None, teacher_tokenizers=None, teacher_weights: list[float] | None = None,
                 collate: dict | None = None, layer_map: dict[int, int] | None = None,
                 ensemble_combine: str = "probabilities") -> DistillationTrainer:
    """The one way kdistill builds a trainer: the task's collator (with the teacher's cached logits, if any) and
    its metrics, for any model the task's batches fit (a transformers model or a plain nn.Module).

    Args:
        teacher_logits: a source indexable by row (a tensor or a cache), or a list of them (several teachers,
            combined by `losses.ensemble_logits` with `teacher_weights`, equal weights by default).
        ensemble_combine: how several teachers combine, cached or online ("probabilities" or "logits").
        collate: extra arguments for the task's collator (e.g. the image task's `max_shift`, `seed`).
    """
    collate = dict(collate or {})
    weights = args.objective_weights()
    if needs_teacher(weights):
        first = teacher_logits[0] if isinstance(teacher_logits, list) else teacher_logits
        width = classes(first) if first is not None else None
        if width is None and online_teachers:
            head = online_teachers[0][0].get_output_embeddings() if hasattr(online_teachers[0][0],
                                                                            "get_output_embeddings") else None
            width = getattr(head, "out_features", None)
        task.check_models(model, width, weights)
    if isinstance(teacher_logits, list):
        if len(teacher_logits) == 1:
            teacher_logits = teacher_logits[0]
        else:
            # Cached teachers are combined once per batch in the collator, at one temperature. Under a temperature
            # schedule that is args.temperature, the schedule's starting value: the mixture stays the one made at
            # that temperature while the loss's temperature follows the schedule (an online teacher ensemble is
            # combined in the trainer, at each step's temperature).
            w, t = teacher_weights or [1.0] * len(teacher_logits), args.temperature
            if args.temperature_schedule is not None:
                logger.info("several cached teachers are combined at the temperature schedule's starting value, "
                            "T=%g, for the whole run", t)
            collate["combine"] = lambda parts: ensemble_logits(parts, w, t, ensemble_combine)
            collate["weights"] = w  # for top-k caches, which the loss takes teacher by teacher
    trainer = DistillationTrainer(
        model=model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=task.collator(tokenizer, teacher_logits, **collate),
        processing_class=tokenizer,
        compute_metrics=task.trainer_metrics_for(model) if eval_dataset is not None else None,
        task=task,
        online_teachers=online_teachers,
        teacher_tokenizers=teacher_tokenizers,
        layer_map=layer_map,
    )
    trainer.ensemble_combine = ensemble_combine
    return trainer


def _layer_map(config: RunConfig, student, teacher) -> dict[int, int] | None:
    """The feature terms' `{student_layer: teacher_layer}`: the config's, or by default the layers a from_teacher
    student was copied from (uniform for any other student). None when a model has no layer count (the trainer
    then says what the feature terms need)."""
    n_student = getattr(getattr(student, "config", None), "num_hidden_layers", None)
    n_teacher = getattr(getattr(teacher, "config", None), "num_hidden_layers", None)
    if n_student is None or n_teacher is None:
        return None
    copied = copied_layers(config.student, teacher) if config.student.student_init == "from_teacher" else None
    try:
        return layer_map(config.distill.layer_map_spec(), n_student, n_teacher, copied)
    except ValueError as err:
        raise UserError(f"distill: {err} (the student has {n_student} layers, the teacher {n_teacher})") from None


def _loss_curve(trainer) -> list[list[float]]:
    return [[e["step"], e["loss"]] for e in trainer.state.log_history if "loss" in e]


def _teacher_args(config: RunConfig, output_dir: str):
    """The Trainer settings of teacher fine-tuning: the teacher section's, on gold labels. The student's max_steps
    and schedules are not the teacher's (max_steps would override teacher_epochs)."""
    t = config.teacher
    return dataclasses.replace(
        config.distill, output_dir=output_dir, strategy="hard", objective=None, num_train_epochs=t.teacher_epochs,
        max_steps=-1, learning_rate=t.teacher_learning_rate, per_device_train_batch_size=t.teacher_batch_size,
        save_strategy="no", resume_from_checkpoint=None, seed=teacher_seed(config), temperature_schedule=None,
        alpha_schedule=None,
    )


def fold_assignment(rows: int, folds: int, seed: int) -> list[int]:
    """Each row's fold: a seeded shuffle dealt round-robin, so fold sizes differ by at most one."""
    order = torch.randperm(rows, generator=torch.Generator().manual_seed(seed)).tolist()
    fold_of = [0] * rows
    for position, row in enumerate(order):
        fold_of[row] = position % folds
    return fold_of


def _train_fold_teacher(config: RunConfig, label2id, tokenizer, train, fold: int) -> torch.nn.Module:
    """Fine-tune one out-of-fold teacher from the backbone on `train` (the other folds' rows); returns it."""
    model = load_classifier(backbone(config), "teacher", label2id, **_trust(config), auto_model=task_of(config).auto_model)
    out = os.path.join(paths(config).cache, f"fold-{fold}")
    trainer = make_trainer(task_of(config), model, _teacher_args(config, out), train, tokenizer=tokenizer)
    trainer.train()
    shutil.rmtree(out, ignore_errors=True)  # nothing is saved there but the Trainer's own bookkeeping
    return trainer.model


def out_of_fold_logits(config: RunConfig, progress: bool = False) -> tuple[torch.Tensor, dict]:
    """Soft labels for the training rows from `teacher_folds` teachers, each blind to the fold it labels.

    Returns the logits in row order and the bookkeeping: each row's fold, and per fold the number of rows its
    teacher trained on and labelled, and the seconds it took.
    """
    k, seed, task = config.teacher.teacher_folds, teacher_seed(config), task_of(config)
    label2id = label_map(config)
    tokenizer = load_tokenizer(backbone(config), "teacher tokenizer", **_trust(config))
    train = prepare_split(config, "train", tokenizer, label2id, who="teacher tokenizer")
    fold_of = fold_assignment(len(train), k, seed)
    logits, per_fold, _ = out_of_fold(
        fold_of,
        lambda fold, rows: _train_fold_teacher(config, label2id, tokenizer, train.select(rows), fold),
        lambda teacher, rows: predict_logits(teacher, task.model_rows(train.select(rows), tokenizer),
                                             task.pad_inputs(tokenizer),
                                             batch_size=config.distill.per_device_eval_batch_size),
    )
    return logits, {"folds": k, "seed": seed, "fold_of_row": fold_of, "per_fold": per_fold}


@holding_output_dir
def teach(config: RunConfig) -> dict[str, float]:
    """Fine-tune the teacher on the gold labels (or check the given fine-tuned ones). Returns its eval metrics."""
    check_run(config)
    p = paths(config)
    label2id = label_map(config)
    stale = check_output_dir(config, "teach")
    if not config.teacher.teacher_train:
        for path, _ in teachers(config):
            model, _ = load_teacher(config, path, label2id)
            check_label_count(model, len(label2id), "teacher")
        take_output_dir(config, stale)
        if is_main(config):
            save_label_map(label2id, p.out)
        logger.info("teacher: using the fine-tuned %s as is", ", ".join(path for path, _ in teachers(config)))
        return {}
    done = os.path.join(p.teacher, "teach_results.json")  # written last: the teacher is complete
    if os.path.isfile(done) and not config.distill.overwrite:
        # check_output_dir found this config's teacher here: a rerun (say of `kdistill run`) reuses it.
        logger.info("teacher: reusing the one fine-tuned in %s (pass --overwrite to train it again)", p.teacher)
        with open(done, encoding="utf-8") as fh:
            return json.load(fh)
    model = load_classifier(config.teacher.teacher_model, "teacher", label2id, **_trust(config),
                            auto_model=task_of(config).auto_model)
    tokenizer = load_tokenizer(config.teacher.teacher_model, "teacher tokenizer", **_trust(config))
    _check_vocabulary(model, tokenizer, "teacher")
    train = prepare_split(config, "train", tokenizer, label2id, who="teacher tokenizer")
    validation = prepare_split(config, "validation", tokenizer, label2id, who="teacher tokenizer")
    trainer = make_trainer(task_of(config), model, _teacher_args(config, p.teacher), train, validation, tokenizer)
    with trainer.args.main_process_first(local=False, desc="output_dir"):
        take_output_dir(config, stale)
        if is_main(config):
            save_label_map(label2id, p.out)
    start = time.perf_counter()
    result = trainer.train()
    out = {"train_loss": result.training_loss, "train_seconds": time.perf_counter() - start, "loss_curve": _loss_curve(trainer)}
    if validation is not None:
        out.update(trainer.evaluate())
    trainer.save_model(p.teacher)
    if is_main(config):
        save_label_map(label2id, p.teacher)
        write_json(os.path.join(p.teacher, "teach_results.json"), out)
    return out


def _loader(config: RunConfig, label2id: dict[str, int] | None = None):
    return lambda path: load_teacher(config, path, label2id if label2id is not None else label_map(config))


def teacher_soft_labels(config: RunConfig, splits: tuple[str, ...] = SPLITS, progress: bool = False,
                        together: bool = True) -> dict[str, list]:
    """Each teacher's logits for each configured split, in memory, one entry per teacher in the config's order (a
    tensor [rows, C], or for ragged items a list of per-row tensors): read from its cache, or computed once and
    cached. See `teacher_outputs` for what happens under torchrun."""
    sources = teacher_outputs(config, splits, progress, together, loader=_loader(config))
    return {split: [per_row(s) for s in parts] for split, parts in sources.items()}


def combine_soft_labels(config: RunConfig, parts: list, temperature: float | None = None
                        ) -> torch.Tensor | list[torch.Tensor]:
    """One split's teachers' logits (`teacher_soft_labels`) as one teacher's: combined by `losses.ensemble_logits`
    with the run's weights and ensemble_combine, at `temperature` (default: the run's; one teacher: its logits as
    they are)."""
    if len(parts) == 1:
        return parts[0]
    weights = [w for _, w in teachers(config)]
    t = config.distill.temperature if temperature is None else temperature
    how = config.teacher.ensemble_combine
    if isinstance(parts[0], list) and len(parts[0]) and isinstance(parts[0][0], tuple):
        # top-k caches (a causal LM's): kept side by side per row, scored as their mixture at T = 1 (the loss
        # takes them teacher by teacher: losses.ensemble_topk_divergence)
        from .metrics import TopKMixture

        return [TopKMixture(rows, weights) for rows in zip(*parts)]
    if isinstance(parts[0], list):  # ragged sources (words, tokens): row by row
        return [ensemble_logits(list(rows), weights, t, how) for rows in zip(*parts)]
    return ensemble_logits(parts, weights, t, how)


def make_soft_labels(config: RunConfig, splits: tuple[str, ...] = SPLITS, progress: bool = False,
                     together: bool = True) -> dict[str, torch.Tensor]:
    """The teacher's logits for each configured split, in memory (several teachers: combined by
    `combine_soft_labels`): read from the cache, or computed once and cached.

    Training reads the cache lazily instead (`soft_labels.produce.teacher_outputs`); this whole-split view is for
    small splits, diagnostics and evaluation. See `teacher_outputs` for what happens under torchrun.
    """
    parts = teacher_soft_labels(config, splits, progress, together)
    return {split: combine_soft_labels(config, per_teacher) for split, per_teacher in parts.items()}


# The soft-label diagnostics read this many of a split's first rows (all of them in smaller splits), and at most
# about DIAGNOSTIC_FLOATS logits of them: a causal LM's row is a block of tokens, each a vocabulary wide (all of tiny
# Shakespeare's 1,201 training blocks of 256 tokens over 4,096 classes are 5 GB of float32, which the diagnostics'
# softmax copies took past 24 GiB). A classifier's 200,000 rows of a few classes stay well inside it.
DIAGNOSTIC_ROWS = 200_000
DIAGNOSTIC_FLOATS = 1 << 25


def diagnostic_rows(source, rows: int) -> int:
    """How many of a split's first `rows` rows the soft-label diagnostics read from `source` (a cache or a tensor):
    at most DIAGNOSTIC_ROWS, and as many as keep their logits near DIAGNOSTIC_FLOATS (at least one row)."""
    stored = max(len(source), 1)
    if isinstance(source, list):  # ragged rows in memory ([items_i, C] each)
        items, width = sum(len(r) for r in source), (source[0].shape[-1] if source else 1)
    else:  # a cache, or a tensor with one item per row
        items, width = getattr(source, "items", None) or stored, classes(source)
    per_row = max(items, 1) / stored * max(width, 1)
    return max(1, min(rows, DIAGNOSTIC_ROWS, int(DIAGNOSTIC_FLOATS // per_row)))


def _item_labels(task, part, rows: int, items: int) -> torch.Tensor | None:
    """The labels of a split's first `rows` rows, one per item of the teacher's soft labels (None when the student's
    items are not the teacher's: words another tokenizer truncated elsewhere)."""
    labels = task.seen_item_labels(part.select(range(rows)))
    if isinstance(labels, list):
        labels = torch.cat(labels) if labels else torch.empty(0, dtype=torch.long)
    return labels if labels.numel() == items else None


def _soft_label_diagnostics(teacher_logits: dict[str, torch.Tensor], parts: dict, temperature: float,
                            task=None, rows_read: dict[str, int] | None = None) -> dict:
    """How informative the soft labels the student trains on are, at its temperature; logged, with a warning when
    they are nearly one-hot. `teacher_logits[split]` holds the items of the split's first `rows_read[split]` rows
    (default: DIAGNOSTIC_ROWS or fewer)."""
    out = {}
    for split in ("train", "transfer"):
        if split in teacher_logits and split in parts:
            rows = min(len(parts[split]), (rows_read or {}).get(split, DIAGNOSTIC_ROWS))
            labels = None
            if "labels" in parts[split].column_names:
                labels = (_item_labels(task, parts[split], rows, len(teacher_logits[split])) if task is not None
                          else torch.tensor(parts[split]["labels"][:rows]))
            out[split] = metrics.soft_label_stats(teacher_logits[split], temperature, labels)
            if rows < len(parts[split]):
                out[split]["rows"] = rows
            stats = out[split]
            logger.info("soft labels (%s, T=%g): mean top probability %.3f, normalised entropy %.2f%s", split,
                        temperature, stats["mean_top_prob"], stats["normalized_entropy"],
                        f", teacher wrong on {stats['teacher_error_rate']:.1%}" if "teacher_error_rate" in stats else "")
            warning = metrics.one_hot_warning(stats, temperature, split) or \
                metrics.uniform_warning(stats, temperature, split)
            if warning:
                logger.warning(warning)
    return out


def _calibrated(sources: dict[str, list], validation) -> tuple[dict[str, list], dict]:
    """Temperature scaling (Guo et al. 2017): each teacher's temperature fitted on the validation split's labels,
    and every split's soft labels read as logits / T_fit. Returns the scaled sources and what was fitted."""
    if validation is None or "validation" not in sources:
        raise UserError("teacher_calibration: temperature needs the validation split's soft labels and labels")
    labels = torch.tensor(validation["labels"][:])
    record = {"method": "temperature", "teachers": []}
    factors = []
    for part in sources["validation"]:
        logits = dense(part)
        t_fit = metrics.fit_temperature(logits, labels)
        factors.append(1.0 / t_fit)
        entry = {"temperature": t_fit, "validation_nll": [metrics.nll(logits, labels), metrics.nll(logits, labels, t_fit)],
                 "validation_ece": [metrics.expected_calibration_error(logits, labels),
                                    metrics.expected_calibration_error(logits / t_fit, labels)]}
        record["teachers"].append(entry)
        logger.info("teacher calibration: temperature %.3f fitted on validation (NLL %.4f -> %.4f, ECE %.4f -> %.4f)",
                    t_fit, *entry["validation_nll"], *entry["validation_ece"])
    scaled = {split: [Scaled(p, f) for p, f in zip(parts, factors)] for split, parts in sources.items()}
    return scaled, record


def _concat_sources(sources: dict[str, list], order: list[str]) -> list:
    """Per teacher, one row-indexable source over the splits in `order` (the collator's one index space)."""
    count = len(next(iter(sources.values())))
    return [ConcatSources([sources[s][i] for s in order if s in sources]) for i in range(count)]


def _aligned_parts(config: RunConfig, task, parts: dict, sources: dict, tokenizer) -> dict:
    """For the uld term: each split's blocks with, per position, the teacher's cached item aligned with it by
    characters (`tasks.causal_lm`), in the one index space of the teacher's rows. The teacher's tokenizer (not its
    model) recomputes where its tokens end."""
    if not hasattr(task, "align_to_teacher"):
        raise UserError(f"the uld term is for the causal_lm task, not {task.name}")
    teacher_tokenizer = load_tokenizer(teachers(config)[0][0], "teacher tokenizer", **_trust(config))
    out, offset = {}, 0
    for split, part in parts.items():
        rows = len(sources[split][0])
        out[split] = task.align_to_teacher(part, load_split(config.data, split), tokenizer, teacher_tokenizer,
                                           config.data, rows, offset)
        offset += rows
    return out


@holding_output_dir
def distill(config: RunConfig, progress: bool = False) -> dict[str, float]:
    """Train the student on the configured objective; save it in <output_dir>/student. Returns train metrics."""
    check_run(config)
    p = paths(config)
    args = config.distill
    task = task_of(config)
    label2id = label_map(config)
    stale = check_output_dir(config, "distill")
    done = os.path.join(p.student, "distill_results.json")  # written last: the student is complete
    if os.path.isfile(done) and not args.overwrite and not args.resume_from_checkpoint:
        # check_output_dir found this config's finished student here: a rerun (say of `kdistill run` after a
        # failed evaluation) reuses it instead of resuming from its last checkpoint to train no steps.
        logger.info("student: reusing the one trained in %s (pass --overwrite to train it again)", p.student)
        with open(done, encoding="utf-8") as fh:
            return json.load(fh)
    weights = args.objective_weights()
    online = args.soft_label_source == "online"
    wants_teacher = needs_teacher(weights)
    sources = teacher_outputs(config, SPLITS, progress, loader=_loader(config, label2id)) \
        if wants_teacher and not online else {}
    tdir = teacher_dir(config)
    teacher = load_teacher(config, tdir, label2id)[0] if config.student.student_init == "from_teacher" else None
    texts = vocabulary_texts(config.data) if config.student.student_init == "bilstm" else None
    student, tokenizer = build_student(config.student, teacher, tdir, label2id, texts=texts, **_trust(config),
                                       auto_model=task.auto_model)
    _check_vocabulary(student, tokenizer, "student")
    for split, parts in sources.items():
        for part in parts:
            if label2id and classes(part) != len(label2id):
                raise UserError(
                    f"soft labels for {split} have {classes(part)} classes but the data has {len(label2id)}; "
                    "teacher and student must share the label set"
                )

    # One index space over all splits, so a single collator serves training and evaluation.
    parts, offset = {}, 0
    for split in ("train", "transfer", "validation"):
        if split == "transfer" and not (wants_teacher or task.transfer_labelled):
            continue
        part = prepare_split(config, split, tokenizer, label2id, offset)
        if part is not None:
            parts[split] = part
            offset += len(part)
    if sources and "uld" in weights:
        parts = _aligned_parts(config, task, parts, sources, tokenizer)
    train = parts["train"]
    if "transfer" in parts:
        from datasets import concatenate_datasets

        train = concatenate_datasets([train, parts["transfer"]])
    calibration = None
    topk = any(is_topk(part) for parts in sources.values() for part in parts)
    if sources and config.teacher.teacher_calibration == "temperature":
        sources, calibration = _calibrated(sources, parts.get("validation"))
    combined = None
    if sources:
        combined = _concat_sources(sources, list(parts))
        if len(combined[0]) != offset and "uld" not in weights:  # uld: the teacher's blocks are its own
            raise UserError(
                f"the soft-label cache holds {len(combined[0]):,} rows but the student's data has {offset:,}: the "
                "cache was made from other data (delete it to recompute) or the teacher's tokenizer splits the text "
                "otherwise than the student's (a causal LM's blocks are counted in its tokens; transformers may load a "
                "tokenizer as its model type's class, such as Qwen2Tokenizer, with that class's pre-tokenizer); give "
                "both one tokenizer, or use the cross-tokenizer term uld")
    teacher_weights = [w for _, w in teachers(config)]
    diagnostics = {}
    if sources and not topk:  # the diagnostics read whole distributions
        # On a split's first rows (diagnostic_rows): a large cache is never read whole into memory.
        rows_read = {s: diagnostic_rows(v[0], len(v[0])) for s, v in sources.items() if s in ("train", "transfer")}
        in_memory = {s: ensemble_logits([leading(x, rows_read[s]) for x in v], teacher_weights, args.temperature,
                                        config.teacher.ensemble_combine)
                     for s, v in sources.items() if s in ("train", "transfer")}
        diagnostics = _soft_label_diagnostics(in_memory, parts, args.temperature, task, rows_read)
    online_teachers = teacher_tokenizers = None
    wants_features = any(name in FEATURE_TERMS for name in weights)
    if online and wants_teacher or wants_features:
        # Feature terms read the teacher's inside, so it runs in the trainer even when its logits are cached.
        loaded = [(load_teacher(config, path, label2id), w) for path, w in teachers(config)]
        online_teachers = [(model, w) for (model, _), w in loaded]
        teacher_tokenizers = [tok for (_, tok), _ in loaded]

    trainer = make_trainer(task, student, dataclasses.replace(args, output_dir=p.student), train,
                           parts.get("validation"), tokenizer, combined, online_teachers, teacher_tokenizers,
                           teacher_weights, layer_map=_layer_map(config, student, online_teachers[0][0]) if wants_features else None,
                           ensemble_combine=config.teacher.ensemble_combine)
    # The first process clears (with overwrite) and records; the others find the checkpoint it left, or none.
    with args.main_process_first(local=False, desc="output_dir"):
        take_output_dir(config, stale)
        checkpoint = resume_point(config, p.student)
    start = time.perf_counter()
    try:
        result = trainer.train(resume_from_checkpoint=checkpoint)
    except Exception as err:
        # Failing before a step past the checkpoint means failing to load it (a truncated file, a pickle that
        # torch.load(weights_only=True) refuses): the user's to fix, not a bug to print a traceback for.
        if checkpoint is None or trainer.state.global_step > checkpoint_step(checkpoint):
            raise
        first = (str(err).strip().splitlines() or [""])[0]
        raise UserError(
            f"could not resume from {checkpoint} ({type(err).__name__}: {first}); "
            "delete that checkpoint, or pass --overwrite to start over"
        ) from None
    out = {
        "train_loss": result.training_loss,
        "train_seconds": time.perf_counter() - start,
        "train_rows": len(train),
        "student_parameters": count_parameters(student),
        "strategy": args.strategy,
        "objective": {name: schedules.to_data(w) for name, w in weights.items()},
        "temperature": args.temperature,
        "alpha": args.alpha,
        # What followed a schedule, by the name it is logged under: its spec (as the config writes it) and its name.
        # A mixed preset's alpha schedule shows as its two weights.
        "schedules": {key: {"spec": w.spec(), "name": w.name} for key, w in (
            ("temperature", args.scheduled("temperature")), *((f"weight_{name}", w) for name, w in weights.items()))
            if isinstance(w, schedules.Schedule)},
        "loss_curve": _loss_curve(trainer),
        "log_history": trainer.state.log_history,
    }
    if diagnostics:
        out["soft_label_stats"] = diagnostics
    if topk:
        first = next(iter(sources.values()))[0]
        out["soft_label_cache"] = {"payload": "topk", "top_k": first.top_k, "classes": first.classes,
                                   "bytes_per_token": first.bytes_per_item}
    if calibration:
        out["teacher_calibration"] = calibration
    if "validation" in parts:
        out.update(trainer.evaluate())
    trainer.save_model(p.student)
    if is_main(config):
        save_label_map(label2id, p.student)
        write_json(done, out)
    return out
