"""`kdistill compare`: does distilling with soft labels pay off on this data? A sweep with a verdict.

A sweep file is a run config (data / teacher / student / distill sections) plus two sections of its own:

    students:            # optional; each entry is a name plus student-section fields
      - name: 2-layer
        student_layers: [0, 5]
    grid:
      strategies: [hard, soft, mixed, scratch]   # scratch: hard labels from random initialisation
      temperatures: [2, 4, {schedule: linear, from: 8, to: 1}]   # for soft and mixed; numbers or schedules
      alphas: [0.5]                               # for mixed; numbers or schedules (kdistill.schedules)
      seeds: [1, 2, 3]
      teacher_sets:                               # optional: soft and mixed run once per set (see below)
        - name: a
          teachers: [{model: teachers/a}]
        - name: ensemble
          teachers: [{model: teachers/a}, {model: teachers/b}]
          ensemble_combine: probabilities          # optional, the teacher section's by default

The teacher is fine-tuned (or checked) once, its soft labels are made once into `<output_dir>/soft_labels`, and every
cell of the grid runs the same `pipeline.distill` and `evaluation.evaluate` as `kdistill run`, in
`<output_dir>/runs/<student>/<setting>/seed<k>/`. A cell is finished when its `cell.json` exists; rerunning the
command skips finished cells and restarts unfinished ones from scratch. The report (results.json, report.md,
report.html, plots) is written by `report.compare.write_report`, which needs nothing but the results dict, so
`kdistill report DIR` rebuilds it from `results.json`. Settings are judged on the task's headline metric
(`Task.headline_metric`, recorded as results["metric"]): test accuracy for classification, entity F1 for token
classification, chosen on its validation value where every cell has one.

`grid.teacher_sets` compares teachers (one against an ensemble, say): each set is a named `teachers` list of
fine-tuned teachers (teacher_train: false), and every soft and mixed setting runs once per set, labelled
'soft T=4 [ensemble]' and kept in runs/<student>/<set>/...; hard and scratch learn no soft labels and run once, with the
teacher section's teachers. Each teacher's soft labels are cached once in the sweep's cache and shared by every set
that lists it. A from_teacher student copies the first teacher of its set: sets that start with the same teacher
(a, ensemble) give every setting the same student to start from, so their difference is the soft labels'.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import os
import platform
import re
import shutil
import time
from dataclasses import dataclass
from typing import Any

from .errors import UserError
from .data import validation_is_test
from .files import write_json
from .lock import directory_lock
from .rundir import RunPaths
from .schedules import WEIGHT_KINDS, Schedule
from .schedules import parse as parse_schedule

logger = logging.getLogger(__name__)

GRID_KEYS = ("strategies", "temperatures", "alphas", "seeds", "teacher_sets")
SWEEP_STRATEGIES = ("hard", "soft", "mixed", "scratch")
DISTILLED = ("soft", "mixed")
# Fields the grid sets per cell; as flags they would silently flatten the grid.
GRID_FIELDS = ("strategy", "temperature", "alpha", "seed", "temperature_schedule", "alpha_schedule")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
DEFAULT_STUDENT = "student"


# ------------------------------------------------------------------------------------------------ the sweep file


@dataclass(frozen=True)
class Cell:
    """One run of the grid: a student spec, a setting and a seed. A temperature or alpha is a number or a
    `schedules.Schedule`."""

    student: str
    strategy: str
    temperature: float | Schedule | None = None
    alpha: float | Schedule | None = None
    seed: int = 0
    teachers: str | None = None  # the name of its grid.teacher_sets entry (None: the teacher section's)

    @property
    def setting(self) -> str:
        """'hard', 'scratch', 'soft T=4', 'mixed T=4 a=0.5', 'soft T=cosine 8→1'; 'soft T=4 [ensemble]' with a
        teacher set."""
        label = setting_label(self.strategy, self.temperature, self.alpha)
        return f"{label} [{self.teachers}]" if self.teachers else label

    @property
    def path(self) -> str:
        # Numbers' settings keep the directories they always had ('mixed-T4-a0.5'); a schedule's name is spelt in
        # ASCII ('soft-Tlinear-8to1'); a teacher set's cells lie in a directory of the set's name.
        slug = setting_label(self.strategy, self.temperature, self.alpha)
        slug = slug.replace(" ", "-").replace("=", "").replace("→", "to")
        slug = re.sub(r"[^A-Za-z0-9._-]+", "-", slug)
        return os.path.join("runs", self.student, *([self.teachers] if self.teachers else []), slug, f"seed{self.seed}")

    def record(self) -> dict[str, Any]:
        """The cell as JSON data: a scheduled temperature or alpha is None under its own key (it has no one number
        to plot against) and its spec under `temperature_schedule` / `alpha_schedule`."""
        out = dataclasses.asdict(dataclasses.replace(self, temperature=None, alpha=None))
        for key in ("temperature", "alpha"):
            value = getattr(self, key)
            if isinstance(value, Schedule):
                out[f"{key}_schedule"] = value.spec()
            else:
                out[key] = value
        return out


def setting_label(strategy: str, temperature: float | Schedule | None, alpha: float | Schedule | None) -> str:
    """A setting's name in tables: numbers as 'T=4', schedules by their name ('T=cosine 8→1')."""
    label = strategy
    if temperature is not None:
        label += f" T={temperature.name if isinstance(temperature, Schedule) else format(temperature, 'g')}"
    if alpha is not None:
        label += f" a={alpha.name if isinstance(alpha, Schedule) else format(alpha, 'g')}"
    return label


