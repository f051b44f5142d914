"""The four steps a user runs, as plain functions: teach, soft labels, distill, evaluate.

A run directory (`output_dir`) holds everything a run makes:

    labels.json         the label -> id map, shared by teacher and student
    teacher/            the fine-tuned teacher (when teacher_train)
    soft_labels/        the teacher's logits per split, fingerprinted (see soft_labels.py)
    student/            the trained student, its tokenizer and checkpoints
    eval.json           quality, fidelity, calibration, size and speed
"""

import dataclasses
import json
import logging
import os
import pickle
import shutil
import time
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers.trainer_pt_utils import safe_globals
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from . import metrics
from .config import RunConfig, UserError, config_to_dict
from .data import (
    DistillationCollator,
    build_label_map,
    encode_chunks,
    encode_labels,
    load_split,
    save_label_map,
    split_limit,
    tokenize,
)
from .evaluation import measure_speed, size_on_disk
from .files import write_json
from .soft_labels import cache_path, fingerprint, hash_files, predict_logits, read_cache, write_cache
from .students import (
    build_student,
    check_label_count,
    count_parameters,
    load_classifier,
    load_tokenizer,
    resolve_model_path,
    vocabulary_texts,
)
from .trainer import DistillationTrainer

logger = logging.getLogger(__name__)

SPLITS = ("train", "transfer", "validation", "test")
RUN_CONFIG = "run_config.json"
# Rows tokenised and labelled by the teacher at a time in the soft-label pass (memory: one chunk's tokens).
SOFT_LABEL_CHUNK_ROWS = 10_000

# Fields that change where a run logs, how it checkpoints or how fast it evaluates, not what it trains: a rerun
# that changes only these continues the run in output_dir. Any other change is another run (see check_output_dir).
_UNTRACKED = {
    "data": ("test_file",),
    "teacher": ("trust_remote_code",),
    "distill": (
        "output_dir", "overwrite", "resume_from_checkpoint", "soft_label_cache", "speed_batches",
        "per_device_eval_batch_size", "report_to", "run_name", "project", "disable_tqdm", "local_rank", "debug",
        "skip_memory_metrics", "push_to_hub", "do_train", "do_eval", "do_predict", "include_num_input_tokens_seen",
        "ddp_timeout", "ddp_backend", "ddp_find_unused_parameters", "ddp_bucket_cap_mb", "ddp_broadcast_buffers",
    ),
}
_UNTRACKED_PREFIXES = ("logging_", "log_", "save_", "eval_", "hub_", "trackio_", "dataloader_")


def _paths(config: RunConfig) -> dict[str, str]:
    out = config.output_dir
    return {
        "out": out,
        "teacher": os.path.join(out, "teacher"),
        "student": os.path.join(out, "student"),
        "cache": config.distill.soft_label_cache or os.path.join(out, "soft_labels"),
        "eval": os.path.join(out, "eval.json"),
    }


def label_map(config: RunConfig) -> dict[str, int]:
    """The label map of the training data (stable: the same data gives the same map)."""
    train = load_split(config.data, "train")
    if train is None:
        raise UserError("data: no training data configured")
    return build_label_map(train[config.data.label_column], config.data.train_file or "the training data")


def _trust(config: RunConfig) -> dict[str, bool]:
    return {"trust_remote_code": config.teacher.trust_remote_code}


def _is_main(config: RunConfig) -> bool:
    """Whether this process writes the run's files (always, unless launched by torchrun/accelerate as rank > 0)."""
    return config.distill.process_index == 0


def _tracked(record: dict[str, dict[str, Any]], sections: tuple[str, ...]) -> dict[str, Any]:
    """The fields of a run record that define what the run trains, as {"section.field": value}."""
    out = {}
    for section in sections:
        for key, value in record.get(section, {}).items():
            if key in _UNTRACKED.get(section, ()) or key.startswith(_UNTRACKED_PREFIXES):
                continue
            out[f"{section}.{key}"] = value
    return out


def _first_difference(old: dict[str, Any], new: dict[str, Any]) -> str | None:
    # A field missing from the old record (written by an older kdistill) is not a difference.
    for key, value in new.items():
        if key in old and old[key] != value:
            return f"{key}={old[key]!r}, not {value!r}"
    return None


def _remove(path: str) -> None:
    if os.path.isdir(path):
        shutil.rmtree(path)
    elif os.path.exists(path):
        os.remove(path)


