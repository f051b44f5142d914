"""The four steps a user runs, as plain functions: teach, soft labels, distill, evaluate.

A run directory (`output_dir`) holds everything a run makes:

    labels.json         the label -> id map, shared by teacher and student
    teacher/            the fine-tuned teacher (when teacher_train)
    soft_labels/        the teacher's logits per split, fingerprinted (see soft_labels.py)
    student/            the trained student, its tokenizer and checkpoints
    eval.json           quality, fidelity, calibration, size and speed
"""

import dataclasses
import logging
import os
import time

import torch
from tqdm.auto import tqdm
from transformers import AutoModelForSequenceClassification

from . import metrics
from .config import RunConfig, UserError, config_to_dict
from .data import (
    DistillationCollator,
    build_label_map,
    encode_labels,
    load_split,
    save_label_map,
    tokenize,
)
from .evaluation import measure_speed, size_on_disk
from .files import write_json
from .soft_labels import cache_path, fingerprint, predict_logits, read_cache, write_cache
from .students import (
    build_student,
    check_label_count,
    count_parameters,
    load_classifier,
    load_tokenizer,
    resolve_model_path,
)
from .trainer import DistillationTrainer

logger = logging.getLogger(__name__)

SPLITS = ("train", "transfer", "validation", "test")


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
    return build_label_map(train[config.data.label_column])


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


def _tokenized_split(config, split, tokenizer, label2id, offset=0):
    table = load_split(config.data, split)
    if table is None:
        return None
    labels = None
    if split != "transfer":
        source = getattr(config.data, f"{split}_file", None) or split
        labels = encode_labels(table, config.data, label2id, source)
    return tokenize(table, tokenizer, config.data, labels, index_offset=offset)


def _loss_curve(trainer) -> list[list[float]]:
    return [[e["step"], e["loss"]] for e in trainer.state.log_history if "loss" in e]


def teach(config: RunConfig) -> dict[str, float]:
    """Fine-tune the teacher on the gold labels (or check the given fine-tuned one). Returns its eval metrics."""
    paths = _paths(config)
    label2id = label_map(config)
    save_label_map(label2id, paths["out"])
    if not config.teacher.teacher_train:
        model = load_classifier(config.teacher.teacher_model, "teacher", label2id)
        check_label_count(model, len(label2id), "teacher")
        logger.info("teacher: using the fine-tuned %s as is", config.teacher.teacher_model)
        return {}
    tokenizer = load_tokenizer(config.teacher.teacher_model, "teacher tokenizer")
    model = load_classifier(config.teacher.teacher_model, "teacher", label2id)
    train = _tokenized_split(config, "train", tokenizer, label2id)
    validation = _tokenized_split(config, "validation", tokenizer, label2id)
    t = config.teacher
    args = dataclasses.replace(
        config.distill,
        output_dir=paths["teacher"],
        strategy="hard",
        num_train_epochs=t.teacher_epochs,
        learning_rate=t.teacher_learning_rate,
        per_device_train_batch_size=t.teacher_batch_size,
        save_strategy="no",
        resume_from_checkpoint=None,
    )
    trainer = DistillationTrainer(
        model=model,
        args=args,
        train_dataset=train,
        eval_dataset=validation,
        data_collator=DistillationCollator(tokenizer),
        processing_class=tokenizer,
        compute_metrics=_accuracy,
    )
    start = time.perf_counter()
    result = trainer.train()
    out = {"train_loss": result.training_loss, "train_seconds": time.perf_counter() - start, "loss_curve": _loss_curve(trainer)}
    if validation is not None:
        out.update(trainer.evaluate())
    trainer.save_model(paths["teacher"])
    save_label_map(label2id, paths["teacher"])
    write_json(os.path.join(paths["teacher"], "teach_results.json"), out)
    return out


def make_soft_labels(config: RunConfig, splits: tuple[str, ...] = SPLITS, progress: bool = False) -> dict[str, torch.Tensor]:
    """The teacher's logits for each configured split: read from the cache, or computed once and cached.

    The teacher is loaded only if some split is missing from the cache.
    """
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
            "limit": data.max_train_samples if split in ("train", "transfer") else data.max_eval_samples,
        }
        fp = fingerprint(tdir, path, settings)
        file = cache_path(cache, split, fp)
        logits = read_cache(file, fp)
        if logits is None:
            if teacher is None:
                label2id = label_map(config)
                tokenizer = load_tokenizer(tdir, "teacher tokenizer")
                teacher = load_classifier(tdir, "teacher", label2id)
            rows = _tokenized_split(config, split, tokenizer, label2id)
            model_rows = _model_rows(rows, tokenizer)
            bar = tqdm(total=len(model_rows), desc=f"soft labels ({split})", unit="rows", disable=not progress)
            logits = predict_logits(
                teacher, model_rows, _pad(tokenizer),
                batch_size=config.distill.per_device_eval_batch_size, progress=bar.update,
            )
            bar.close()
            write_cache(file, logits, fp)
            logger.info("soft labels for %s: %d rows computed and cached in %s", split, len(logits), file)
        else:
            logger.info("soft labels for %s: %d rows reused from %s", split, len(logits), file)
        out[split] = logits
    return out


