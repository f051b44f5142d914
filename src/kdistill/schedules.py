"""Weights and temperatures as pure functions of the training step.

A `Weight` is a plain number (constant) or a callable `(step, max_steps) -> float`. The objective resolves every
weight once per step with `value_at`, so a schedule never needs to know about the trainer.
"""

from __future__ import annotations

from collections.abc import Callable

Weight = float | Callable[[int, int], float]


def value_at(weight: Weight, step: int, max_steps: int) -> float:
    """The weight's value at `step` of `max_steps` (a number is its own value at every step)."""
    return float(weight(step, max_steps)) if callable(weight) else float(weight)


def constant(value: float) -> Callable[[int, int], float]:
    return lambda step, max_steps: float(value)


def linear(start: float, end: float) -> Callable[[int, int], float]:
    """From `start` at step 0 to `end` at `max_steps`, in a straight line (held at `end` past it)."""

    def at(step: int, max_steps: int) -> float:
        if max_steps <= 0:
            return float(start)
        frac = min(max(step / max_steps, 0.0), 1.0)
        return float(start + (end - start) * frac)

    return at
