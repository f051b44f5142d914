"""kdistill: knowledge distillation with honest soft-vs-hard measurements, on the transformers Trainer.

Names are imported on first use, so `kdistill --help` answers without loading torch and transformers.
"""

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "ConfigError": "config",
    "DataConfig": "config",
    "DistillationConfig": "config",
    "RunConfig": "config",
    "StudentConfig": "config",
    "TeacherConfig": "config",
    "make_config": "config",
    "parse_config": "config",
    "UserError": "errors",
    "distillation_loss": "losses",
    "hard_ce": "losses",
    "logit_mse": "losses",
    "soft_kl": "losses",
    "distill": "pipeline",
    "evaluate": "evaluation",
    "make_soft_labels": "pipeline",
    "teach": "pipeline",
    "build_student": "students",
    "from_teacher": "students",
    "DistillationTrainer": "trainer",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'kdistill' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
