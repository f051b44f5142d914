"""The run directory: its layout, its record of the config (`run_config.json`), resume and checkpoint checks.

The one owner of where a run's files lie; pipeline, compare and export all ask it:

    run_config.json     the config that made the run (which later runs compare themselves against)
    labels.json         the label -> id map, shared by teacher and student
    teacher/            the fine-tuned teacher (when teacher_train)
    soft_labels/        the teacher's outputs per split, fingerprinted (kdistill.soft_labels)
    student/            the trained student, its tokenizer and checkpoints
    eval.json           quality, fidelity, calibration, size and speed
    export/             what `kdistill export` writes
    .kdistill.lock      while a command writes here: which process it is (kdistill.lock)
"""

import functools
import json
import logging
import os
import pickle
import shutil
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, fields
from typing import Any

import torch
from transformers.trainer_pt_utils import safe_globals
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from .config import DataConfig, RunConfig, config_to_dict, teacher_list
from .data import LABELS_FILE
from .errors import UserError
from .files import update_json
from .lock import directory_lock
from .students import resolve_model_path

logger = logging.getLogger(__name__)

RUN_CONFIG = "run_config.json"
EVAL_FILE = "eval.json"


@dataclass(frozen=True)
class RunPaths:
    """Where a run's parts lie, from its output_dir (and soft_label_cache, which may lie elsewhere; empty where
    the caller needs no cache)."""

    out: str
    cache: str = ""

    @classmethod
    def of(cls, out: str, cache: str | None = None) -> "RunPaths":
        """The layout of a run in `out`, its cache in `cache` or, by default, `out`/soft_labels."""
        return cls(out, cache or os.path.join(out, "soft_labels"))

    @property
    def teacher(self) -> str:
        return os.path.join(self.out, "teacher")

    @property
    def student(self) -> str:
        return os.path.join(self.out, "student")

    @property
    def eval(self) -> str:
        return os.path.join(self.out, EVAL_FILE)

    @property
    def record(self) -> str:
        return os.path.join(self.out, RUN_CONFIG)

    @property
    def labels(self) -> str:
        return os.path.join(self.out, LABELS_FILE)

    @property
    def export(self) -> str:
        return os.path.join(self.out, "export")


def paths(config: RunConfig) -> RunPaths:
    out = config.output_dir
    return RunPaths.of(out, config.distill.soft_label_cache)


def teachers(config: RunConfig) -> list[tuple[str, float]]:
    """Where the teachers the student learns from live, with their weights: this run's fine-tuned teacher, or
    the fine-tuned one(s) given (teacher_model, or the `teachers` list)."""
    if config.teacher.teacher_train:
        path = paths(config).teacher
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise UserError(f"no fine-tuned teacher in {path}: run `kdistill teach` first (or set teacher_train: false)")
        return [(path, 1.0)]
    return [(resolve_model_path(model), weight) for model, weight in teacher_list(config.teacher)]


def teacher_dir(config: RunConfig) -> str:
    """The first (for one teacher: the) teacher's directory."""
    return teachers(config)[0][0]


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



def is_main(config: RunConfig) -> bool:
    """Whether this process writes the run's files (always, unless launched by torchrun/accelerate as rank > 0)."""
    return config.distill.process_index == 0


def output_dir_lock(config: RunConfig) -> AbstractContextManager:
    """Hold the run's output_dir for this process (kdistill.lock.directory_lock): a second kdistill process writing
    there is refused with one line naming this one. The first process of a torchrun/accelerate launch holds it for
    all of them (the others write nothing of kdistill's)."""
    return directory_lock(config.output_dir) if is_main(config) else nullcontext()


def holding_output_dir(step):
    """Decorator: the step `step(config, ...)` runs holding its output_dir. The CLI holds it for the whole command
    (`kdistill run` is three steps); this covers the steps called from Python."""

    @functools.wraps(step)
    def held(config: RunConfig, *args, **kwargs):
        with output_dir_lock(config):
            return step(config, *args, **kwargs)

    return held


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


def _read_record(path: str) -> dict:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def _record_difference(old: dict, config: RunConfig, sections: tuple[str, ...]) -> str | None:
    """The first tracked field in which `config` differs from a run's record, as 'section.field=old, not new'."""
    return _first_difference(_tracked(old, sections), _tracked(config_to_dict(config), sections))


# Fields that name where a run writes, not what it reads.
_OUTPUT_FIELDS = ("output_dir", "logging_dir")


def _inputs(config: RunConfig) -> list[tuple[str, str]]:
    """(field, path) for each existing file or directory the config names: everything the run reads (teachers, data
    files, the soft-label cache, a checkpoint to resume from, a DeepSpeed config, ...), found as the run finds it."""
    named = []
    for values in config_to_dict(config).values():
        for key, value in values.items():
            if key not in _OUTPUT_FIELDS:
                named += [(key, v) for v in (value if isinstance(value, list) else [value]) if isinstance(v, str) and v]
    named += [("teachers", resolve_model_path(model)) for model, _ in teacher_list(config.teacher) if model]
    return [(key, path) for key, path in named if os.path.exists(path)]


