"""Weights and temperatures as pure functions of the training step.

A `Weight` is a plain number (constant) or a callable `(step, max_steps) -> float`. The objective resolves every
weight once per step with `value_at`, so a schedule never needs to know about the trainer.

A config writes a schedule as plain data, a mapping that `parse` turns into a `Schedule`:

    {schedule: constant, value: 4}
    {schedule: linear, from: 8, to: 1}                 # from 8 at `start` to 1 at `end`, in a straight line
    {schedule: cosine, from: 8, to: 1, start: 100, end: 900}   # half a cosine wave from 8 down to 1
    {schedule: step, from: 1, to: 0, at: 500}          # 1 on steps 0..499, 0 from step 500 on
    {schedule: annealing, from: 10}                    # Annealing-KD's temperatures 10/1, 10/2, ..., 10/10 = 1

`start` (default 0) and `end` (default null: the run's last step, `max_steps`) are optimizer steps, the Trainer's
`global_step`. Before `start` the value is `from`, from `end` on it is `to`. The value at step N is the one the
(N+1)-th optimizer step trains with, as for the Trainer's learning rate: the last step trained, max_steps - 1, is
just short of `to`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError

Weight = float | Callable[[int, int], float]

KINDS = ("constant", "linear", "cosine", "step", "annealing")
# The kinds a weight or alpha may follow; annealing is a rule for the temperature.
WEIGHT_KINDS = ("constant", "linear", "cosine", "step")
# The keys each kind takes (after 'schedule'); the first ones listed are required.
_KEYS = {
    "constant": (("value",), ()),
    "linear": (("from", "to"), ("start", "end")),
    "cosine": (("from", "to"), ("start", "end")),
    "step": (("from", "to", "at"), ()),
    "annealing": (("from",), ("start", "end")),
}


def value_at(weight: Weight, step: int, max_steps: int) -> float:
    """The weight's value at `step` of `max_steps` (a number is its own value at every step)."""
    return float(weight(step, max_steps)) if callable(weight) else float(weight)


@dataclass(frozen=True)
class Schedule:
    """A value that follows the step: `schedule(step, max_steps) -> float`, and `name` for tables ("cosine 8→1").

    `first` and `last` are the spec's `from` and `to` (a constant's value is both; annealing ends at 1). `at` is
    the step kind's switch; `start` and `end` bound the others' change (end None: `max_steps`).
    """

    kind: str
    first: float
    last: float
    start: int = 0
    end: int | None = None
    at: int | None = None

    def _fraction(self, step: int, max_steps: int) -> float:
        """How far `step` is from `start` (0) to `end` (1), clipped to [0, 1]."""
        end = self.end if self.end is not None else max_steps
        if self.end is None and max_steps <= 0:  # the run's length is not known yet (before training)
            return 0.0
        if end <= self.start:
            return 1.0 if step >= end else 0.0
        return min(max((step - self.start) / (end - self.start), 0.0), 1.0)

    def __call__(self, step: int, max_steps: int) -> float:
        if self.kind == "constant":
            return self.first
        if self.kind == "step":
            return self.first if step < self.at else self.last
        frac = self._fraction(step, max_steps)
        if self.kind == "linear":
            return self.first + (self.last - self.first) * frac
        if self.kind == "cosine":
            return self.last + (self.first - self.last) * (1.0 + math.cos(math.pi * frac)) / 2.0
        # annealing: stage k of `first` equal stages (k = 1 .. first) has temperature first / k.
        stages = int(self.first)
        return self.first / min(int(frac * stages) + 1, stages)

    @property
    def initial(self) -> float:
        """The value at step 0 (what needs one number: soft-label diagnostics, several cached teachers combined)."""
        return self(0, 0)

    def bounds(self) -> tuple[float, float]:
        """The least and greatest value it takes (every kind moves monotonically from `first` to `last`)."""
        return min(self.first, self.last), max(self.first, self.last)

    @property
    def name(self) -> str:
        return self.describe()

    def describe(self) -> str:
        """A readable label: 'constant 4', 'linear 8→1', 'cosine 8→1 over steps 100-900', 'step 1→0 at step 500'."""
        if self.kind == "constant":
            return f"constant {self.first:g}"
        label = f"{self.kind} {self.first:g}→{self.last:g}"
        if self.kind == "step":
            return f"{label} at step {self.at}"
        if self.end is not None:
            return f"{label} over steps {self.start}-{self.end}"
        return f"{label} from step {self.start}" if self.start else label

    def spec(self) -> dict[str, Any]:
        """The plain mapping `parse` reads back to this schedule, every key the kind takes written out."""
        out: dict[str, Any] = {"schedule": self.kind}
        if self.kind == "constant":
            return {**out, "value": self.first}
        out["from"] = self.first
        if self.kind != "annealing":
            out["to"] = self.last
        if self.kind == "step":
            return {**out, "at": self.at}
        return {**out, "start": self.start, "end": self.end}

    def complement(self) -> "Schedule":
        """`1 - self` as a schedule of the same kind (mixed's hard weight from its alpha)."""
        if self.kind not in WEIGHT_KINDS:
            raise ValueError(f"{self.kind} has no complement schedule")
        return dataclasses.replace(self, first=1.0 - self.first, last=1.0 - self.last)

    def __str__(self) -> str:
        return self.describe()


def constant(value: float) -> Schedule:
    return Schedule("constant", float(value), float(value))