def distill(config: RunConfig, progress: bool = False) -> dict[str, float]:
    """Train the student with the configured strategy; save it in <output_dir>/student. Returns train metrics."""
    paths = _paths(config)
    args = config.distill
    label2id = label_map(config)
    splits = SPLITS if args.strategy != "hard" else ()
    teacher_logits = make_soft_labels(config, splits, progress=progress) if splits else {}
    tdir = teacher_dir(config)
    teacher = load_classifier(tdir, "teacher", label2id) if config.student.student_init == "from_teacher" else None
    student, tokenizer = build_student(config.student, teacher, tdir, label2id)
    del teacher
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

    trainer = DistillationTrainer(
        model=student,
        args=dataclasses.replace(args, output_dir=paths["student"]),
        train_dataset=train,
        eval_dataset=parts.get("validation"),
        data_collator=DistillationCollator(tokenizer, combined),
        processing_class=tokenizer,
        compute_metrics=_accuracy,
    )
    start = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
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
    if "validation" in parts:
        out.update(trainer.evaluate())
    trainer.save_model(paths["student"])
    save_label_map(label2id, paths["student"])
    write_json(os.path.join(paths["student"], "distill_results.json"), out)
    write_json(os.path.join(paths["out"], "run_config.json"), config_to_dict(config))
    return out


def _speed(config: RunConfig, student, rows, collate, teacher, label2id) -> dict:
    """Student and teacher CPU speed on the same test rows, measured one after the other (a ratio of one run)."""
    tdir = teacher_dir(config)
    teacher_tok = load_tokenizer(tdir, "teacher tokenizer")
    teacher_rows = _model_rows(_tokenized_split(config, "test", teacher_tok, label2id), teacher_tok)
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
    student = AutoModelForSequenceClassification.from_pretrained(sdir)
    tokenizer = load_tokenizer(sdir, "student tokenizer")
    label2id = {str(k): int(v) for k, v in student.config.label2id.items()}
    teacher = load_classifier(tdir, "teacher", label2id)
    rows = _model_rows(_tokenized_split(config, "test", tokenizer, label2id), tokenizer)
    out = _speed(config, student, rows, _pad(tokenizer), teacher, label2id)
    out["student"].update(parameters=count_parameters(student), size_bytes=size_on_disk(sdir))
    out["teacher"].update(parameters=count_parameters(teacher), size_bytes=size_on_disk(tdir))
    return out


def evaluate(config: RunConfig, progress: bool = False) -> dict:
    """Quality, fidelity to the teacher, calibration, size and CPU speed of the student; written to eval.json."""
    paths = _paths(config)
    sdir, tdir = paths["student"], teacher_dir(config)
    if not os.path.isfile(os.path.join(sdir, "config.json")):
        raise UserError(f"no student in {sdir}: run `kdistill distill` first")
    student = AutoModelForSequenceClassification.from_pretrained(sdir)
    tokenizer = load_tokenizer(sdir, "student tokenizer")
    label2id = {str(k): int(v) for k, v in student.config.label2id.items()}
    test = _tokenized_split(config, "test", tokenizer, label2id)
    if test is None:
        raise UserError("data: evaluation needs test_file or validation_file")
    teacher_logits = make_soft_labels(config, ("test",), progress=progress)["test"]
    rows = _model_rows(test, tokenizer)
    collate = _pad(tokenizer)
    student_logits = predict_logits(student, rows, collate, batch_size=config.distill.per_device_eval_batch_size)
    labels = torch.tensor(test["labels"][:])
    result: dict = {"split": config.data.test_file or config.data.validation_file, "rows": len(test)}
    result["student"] = metrics.classification_metrics(student_logits, labels, teacher_logits, len(label2id))
    result["teacher"] = metrics.classification_metrics(teacher_logits, labels, None, len(label2id))

    teacher = load_classifier(tdir, "teacher", label2id)
    result["student"].update(parameters=count_parameters(student), size_bytes=size_on_disk(sdir))
    result["teacher"].update(parameters=count_parameters(teacher), size_bytes=size_on_disk(tdir))
    if config.distill.speed_batches > 0:
        timing = _speed(config, student, rows, collate, teacher, label2id)
        result["student"].update(timing["student"])
        result["teacher"].update(timing["teacher"])
        result["speedup_b1"], result["speedup_b64"] = timing["speedup_b1"], timing["speedup_b64"]
    result["compression"] = result["teacher"]["parameters"] / result["student"]["parameters"]
    write_json(paths["eval"], result)
    return result