@dataclass
class Sweep:
    output_dir: str
    flat: dict[str, Any]  # the run-config sections, flattened (see config.flatten_yaml)
    students: dict[str, dict[str, Any]]  # name -> student-section fields
    strategies: list[str]
    temperatures: list[float | Schedule]
    alphas: list[float | Schedule]
    seeds: list[int]
    # name -> teacher-section fields (teachers, ensemble_combine); empty: the teacher section's teachers only
    teacher_sets: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)

    def cells(self) -> list[Cell]:
        """Every run, student by student, seed-major within a setting so early results cover all settings."""
        out = []
        for student in self.students:
            for seed in self.seeds:
                for strategy in self.strategies:
                    if strategy in ("hard", "scratch"):
                        out.append(Cell(student, strategy, seed=seed))
                    for t in self.temperatures if strategy in DISTILLED else ():
                        for a in self.alphas if strategy == "mixed" else (None,):
                            for teachers in self.teacher_sets or (None,):
                                out.append(Cell(student, strategy, t, a, seed, teachers))
        return out

    def grid_values(self, key: str) -> list:
        """grid.temperatures or grid.alphas as JSON data: numbers, and schedules as their specs."""
        return [v.spec() if isinstance(v, Schedule) else v for v in getattr(self, key)]


def _grid_list(grid: dict, key: str, kind: type, source: str) -> list:
    values = grid.get(key)
    if values is None:
        return []
    values = values if isinstance(values, list) else [values]
    try:
        return [kind(v) for v in values]
    except (TypeError, ValueError):
        raise UserError(f"{source}: grid.{key} must be a list of {kind.__name__}s, got {values!r}") from None


def _grid_settings(grid: dict, key: str, source: str, **bounds) -> list[float | Schedule]:
    """grid.temperatures or grid.alphas: numbers, or schedule mappings (kdistill.schedules)."""
    values = grid.get(key)
    values = [] if values is None else values if isinstance(values, list) else [values]
    out = []
    for i, value in enumerate(values):
        if isinstance(value, dict):
            out.append(parse_schedule(value, f"{source}: grid.{key}[{i}]", **bounds))
            continue
        try:
            out.append(float(value))
        except (TypeError, ValueError):
            raise UserError(f"{source}: grid.{key} must be a list of numbers or schedule mappings, "
                            f"got {values!r}") from None
    return out


