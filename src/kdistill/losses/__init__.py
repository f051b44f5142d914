"""Loss terms as pure functions of tensors (`logits`), and the objective that weights and sums them (`objective`).

Feature terms (hidden states, attention: `features`) are in `TERMS` beside the logit terms.
"""

from .features import LayerProjections, layer_map
from .lm import (
    LM_DIVERGENCES,
    forward_kl,
    jsd,
    reverse_kl,
    skew_forward_kl,
    skew_reverse_kl,
    student_buckets,
    teacher_buckets,
    ensemble_topk_divergence,
    topk_divergence,
    total_variation,
    uld_loss,
)
from .logits import ENSEMBLE_COMBINES, IGNORE_INDEX, ensemble_logits, hard_ce, logit_mse, soft_kl
from .objective import (
    FEATURE_TERMS,
    SOFT_LOSSES,
    SOFT_TERMS,
    STRATEGIES,
    TEACHER_FIELDS,
    TERMS,
    TOPK_SOFT_LOSS,
    Term,
    TermInputs,
    check_weights,
    distillation_loss,
    needs,
    needs_teacher,
    objective,
    preset_weights,
)

__all__ = [
    "ENSEMBLE_COMBINES", "FEATURE_TERMS", "IGNORE_INDEX", "LayerProjections", "SOFT_LOSSES", "SOFT_TERMS",
    "STRATEGIES", "TEACHER_FIELDS", "TERMS", "TOPK_SOFT_LOSS", "Term", "TermInputs", "check_weights",
    "distillation_loss", "ensemble_logits", "hard_ce", "needs_teacher",
    "layer_map", "logit_mse", "needs", "objective", "preset_weights", "soft_kl",
    "LM_DIVERGENCES", "forward_kl", "jsd", "reverse_kl", "skew_forward_kl", "skew_reverse_kl", "student_buckets",
    "ensemble_topk_divergence", "teacher_buckets", "topk_divergence", "total_variation", "uld_loss",
]