def check_output_dir(config: RunConfig, verb: str) -> list[str]:
    """Check that output_dir may take this run; returns what `take_output_dir` deletes first (with overwrite).

    An output_dir holding the products of a run made with another config (`run_config.json` differs in a tracked
    field) is refused, unless `overwrite`, which deletes those products: teach replaces teacher/ (and so the
    student and eval.json made from it), distill replaces student/ and eval.json (with overwrite, also when the
    config is the same: the run starts over). The same config is allowed: that is a resumed run. The soft-label
    cache is never deleted: it is keyed by what produced it. Nothing is written here, so that a run that stops on
    bad input later leaves the directory as it was.

    Args:
        verb: "teach" or "distill".
    """
    paths = _paths(config)
    out = paths["out"]
    for what, path in (("output_dir", out), ("soft_label_cache", paths["cache"])):
        if os.path.exists(path) and not os.path.isdir(path):
            raise UserError(f"{what} {path} is a file, not a directory; give a directory (it is created if missing)")
    record_path = os.path.join(out, RUN_CONFIG)
    old = None
    if os.path.isfile(record_path):
        try:
            with open(record_path, encoding="utf-8") as fh:
                old = json.load(fh)
        except (OSError, ValueError) as err:
            if not config.distill.overwrite:
                raise UserError(f"{record_path} is unreadable ({str(err).splitlines()[0]}); pass --overwrite to replace "
                                "the run in that directory") from None
    # The products this verb would replace, and which parts of the config they depend on. Distilling from this
    # run's own fine-tuned teacher depends on the config that taught it, even before a student exists.
    teacher_made = os.path.isdir(paths["teacher"]) and config.teacher.teacher_train
    if verb == "teach":
        products = [paths["teacher"], paths["student"], paths["eval"]] if config.teacher.teacher_train else []
        sections = ("data", "teacher") if teacher_made else ()
    else:
        products = [paths["student"], paths["eval"]]
        sections = ("data", "teacher", "student", "distill") if os.path.isdir(paths["student"]) else \
            ("data", "teacher") if teacher_made else ()
    existing = [p for p in products if os.path.exists(p)]
    reason = None
    if sections and old is None:
        reason = f"no {RUN_CONFIG} says which config made its {', '.join(os.path.basename(p) for p in existing)}"
    elif sections:
        diff = _first_difference(_tracked(old, sections), _tracked(config_to_dict(config), sections))
        reason = diff and f"it holds a run made with {diff}"
    if reason and not config.distill.overwrite:
        raise UserError(f"output_dir {out}: {reason}; use another output_dir, or pass --overwrite to replace that run")
    return existing if config.distill.overwrite and (reason or verb == "distill") else []


def take_output_dir(config: RunConfig, stale: list[str]) -> None:
    """Delete `stale` (from check_output_dir) and record this run's config in output_dir/run_config.json."""
    if not _is_main(config):
        return
    if stale:
        logger.warning("overwrite: deleting %s", ", ".join(stale))
        for path in stale:
            _remove(path)
    write_json(os.path.join(config.output_dir, RUN_CONFIG), config_to_dict(config))


def teacher_dir(config: RunConfig) -> str:
    """Where the teacher the student learns from lives: the fine-tuned one of this run, or the one given."""
    if config.teacher.teacher_train:
        path = _paths(config)["teacher"]
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise UserError(f"no fine-tuned teacher in {path}: run `kdistill teach` first (or set teacher_train: false)")
        return path
    return resolve_model_path(config.teacher.teacher_model)


def _accuracy(pred) -> dict[str, float]:
    return {"accuracy": metrics.accuracy(pred.predictions, pred.label_ids)}


def _model_rows(table, tokenizer) -> list[dict]:
    """The model-input fields of a tokenised split as a list of rows (read column-wise: row access is slow)."""
    names = [k for k in tokenizer.model_input_names if k in table.column_names]
    return [dict(zip(names, values)) for values in zip(*(table[k][:] for k in names))]


def _pad(tokenizer):
    return lambda rows: dict(tokenizer.pad(rows, return_tensors="pt"))