def parse_sweep(raw: Any, source: str = "sweep") -> Sweep:
    """Check a loaded sweep document; one clear error for each thing wrong with it."""
    from .config import SECTIONS, StudentConfig, _field_names, _unknown_key_error, flatten_yaml

    if not isinstance(raw, dict):
        raise UserError(f"{source}: the top level must be a mapping with sections "
                        f"{', '.join([*SECTIONS, 'students', 'grid'])}")
    raw = dict(raw)
    students_raw, grid = raw.pop("students", None), raw.pop("grid", None)
    for section in raw:
        if section not in SECTIONS:
            raise _unknown_key_error(str(section), source, [*SECTIONS, "students", "grid"])
    flat = flatten_yaml(raw, source)
    if not isinstance(grid, dict):
        raise UserError(f"{source}: needs a 'grid' mapping with {', '.join(GRID_KEYS)}")
    for key in grid:
        if key not in GRID_KEYS:
            raise _unknown_key_error(str(key), f"{source} section 'grid'", list(GRID_KEYS))
    strategies = [str(s) for s in _grid_list(grid, "strategies", str, source)]
    for s in strategies:
        if s not in SWEEP_STRATEGIES:
            raise UserError(f"{source}: unknown strategy {s!r} in grid.strategies; use {', '.join(SWEEP_STRATEGIES)}")
    temperatures = _grid_settings(grid, "temperatures", source, low=0.0, open_low=True)
    alphas = _grid_settings(grid, "alphas", source, low=0.0, high=1.0, kinds=WEIGHT_KINDS)
    seeds = _grid_list(grid, "seeds", int, source)
    if not strategies:
        raise UserError(f"{source}: the grid is empty: grid.strategies lists no strategy")
    if not seeds:
        raise UserError(f"{source}: the grid is empty: grid.seeds lists no seed")
    if any(s in DISTILLED for s in strategies) and not temperatures:
        raise UserError(f"{source}: soft and mixed need grid.temperatures")
    if "mixed" in strategies and not alphas:
        raise UserError(f"{source}: mixed needs grid.alphas")
    if any(not t > 0 for t in temperatures if not isinstance(t, Schedule)) or \
            any(not 0 <= a <= 1 for a in alphas if not isinstance(a, Schedule)):
        raise UserError(f"{source}: temperatures must be > 0 and alphas in [0, 1]")
    for name, values in (("strategies", strategies), ("temperatures", temperatures), ("alphas", alphas), ("seeds", seeds)):
        if len(set(values)) != len(values):
            raise UserError(f"{source}: grid.{name} lists a value twice")
    for key in GRID_FIELDS:
        if key in flat:
            logger.warning("%s: %s in the distill section is ignored: the grid sets it per run", source, key)
            flat.pop(key)

    students: dict[str, dict[str, Any]] = {}
    valid = _field_names(StudentConfig)
    for i, entry in enumerate(students_raw if students_raw is not None else [{"name": DEFAULT_STUDENT}]):
        if not isinstance(entry, dict) or "name" not in entry:
            raise UserError(f"{source}: students[{i}] must be a mapping with a 'name'")
        entry = dict(entry)
        name = str(entry.pop("name"))
        if not NAME.match(name) or name in students:
            raise UserError(f"{source}: student name {name!r} must be unique and use only letters, digits, '.', '_', '-'")
        for key in entry:
            if key not in valid:
                raise _unknown_key_error(str(key), f"{source} students[{i}]", valid)
        students[name] = entry
    if not students:
        raise UserError(f"{source}: 'students' lists no student")
    output_dir = flat.get("output_dir") or "runs/compare"
    return Sweep(output_dir, flat, students, strategies, temperatures, alphas, seeds,
                 _teacher_sets(grid.get("teacher_sets"), flat, strategies, source))


