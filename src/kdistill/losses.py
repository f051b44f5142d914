"""Distillation losses as pure functions of tensors.

Conventions shared by every loss here:

* Logits have shape ``[..., C]``. Every leading position is one *item*: a
  sequence-classification example is one item, a token-level task has one
  item per token.
* ``mask`` is an optional boolean tensor of shape ``logits.shape[:-1]`` that
  selects the items that count (``None`` = all items).
* A loss is the SUM of per-item losses over counted items, divided by
  ``num_items`` when given (an int or 0-d tensor: the number of items in the
  whole gradient-accumulated batch, as ``transformers.Trainer`` passes
  ``num_items_in_batch``), otherwise by the number of counted items in this
  call (a per-item mean, i.e. "batchmean").
* When nothing is counted the result is a zero that still carries a
  ``grad_fn`` from the student logits, so ``backward()`` never fails.
* Teacher logits are constants: they are detached and never receive grads.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

IGNORE_INDEX = -100

STRATEGIES = ("hard", "soft", "mixed")


def _item_mask(logits: Tensor, mask: Tensor | None) -> Tensor:
    """Boolean mask of shape ``logits.shape[:-1]`` (all True when ``mask`` is None)."""
    item_shape = logits.shape[:-1]
    if mask is None:
        return torch.ones(item_shape, dtype=torch.bool, device=logits.device)
    if tuple(mask.shape) != tuple(item_shape):
        raise ValueError(
            f"mask has shape {tuple(mask.shape)} but logits have items of shape {tuple(item_shape)}"
        )
    return mask.to(device=logits.device, dtype=torch.bool)


def _reduce(per_item: Tensor, keep: Tensor, num_items: int | Tensor | None) -> Tensor:
    """Sum ``per_item`` over kept items and divide by the item count.

    Boolean indexing (rather than multiplying by the mask) keeps nan/inf from
    ignored items out of both the value and the gradient. The sum over an
    empty selection is a zero that still has a grad_fn, and clamping the
    denominator to 1 then gives the safe zero without a host sync.
    """
    total = per_item[keep].sum()
    if num_items is None:
        denom = keep.sum().clamp(min=1)
    elif isinstance(num_items, Tensor):
        denom = num_items.to(total.device).clamp(min=1)
    else:
        denom = max(int(num_items), 1)
    return total / denom


def hard_ce(
    student_logits: Tensor,
    labels: Tensor,
    mask: Tensor | None = None,
    num_items: int | Tensor | None = None,
) -> Tensor:
    """Cross-entropy on gold labels.

    Per item: ``-log softmax(z)[y] = logsumexp(z) - z[y]``. Items whose label is
    -100 are ignored and not counted in the default denominator.

    Args:
        student_logits: ``[..., C]`` logits.
        labels: integer labels of shape ``student_logits.shape[:-1]``.
        mask: optional boolean item mask.
        num_items: optional global denominator (see module docstring).
    """
    if tuple(labels.shape) != tuple(student_logits.shape[:-1]):
        raise ValueError(
            f"labels have shape {tuple(labels.shape)} but logits have items of shape "
            f"{tuple(student_logits.shape[:-1])}"
        )
    labels = labels.to(student_logits.device)
    keep = _item_mask(student_logits, mask) & (labels != IGNORE_INDEX)
    num_classes = student_logits.shape[-1]
    per_item = F.cross_entropy(
        student_logits.float().reshape(-1, num_classes),
        labels.reshape(-1).long(),
        reduction="none",
        ignore_index=IGNORE_INDEX,
    ).reshape(labels.shape)
    return _reduce(per_item, keep, num_items)


def _check_pair(student_logits: Tensor, teacher_logits: Tensor) -> None:
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student logits have shape {tuple(student_logits.shape)} but teacher logits "
            f"have {tuple(teacher_logits.shape)}"
        )


def soft_kl(
    student_logits: Tensor,
    teacher_logits: Tensor,
    temperature: float,
    mask: Tensor | None = None,
    num_items: int | Tensor | None = None,
) -> Tensor:
    """Temperature-scaled KL(teacher || student), times T^2.

    Per item, with ``p_t = softmax(t / T)`` and ``p_s = softmax(s / T)``:
    ``T^2 * sum_c p_t[c] * (log p_t[c] - log p_s[c])``.
    The T^2 factor keeps gradient magnitudes roughly independent of T, since
    the soft-target gradients scale as 1/T^2 (Hinton, Vinyals & Dean 2015,
    "Distilling the Knowledge in a Neural Network", section 2).

    Args:
        student_logits: ``[..., C]`` logits.
        teacher_logits: same shape; treated as constants.
        temperature: softmax temperature, > 0.
        mask: optional boolean item mask.
        num_items: optional global denominator (see module docstring).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    _check_pair(student_logits, teacher_logits)
    keep = _item_mask(student_logits, mask)
    # float32 + log_softmax: half-precision softmax at high T underflows.
    log_p_s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    log_p_t = F.log_softmax(teacher_logits.detach().float() / temperature, dim=-1)
    p_t = log_p_t.exp()
    # Classes the teacher gives zero mass contribute 0 (0 * log 0 := 0), not nan,
    # even if their logits are -inf.
    terms = torch.where(p_t > 0, p_t * (log_p_t - log_p_s), torch.zeros_like(p_t))
    per_item = terms.sum(dim=-1) * (temperature**2)
    return _reduce(per_item, keep, num_items)