def _check_inputs_survive(config: RunConfig, doomed: list[str]) -> None:
    """--overwrite deletes `doomed`: refuse if one of them is, or holds, something this run reads."""
    for product in doomed:
        real = os.path.realpath(product)
        for key, path in _inputs(config):
            target = os.path.realpath(path)
            if target == real or target.startswith(real.rstrip(os.sep) + os.sep):
                raise UserError(f"output_dir {config.output_dir}: --overwrite would delete {product}, which holds this "
                                f"run's {key} {path}; move it out of {product}, or use another output_dir")


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
    p = paths(config)
    out = p.out
    for what, path in (("output_dir", out), ("soft_label_cache", p.cache)):
        if os.path.exists(path) and not os.path.isdir(path):
            raise UserError(f"{what} {path} is a file, not a directory; give a directory (it is created if missing)")
    record_path = p.record
    old = None
    if os.path.isfile(record_path):
        try:
            old = _read_record(record_path)
        except (OSError, ValueError) as err:
            if not config.distill.overwrite:
                raise UserError(f"{record_path} is unreadable ({str(err).splitlines()[0]}); pass --overwrite to replace "
                                "the run in that directory") from None
    # The products this verb would replace, and which parts of the config they depend on. Distilling from this
    # run's own fine-tuned teacher depends on the config that taught it, even before a student exists.
    teacher_made = os.path.isdir(p.teacher) and config.teacher.teacher_train
    if verb == "teach":
        products = [p.teacher, p.student, p.eval] if config.teacher.teacher_train else []
        sections = ("data", "teacher") if teacher_made else ()
    else:
        products = [p.student, p.eval]
        sections = ("data", "teacher", "student", "distill") if os.path.isdir(p.student) else \
            ("data", "teacher") if teacher_made else ()
    existing = [p for p in products if os.path.exists(p)]
    reason = None
    if sections and old is None:
        reason = f"no {RUN_CONFIG} says which config made its {', '.join(os.path.basename(p) for p in existing)}"
    elif sections:
        diff = _record_difference(old, config, sections)
        reason = diff and f"it holds a run made with {diff}"
    if reason and not config.distill.overwrite:
        raise UserError(f"output_dir {out}: {reason}; use another output_dir, or pass --overwrite to replace that run")
    doomed = existing if config.distill.overwrite and (reason or verb == "distill") else []
    _check_inputs_survive(config, doomed)
    return doomed


def check_evaluated_run(config: RunConfig) -> None:
    """`eval` scores the student this run trained: a config that differs from the run's record in what the student
    was trained with (say another strategy) is refused, as `distill` refuses it, instead of evaluated silently."""
    record_path = paths(config).record
    if not os.path.isfile(record_path):
        return
    try:
        old = _read_record(record_path)
    except (OSError, ValueError):
        return  # an unreadable record is distill's to report
    diff = _record_difference(old, config, ("data", "teacher", "student", "distill"))
    if diff:
        raise UserError(f"output_dir {config.output_dir} holds a run made with {diff}; evaluate it with the config "
                        f"that made it: kdistill eval {config.output_dir}")


def recorded_values(run_dir: str) -> dict[str, Any]:
    """The flat config (field -> value) a run recorded in its run_config.json, its paths found from here and its
    output_dir the directory it now lies in: `kdistill eval RUN_DIR` and `--teacher RUN_DIR` start from it."""
    from .config import SECTIONS, _field_names

    record = os.path.join(run_dir, RUN_CONFIG)
    if not os.path.isfile(record):
        raise UserError(f"{run_dir} is not a kdistill run directory (no {RUN_CONFIG})")
    run = Run(run_dir, read_json(record), {}, None)
    flat: dict[str, Any] = {}
    for section, cls in SECTIONS.items():
        names = set(_field_names(cls))
        for key, value in run.config.get(section, {}).items():
            # Tokens are recorded masked ("<HUB_TOKEN>"); the Trainer finds the real ones itself.
            if key in names and value is not None and not key.endswith("_token"):
                flat[key] = value
    for key in ("train_file", "validation_file", "test_file", "transfer_file", "teacher_model", "teacher_backbone",
                "student_model", "student_tokenizer", "soft_label_cache"):
        if isinstance(flat.get(key), str):
            flat[key] = locate(flat[key], run)
    flat["output_dir"] = run_dir
    for key in ("logging_dir", "resume_from_checkpoint"):  # where the old run logged and resumed, not this one
        flat.pop(key, None)
    return flat


def take_output_dir(config: RunConfig, stale: list[str]) -> None:
    """Delete `stale` (from check_output_dir) and record this run's config in output_dir/run_config.json (left as it
    is when it holds this config already: a rerun of a finished run writes nothing, so it works read-only)."""
    if not is_main(config):
        return
    if stale:
        logger.warning("overwrite: deleting %s", ", ".join(stale))
        for path in stale:
            _remove(path)
    update_json(paths(config).record, config_to_dict(config))