TEACHER_SET_KEYS = ("teachers", "ensemble_combine")


def _teacher_sets(raw: Any, flat: dict[str, Any], strategies: list[str], source: str) -> dict[str, dict[str, Any]]:
    """grid.teacher_sets as name -> {teachers, ensemble_combine}, each checked as the teacher section would be."""
    from .config import ConfigError, TeacherConfig, _unknown_key_error

    if raw is None:
        return {}
    if not any(s in DISTILLED for s in strategies):
        raise UserError(f"{source}: grid.teacher_sets varies the soft labels; grid.strategies needs soft or mixed")
    if not isinstance(raw, list) or not raw:
        raise UserError(f"{source}: grid.teacher_sets must be a list of {{name: NAME, teachers: [...]}}")
    base = {k: flat[k] for k in ("teacher_train", "teacher_folds") if k in flat}
    out: dict[str, dict[str, Any]] = {}
    for i, entry in enumerate(raw):
        if not isinstance(entry, dict) or "name" not in entry or "teachers" not in entry:
            raise UserError(f"{source}: grid.teacher_sets[{i}] must be a mapping with a 'name' and 'teachers'")
        entry = dict(entry)
        name = str(entry.pop("name"))
        if not NAME.match(name) or name in out:
            raise UserError(f"{source}: teacher set name {name!r} must be unique and use only letters, digits, '.', "
                            "'_', '-'")
        for key in entry:
            if key not in TEACHER_SET_KEYS:
                raise _unknown_key_error(str(key), f"{source} grid.teacher_sets[{i}]", ["name", *TEACHER_SET_KEYS])
        try:
            checked = TeacherConfig(**base, **entry)
        except ConfigError as err:
            raise UserError(f"{source}: grid.teacher_sets[{i}] ({name}): {str(err).removeprefix('teacher: ')}") from None
        out[name] = {"teachers": json.loads(checked.teachers), **({"ensemble_combine": entry["ensemble_combine"]}
                                                                 if "ensemble_combine" in entry else {})}
    return out


def load_sweep(path: str) -> Sweep:
    from .config import read_yaml

    return parse_sweep(read_yaml(path, "sweep file"), source=path)


# ------------------------------------------------------------------------------------------------ running it


def _student_config(sweep: Sweep, name: str, argv: list[str]):
    """The full run config for one student spec: YAML, the spec's fields, then flags."""
    from .config import parse_config

    return parse_config(argv, flat={**sweep.flat, **sweep.students[name], "output_dir": sweep.output_dir})


def scratch_spec(spec):
    """The same architecture as `spec`, randomly initialised; None where that is what `spec` is already."""
    from .config import StudentConfig

    if spec.student_init in ("from_config", "bilstm"):  # a BiLSTM starts from random weights already
        return None
    overrides = spec.overrides()
    if spec.student_init == "from_teacher":
        overrides["num_hidden_layers"] = len(spec.student_layers) if spec.student_layers else spec.student_num_layers
        base = None  # the teacher's config
    else:
        base = spec.student_model
    return StudentConfig(student_init="from_config", student_model=base, student_tokenizer=spec.student_tokenizer,
                         student_config_overrides=json.dumps(overrides) if overrides else None)


def _tensorboard() -> list[str]:
    from transformers.integrations import is_tensorboard_available

    if is_tensorboard_available():
        return ["tensorboard"]
    logger.warning("tensorboard is not installed: no TensorBoard logs (pip install tensorboard)")
    return []