def _tokenized_split(config, split, tokenizer, label2id, offset=0, who="student tokenizer"):
    table = load_split(config.data, split)
    if table is None:
        return None
    labels = None
    source = getattr(config.data, f"{split}_file", None) or split
    if split == "test":
        source = config.data.test_file or config.data.validation_file or split
    if split != "transfer":
        labels = encode_labels(table, config.data, label2id, source)
    return tokenize(table, tokenizer, config.data, labels, index_offset=offset, source=source, who=who)


def _check_vocabulary(model, tokenizer, what: str) -> None:
    """A tokenizer with more ids than the model has embeddings would fail mid-training with an index error."""
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    rows = getattr(embeddings, "num_embeddings", None)
    if rows is not None and len(tokenizer) > rows:
        raise UserError(
            f"{what}'s tokenizer has {len(tokenizer)} tokens but its embeddings hold {rows}; "
            "use the tokenizer the model was made with (student_tokenizer), or student_init=from_config"
        )


def _check_checkpoint(path: str) -> None:
    """Load a checkpoint's pickled state files the way the Trainer will (torch.load(weights_only=True), numpy's
    RNG types allowed), before training starts: a file holding other objects (a malicious pickle) or a damaged one
    ends in one line here instead of a traceback once the progress bar is up. training_args.bin is not read back on
    resume, so it is not checked."""
    for name in sorted(os.listdir(path)):
        if not name.endswith((".pt", ".pth", ".bin")) or name == "training_args.bin":
            continue
        try:
            with safe_globals():
                torch.load(os.path.join(path, name), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            raise UserError(
                f"checkpoint {path}: {name} holds objects other than tensors, which kdistill does not unpickle "
                "(it was not loaded); delete that checkpoint, or pass --overwrite to start over"
            ) from None
        except Exception as err:  # noqa: BLE001 - a truncated or damaged file
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise UserError(f"checkpoint {path}: {name} is unreadable ({first}); delete that checkpoint, or pass "
                            "--overwrite to start over") from None


def _resume_point(config: RunConfig, student_dir: str) -> str | bool | None:
    """The checkpoint to resume from: the one asked for, else the last complete one in student_dir (if any).

    A checkpoint is complete when its trainer_state.json (the Trainer writes it last) reads back; a run killed
    while saving leaves a directory without it, which is skipped.
    """
    asked = config.distill.resume_from_checkpoint
    if isinstance(asked, str) and asked.lower() in ("true", "last"):
        asked = None
    elif asked:
        if not os.path.isdir(asked):
            raise UserError(f"resume_from_checkpoint {asked}: no such checkpoint directory")
        _check_checkpoint(asked)
        return asked
    if not os.path.isdir(student_dir):
        return None
    steps = []
    for name in os.listdir(student_dir):
        prefix, _, step = name.partition("-")
        if prefix == PREFIX_CHECKPOINT_DIR and step.isdigit():
            steps.append((int(step), os.path.join(student_dir, name)))
    for _, path in sorted(steps, reverse=True):
        try:
            with open(os.path.join(path, "trainer_state.json"), encoding="utf-8") as fh:
                json.load(fh)
        except (OSError, ValueError):
            logger.warning("checkpoint %s is incomplete (a run killed while saving it?); skipped", path)
            continue
        _check_checkpoint(path)
        logger.info("resuming from %s (pass --overwrite to start over)", path)
        return path
    return None


def _loss_curve(trainer) -> list[list[float]]:
    return [[e["step"], e["loss"]] for e in trainer.state.log_history if "loss" in e]


def _teacher_trainer(config: RunConfig, model, tokenizer, train, validation, output_dir: str) -> DistillationTrainer:
    """A Trainer that fine-tunes a teacher on gold labels with the teacher section's settings."""
    t = config.teacher
    args = dataclasses.replace(
        config.distill,
        output_dir=output_dir,
        strategy="hard",
        num_train_epochs=t.teacher_epochs,
        learning_rate=t.teacher_learning_rate,
        per_device_train_batch_size=t.teacher_batch_size,
        save_strategy="no",
        resume_from_checkpoint=None,
        seed=_teacher_seed(config),
    )
    return DistillationTrainer(
        model=model,
        args=args,
        train_dataset=train,
        eval_dataset=validation,
        data_collator=DistillationCollator(tokenizer),
        processing_class=tokenizer,
        compute_metrics=_accuracy,
    )


def fold_assignment(rows: int, folds: int, seed: int) -> list[int]:
    """Each row's fold: a seeded shuffle dealt round-robin, so fold sizes differ by at most one."""
    order = torch.randperm(rows, generator=torch.Generator().manual_seed(seed)).tolist()
    fold_of = [0] * rows
    for position, row in enumerate(order):
        fold_of[row] = position % folds
    return fold_of


def _teacher_seed(config: RunConfig) -> int:
    seed = config.teacher.teacher_seed
    return seed if seed is not None else config.distill.seed


def _backbone(config: RunConfig) -> str:
    """What out-of-fold teachers are fine-tuned from."""
    return config.teacher.teacher_backbone or config.teacher.teacher_model


def _train_fold_teacher(config: RunConfig, label2id, tokenizer, train, fold: int) -> torch.nn.Module:
    """Fine-tune one out-of-fold teacher from the backbone on `train` (the other folds' rows); returns it."""
    model = load_classifier(_backbone(config), "teacher", label2id, **_trust(config))
    out = os.path.join(_paths(config)["cache"], f"fold-{fold}")
    trainer = _teacher_trainer(config, model, tokenizer, train, None, out)
    trainer.train()
    shutil.rmtree(out, ignore_errors=True)  # nothing is saved there but the Trainer's own bookkeeping
    return trainer.model


def out_of_fold_logits(config: RunConfig, progress: bool = False) -> tuple[torch.Tensor, dict]:
    """Soft labels for the training rows from `teacher_folds` teachers, each blind to the fold it labels.

    Returns the logits in row order and the bookkeeping: each row's fold, and per fold the number of rows its
    teacher trained on and labelled, and the seconds it took.
    """
    k, seed = config.teacher.teacher_folds, _teacher_seed(config)
    label2id = label_map(config)
    tokenizer = load_tokenizer(_backbone(config), "teacher tokenizer", **_trust(config))
    train = _tokenized_split(config, "train", tokenizer, label2id, who="teacher tokenizer")
    fold_of = fold_assignment(len(train), k, seed)
    logits: torch.Tensor | None = None
    record = {"folds": k, "seed": seed, "fold_of_row": fold_of, "per_fold": []}
    for fold in range(k):
        start = time.perf_counter()
        held_out = [i for i, f in enumerate(fold_of) if f == fold]
        teacher = _train_fold_teacher(config, label2id, tokenizer, train.select([i for i, f in enumerate(fold_of) if f != fold]), fold)
        rows = _model_rows(train.select(held_out), tokenizer)
        fold_logits = predict_logits(teacher, rows, _pad(tokenizer), batch_size=config.distill.per_device_eval_batch_size)
        if logits is None:
            logits = torch.empty((len(train), *fold_logits.shape[1:]), dtype=torch.float32)
        logits[held_out] = fold_logits
        seconds = time.perf_counter() - start
        record["per_fold"].append({"fold": fold, "trained_on": len(train) - len(held_out), "labelled": len(held_out),
                                   "seconds": seconds})
        logger.info("out-of-fold soft labels: fold %d of %d (%d rows) labelled in %.0f s", fold + 1, k, len(held_out),
                    seconds)
    assert logits is not None
    return logits, record


def teach(config: RunConfig) -> dict[str, float]:
    """Fine-tune the teacher on the gold labels (or check the given fine-tuned one). Returns its eval metrics."""
    paths = _paths(config)
    label2id = label_map(config)
    stale = check_output_dir(config, "teach")
    if not config.teacher.teacher_train:
        model = load_classifier(config.teacher.teacher_model, "teacher", label2id, **_trust(config))
        check_label_count(model, len(label2id), "teacher")
        take_output_dir(config, stale)
        if _is_main(config):
            save_label_map(label2id, paths["out"])
        logger.info("teacher: using the fine-tuned %s as is", config.teacher.teacher_model)
        return {}
    done = os.path.join(paths["teacher"], "teach_results.json")  # written last: the teacher is complete
    if os.path.isfile(done) and not config.distill.overwrite:
        # check_output_dir found this config's teacher here: a rerun (say of `kdistill run`) reuses it.
        logger.info("teacher: reusing the one fine-tuned in %s (pass --overwrite to train it again)", paths["teacher"])
        with open(done, encoding="utf-8") as fh:
            return json.load(fh)
    model = load_classifier(config.teacher.teacher_model, "teacher", label2id, **_trust(config))
    tokenizer = load_tokenizer(config.teacher.teacher_model, "teacher tokenizer", **_trust(config))
    _check_vocabulary(model, tokenizer, "teacher")
    train = _tokenized_split(config, "train", tokenizer, label2id, who="teacher tokenizer")
    validation = _tokenized_split(config, "validation", tokenizer, label2id, who="teacher tokenizer")
    trainer = _teacher_trainer(config, model, tokenizer, train, validation, paths["teacher"])
    args = trainer.args
    with args.main_process_first(local=False, desc="output_dir"):
        take_output_dir(config, stale)
        if _is_main(config):
            save_label_map(label2id, paths["out"])
    start = time.perf_counter()
    result = trainer.train()
    out = {"train_loss": result.training_loss, "train_seconds": time.perf_counter() - start, "loss_curve": _loss_curve(trainer)}
    if validation is not None:
        out.update(trainer.evaluate())
    trainer.save_model(paths["teacher"])
    if _is_main(config):
        save_label_map(label2id, paths["teacher"])
        write_json(os.path.join(paths["teacher"], "teach_results.json"), out)
    return out


def make_soft_labels(
    config: RunConfig, splits: tuple[str, ...] = SPLITS, progress: bool = False, together: bool = True
) -> dict[str, torch.Tensor]:
    """The teacher's logits for each configured split: read from the cache, or computed once and cached.

    The teacher is loaded only if some split is missing from the cache. Under torchrun/accelerate launch, the
    first process decides what is missing; every process then labels its share of the rows (row r goes to
    process r mod n), the shares are gathered, the first process writes the cache once, and every process
    returns the same logits (output_dir must be on a file system all processes share). `together=False` is for a
    caller that runs on one process only (evaluation): it labels everything itself.
    """
    return _make_soft_labels(config, splits, progress and _is_main(config), together)


def _rank_world(together: bool = True) -> tuple[int, int]:
    import torch.distributed as dist

    if together and dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _from_first_process(value: Any, together: bool) -> Any:
    """The first process's `value`, on every process (itself when there is one process)."""
    import torch.distributed as dist

    if _rank_world(together)[1] == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _barrier(together: bool) -> None:
    import torch.distributed as dist

    if _rank_world(together)[1] > 1:
        dist.barrier()


def _make_soft_labels(config: RunConfig, splits: tuple[str, ...], progress: bool, together: bool) -> dict[str, torch.Tensor]:
    tdir = teacher_dir(config)
    cache = _paths(config)["cache"]
    data = config.data
    out: dict[str, torch.Tensor] = {}
    teacher = tokenizer = label2id = None
    for split in splits:
        path = {"train": data.train_file, "transfer": data.transfer_file, "validation": data.validation_file,
                "test": data.test_file or data.validation_file}[split]
        if path is None and not (data.dataset_name and split != "transfer"):
            continue
        settings = {
            "split": split, "source": path or f"{data.dataset_name}/{data.dataset_config_name}",
            "text_column": data.text_column, "text_pair_column": data.text_pair_column, "max_length": data.max_length,
            "limit": split_limit(data, split),
        }
        oof = split == "train" and config.teacher.teacher_folds >= 2
        if oof:
            # Labels from teachers fine-tuned from the backbone: what makes them is the backbone, the teacher's
            # training settings, the folds and the seed, not the run's own teacher.
            t = config.teacher
            settings.update(folds=t.teacher_folds, seed=_teacher_seed(config), epochs=t.teacher_epochs,
                            learning_rate=t.teacher_learning_rate, batch_size=t.teacher_batch_size)
        fp = fingerprint(resolve_model_path(_backbone(config)) if oof else tdir, path, settings)
        file = cache_path(cache, "train-oof" if oof else split, fp)
        logits = read_cache(file, fp)
        cached = _from_first_process(logits is not None, together)  # one decision, so every process takes the same path
        if cached and logits is None:
            raise UserError(f"{file} is cached for the first process but unreadable here: output_dir (or "
                            "soft_label_cache) must be on a file system every process shares")
        if not cached and oof:
            # Every process takes part: the fold teachers train data-parallel like any Trainer run.
            logits, record = out_of_fold_logits(config, progress)
            if _is_main(config):
                write_json(file.replace(".safetensors", ".json"), record)
                write_cache(file, logits, fp)
            _barrier(together)
            logger.info("out-of-fold soft labels for train: %d rows from %d teachers, cached in %s", len(logits),
                        config.teacher.teacher_folds, file)
        elif not cached:
            if teacher is None:
                label2id = label_map(config)
                teacher = load_classifier(tdir, "teacher", label2id, **_trust(config))
                tokenizer = load_tokenizer(tdir, "teacher tokenizer", **_trust(config))
                _check_vocabulary(teacher, tokenizer, "teacher")
                teacher.to(config.distill.device)
            logits = _teacher_pass(config, split, teacher, tokenizer, progress, together)
            if _is_main(config):
                write_cache(file, logits, fp)
            _barrier(together)
            logger.info("soft labels for %s: %d rows computed and cached in %s", split, len(logits), file)
        else:
            logger.info("soft labels for %s: %d rows reused from %s", split, len(logits), file)
        out[split] = logits
    return out


def _teacher_pass(config: RunConfig, split: str, teacher, tokenizer, progress: bool, together: bool = True) -> torch.Tensor:
    """The teacher's logits for one split, tokenised and run SOFT_LABEL_CHUNK_ROWS rows at a time.

    Memory holds one chunk's tokens and the [rows, classes] result, not the whole split's tokens (which, as Python
    lists, cost far more than the text; see benchmarks/softlabel_memory.py). Within a chunk rows run in
    length-sorted batches; the result is in row order.
    """
    table = load_split(config.data, split)
    rows_in_split = len(table)
    rank, world = _rank_world(together)
    if world > 1:  # this process's share: rows rank, rank + world, ...
        table = table.select(range(rank, rows_in_split, world))
    source = {"test": config.data.test_file or config.data.validation_file}.get(split) or \
        getattr(config.data, f"{split}_file", None) or split
    out: torch.Tensor | None = None
    done = 0
    with tqdm(total=len(table), desc=f"soft labels ({split})", unit="rows", disable=not progress) as bar:
        for rows in encode_chunks(table, tokenizer, config.data, SOFT_LABEL_CHUNK_ROWS, source, "teacher tokenizer"):
            logits = predict_logits(teacher, rows, _pad(tokenizer), batch_size=config.distill.per_device_eval_batch_size,
                                    progress=bar.update)
            if out is None:
                out = torch.empty((len(table), *logits.shape[1:]), dtype=torch.float32)
            out[done : done + len(rows)] = logits
            done += len(rows)
    assert out is None or done == len(out), "the teacher pass lost rows"
    if world > 1:
        import torch.distributed as dist

        shares: list[torch.Tensor | None] = [None] * world
        dist.all_gather_object(shares, out)
        shape = next(t.shape[1:] for t in shares if t is not None)
        out = torch.empty((rows_in_split, *shape), dtype=torch.float32)
        for r, share in enumerate(shares):
            if share is not None:
                out[r::world] = share
    assert out is not None, "no rows to label"
    return out


def _soft_label_diagnostics(teacher_logits: dict[str, torch.Tensor], parts: dict, temperature: float) -> dict:
    """How informative the soft labels the student trains on are, at its temperature; logged, with a warning when
    they are nearly one-hot."""
    out = {}
    for split in ("train", "transfer"):
        if split in teacher_logits and split in parts:
            labels = torch.tensor(parts[split]["labels"][:]) if "labels" in parts[split].column_names else None
            out[split] = metrics.soft_label_stats(teacher_logits[split], temperature, labels)
            stats = out[split]
            logger.info("soft labels (%s, T=%g): mean top probability %.3f, normalised entropy %.2f%s", split,
                        temperature, stats["mean_top_prob"], stats["normalized_entropy"],
                        f", teacher wrong on {stats['teacher_error_rate']:.1%}" if "teacher_error_rate" in stats else "")
            warning = metrics.one_hot_warning(stats, temperature, split)
            if warning:
                logger.warning(warning)
    return out


def distill(config: RunConfig, progress: bool = False) -> dict[str, float]:
    """Train the student with the configured strategy; save it in <output_dir>/student. Returns train metrics."""
    paths = _paths(config)
    args = config.distill
    label2id = label_map(config)
    stale = check_output_dir(config, "distill")
    done = os.path.join(paths["student"], "distill_results.json")  # written last: the student is complete
    if os.path.isfile(done) and not args.overwrite and not args.resume_from_checkpoint:
        # check_output_dir found this config's finished student here: a rerun (say of `kdistill run` after a
        # failed evaluation) reuses it instead of resuming from its last checkpoint to train no steps.
        logger.info("student: reusing the one trained in %s (pass --overwrite to train it again)", paths["student"])
        with open(done, encoding="utf-8") as fh:
            return json.load(fh)
    splits = SPLITS if args.strategy != "hard" else ()
    teacher_logits = make_soft_labels(config, splits, progress=progress) if splits else {}
    tdir = teacher_dir(config)
    teacher = (load_classifier(tdir, "teacher", label2id, **_trust(config))
               if config.student.student_init == "from_teacher" else None)
    texts = vocabulary_texts(config.data) if config.student.student_init == "bilstm" else None
    student, tokenizer = build_student(config.student, teacher, tdir, label2id, texts=texts, **_trust(config))
    del teacher
    _check_vocabulary(student, tokenizer, "student")
    for split, logits in teacher_logits.items():
        if logits.shape[-1] != len(label2id):
            raise UserError(
                f"soft labels for {split} have {logits.shape[-1]} classes but the data has {len(label2id)}; "
                "teacher and student must share the label set"
            )

    # One index space over all splits, so a single collator serves training and evaluation.
    parts, offset = {}, 0
    for split in ("train", "transfer", "validation"):
        if split == "transfer" and args.strategy == "hard":
            continue
        part = _tokenized_split(config, split, tokenizer, label2id, offset)
        if part is not None:
            parts[split] = part
            offset += len(part)
    train = parts["train"]
    if "transfer" in parts:
        from datasets import concatenate_datasets

        train = concatenate_datasets([train, parts["transfer"]])
    combined = None
    if teacher_logits:
        combined = torch.cat([teacher_logits[s] for s in parts if s in teacher_logits])
        if len(combined) != offset:
            raise UserError("the soft-label cache does not cover the data (row counts differ); delete it to recompute")

    diagnostics = _soft_label_diagnostics(teacher_logits, parts, args.temperature)

    trainer = DistillationTrainer(
        model=student,
        args=dataclasses.replace(args, output_dir=paths["student"]),
        train_dataset=train,
        eval_dataset=parts.get("validation"),
        data_collator=DistillationCollator(tokenizer, combined),
        processing_class=tokenizer,
        compute_metrics=_accuracy,
    )
    # The first process clears (with overwrite) and records; the others find the checkpoint it left, or none.
    with args.main_process_first(local=False, desc="output_dir"):
        take_output_dir(config, stale)
        checkpoint = _resume_point(config, paths["student"])
    start = time.perf_counter()
    try:
        result = trainer.train(resume_from_checkpoint=checkpoint)
    except Exception as err:
        # Failing before a step past the checkpoint means failing to load it (a truncated file, a pickle that
        # torch.load(weights_only=True) refuses): the user's to fix, not a bug to print a traceback for.
        if checkpoint is None or trainer.state.global_step > _checkpoint_step(checkpoint):
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
        "temperature": args.temperature,
        "alpha": args.alpha,
        "loss_curve": _loss_curve(trainer),
        "log_history": trainer.state.log_history,
    }
    if diagnostics:
        out["soft_label_stats"] = diagnostics
    if "validation" in parts:
        out.update(trainer.evaluate())
    trainer.save_model(paths["student"])
    if _is_main(config):
        save_label_map(label2id, paths["student"])
        write_json(os.path.join(paths["student"], "distill_results.json"), out)
    return out