def linear(first: float, last: float, start: int = 0, end: int | None = None) -> Schedule:
    """From `first` at `start` to `last` at `end` (default `max_steps`), in a straight line (held outside)."""
    return Schedule("linear", float(first), float(last), start, end)


def cosine(first: float, last: float, start: int = 0, end: int | None = None) -> Schedule:
    """Half a cosine wave from `first` at `start` to `last` at `end`: slow at both ends, fastest half-way."""
    return Schedule("cosine", float(first), float(last), start, end)


def step(first: float, last: float, at: int) -> Schedule:
    """`first` on the steps before `at`, `last` from step `at` on."""
    return Schedule("step", float(first), float(last), at=at)


def annealing(max_temperature: int, start: int = 0, end: int | None = None) -> Schedule:
    """The annealing of Annealing-KD (Jafari, Rezagholizadeh, Sharma and Ghodsi, "Annealing Knowledge
    Distillation", EACL 2021, section 3), as a temperature.

    The paper's first phase trains the student's logits to match the teacher's scaled by
    ``Phi(T) = 1 - (T - 1) / tau_max``, with T stepped down from tau_max to 1 in tau_max equal stages of the phase,
    so the student first meets a flattened teacher and last the teacher itself. Scaling logits by Phi(T) is
    softening them at temperature ``tau_max / k`` in stage k = 1 .. tau_max; this schedule gives that temperature:
    tau_max at `start`, 1 from `end` on. Two differences from the paper: here the temperature softens both the
    teacher's and the student's logits (`soft_kl`), where the paper scales the teacher's only under an MSE loss, and
    its second phase (hard labels only) is a `step` schedule on the terms' weights if wanted.
    """
    return Schedule("annealing", float(max_temperature), 1.0, start, end)


def _number(value: Any, key: str, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{where}: {key} must be a finite number, got {value!r}")
    return float(value)


def _step_number(value: Any, key: str, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        null = " (or null: the run's last step)" if key == "end" else ""
        raise ConfigError(f"{where}: {key} must be a step number, a whole number >= 0{null}, got {value!r}")
    return value


def _requirement(low: float | None, high: float | None, open_low: bool) -> str:
    if low is not None and high is not None:
        return f"in [{low:g}, {high:g}]"
    return f"{'>' if open_low else '>='} {low:g}" if low is not None else f"<= {high:g}"


def parse(spec: Any, where: str = "schedule", low: float | None = None, high: float | None = None,
          open_low: bool = False, kinds: tuple[str, ...] = KINDS) -> Schedule:
    """A schedule from its mapping (see the module's docstring); a ConfigError naming `where` for a bad one.

    Args:
        low, high: the bounds every value must keep (a temperature: low 0, open_low; alpha: 0 and 1).
        kinds: the kinds allowed here (a weight's: `WEIGHT_KINDS`).
    """
    if isinstance(spec, Schedule):
        spec = spec.spec()
    if not isinstance(spec, Mapping):
        raise ConfigError(f"{where} must be a number or a schedule mapping such as "
                          f"{{schedule: linear, from: 8, to: 1}}, got {spec!r}")
    kind = spec.get("schedule")
    if kind not in kinds:
        if kind is None:
            raise ConfigError(f"{where}: a schedule mapping needs 'schedule', one of {', '.join(kinds)}")
        if kind in KINDS:
            raise ConfigError(f"{where}: {kind} is a temperature schedule; valid here: {', '.join(kinds)}")
        raise ConfigError(f"{where}: unknown schedule {kind!r}; valid: {', '.join(kinds)}")
    required, optional = _KEYS[kind]
    for key in spec:
        if key != "schedule" and key not in required + optional:
            raise ConfigError(f"{where}: a {kind} schedule takes {', '.join(required + optional)}, not {key!r}")
    missing = [key for key in required if key not in spec]
    if missing:
        raise ConfigError(f"{where}: a {kind} schedule needs {' and '.join(repr(k) for k in missing)}")
    if kind == "constant":
        schedule = constant(_number(spec["value"], "value", where))
    elif kind == "step":
        schedule = step(_number(spec["from"], "from", where), _number(spec["to"], "to", where),
                        _step_number(spec["at"], "at", where))
    else:
        first = _number(spec["from"], "from", where)
        start = _step_number(spec.get("start", 0), "start", where)
        end = spec.get("end")
        if end is not None:
            end = _step_number(end, "end", where)
            if end < start:
                raise ConfigError(f"{where}: end ({end}) is before start ({start})")
        if kind == "annealing":
            if first != int(first) or first < 1:
                raise ConfigError(f"{where}: annealing's from is its number of stages (the paper's maximum "
                                  f"temperature), a whole number >= 1, got {spec['from']!r}")
            schedule = annealing(int(first), start, end)
        else:
            schedule = (linear if kind == "linear" else cosine)(first, _number(spec["to"], "to", where), start, end)
    least, most = schedule.bounds()
    if (low is not None and (least <= low if open_low else least < low)) or (high is not None and most > high):
        reached = least if low is not None and (least <= low if open_low else least < low) else most
        raise ConfigError(f"{where}: {schedule.name} reaches {reached:g}; it must stay "
                          f"{_requirement(low, high, open_low)}")
    return schedule


def to_data(weight: Weight) -> float | dict[str, Any]:
    """A weight as JSON data: a number as it is, a schedule as its spec (what `parse` reads back)."""
    return weight.spec() if isinstance(weight, Schedule) else weight


def label(weight: Weight) -> str:
    """A weight for a person: '4' or 'cosine 8→1'."""
    return weight.name if isinstance(weight, Schedule) else f"{weight:g}"