def cell_config(student_config, cell: Cell, sweep: Sweep, teacher: str, report_to: list[str]):
    """The run config of one cell: the student's config with the grid's settings and the sweep's shared teacher."""
    from .config import RunConfig

    spec = student_config.student
    if cell.strategy == "scratch":
        spec = scratch_spec(spec)
    d = student_config.distill
    distill = dataclasses.replace(
        d,
        output_dir=os.path.join(sweep.output_dir, cell.path),
        strategy="hard" if cell.strategy == "scratch" else cell.strategy,
        **_grid_setting("temperature", cell.temperature, d),
        **_grid_setting("alpha", cell.alpha, d),
        seed=cell.seed,
        soft_label_cache=paths_of_sweep(sweep).cache,
        speed_batches=0,  # timed once per student spec, after the grid (see `measure_speeds`)
        report_to=report_to,
    )
    t = student_config.teacher
    if cell.teachers is not None:  # its teacher set's fine-tuned teachers, in place of the teacher section's
        t = dataclasses.replace(t, **sweep.teacher_sets[cell.teachers])
    # Every cell reads the sweep's teacher; out-of-fold teachers still start from the backbone.
    backbone = t.teacher_backbone or (t.teacher_model if t.teacher_train else None)
    # The teacher side keeps the sweep's seed while each cell sets its own (so out-of-fold labels are made once).
    teacher_seed = t.teacher_seed if t.teacher_seed is not None else d.seed
    teacher_cfg = dataclasses.replace(t, teacher_train=False, teacher_model=teacher, teacher_backbone=backbone,
                                      teacher_seed=teacher_seed)
    return RunConfig(data=student_config.data, teacher=teacher_cfg, student=spec, distill=distill)


def _grid_setting(name: str, value: float | Schedule | None, distill) -> dict[str, Any]:
    """A cell's temperature or alpha as config fields: a number, or a schedule's starting value and its spec."""
    if value is None:  # not a setting of this cell (hard, scratch; alpha of soft)
        return {name: getattr(distill, name), f"{name}_schedule": getattr(distill, f"{name}_schedule")}
    if isinstance(value, Schedule):
        return {name: value.initial, f"{name}_schedule": json.dumps(value.spec())}
    return {name: value, f"{name}_schedule": None}


def paths_of_sweep(sweep: "Sweep") -> RunPaths:
    """A sweep's directory holds a run's shared parts: teacher/ and soft_labels/ (each cell's run lies below)."""
    return RunPaths.of(sweep.output_dir)


def _fingerprint(config) -> dict:
    """What must not change between a sweep's invocations for its finished cells to stay comparable."""
    from .config import config_to_dict

    d = config_to_dict(config)
    for key in (*GRID_FIELDS, "output_dir", "report_to", "speed_batches", "logging_dir", "run_name"):
        d["distill"].pop(key, None)
    return d


def _check_same_sweep(out: str, record: dict) -> None:
    path = os.path.join(out, "sweep.json")
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as fh:
            old = json.load(fh)
        for section in record:
            for key, value in record[section].items():
                if old.get(section, {}).get(key, value) != value:
                    raise UserError(
                        f"{out} holds a sweep made with {section}.{key}={old[section][key]!r}, not {value!r}; its finished "
                        "runs would not be comparable: use another output_dir, or delete that one"
                    )
    write_json(path, record)


def run_cell(config, cell: Cell) -> dict:
    """Distil and evaluate one cell; its record, also written to cell.json (the 'finished' mark)."""
    from . import evaluation, pipeline

    out = config.output_dir
    if os.path.exists(out):  # an unfinished cell from an interrupted sweep: start it over
        logger.info("restarting the unfinished run in %s", out)
        shutil.rmtree(out)
    from .tasks import get_task

    trained = pipeline.distill(config, progress=False)
    evaluated = evaluation.evaluate(config)
    # The validation split's accuracy, and its headline metric when that is another (a tagger's entity F1): what a
    # sweep chooses its best setting on (report.compare.best_cell).
    metric = get_task(config.data.task).headline_metric
    validation = {f"validation_{m}": trained.get(f"eval_{m}") for m in dict.fromkeys(("accuracy", metric))}
    record = {
        **cell.record(),
        "setting": cell.setting,
        "metrics": {**evaluated["student"], **validation},
        "teacher_metrics": {**evaluated["teacher"], **{k: evaluated[k] for k in ("teachers", "teacher_disagreement")
                                                       if k in evaluated}},
        "train_seconds": trained["train_seconds"],
        "train_loss": trained["train_loss"],
        "train_rows": trained["train_rows"],
        "loss_curve": trained["loss_curve"],
        "run_dir": out,
    }
    write_json(os.path.join(out, "cell.json"), record)
    return record