def check_checkpoint(path: str) -> None:
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


def resume_point(config: RunConfig, student_dir: str) -> str | bool | None:
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
        check_checkpoint(asked)
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
        check_checkpoint(path)
        logger.info("resuming from %s (pass --overwrite to start over)", path)
        return path
    return None



def checkpoint_step(path: str) -> int:
    tail = os.path.basename(os.path.normpath(path)).rpartition("-")[2]
    return int(tail) if tail.isdigit() else 0


# ------------------------------------------------------------------------------- reading a finished run back


@dataclass
class Run:
    """What export needs from a kdistill run directory."""

    directory: str
    config: dict  # run_config.json, by section
    label2id: dict[str, int]
    evaluation: dict | None  # eval.json, if the run was evaluated

    @property
    def student_dir(self) -> str:
        return RunPaths(self.directory).student


def load_run(run_dir: str) -> Run:
    """Read a run directory; a directory that is not a finished kdistill run is a UserError naming what is missing."""
    if not os.path.isdir(run_dir):
        raise UserError(f"{run_dir}: no such directory")
    # The student's own label map (every `distill` writes it, and it is the map of the model exported), else the
    # run's (written by `teach`; older runs have only that one).
    labels = next((path for path in (os.path.join(RunPaths(run_dir).student, LABELS_FILE), RunPaths(run_dir).labels)
                   if os.path.isfile(path)), None)
    needed = [RUN_CONFIG, os.path.join("student", "config.json")]
    missing = [n for n in needed if not os.path.isfile(os.path.join(run_dir, n))]
    if labels is None:
        missing.insert(1, LABELS_FILE)
    if missing:
        raise UserError(
            f"{run_dir} is not a kdistill run directory (no {', '.join(missing)}); "
            "give the output_dir of a finished `kdistill run` or `kdistill distill`, or a finished cell of a `kdistill "
            "compare` sweep"
        )
    config = read_json(os.path.join(run_dir, RUN_CONFIG))
    label2id = {str(k): int(v) for k, v in read_json(labels).items()}
    eval_path = os.path.join(run_dir, EVAL_FILE)
    evaluation = read_json(eval_path) if os.path.isfile(eval_path) else None
    return Run(run_dir, config, label2id, evaluation)


def read_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, json.JSONDecodeError) as err:
        raise UserError(f"{path}: unreadable ({str(err).splitlines()[0]})") from None


def locate(path: str, run: Run) -> str:
    """A path stored in run_config.json, found from here.

    Paths there are relative to the directory the run was started from. When that is not the current directory,
    it is recovered from where the run directory now lies: RUN_DIR ends with the stored output_dir.
    """
    if os.path.isabs(path) or os.path.exists(path):
        return path
    stored = os.path.normpath(run.config.get("distill", {}).get("output_dir") or "")
    here = os.path.abspath(run.directory)
    if stored and not os.path.isabs(stored) and here.endswith(os.sep + stored):
        candidate = os.path.join(here[: -len(stored)], path)
        if os.path.exists(candidate):
            return os.path.normpath(candidate)
    return path


def teacher_of(path: str) -> str:
    """`--teacher PATH`: the fine-tuned teacher of the run in PATH (its teacher/, or the one it was given), or the
    model directory PATH itself."""
    if os.path.isfile(os.path.join(path, RUN_CONFIG)):
        return run_teacher_dir(Run(path, read_json(os.path.join(path, RUN_CONFIG)), {}, None))
    if os.path.isfile(os.path.join(path, "config.json")):
        return path
    raise UserError(f"--teacher {path}: neither a kdistill run directory (no {RUN_CONFIG}) nor a model directory "
                    "(no config.json)")


def run_teacher_dir(run: Run) -> str:
    """The run's teacher, as `teacher_dir` finds it, but from RUN_DIR (the run may have moved)."""
    teacher = run.config.get("teacher", {})
    if teacher.get("teacher_train", True):
        path = RunPaths(run.directory).teacher
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise UserError(f"no fine-tuned teacher in {path}; the speed report and --teacher need it (or --speed_batches 0)")
        return path
    listed = json.loads(teacher["teachers"]) if teacher.get("teachers") else None
    model = listed[0]["model"] if listed else teacher.get("teacher_model", "")
    return locate(resolve_model_path(model), run)


def data_config(run: Run, data_file: str | None = None) -> DataConfig:
    """The run's data section, with its files found from here; `data_file` replaces the evaluation file."""
    known = {f.name for f in fields(DataConfig)}
    values = {k: v for k, v in run.config.get("data", {}).items() if k in known}
    for key in ("train_file", "validation_file", "test_file", "transfer_file"):
        if values.get(key):
            values[key] = locate(values[key], run)
    if data_file is not None:
        values["test_file"] = data_file
    return DataConfig(**values)
