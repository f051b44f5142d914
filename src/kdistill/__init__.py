"""kdistill: knowledge distillation with honest soft-vs-hard measurements, on the transformers Trainer."""

from .config import (
    ConfigError,
    DataConfig,
    DistillationConfig,
    RunConfig,
    StudentConfig,
    TeacherConfig,
    UserError,
    make_config,
    parse_config,
)
from .losses import distillation_loss, hard_ce, logit_mse, soft_kl
from .pipeline import distill, evaluate, make_soft_labels, teach
from .students import build_student, from_teacher
from .trainer import DistillationTrainer

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "DataConfig",
    "DistillationConfig",
    "DistillationTrainer",
    "RunConfig",
    "StudentConfig",
    "TeacherConfig",
    "UserError",
    "build_student",
    "distill",
    "distillation_loss",
    "evaluate",
    "from_teacher",
    "hard_ce",
    "logit_mse",
    "make_config",
    "make_soft_labels",
    "parse_config",
    "soft_kl",
    "teach",
]
