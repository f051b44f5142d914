"""The whole of `kdistill export` as one function, `export_run`, and what it reads from a run directory."""

import datetime
import importlib.util
import logging
import os
import platform
import shlex
import shutil
from contextlib import ExitStack
from typing import Any, NamedTuple
from importlib import metadata

import torch

from .. import metrics
from ..config import DataConfig
from ..data import load_split, split_file
from ..errors import UserError
from ..rundir import Run, data_config, load_run, run_teacher_dir as teacher_dir
from ..tasks import get_task
from ..tasks.base import flat_items
from ..evaluation import size_on_disk
from ..files import atomic_directory, stale_siblings, write_json, write_text
from ..lock import directory_lock, file_lock, refuse_inside_busy
from ..report.model_card import ANCHORS, INT8_AGREEMENT_TARGET, model_card, model_facts, pct, summary
from ..soft_labels import predict_logits
from ..students import count_parameters, load_classifier, load_tokenizer
from .onnx import CARD_FILE, FP32_FILE, INT8_FILE, REPORT_FILE, OnnxClassifier, check_parity, export_model, \
    int8_fidelity, time_models

logger = logging.getLogger(__package__)  # "kdistill.export", as before the split

class EvalSplit(NamedTuple):
    """The rows an export is checked on, prepared by the run's task."""

    rows: list[dict]  # model inputs, as the task's pad_inputs takes them
    item_rows: list[dict]  # the same rows as the task's item_logits reads them (word_ids too, for words)
    labels: torch.Tensor | list[torch.Tensor]  # per item (the task's item_labels)
    source: str


def eval_split(data: DataConfig, tokenizer, label2id: dict[str, int], limit: int) -> EvalSplit:
    """The first `limit` rows of the run's evaluation split, prepared by the run's task."""
    task = get_task(data.task)
    table = load_split(data, "test")
    source = split_file(data, "test") or f"{data.dataset_name}/{data.dataset_config_name}"
    if table is None:
        raise UserError("the run has no test_file or validation_file to check the export on; pass --data FILE")
    table = table.select(range(min(limit, len(table))))
    labels = task.encode_labels(table, data, label2id, source)
    encoded = task.prepare(table, tokenizer, data, labels)
    return EvalSplit(task.model_rows(encoded, tokenizer), task.item_rows(encoded, tokenizer),
                     task.item_labels(encoded), source)


def eval_rows(data: DataConfig, tokenizer, label2id: dict[str, int], limit: int) -> tuple[list[dict], Any, str]:
    """`eval_split` as (model rows, labels per item, source)."""
    split = eval_split(data, tokenizer, label2id, limit)
    return split.rows, split.labels, split.source