def _checkpoint_step(path: str) -> int:
    tail = os.path.basename(os.path.normpath(path)).rpartition("-")[2]
    return int(tail) if tail.isdigit() else 0


def _speed(config: RunConfig, student, rows, collate, teacher, label2id) -> dict:
    """Student and teacher CPU speed on the same test rows, measured one after the other (a ratio of one run)."""
    tdir = teacher_dir(config)
    teacher_tok = load_tokenizer(tdir, "teacher tokenizer", **_trust(config))
    teacher_rows = _model_rows(_tokenized_split(config, "test", teacher_tok, label2id, who="teacher tokenizer"), teacher_tok)
    n = config.distill.speed_batches
    out = {"student": measure_speed(student, rows, collate, batches=n),
           "teacher": measure_speed(teacher, teacher_rows, _pad(teacher_tok), batches=n)}
    out["speedup_b1"] = out["teacher"]["latency_ms_b1"] / out["student"]["latency_ms_b1"]
    out["speedup_b64"] = out["student"]["throughput_b64"] / out["teacher"]["throughput_b64"]
    return out


def speed(config: RunConfig) -> dict:
    """CPU latency and throughput of the run's trained student and of its teacher, plus their size."""
    sdir, tdir = _paths(config)["student"], teacher_dir(config)
    if not os.path.isfile(os.path.join(sdir, "config.json")):
        raise UserError(f"no student in {sdir}: run `kdistill distill` first")
    student = load_classifier(sdir, "student", **_trust(config))
    tokenizer = load_tokenizer(sdir, "student tokenizer", **_trust(config))
    label2id = {str(k): int(v) for k, v in student.config.label2id.items()}
    teacher = load_classifier(tdir, "teacher", label2id, **_trust(config))
    rows = _model_rows(_tokenized_split(config, "test", tokenizer, label2id), tokenizer)
    out = _speed(config, student, rows, _pad(tokenizer), teacher, label2id)
    out["student"].update(parameters=count_parameters(student), size_bytes=size_on_disk(sdir))
    out["teacher"].update(parameters=count_parameters(teacher), size_bytes=size_on_disk(tdir))
    return out