def read_cell(sweep: Sweep, cell: Cell) -> dict | None:
    path = os.path.join(sweep.output_dir, cell.path, "cell.json")
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def soft_label_diagnostics(config, temperatures: list[float | Schedule]) -> dict:
    """The teacher's soft labels on each split at T=1 and each grid temperature (a schedule's: where it starts and
    ends), with labels where the split has them, over the task's items (rows, or words)."""
    from . import metrics, pipeline
    from .data import load_split
    from .tasks import get_task
    from .tasks.base import flat_items

    task = get_task(config.data.task)
    label2id = pipeline.label_map(config)
    logits = pipeline.make_soft_labels(config, progress=True)
    temperatures = [x for t in temperatures for x in ((t.first, t.last) if isinstance(t, Schedule) else (t,))]
    out = {}
    for split, values in logits.items():
        labels = None
        if split != "transfer":
            table = load_split(config.data, split)
            labels = task.encode_labels(table, config.data, label2id, split)
        values, labels = flat_items(values, labels)
        out[split] = {f"{t:g}": metrics.soft_label_stats(values, t, labels) for t in sorted({1.0, *temperatures})}
    return out


def measure_speeds(sweep: Sweep, student_configs: dict, cells: list[Cell], teacher: str) -> dict:
    """Per student spec: its trained student (the first finished cell) and the teacher timed in one call."""
    from . import evaluation

    path = os.path.join(sweep.output_dir, "speed.json")
    speeds = {}
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as fh:
            speeds = json.load(fh)
    for name, config in student_configs.items():
        if name in speeds or config.distill.speed_batches <= 0:
            continue
        cell = next(c for c in cells if c.student == name)
        logger.info("timing the %s student and the teacher on CPU", name)
        timed = cell_config(config, cell, sweep, teacher, [])
        timed.distill.speed_batches = config.distill.speed_batches
        speeds[name] = evaluation.speed(timed)
        write_json(path, speeds)
    return speeds


def _machine() -> dict:
    from .evaluation import cpu_model

    return {"cpu": cpu_model(), "cores": os.cpu_count(), "python": platform.python_version()}


def _drop_weights(run_dir: str) -> None:
    """Delete a finished run's model weights (its metrics, logs and config stay)."""
    student = RunPaths(run_dir).student
    for name in os.listdir(student) if os.path.isdir(student) else ():
        if name.endswith((".safetensors", ".bin")):
            os.remove(os.path.join(student, name))


def run_sweep(sweep: Sweep, argv: list[str] | None = None, keep_models: bool = True) -> dict:
    """Teacher once, soft labels once, then every unfinished cell; returns (and writes) the results dict.

    With `keep_models=False` only the first run of each student keeps its weights (the speed is timed on it). The
    sweep directory is held for the whole sweep (kdistill.lock): a second `kdistill compare` there is refused.
    """
    with directory_lock(sweep.output_dir, "sweep directory", ", or use another output_dir"):
        return _run_sweep(sweep, argv, keep_models)


