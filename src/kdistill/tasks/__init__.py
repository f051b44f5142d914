"""Tasks: one object per kind of problem, chosen by name (`data: {task: ...}`).

A task owns how rows become model inputs and labels, the collator, the model class, what one *item* is (a row, a
word, a token) and its mask, the metrics, the layout of the teacher's outputs in the cache and the export
signature (`base.Task` lists them). The engine (trainer, soft-label pass, evaluation) asks the task and never
branches on its name, so a new task is one file plus its tests and a config.

This module stays light (no torch): the config validates task names against `TASKS` before anything heavy loads.
"""

from __future__ import annotations

import importlib

# name -> "module:Class", imported on first use.
TASKS: dict[str, str] = {
    "sequence_classification": "kdistill.tasks.sequence:SequenceClassification",
    "image_classification": "kdistill.tasks.image:ImageClassification",
    "token_classification": "kdistill.tasks.token:TokenClassification",
    "causal_lm": "kdistill.tasks.causal_lm:CausalLM",
}
_LOADED: dict[str, object] = {}


def register_task(name: str, task: object) -> None:
    """Add a task (an instance of `base.Task`) under `name`, e.g. from a user's own module or a test."""
    TASKS[name] = f"{type(task).__module__}:{type(task).__qualname__}"
    _LOADED[name] = task


def get_task(name: str):
    """The task registered under `name` (a ValueError naming the valid ones otherwise)."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; valid tasks: {', '.join(TASKS)}")
    if name not in _LOADED:
        module, _, cls = TASKS[name].partition(":")
        _LOADED[name] = getattr(importlib.import_module(module), cls)()
    return _LOADED[name]