def positions(logits: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
    """`predict_logits`' output as one [positions, C] tensor: a row each for one vector per row, every real
    (non-padding) sub-token of every row for per-token outputs (predict_logits cuts each row to its length)."""
    if isinstance(logits, torch.Tensor) and logits.dim() == 2:
        return logits
    return torch.cat([row.reshape(-1, row.shape[-1]) for row in logits])


def run_task(run: Run):
    """The task the run was made for (its run_config.json's data.task)."""
    return get_task(run.config.get("data", {}).get("task", "sequence_classification"))


def model_rows(table, tokenizer) -> list[dict]:
    """The model-input columns of a prepared sequence-classification split as row dicts (the task's)."""
    return get_task("sequence_classification").model_rows(table, tokenizer)


def pad(tokenizer):
    """Pads rows into a batch, as the sequence-classification task does."""
    return get_task("sequence_classification").pad_inputs(tokenizer)




def versions() -> dict[str, str]:
    out = {}
    for package in ("kdistill", "torch", "transformers", "onnx", "onnxruntime", "onnxscript"):
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            out[package] = "not installed"
    return out


def machine() -> str:
    from ..evaluation import cpu_model

    return f"{cpu_model()}, {os.cpu_count()} CPU cores, {platform.system()} {platform.machine()}, Python {platform.python_version()}"


# ---------------------------------------------------------------------------------------------------------- export


def export_run(
    run_dir: str,
    out: str | None = None,
    int8: bool = False,
    teacher: bool = False,
    rows: int = 1000,
    data_file: str | None = None,
    speed_batches: int = 20,
    speed_rounds: int = 3,
    command: str | None = None,
) -> dict:
    """Export a run's student to ONNX, check it against PyTorch, time it, write the model card; returns the report.

    The report (also written to OUT/export_report.json) says whether the export passed: `report["passed"]` is False
    when the fp32 logits miss PyTorch's by more than PARITY_BOUND (the files are kept for inspection).

    Args:
        out: the export directory (default RUN_DIR/export).
        int8: also write model.int8.onnx (dynamic int8 quantisation) and check it against fp32.
        teacher: also export the teacher (to OUT/teacher) and time it in ONNX Runtime.
        rows: evaluation rows for the parity and int8 checks.
        data_file: a labelled file for the checks, instead of the run's test/validation file.
        speed_batches: timed batches per speed measurement (0 skips timing).
        speed_rounds: round-robin rounds of the speed measurement.
        command: the command line recorded in the report and the card (default: the equivalent `kdistill export`).
    """
    if rows < 1 or speed_batches < 0 or speed_rounds < 1:
        raise UserError("export: --rows and --speed_rounds must be at least 1, --speed_batches at least 0")
    missing = [m for m in ("onnx", "onnxruntime", "onnxscript") if importlib.util.find_spec(m) is None]
    if missing:
        raise UserError(f"export needs {', '.join(missing)}: pip install onnx onnxruntime onnxscript")
    if command is None:
        flags = [f"--{name}" for name, on in (("int8", int8), ("teacher", teacher)) if on]
        command = shlex.join(["kdistill", "export", run_dir, "--format", "onnx", *flags, *(["--out", out] if out else []),
                              "--rows", str(rows), *(["--data", data_file] if data_file else []),
                              "--speed_batches", str(speed_batches), "--speed_rounds", str(speed_rounds)])

    run = load_run(run_dir)
    target = out or os.path.join(run_dir, "export")
    _check_target(target, run_dir)
    with ExitStack() as held:
        # One writer: the run (read, and by default written into) and the export target.
        held.enter_context(directory_lock(run_dir, "run directory", ""))
        # The target's own lock (<target>.lock beside it; a second export of it waits), not its parent's: holding
        # the parent would refuse every kdistill run under it while this export runs (an export to /tmp/x, all of
        # /tmp). A target inside another process's run or sweep is refused.
        refuse_inside_busy(target, "--out", "")
        held.enter_context(file_lock(os.path.abspath(target), f"export {target}"))
        for stale in stale_siblings(target):  # a killed export's leftovers; the lock says no one is filling them
            logger.info("removing %s, left by an export that did not finish", stale)
            shutil.rmtree(stale, ignore_errors=True)
        # Written beside the target and renamed into place once complete: a killed export leaves no half export
        # (and an old export stays until the new one is whole).
        with atomic_directory(target) as out:
            report = _export(run, run_dir, target, out, int8, teacher, rows, data_file, speed_batches, speed_rounds,
                             command)
    if "int8" in report and not report["int8"]["agreement_met"]:
        logger.warning("int8 agrees with fp32 on %s of rows, below the %s target; see %s",
                       pct(report["int8"]["agreement_with_fp32"]), pct(INT8_AGREEMENT_TARGET), CARD_FILE)
    if not report["passed"]:
        logger.error("PARITY FAILED: ONNX logits differ from PyTorch's by more than %g (see %s)",
                     report["parity"]["bound"], REPORT_FILE)
    return report


# What an export directory holds (any of these): a directory holding other things is not replaced by one.
_EXPORT_MARKS = (REPORT_FILE, FP32_FILE, INT8_FILE)


def _check_target(target: str, run_dir: str) -> None:
    """The export replaces `target` whole: refuse one that is (or holds) the run, a file, or a directory with other
    things in it than an earlier export."""
    real, run = os.path.realpath(target), os.path.realpath(run_dir)
    if real == run or run.startswith(real.rstrip(os.sep) + os.sep):
        raise UserError(f"--out {target} is the run directory or holds it; give the export a directory of its own "
                        f"(default {os.path.join(run_dir, 'export')})")
    if os.path.lexists(target) and not os.path.isdir(target):
        raise UserError(f"--out {target} is a file; give a directory (it is created if missing)")
    if os.path.isdir(target) and os.listdir(target) and \
            not any(os.path.isfile(os.path.join(target, mark)) for mark in _EXPORT_MARKS):
        raise UserError(f"--out {target} holds files that are not a kdistill export, and an export replaces the "
                        "directory whole; give an empty or new directory")


def _export(run: Run, run_dir: str, target: str, out: str, int8: bool, teacher: bool, rows: int,
            data_file: str | None, speed_batches: int, speed_rounds: int, command: str) -> dict:
    """The export itself, written into `out` (the staging directory that becomes `target`)."""
    need_teacher = teacher or speed_batches > 0
    tdir = teacher_dir(run) if need_teacher else None

    task = run_task(run)
    student = load_classifier(run.student_dir, "student", auto_model=task.auto_model).eval()
    tokenizer = load_tokenizer(run.student_dir, "student tokenizer")
    data = data_config(run, data_file)
    split = eval_split(data, tokenizer, run.label2id, rows)
    eval_set = split.rows
    collate = task.pad_inputs(tokenizer)

    fp32_path, int8_path = os.path.join(out, FP32_FILE), os.path.join(out, INT8_FILE)
    names = export_model(student, tokenizer, run.label2id, out, int8, inputs=task.export_inputs)

    def items(logits):  # the model's logits per item (row, word) and their labels, flat
        return flat_items(task.item_logits(logits, split.item_rows), split.labels)

    report: dict = {
        "format": "onnx",
        "command": command,
        "date": datetime.date.today().isoformat(),
        "machine": machine(),
        "versions": versions(),
        "run_dir": run_dir,
        "out": target,
        "inputs": names,
        "output": "logits",
        "output_axes": [*task.export_output_axes["logits"].values(), "labels"],
        "task": task.name,
        **task.export_notes,
        "max_length": data.max_length,
        "labels": run.label2id,
        "model": model_facts(run.config, run.evaluation),
        "eval": {"source": split.source, "rows": len(eval_set), "item": task.item},
        "parameters": {"student": count_parameters(student)},
        "sizes": {"student PyTorch": size_on_disk(run.student_dir), "student ONNX fp32": os.path.getsize(fp32_path)},
    }
    pt_logits = predict_logits(student, eval_set, collate)
    fp32 = OnnxClassifier(fp32_path)
    fp32_logits = predict_logits(fp32, eval_set, collate)
    # Parity over every real position (each row's vector, or each non-padding sub-token's); fidelity and accuracy
    # over the task's items (rows, or words at their first sub-token).
    report["parity"] = check_parity(positions(pt_logits), positions(fp32_logits))
    pt_items, labels = items(pt_logits)
    fp32_items, _ = items(fp32_logits)
    report["eval"]["items"] = len(labels)
    report["accuracy_pytorch"] = metrics.accuracy(pt_items, labels)
    candidates: dict[str, tuple] = {"student PyTorch": (student, eval_set, collate),
                                    "student ONNX fp32": (fp32, eval_set, collate)}
    if int8:
        int8_model = OnnxClassifier(int8_path)
        report["int8"] = int8_fidelity(fp32_items, items(predict_logits(int8_model, eval_set, collate))[0], labels)
        report["sizes"]["student ONNX int8"] = os.path.getsize(int8_path)
        candidates["student ONNX int8"] = (int8_model, eval_set, collate)
    if tdir is not None:
        candidates = {**_teacher_side(report, tdir, run, data, rows, out, int8, export=teacher), **candidates}

    if speed_batches > 0:
        models = time_models(candidates, speed_batches, speed_rounds)
        report["speed"] = {"threads": torch.get_num_threads(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
                           "batches": speed_batches, "rounds": speed_rounds, "batch_size": 64, "models": models}
    report["anchors"] = ANCHORS
    report["summary"] = summary(report)
    report["passed"] = report["parity"]["passed"] and report.get("teacher_parity", {}).get("passed", True)
    write_json(os.path.join(out, REPORT_FILE), report)
    write_text(os.path.join(out, CARD_FILE), model_card(report, run.config, run.evaluation))

    return report


def _teacher_side(report: dict, tdir: str, run: Run, data: DataConfig, rows: int, out: str, int8: bool,
                  export: bool) -> dict[str, tuple]:
    """The teacher's entries of the report (and, with `export`, its ONNX files); returns its models to time."""
    task = run_task(run)
    teacher = load_classifier(tdir, "teacher", run.label2id, auto_model=task.auto_model).eval()
    teacher_tok = load_tokenizer(tdir, "teacher tokenizer")
    # The same texts, tokenised the teacher's way (its vocabulary may differ from the student's).
    teacher_rows, _, _ = eval_rows(data, teacher_tok, run.label2id, rows)
    tcollate = task.pad_inputs(teacher_tok)
    report["teacher_dir"] = tdir
    report["parameters"]["teacher"] = count_parameters(teacher)
    report["sizes"]["teacher PyTorch"] = size_on_disk(tdir)
    timed = {"teacher PyTorch": (teacher, teacher_rows, tcollate)}
    if export:
        tout = os.path.join(out, "teacher")
        t32, t8 = os.path.join(tout, FP32_FILE), os.path.join(tout, INT8_FILE)
        export_model(teacher, teacher_tok, run.label2id, tout, int8, inputs=task.export_inputs)
        teacher_fp32 = OnnxClassifier(t32)
        report["teacher_parity"] = check_parity(positions(predict_logits(teacher, teacher_rows, tcollate)),
                                                positions(predict_logits(teacher_fp32, teacher_rows, tcollate)))
        report["sizes"]["teacher ONNX fp32"] = os.path.getsize(t32)
        timed["teacher ONNX fp32"] = (teacher_fp32, teacher_rows, tcollate)
        if int8:
            report["sizes"]["teacher ONNX int8"] = os.path.getsize(t8)
            timed["teacher ONNX int8"] = (OnnxClassifier(t8), teacher_rows, tcollate)
    return timed