# The teacher's parameter count, per teacher content (soft_labels.hash_files, which the soft-label lookup just
# computed for the same directory and remembers): a sweep evaluates many students against one teacher, and loading
# it only to count its parameters cost every cell a model load.
_TEACHER_PARAMETERS: dict[str, int] = {}


def evaluate(config: RunConfig, progress: bool = False) -> dict:
    """Quality, fidelity to the teacher, calibration, size and CPU speed of the student; written to eval.json.

    A single-process step: under torchrun/accelerate launch only the first process evaluates (the others return
    an empty dict), so the timings are not shared with replicas of itself.
    """
    if not _is_main(config):
        return {}
    paths = _paths(config)
    sdir, tdir = paths["student"], teacher_dir(config)
    if not os.path.isfile(os.path.join(sdir, "config.json")):
        raise UserError(f"no student in {sdir}: run `kdistill distill` first")
    student = load_classifier(sdir, "student", **_trust(config))
    tokenizer = load_tokenizer(sdir, "student tokenizer", **_trust(config))
    label2id = {str(k): int(v) for k, v in student.config.label2id.items()}
    test = _tokenized_split(config, "test", tokenizer, label2id)
    if test is None:
        raise UserError("data: evaluation needs test_file or validation_file")
    teacher_logits = _make_soft_labels(config, ("test",), progress, together=False)["test"]
    if teacher_logits.shape != (len(test), len(label2id)):
        raise UserError(
            f"the teacher's logits for the test data have shape {tuple(teacher_logits.shape)} but the data has "
            f"{len(test)} rows and the student {len(label2id)} labels; delete the soft-label cache to recompute"
        )
    rows = _model_rows(test, tokenizer)
    collate = _pad(tokenizer)
    student_logits = predict_logits(student, rows, collate, batch_size=config.distill.per_device_eval_batch_size)
    labels = torch.tensor(test["labels"][:])
    result: dict = {"split": config.data.test_file or config.data.validation_file, "rows": len(test)}
    result["student"] = metrics.classification_metrics(student_logits, labels, teacher_logits, len(label2id))
    result["teacher"] = metrics.classification_metrics(teacher_logits, labels, None, len(label2id))

    result["student"].update(parameters=count_parameters(student), size_bytes=size_on_disk(sdir))
    teacher, key = None, hash_files([tdir])
    if config.distill.speed_batches > 0 or key not in _TEACHER_PARAMETERS:
        teacher = load_classifier(tdir, "teacher", label2id, **_trust(config))
        _TEACHER_PARAMETERS[key] = count_parameters(teacher)
    result["teacher"].update(parameters=_TEACHER_PARAMETERS[key], size_bytes=size_on_disk(tdir))
    if config.distill.speed_batches > 0:
        timing = _speed(config, student, rows, collate, teacher, label2id)
        result["student"].update(timing["student"])
        result["teacher"].update(timing["teacher"])
        result["speedup_b1"], result["speedup_b64"] = timing["speedup_b1"], timing["speedup_b64"]
    result["compression"] = result["teacher"]["parameters"] / result["student"]["parameters"]
    write_json(paths["eval"], result)
    return result
