"""The student's objective: a weighted sum of named loss terms, ``sum_i weight_i(step) * term_i``.

A term is a pure function of what one batch offers (`TermInputs`): the student's logits, the gold labels, the
teacher's logits (from the cache or from a teacher running in the trainer), the item mask and the item count, and
for the feature terms (`features.py`) both models' hidden states and attention maps with the layer map.
`TERMS` maps each name a config may use to its function and to the inputs it needs, so adding a term is one
function and one dict entry (torchdistill's plain name-to-function dict). Weights are numbers or schedules
(`kdistill.schedules`): functions of the training step, resolved once per step.

`strategy: hard | soft | mixed` are presets (`preset_weights`) that expand to terms and give the numbers the
strategies always gave: ``mixed`` is ``alpha * soft + (1 - alpha) * hard``, summed in that order.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from torch import Tensor

from ..schedules import Weight, value_at
from . import features
from .lm import ensemble_topk_divergence, topk_divergence, uld_loss
from .logits import hard_ce, logit_mse, soft_kl

STRATEGIES = ("hard", "soft", "mixed")
# The soft part of a preset, by the config's `soft_loss` name: on dense logits, or (the lm_ terms) on a top-k cache.
SOFT_TERMS = {"kl": "soft_kl", "mse": "logit_mse", "forward_kl": "lm_forward_kl", "reverse_kl": "lm_reverse_kl",
              "jsd": "lm_jsd", "skew_forward_kl": "lm_skew_forward_kl", "skew_reverse_kl": "lm_skew_reverse_kl",
              "total_variation": "lm_tv"}
SOFT_LOSSES = tuple(SOFT_TERMS)
# The soft_loss a top-k cache stands for where the config names a dense one: the same KL, over the k + 1 buckets.
TOPK_SOFT_LOSS = {"kl": "forward_kl"}


@dataclass
class TermInputs:
    """What a loss term may read from one batch; a term that needs a field that is None cannot run."""

    student_logits: Tensor
    labels: Tensor | None = None
    teacher_logits: Tensor | None = None
    temperature: float = 1.0
    mask: Tensor | None = None
    num_items: int | Tensor | None = None
    # A top-k cache's teacher instead of teacher_logits (soft_labels/cache.py): its k largest logits [..., k], their
    # classes [..., k] and the log of its mass outside them [...]; the lm_ terms read them, with jsd_beta and
    # skew_alpha for lm_jsd and the skew terms.
    teacher_topk_values: Tensor | None = None
    teacher_topk_indices: Tensor | None = None
    teacher_topk_tail: Tensor | None = None
    # Several top-k teachers: the three above gain a teacher dim ([..., n, k] and [..., n]) and these are their
    # weights [n]; the lm_ terms are then each teacher's divergence, weighted (`ensemble_topk_divergence`).
    teacher_topk_weights: Tensor | None = None
    jsd_beta: float = 0.5
    skew_alpha: float = 0.1
    # A teacher with another tokenizer (the uld term): per student position the teacher's top-k probabilities at
    # the teacher position aligned with it by character offsets [..., k], and which positions have one [...]
    # (tasks/causal_lm.py).
    teacher_aligned_probs: Tensor | None = None
    teacher_aligned_mask: Tensor | None = None
    # Feature terms: hidden_states as transformers returns them (embeddings first, then each layer's output),
    # attentions one per layer, the [batch, seq] attention mask, the (student layer, teacher layer) pairs, the
    # student-to-teacher width projection (None: same width), and the factor that turns a feature term's batch mean
    # into the logit terms' units (1 / micro-batches accumulated, see DistillationTrainer.compute_loss).
    student_hidden: tuple[Tensor, ...] | None = None
    teacher_hidden: tuple[Tensor, ...] | None = None
    student_attentions: tuple[Tensor, ...] | None = None
    teacher_attentions: tuple[Tensor, ...] | None = None
    attention_mask: Tensor | None = None
    layer_pairs: tuple[tuple[int, int], ...] = ()
    project: Callable[[Tensor, int | None], Tensor] | None = None
    feature_scale: float = 1.0


def _mapped_states(x: TermInputs) -> tuple[list[Tensor], list[Tensor]]:
    """The student's mapped layers' states (projected to the teacher's width) and the teacher's layers they map to."""
    if not x.layer_pairs:
        raise ValueError("feature terms need a layer map (layer_pairs), got none")
    project = x.project or (lambda states, layer: states)
    student = [project(x.student_hidden[s + 1], s) for s, _ in x.layer_pairs]
    teacher = [x.teacher_hidden[t + 1] for _, t in x.layer_pairs]
    return student, teacher


def _hidden_term(fn: Callable) -> Callable[[TermInputs], Tensor]:
    return lambda x: x.feature_scale * fn(*_mapped_states(x), x.attention_mask)


def _attention_term(x: TermInputs) -> Tensor:
    student = [x.student_attentions[s] for s, _ in x.layer_pairs]
    teacher = [x.teacher_attentions[t] for _, t in x.layer_pairs]
    return x.feature_scale * features.attention_kl(student, teacher, x.attention_mask)


def _embedding_term(x: TermInputs) -> Tensor:
    project = x.project or (lambda states, layer: states)
    return x.feature_scale * features.embedding_mse(project(x.student_hidden[0], None), x.teacher_hidden[0],
                                                    x.attention_mask)


def _topk_term(divergence: str) -> Callable[[TermInputs], Tensor]:
    def term(x: TermInputs) -> Tensor:
        if x.teacher_topk_values.dim() > x.student_logits.dim():  # several teachers, one dim each
            return ensemble_topk_divergence(x.student_logits, x.teacher_topk_values, x.teacher_topk_indices,
                                            x.teacher_topk_tail, x.teacher_topk_weights, divergence, x.temperature,
                                            mask=x.mask, num_items=x.num_items, beta=x.jsd_beta, alpha=x.skew_alpha)
        return topk_divergence(x.student_logits, x.teacher_topk_values, x.teacher_topk_indices, x.teacher_topk_tail,
                               divergence, x.temperature, mask=x.mask, num_items=x.num_items, beta=x.jsd_beta,
                               alpha=x.skew_alpha)

    return term


def _uld_term(x: TermInputs) -> Tensor:
    # Summed over the aligned positions, divided by the student's item count like every term (a student token with
    # no teacher token ending where it ends adds 0), so the weight of uld against hard_ce is per student token.
    mask = x.teacher_aligned_mask if x.mask is None else x.mask & x.teacher_aligned_mask
    return uld_loss(x.student_logits, x.teacher_aligned_probs, mask=mask, num_items=x.num_items)


_TOPK = ("teacher_topk_values", "teacher_topk_indices", "teacher_topk_tail")
_ALIGNED = ("teacher_aligned_probs", "teacher_aligned_mask")
# The fields that carry the teacher's outputs (a term needing one needs soft labels).
TEACHER_FIELDS = ("teacher_logits", *_TOPK, "teacher_topk_weights", *_ALIGNED)
# Terms that read a top-k soft-label cache (the config asks for soft_label_top_k).
TOPK_FIELDS = ("teacher_topk_values", "teacher_aligned_probs")
_HIDDEN = ("student_hidden", "teacher_hidden")
_ATTENTION = ("student_attentions", "teacher_attentions")
@dataclass(frozen=True)
class Term:
    fn: Callable[[TermInputs], Tensor]
    needs: tuple[str, ...]  # TermInputs fields that must not be None
    help: str


TERMS: dict[str, Term] = {
    "hard_ce": Term(
        lambda x: hard_ce(x.student_logits, x.labels, mask=x.mask, num_items=x.num_items),
        ("labels",), "cross-entropy on the gold labels",
    ),
    "soft_kl": Term(
        lambda x: soft_kl(x.student_logits, x.teacher_logits, x.temperature, mask=x.mask, num_items=x.num_items),
        ("teacher_logits",), "KL(teacher || student) at temperature T, times T^2 (Hinton et al. 2015)",
    ),
    "logit_mse": Term(
        lambda x: logit_mse(x.student_logits, x.teacher_logits, mask=x.mask, num_items=x.num_items),
        ("teacher_logits",), "squared error between raw logits (Ba & Caruana 2014)",
    ),
    "lm_forward_kl": Term(_topk_term("forward_kl"), _TOPK,
                          "forward KL(teacher || student) over the top-k cache's k + 1 buckets, times T^2 (Hinton "
                          "et al. 2015)"),
    "lm_reverse_kl": Term(_topk_term("reverse_kl"), _TOPK,
                          "reverse KL(student || teacher) over the top-k buckets, times T^2 (MiniLLM, Gu et al. 2024)"),
    "lm_jsd": Term(_topk_term("jsd"), _TOPK,
                   "generalised JSD(jsd_beta) over the top-k buckets, times T^2 (GKD, Agarwal et al. 2024)"),
    "lm_skew_forward_kl": Term(_topk_term("skew_forward_kl"), _TOPK,
                               "skew forward KL (skew_alpha) over the top-k buckets, times T^2 (DistiLLM, Ko et al. "
                               "2024)"),
    "lm_skew_reverse_kl": Term(_topk_term("skew_reverse_kl"), _TOPK,
                               "skew reverse KL (skew_alpha) over the top-k buckets, times T^2 (DistiLLM, Ko et al. "
                               "2024)"),
    "lm_tv": Term(_topk_term("total_variation"), _TOPK,
                  "total variation over the top-k buckets, times T^2 (Wen et al. 2023)"),
    "uld": Term(_uld_term, _ALIGNED,
                "Universal Logit Distillation: L1 between sorted top-k probabilities at positions aligned by "
                "character offsets, for a student with another tokenizer (Boizard et al. 2024)"),
    "hidden_mse": Term(_hidden_term(features.hidden_mse), _HIDDEN,
                       "MSE between mapped hidden states, projected when widths differ (TinyBERT; PKD)"),
    "hidden_cosine": Term(_hidden_term(features.hidden_cosine), _HIDDEN,
                          "1 - cosine between mapped hidden states (DistilBERT)"),
    "pkd": Term(_hidden_term(features.pkd), _HIDDEN,
                "MSE between L2-normalised [CLS] states of mapped layers (Sun et al. 2019)"),
    "attention_kl": Term(_attention_term, _ATTENTION,
                         "KL between mapped layers' self-attention distributions (MiniLM; TinyBERT)"),
    "embedding_mse": Term(_embedding_term, _HIDDEN, "MSE between the embedding layers' outputs (TinyBERT)"),
}
# Terms that read the teacher's inside, which only a teacher running in the trainer provides.
FEATURE_TERMS = tuple(name for name, term in TERMS.items() if set(term.needs) & {*_HIDDEN, *_ATTENTION})


def preset_weights(strategy: str, alpha: float = 0.5, soft_loss: str = "kl") -> dict[str, float]:
    """The terms and weights a strategy stands for, soft part first (the order the sum is taken in)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; valid: {', '.join(STRATEGIES)}")
    if soft_loss not in SOFT_TERMS:
        raise ValueError(f"unknown soft_loss {soft_loss!r}; valid: {', '.join(SOFT_TERMS)}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    soft = SOFT_TERMS[soft_loss]
    return {"hard": {"hard_ce": 1.0}, "soft": {soft: 1.0}, "mixed": {soft: alpha, "hard_ce": 1.0 - alpha}}[strategy]


def check_weights(weights: Mapping[str, Weight], where: str = "objective") -> None:
    """Every name must be a term; raises ValueError naming the valid ones."""
    if not weights:
        raise ValueError(f"{where}: give at least one term ({', '.join(TERMS)})")
    unknown = [name for name in weights if name not in TERMS]
    if unknown:
        raise ValueError(f"{where}: unknown term {unknown[0]!r}; valid terms: {', '.join(TERMS)}")


def needs(weights: Mapping[str, Weight], field: str) -> bool:
    """Whether any term of the objective reads `field` (e.g. "teacher_logits": the run needs soft labels)."""
    return any(field in TERMS[name].needs for name in weights)


def needs_teacher(weights: Mapping[str, Weight]) -> bool:
    """Whether any term of the objective reads the teacher's outputs (dense logits or a top-k cache's)."""
    return any(needs(weights, field) for field in TEACHER_FIELDS)


def objective(
    weights: Mapping[str, Weight], inputs: TermInputs, step: int = 0, max_steps: int = 0, skip_missing: bool = False
) -> tuple[Tensor, dict[str, Tensor]]:
    """``sum_i weight_i(step) * term_i(inputs)``, and each term's detached value for logging.

    Args:
        weights: term name -> weight (a number or a schedule); the sum is taken in this order.
        skip_missing: leave out terms whose inputs the batch lacks (evaluation data without soft labels reports
            the terms it can); otherwise such a term is an error.
    """
    total, parts = None, {}
    for name, weight in weights.items():
        term = TERMS[name]
        missing = [f for f in term.needs if getattr(inputs, f) is None]
        if missing:
            if skip_missing:
                continue
            raise ValueError(f"term {name!r} needs {', '.join(missing)}, got None")
        value = term.fn(inputs)
        w = value_at(weight, step, max_steps)
        weighted = value if w == 1.0 else w * value
        total = weighted if total is None else total + weighted
        parts[name] = value.detach()
    if total is None:
        raise ValueError(f"no term of {', '.join(weights)} can be computed from this batch")
    return total, parts


def distillation_loss(
    student_logits: Tensor,
    labels: Tensor | None,
    teacher_logits: Tensor | None,
    strategy: str,
    temperature: float = 1.0,
    alpha: float = 0.5,
    soft_loss: str = "kl",
    mask: Tensor | None = None,
    num_items: int | Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """A strategy's objective on one batch: ``hard`` (hard_ce), ``soft`` (the soft term) or ``mixed``
    (``alpha * soft + (1 - alpha) * hard``). With ``num_items`` both parts of mixed share one denominator, so
    unlabelled items (label -100) contribute only the soft term.

    Returns ``(total, parts)``: parts holds each term's detached value by term name (``hard_ce``, ``soft_kl``,
    ``logit_mse``); ``total`` carries the gradient.
    """
    weights = preset_weights(strategy, alpha, soft_loss)
    inputs = TermInputs(student_logits, labels, teacher_logits, temperature, mask, num_items)
    return objective(weights, inputs)