def _run_sweep(sweep: Sweep, argv: list[str] | None, keep_models: bool) -> dict:
    from . import __version__, pipeline
    from .tasks import get_task
    # Training's formatter for time left ('42s', '3m05s', '1h02m'), so a sweep's line reads like a run's.
    from .trainer import _duration as duration

    argv = list(argv or [])
    for flag in argv:
        if flag.lstrip("-").split("=")[0] in GRID_FIELDS:
            raise UserError(f"compare: {flag} is set by the grid (strategies, temperatures, alphas, seeds), not by a flag")
    out = sweep.output_dir
    student_configs = {name: _student_config(sweep, name, argv) for name in sweep.students}
    for name, config in student_configs.items():
        if "scratch" in sweep.strategies and scratch_spec(config.student) is None:
            logger.warning("student %s starts from random weights already: 'scratch' would repeat 'hard', skipped", name)
    cells = [c for c in sweep.cells()
             if not (c.strategy == "scratch" and scratch_spec(student_configs[c.student].student) is None)]
    first = next(iter(student_configs.values()))
    _check_same_sweep(out, {**{f"{name}/{section}": values for name, config in student_configs.items()
                               for section, values in _fingerprint(config).items()},
                            "grid/teacher_sets": sweep.teacher_sets})

    # The teacher, once. A teacher this sweep fine-tuned lives in <out>/teacher and is reused when the sweep resumes.
    shared_paths = paths_of_sweep(sweep)  # the sweep's own teacher and cache
    if first.teacher.teacher_train and os.path.isfile(os.path.join(shared_paths.teacher, "config.json")):
        logger.info("teacher: reusing the one fine-tuned in %s", shared_paths.teacher)
    else:
        pipeline.teach(first)
    teacher = pipeline.teacher_dir(first)
    shared = dataclasses.replace(first, distill=dataclasses.replace(
        first.distill, soft_label_cache=shared_paths.cache))
    diagnostics = soft_label_diagnostics(shared, sweep.temperatures)

    report_to = _tensorboard()
    done = {c: read_cell(sweep, c) for c in cells}
    todo = [c for c in cells if done[c] is None]
    logger.info("sweep: %d runs, %d finished before, %d to run, in %s", len(cells), len(cells) - len(todo), len(todo), out)
    start, ran = time.perf_counter(), 0
    for i, cell in enumerate(cells, 1):
        if done[cell] is not None:
            continue
        eta = ""
        if ran:
            per_run = (time.perf_counter() - start) / ran
            eta = f", about {duration(per_run * (len(todo) - ran))} left"
        logger.info("[%d/%d] %s: %s, seed %d%s", i, len(cells), cell.student, cell.setting, cell.seed, eta)
        done[cell] = run_cell(cell_config(student_configs[cell.student], cell, sweep, teacher, report_to), cell)
        ran += 1
        if not keep_models and cell != next(c for c in cells if c.student == cell.student):
            _drop_weights(done[cell]["run_dir"])
    speeds = measure_speeds(sweep, student_configs, cells, teacher)

    runs = [done[c] for c in cells]
    results = {
        "kdistill_version": __version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "output_dir": out,
        "machine": _machine(),
        "grid": {"strategies": sweep.strategies, "temperatures": sweep.grid_values("temperatures"),
                 "alphas": sweep.grid_values("alphas"), "seeds": sweep.seeds, "students": sweep.students,
                 "teacher_sets": sweep.teacher_sets},
        "config": {name: _fingerprint(c) for name, c in student_configs.items()},
        "teacher": runs[0]["teacher_metrics"],
        # Each teacher set's teacher on the test rows (an ensemble's with its members' and their disagreement).
        "teacher_sets": {name: next(done[c]["teacher_metrics"] for c in cells if c.teachers == name)
                         for name in sweep.teacher_sets},
        "metric": get_task(first.data.task).headline_metric,  # what the report judges the settings on
        "diagnostics": diagnostics,
        "validation_is_test": validation_is_test(first.data),
        "speed": speeds,
        "sweep_seconds": time.perf_counter() - start,
        "runs": [{k: v for k, v in r.items() if k != "teacher_metrics"} for r in runs],
    }
    from .report.compare import write_report

    return write_report(out, results)
