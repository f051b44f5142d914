"""Loss terms on logits, as pure functions of tensors.

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

import math

import torch
import torch.nn.functional as F
from torch import Tensor

IGNORE_INDEX = -100


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
    # float32 + log_softmax: half-precision softmax at high T underflows. At T = 1 nothing is divided (a language
    # model's [tokens, vocab] logits: two passes and two copies fewer).
    s, t = student_logits.float(), teacher_logits.detach().float()
    if temperature != 1:
        s, t = s / temperature, t / temperature
    log_p_s = F.log_softmax(s, dim=-1)
    log_p_t = F.log_softmax(t, dim=-1)
    p_t = log_p_t.exp()
    # Classes the teacher gives zero mass contribute 0 (0 * log 0 := 0), not nan,
    # even if their logits are -inf.
    terms = torch.where(p_t > 0, p_t * (log_p_t - log_p_s), 0.0)
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


ENSEMBLE_COMBINES = ("probabilities", "logits")


def ensemble_logits(logits: list[Tensor], weights: list[float], temperature: float,
                    combine: str = "probabilities") -> Tensor:
    """Several teachers as one, weights normalised to sum to 1; one teacher gives its own logits back, untouched.

    ``combine="probabilities"`` (the default): ``T * log(sum_i w_i * softmax(z_i / T))``. Its softmax at temperature
    T is the weighted mean of the teachers' softened probabilities (the arithmetic mean that Hinton et al. 2015,
    section 1, name as an ensemble's soft targets), so `soft_kl` against it is KL against that mixture; where the teachers agree it is their
    logits (up to a constant). `logit_mse` against these logits compares with log-probabilities scaled by T, not
    with any one teacher's raw logits.

    ``combine="logits"``: ``sum_i w_i * z_i``, the weighted mean of the raw logits, whatever T. Its softmax at T is
    not the mixture: it is the normalised weighted geometric mean of the teachers' softened distributions (the
    other choice Hinton et al. name), and a confident teacher (large logit margins) pulls it further than its weight
    says, since its logits are larger.
    It is the natural target of `logit_mse` (Ba & Caruana 2014 regress onto logits).

    Args:
        logits: one tensor per teacher, all of one shape ``[..., C]``.
        weights: one number > 0 per teacher.
        combine: "probabilities" or "logits".
    """
    if len(logits) != len(weights) or not logits:
        raise ValueError(f"got {len(logits)} teachers' logits and {len(weights)} weights")
    if combine not in ENSEMBLE_COMBINES:
        raise ValueError(f"combine must be one of {', '.join(ENSEMBLE_COMBINES)}, got {combine!r}")
    if len(logits) == 1:
        return logits[0]
    total = float(sum(weights))
    if combine == "logits":
        return sum(z.float() * (w / total) for z, w in zip(logits, weights))
    parts = [F.log_softmax(z.float() / temperature, dim=-1) + math.log(w / total) for z, w in zip(logits, weights)]
    return temperature * torch.logsumexp(torch.stack(parts), dim=0)