def logit_mse(
    student_logits: Tensor,
    teacher_logits: Tensor,
    mask: Tensor | None = None,
    num_items: int | Tensor | None = None,
) -> Tensor:
    """Squared error between raw logits, averaged over classes per item.

    Per item: ``mean_c (s[c] - t[c])^2`` (Ba & Caruana 2014, "Do Deep Nets
    Really Need to be Deep?").
    """
    _check_pair(student_logits, teacher_logits)
    keep = _item_mask(student_logits, mask)
    diff = student_logits.float() - teacher_logits.detach().float()
    per_item = diff.pow(2).mean(dim=-1)
    return _reduce(per_item, keep, num_items)


def _logit_mse_soft(
    student_logits: Tensor,
    teacher_logits: Tensor,
    temperature: float,
    mask: Tensor | None = None,
    num_items: int | Tensor | None = None,
) -> Tensor:
    """``logit_mse`` with the soft-loss signature; temperature does not apply to raw logits."""
    return logit_mse(student_logits, teacher_logits, mask=mask, num_items=num_items)


SOFT_LOSSES: dict[str, Callable[..., Tensor]] = {"kl": soft_kl, "mse": _logit_mse_soft}


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
    """Combine hard and soft losses according to ``strategy``.

    * ``"hard"``: ``hard_ce`` only (teacher logits may be None).
    * ``"soft"``: the soft loss only (labels may be None, e.g. unlabelled transfer data).
    * ``"mixed"``: ``alpha * soft + (1 - alpha) * hard``.

    With ``num_items`` both parts of "mixed" are divided by the same number, so
    unlabelled items (label -100) contribute only the soft term. Without it each
    part is a mean over its own counted items.

    Args:
        student_logits: ``[..., C]`` logits.
        labels: gold labels, -100 = ignore; required for "hard" and "mixed".
        teacher_logits: required for "soft" and "mixed".
        strategy: one of ``STRATEGIES``.
        temperature: softmax temperature for the soft loss.
        alpha: weight of the soft part in "mixed", in [0, 1].
        soft_loss: key of ``SOFT_LOSSES``.
        mask: optional boolean item mask.
        num_items: optional global denominator (see module docstring).

    Returns:
        ``(total, parts)`` where ``parts`` holds detached "hard" and/or "soft"
        values for logging; ``total`` carries the gradient.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; valid: {', '.join(STRATEGIES)}")
    if soft_loss not in SOFT_LOSSES:
        raise ValueError(f"unknown soft_loss {soft_loss!r}; valid: {', '.join(SOFT_LOSSES)}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if strategy in ("hard", "mixed") and labels is None:
        raise ValueError(f"strategy {strategy!r} needs labels, got None")
    if strategy in ("soft", "mixed") and teacher_logits is None:
        raise ValueError(f"strategy {strategy!r} needs teacher_logits, got None")

    hard = soft = None
    if strategy in ("hard", "mixed"):
        hard = hard_ce(student_logits, labels, mask=mask, num_items=num_items)
    if strategy in ("soft", "mixed"):
        soft = SOFT_LOSSES[soft_loss](
            student_logits, teacher_logits, temperature, mask=mask, num_items=num_items
        )

    if strategy == "hard":
        total = hard
    elif strategy == "soft":
        total = soft
    else:
        total = alpha * soft + (1.0 - alpha) * hard

    parts: dict[str, Tensor] = {}
    if hard is not None:
        parts["hard"] = hard.detach()
    if soft is not None:
        parts["soft"] = soft.detach()
    return total, parts
