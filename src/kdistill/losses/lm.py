"""Divergences for causal-LM distillation from a top-k teacher cache, as pure functions of tensors.

The cache (soft_labels/cache.py) keeps per token the teacher's k largest logits, their vocabulary indices and
``tail = log(sum_{j not in top k} p_j)``, the log of the mass outside the top k under the softmax at T = 1 of the
teacher's full logits. The rest of the teacher's distribution is gone, so a divergence cannot be taken over the
vocabulary. The rule used here, for every divergence alike:

**Both sides are compared as distributions over k + 1 buckets**: the teacher's k top classes, in the cache's order,
then one bucket "every other class".

* Teacher, at T = 1: ``log p[i] = v[i] - logsumexp(v) + log(1 - exp(tail))`` for the top k (their share of the
  mass, split as the logits say), ``log p[k] = tail``. Exact: it is how the full softmax groups into the buckets.
* Student, at T = 1: its own log-softmax at the teacher's indices, and for the last bucket the log of the mass on
  all the other classes, ``logsumexp(s[others]) - logsumexp(s)`` over the full row (taken in log space, so a tiny
  tail keeps its digits where ``1 - sum`` would round to 0).
* At temperature T both bucket distributions are softened as one: ``softmax(log p_bucket / T)``. For the top-k
  buckets that is the usual ``softmax(z / T)`` up to normalisation; the tail bucket is softened as if it were one
  class whose logit is the logsumexp of the classes it holds. The true tail mass at T is not in the cache (it
  depends on how the rest is spread), so neither side uses it: the same map on both keeps every divergence zero
  when student equals teacher, whatever T. For T > 1 the tail bucket gets less mass than the softened full
  distribution would give the classes it holds (``sum_j p_j^(1/T) >= (sum_j p_j)^(1/T)``): a tail spread over
  many classes is softened as one sharp class.

With k = V the tail is empty (-inf on both sides, no mass) and every loss here equals the dense one over the
vocabulary exactly, at any T. At T = 1 and k < V the bucket divergence is the divergence between the two grouped
distributions, which by the data-processing inequality is at most the dense one for every divergence here (all are
f-divergences); at T != 1 and k < V there is no such bound, the tail being softened as above.

Conventions are those of `logits` (see its module docstring): ``mask`` selects the tokens that count,
the result is the sum over counted tokens divided by ``num_items`` or their count, teacher tensors are constants,
and every divergence is taken at temperature T and multiplied by T^2, as `soft_kl` does (Hinton, Vinyals & Dean
2015, section 2), so that the LM papers' T = 1 leaves the value as it is. Everything is computed in float32
(float64 if the student logits are float64).

Memory: the student's ``[tokens, V]`` logits come in as they are (the shifted view ``logits[:, :-1]`` too, not
copied), and are read ``chunk_size`` tokens at a time (by default as many as make CHUNK_ELEMENTS floats, 128 MiB
in float32). When a batch takes several chunks, each runs under activation checkpointing, so its float32
``[chunk_size, V]`` temporaries are dropped after the forward and recomputed in the backward (one more pass over the
logits); a batch within one chunk keeps what its backward needs (about two float32 ``[tokens, V]`` tensors, so
at most about two chunks' worth) until the backward. So the temporaries here stay within a few chunks' floats,
whatever the batch (the gradient of the logits, ``[tokens, V]`` in their dtype, is autograd's).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from .logits import _item_mask, _reduce

# Floats per chunk's temporary (128 MiB in float32): the default chunk is CHUNK_ELEMENTS // V tokens, 220 tokens of
# a 152k vocabulary, 8,192 of a 4,096 one. A batch within one chunk runs as it is; only several chunks are
# checkpointed (their recomputation in the backward costs about a third of the loss's time).
CHUNK_ELEMENTS = 2**25
# Below this share of a row's mass outside its k classes, others_logsumexp takes the exact (masked copy) route.
EXACT_TAIL_BELOW = 0.05

# The log of the smallest normal float32: reverse KL takes the teacher's log-probabilities no lower than this, so a
# bucket the teacher gives exactly zero mass costs a large finite amount instead of inf (and a NaN gradient).
LOG_TINY = math.log(torch.finfo(torch.float32).tiny)


# --- divergences between distributions given as log-probabilities over the last dim ------------------------------


def _kl(log_a: Tensor, log_b: Tensor) -> Tensor:
    """``sum_i a_i (log a_i - log b_i)`` over the last dim, with ``0 * log(0 / x) := 0``.

    The difference is zeroed where ``a`` is 0 before it is multiplied, so a -inf in both inputs gives neither a nan
    value nor a nan gradient.
    """
    a = log_a.exp()
    diff = torch.where(a > 0, log_a - log_b, torch.zeros_like(log_a))
    return (a * diff).sum(dim=-1)


def _log_mix(log_a: Tensor, log_b: Tensor, weight: float) -> Tensor:
    """``log(weight * a + (1 - weight) * b)`` for 0 < weight < 1, -inf (with a zero gradient) where a = b = 0."""
    empty = torch.isneginf(log_a) & torch.isneginf(log_b)
    zero = torch.zeros_like(log_a)
    mixed = torch.logaddexp(torch.where(empty, zero, log_a) + math.log(weight),
                            torch.where(empty, zero, log_b) + math.log1p(-weight))
    return torch.where(empty, torch.full_like(mixed, -math.inf), mixed)


def forward_kl(log_p: Tensor, log_q: Tensor) -> Tensor:
    """Forward KL, teacher to student: ``KL(p || q) = sum_i p_i (log p_i - log q_i)``, per row.

    Mode-covering: it is large wherever the teacher has mass the student lacks. The distillation objective of
    Hinton, Vinyals & Dean 2015 ("Distilling the Knowledge in a Neural Network"); `soft_kl` on dense logits.

    Args:
        log_p: the teacher's log-probabilities, ``[..., B]``.
        log_q: the student's, same shape.
    """
    return _kl(log_p, log_q)


def reverse_kl(log_p: Tensor, log_q: Tensor) -> Tensor:
    """Reverse KL, student to teacher: ``KL(q || p) = sum_i q_i (log q_i - log p_i)``, per row.

    Mode-seeking: the student is penalised for mass where the teacher has little, not for missing some of the
    teacher's modes. The token-level objective of MiniLLM (Gu, Dong, Wei & Huang 2024, "MiniLLM: Knowledge
    Distillation of Large Language Models", ICLR). ``log p`` is taken no lower than `LOG_TINY`, so a bucket the
    teacher gives exactly zero mass and the student does not is a large finite cost rather than inf.
    """
    return _kl(log_q, log_p.clamp(min=LOG_TINY))


def jsd(log_p: Tensor, log_q: Tensor, beta: float = 0.5) -> Tensor:
    """Generalised Jensen-Shannon divergence JSD(beta), per row.

    ``JSD(beta)(p || q) = beta * KL(p || m) + (1 - beta) * KL(q || m)`` with the mixture
    ``m = beta * p + (1 - beta) * q``, p the teacher and q the student, 0 < beta < 1 (Agarwal et al. 2024,
    "On-Policy Distillation of Language Models: Learning from Self-Generated Mistakes" (GKD), ICLR). beta = 0.5 is
    the symmetric JSD. As beta goes to 0 (1), ``JSD(beta) / beta`` (``/ (1 - beta)``) tends to the forward (reverse)
    KL; use `forward_kl` / `reverse_kl` for the end points, which this function refuses. Bounded by
    ``-beta log beta - (1 - beta) log(1 - beta)``, so finite wherever either side has zero mass.
    """
    _check_beta(beta)
    log_m = _log_mix(log_p, log_q, beta)
    return beta * _kl(log_p, log_m) + (1 - beta) * _kl(log_q, log_m)


def _check_beta(beta: float) -> None:
    if not 0 < beta < 1:
        raise ValueError(f"jsd needs 0 < beta < 1, got {beta} (use forward_kl or reverse_kl for the end points)")


def _check_alpha(alpha: float, name: str) -> None:
    if not 0 <= alpha < 1:
        raise ValueError(f"{name} needs 0 <= alpha < 1, got {alpha}")


def skew_forward_kl(log_p: Tensor, log_q: Tensor, alpha: float = 0.1) -> Tensor:
    """Skew forward KL (alpha-SKL), per row: ``KL(p || alpha * p + (1 - alpha) * q)``.

    The student side is mixed with a share alpha of the teacher, which bounds the divergence by ``log(1 / alpha)``
    and keeps its gradients from blowing up where the student's probability is near 0 (Ko, Kim, Chen & Yun 2024,
    "DistiLLM: Towards Streamlined Distillation for Large Language Models", ICML; alpha = 0.1 there).
    alpha = 0 is the forward KL.
    """
    _check_alpha(alpha, "skew_forward_kl")
    if alpha == 0:
        return forward_kl(log_p, log_q)
    return _kl(log_p, _log_mix(log_p, log_q, alpha))


def skew_reverse_kl(log_p: Tensor, log_q: Tensor, alpha: float = 0.1) -> Tensor:
    """Skew reverse KL (alpha-SRKL), per row: ``KL(q || (1 - alpha) * p + alpha * q)``.

    The reverse KL with the teacher side mixed with a share alpha of the student (Ko, Kim, Chen & Yun 2024,
    "DistiLLM", ICML; alpha = 0.1 there). alpha = 0 is `reverse_kl`.
    """
    _check_alpha(alpha, "skew_reverse_kl")
    if alpha == 0:
        return reverse_kl(log_p, log_q)
    return _kl(log_q, _log_mix(log_q, log_p, alpha))


def total_variation(log_p: Tensor, log_q: Tensor) -> Tensor:
    """Total variation distance, per row: ``TV(p, q) = 1/2 * sum_i |p_i - q_i|``, in [0, 1].

    Symmetric and bounded; among the divergences compared for LM distillation by Wen, Li, Du & Mou 2023
    ("f-Divergence Minimization for Sequence-Level Knowledge Distillation", ACL) and in DistiLLM's study.
    """
    return 0.5 * (log_p.exp() - log_q.exp()).abs().sum(dim=-1)


LM_DIVERGENCES: dict[str, Callable[..., Tensor]] = {
    "forward_kl": forward_kl,
    "reverse_kl": reverse_kl,
    "jsd": jsd,
    "skew_forward_kl": skew_forward_kl,
    "skew_reverse_kl": skew_reverse_kl,
    "total_variation": total_variation,
}


def _divergence(name: str, beta: float, alpha: float) -> Callable[[Tensor, Tensor], Tensor]:
    """The divergence `name` as a function of (log_p, log_q), its parameter bound and checked now."""
    if name not in LM_DIVERGENCES:
        raise ValueError(f"unknown divergence {name!r}; choose one of {', '.join(LM_DIVERGENCES)}")
    fn = LM_DIVERGENCES[name]
    if name == "jsd":
        _check_beta(beta)
        return functools.partial(fn, beta=beta)
    if name.startswith("skew_"):
        _check_alpha(alpha, name)
        return functools.partial(fn, alpha=alpha)
    return fn


# --- the k + 1 buckets -------------------------------------------------------------------------------------------


def _work_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _soften(log_probs: Tensor, temperature: float) -> Tensor:
    return log_probs if temperature == 1 else F.log_softmax(log_probs / temperature, dim=-1)


def _log1mexp(x: Tensor) -> Tensor:
    """``log(1 - exp(x))`` for x <= 0, accurate near 0 and near -inf (Maechler 2012, "Accurately Computing
    log(1 - exp(-|a|))"); -inf at x = 0, 0 at x = -inf."""
    return torch.where(x > -math.log(2), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def teacher_buckets(values: Tensor, tail: Tensor, temperature: float = 1.0) -> Tensor:
    """The teacher's log-probabilities over the k + 1 buckets, ``[..., k + 1]``, softened at `temperature`.

    Args:
        values: the teacher's top-k logits, ``[..., k]`` (as `SoftLabels.gather_topk` gives them).
        tail: the log of the T = 1 mass outside the top k, ``[...]``, <= 0 (-inf when k = V).
        temperature: > 0; see the module docstring for how the tail bucket is softened.
    """
    dtype = _work_dtype(values)
    v, t = values.detach().to(dtype), tail.detach().to(dtype).unsqueeze(-1)
    head = v - torch.logsumexp(v, dim=-1, keepdim=True) + _log1mexp(t)
    return _soften(torch.cat([head, t], dim=-1), temperature)


def _logsumexp_or_empty(x: Tensor) -> Tensor:
    """logsumexp over the last dim; -inf with a zero (not nan) gradient for rows that are all -inf."""
    empty = torch.isneginf(x).all(dim=-1, keepdim=True)
    out = torch.logsumexp(torch.where(empty, torch.zeros_like(x), x), dim=-1, keepdim=True)
    return torch.where(empty, torch.full_like(out, -math.inf), out)


def others_logsumexp(logits: Tensor, indices: Tensor, picked: Tensor | None = None,
                     total: Tensor | None = None) -> Tensor:
    """The logsumexp of each row's logits outside its `indices`, ``[..., 1]`` (-inf where there are none): the value of
    the student's tail bucket, without a copy of the row (its gradient is `_BucketLogits.backward`'s; a cache's tail
    is computed exactly by masking the k classes in place: `soft_labels.writer.topk_payload`).

    Computed as ``total + log(1 - exp(x))``, ``x = logsumexp(picked) - total``: one pass over the row and no copy of it.
    Where under EXACT_TAIL_BELOW of a row's mass lies outside the k classes, x nears 0 and that loses digits, so those
    rows take the logsumexp over a copy with the k classes masked out. x's error is a few float32 ulps of `total`,
    so it grows with the logits' size: about 4e-5 in the result for logits of size 10 and 1e-4 of size 100 at the
    threshold (1e-3 at 1,000, where the masked route's is 8e-5).

    Args:
        logits: ``[..., V]``.
        indices: ``[..., k]`` classes, distinct within a row.
        picked, total: ``logits.gather(-1, indices)`` and ``logsumexp(logits, -1, keepdim=True)``, if the caller
            has them.
    """
    if picked is None:
        picked = logits.gather(-1, indices)
    if indices.shape[-1] >= logits.shape[-1]:  # k = V: no class is left
        return _logsumexp_or_empty(logits.scatter(-1, indices, -math.inf))
    if total is None:
        total = torch.logsumexp(logits, dim=-1, keepdim=True)
    x = (_logsumexp_or_empty(picked) - total).clamp(max=0.0)  # rounding may put x just above 0
    small = x > math.log1p(-EXACT_TAIL_BELOW)
    others = total + _log1mexp(x)  # the small rows' (inexact, -inf at x = 0) are replaced below
    if bool(small.any()):  # only those rows copied (a flat reshape of a strided view would copy every row)
        where = small.squeeze(-1).nonzero(as_tuple=True)
        others = others.index_put(where, _logsumexp_or_empty(logits[where].scatter(-1, indices[where], -math.inf)))
    return others


def student_buckets(student_logits: Tensor, indices: Tensor, temperature: float = 1.0) -> Tensor:
    """The student's log-probabilities over the teacher's k + 1 buckets, ``[..., k + 1]``, softened at `temperature`.

    Bucket i < k is the student's class ``indices[..., i]``; bucket k holds every other class, its logit the
    logsumexp of theirs (`others_logsumexp`; -inf when there are none). This reads the whole ``[..., V]`` row: call
    it on a chunk.

    Args:
        student_logits: ``[..., V]``.
        indices: the teacher's top-k classes, ``[..., k]``, distinct within a row.
    """
    s = student_logits.to(_work_dtype(student_logits))
    idx = indices.to(device=s.device, dtype=torch.long)
    picked, others = _BucketLogits.apply(s, idx)
    return F.log_softmax(torch.cat([picked, others], dim=-1) / temperature, dim=-1)


class _BucketLogits(torch.autograd.Function):
    """The student's k + 1 bucket logits, ``(logits.gather(-1, indices), others_logsumexp(logits, indices))``, with a
    backward that writes the gradient over the vocabulary once: ``d others / d l_j = exp(l_j - others)`` outside the
    k classes and ``d picked_i / d l_j = [j = indices_i]``, so row by row ``g_others * exp(l - others)`` with the k
    classes then set to ``g_picked``. (Autograd through the forward's logsumexps, log1mexp and gather builds three
    vocabulary-wide gradients and adds them.)"""

    @staticmethod
    def forward(ctx, logits: Tensor, indices: Tensor) -> tuple[Tensor, Tensor]:
        picked = logits.gather(-1, indices)
        others = others_logsumexp(logits, indices, picked)
        ctx.save_for_backward(logits, indices, others)
        return picked, others

    @staticmethod
    def backward(ctx, g_picked: Tensor, g_others: Tensor) -> tuple[Tensor, None]:
        logits, indices, others = ctx.saved_tensors
        # no class outside the k (others = -inf): no gradient through the tail, and no exp(l + inf)
        grad = (logits - torch.where(torch.isneginf(others), math.inf, others)).exp_().mul_(g_others)
        return grad.scatter_(-1, indices, g_picked), None


# --- chunked reduction over tokens -------------------------------------------------------------------------------


def _check_temperature(temperature: float) -> None:
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


def _token_grid(x: Tensor) -> Tensor:
    """``x [..., V]`` as ``[M, L, V]`` without a copy: ``[1, tokens, V]`` where the leading dims merge, else
    ``[M, L, V]`` with L the last leading dim (``logits[:, :-1]``, the shifted view of a ``[B, L, V]`` tensor, does not
    merge, and reshaping it flat would copy all of it)."""
    try:
        return x.view(1, -1, x.shape[-1])
    except RuntimeError:
        return x.reshape(-1, x.shape[-2], x.shape[-1])


def _chunked(per_token: Callable[..., Tensor], student_logits: Tensor, teacher: tuple[Tensor, ...],
             mask: Tensor | None, num_items: int | Tensor | None, chunk_size: int) -> Tensor:
    """``_reduce`` of ``per_token(student_rows, *teacher_rows)`` over the counted tokens, about `chunk_size` at a time.

    The logits, as a ``[M, L, V]`` grid of views, are cut along L by one `torch.split` into chunks of
    ``max(1, chunk_size // M)`` positions: views, and one backward node that assembles the gradient once (slicing
    chunk by chunk would make each chunk's backward allocate a full-size gradient). Each chunk picks its counted
    rows (a chunk in which every token counts is passed as the view it is, ``per_token`` then sees ``[M, n, V]``) and,
    when a gradient is wanted and more than one chunk holds counted rows, runs under non-reentrant
    checkpointing.
    """
    if chunk_size is None:
        chunk_size = max(1, CHUNK_ELEMENTS // max(1, student_logits.shape[-1]))
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    grid = _token_grid(student_logits)
    m, length = grid.shape[:2]
    keep = _item_mask(student_logits, mask).reshape(m, length)
    lead = student_logits.dim() - 1
    rows = [t.detach().reshape(m, length, *t.shape[lead:]).to(grid.device) for t in teacher]
    step = max(1, chunk_size // m)
    host_keep = keep.cpu()  # one transfer: which chunks hold a counted token
    busy = [bool(host_keep[:, j : j + step].any()) for j in range(0, length, step)]
    whole = [bool(host_keep[:, j : j + step].all()) for j in range(0, length, step)]
    grad = torch.is_grad_enabled() and grid.requires_grad and sum(busy) > 1  # one chunk: nothing to free early

    def run(chunk: Tensor, chunk_keep: Tensor, *chunk_teacher: Tensor) -> Tensor:
        return per_token(chunk[chunk_keep], *(t[chunk_keep] for t in chunk_teacher))

    def run_whole(chunk: Tensor, *chunk_teacher: Tensor) -> Tensor:
        # every token counts (packed text blocks): the chunk as it is, a view, not a copy of its counted rows (which
        # also cost a zero-filled full-size gradient to scatter back into)
        return per_token(chunk, *chunk_teacher).reshape(-1)

    parts = [grid[0, :0, :1].sum(dim=-1).to(_work_dtype(grid))]  # empty, but carries the grad_fn if nothing counts
    for i, chunk in enumerate(torch.split(grid, step, dim=1)):
        if not busy[i]:
            continue
        span = slice(i * step, i * step + chunk.shape[1])
        fn, args = (run_whole, (chunk, *(t[:, span] for t in rows))) if whole[i] else \
            (run, (chunk, keep[:, span], *(t[:, span] for t in rows)))
        parts.append(checkpoint(fn, *args, use_reentrant=False) if grad else fn(*args))
    per_item = torch.cat(parts)
    return _reduce(per_item, torch.ones_like(per_item, dtype=torch.bool), num_items)


def _check_topk(student_logits: Tensor, values: Tensor, indices: Tensor, tail: Tensor) -> None:
    items, vocab = tuple(student_logits.shape[:-1]), student_logits.shape[-1]
    if tuple(values.shape[:-1]) != items or tuple(indices.shape) != tuple(values.shape):
        raise ValueError(f"student logits have items of shape {items} but the teacher's top-k values have shape "
                         f"{tuple(values.shape)} and indices {tuple(indices.shape)}; want {items} + (k,) for both")
    if tuple(tail.shape) != items:
        raise ValueError(f"the teacher's tail has shape {tuple(tail.shape)} but student logits have items of shape "
                         f"{items}")
    if values.shape[-1] > vocab:
        raise ValueError(f"the teacher's top-k has k={values.shape[-1]} but the student's vocabulary has {vocab} "
                         "classes")


def topk_divergence(
    student_logits: Tensor,
    values: Tensor,
    indices: Tensor,
    tail: Tensor,
    divergence: str = "forward_kl",
    temperature: float = 1.0,
    mask: Tensor | None = None,
    num_items: int | Tensor | None = None,
    chunk_size: int | None = None,
    beta: float = 0.5,
    alpha: float = 0.1,
) -> Tensor:
    """A divergence between the teacher's cached top-k and the student, over the k + 1 buckets, times T^2.

    Per counted token: ``T^2 * D(teacher_buckets(values, tail, T), student_buckets(student_logits, indices, T))``
    with D one of `LM_DIVERGENCES` (see the module docstring for the buckets, and each function for its formula and
    paper); the sum over counted tokens is divided by `num_items` or their count. With k = V it is D over the
    vocabulary; ``divergence="forward_kl"`` is then `soft_kl`.

    Args:
        student_logits: ``[..., V]`` (e.g. ``[batch, seq, V]``, or its shifted view ``logits[:, :-1]``: never
            copied whole), any float dtype; read about `chunk_size` tokens at a time.
        values, indices, tail: the teacher's top-k logits ``[..., k]``, their vocabulary indices ``[..., k]`` and
            log tail mass ``[...]``, as `SoftLabels.gather_topk` gives them (rows concatenated); constants.
        divergence: a name in `LM_DIVERGENCES`.
        temperature: > 0.
        mask: optional boolean ``[...]``: the tokens that count (e.g. ``labels != -100``); the others are not read.
        num_items: optional global denominator (see `logits`).
        chunk_size: tokens per chunk (at most, unless a shifted view has more sequences than this); default
            CHUNK_ELEMENTS // V; changes memory and speed, not the result.
        beta: JSD(beta)'s mixture weight of the teacher (``divergence="jsd"``).
        alpha: the skew of ``skew_forward_kl`` / ``skew_reverse_kl``.
    """
    _check_temperature(temperature)
    _check_topk(student_logits, values, indices, tail)
    fn = _divergence(divergence, beta, alpha)

    def per_token(s: Tensor, v: Tensor, i: Tensor, t: Tensor) -> Tensor:
        dtype = _work_dtype(s)
        return fn(teacher_buckets(v.to(dtype), t.to(dtype), temperature), student_buckets(s, i, temperature))

    loss = _chunked(per_token, student_logits, (values, indices, tail), mask, num_items, chunk_size)
    return loss * temperature**2


def ensemble_topk_divergence(
    student_logits: Tensor,
    values: Tensor,
    indices: Tensor,
    tail: Tensor,
    weights: Tensor | list[float],
    divergence: str = "forward_kl",
    temperature: float = 1.0,
    mask: Tensor | None = None,
    num_items: int | Tensor | None = None,
    chunk_size: int | None = None,
    beta: float = 0.5,
    alpha: float = 0.1,
) -> Tensor:
    """Several teachers' top-k caches at once: ``sum_i w_i * topk_divergence(student, teacher i)``, the weights
    normalised to sum to 1.

    Each teacher keeps its own k + 1 buckets, so no class outside a teacher's top k is given a mass it did not
    cache (a mixture over the union of their top-k sets would have to guess each teacher's share of the classes in
    its tail). For the forward KL this has the gradient of the KL from the teachers' probability mixture when the
    caches are dense (k = V): ``sum_i w_i KL(p_i || q) = KL(sum_i w_i p_i || q) + a constant of the teachers``, the
    cross-entropy being linear in p; for the other divergences it is the mean of the per-teacher divergences, not
    the divergence from a mixture. Costs one pass over the student's logits per teacher.

    Args:
        values, indices: ``[..., n, k]``: teacher i's top-k logits and classes at ``[..., i, :]``.
        tail: ``[..., n]``.
        weights: ``[n]``, non-negative, not all 0.
        The rest as `topk_divergence`.
    """
    w = torch.as_tensor(weights, dtype=torch.float64)
    if w.dim() != 1 or w.numel() != values.shape[-2] or bool((w < 0).any()) or not float(w.sum()) > 0:
        raise ValueError(f"weights must be {values.shape[-2]} non-negative numbers, not all 0; got {w.tolist()}")
    w = (w / w.sum()).tolist()
    parts = [topk_divergence(student_logits, values[..., i, :], indices[..., i, :], tail[..., i], divergence,
                             temperature, mask, num_items, chunk_size, beta, alpha)
             for i in range(len(w)) if w[i] > 0]
    return sum(wi * part for wi, part in zip((x for x in w if x > 0), parts))


def uld_loss(
    student_logits: Tensor,
    teacher_probs: Tensor,
    mask: Tensor | None = None,
    num_items: int | Tensor | None = None,
    temperature: float = 1.0,
    chunk_size: int | None = None,
) -> Tensor:
    """Universal Logit Distillation: the L1 distance between sorted probability vectors, for different tokenizers.

    Boizard, El Haddad, Hudelot & Colombo 2024 ("Towards Cross-Tokenizer Distillation: the Universal Logit
    Distillation Loss for LLMs"): with both vocabularies padded with zeros to one size, the Wasserstein-1 distance
    under a uniform cost between the two next-token distributions has the closed form
    ``sum_i |p_(i) - q_(i)|``, the probabilities of each sorted in decreasing order. No vocabulary alignment is
    needed: only the sequences must be aligned position by position, which is the caller's work.

    From a top-k teacher (probabilities ``p_(1..k)`` and the mass ``r_t = 1 - sum p`` outside them), per token:
    ``sum_{i <= k} |p_(i) - q_(i)| + |r_t - r_s|``, where ``q_(i)`` are the student's largest probabilities (0 past
    its vocabulary) and ``r_s`` its mass outside its own top k: the same k + 1 buckets as `topk_divergence`, each
    side's sorted. The last term is a lower bound of the unknown ``sum_{i > k} |p_(i) - q_(i)|`` (triangle
    inequality), so the result is exact when the teacher's probabilities are all given (k = its vocabulary) and
    never above the dense ULD otherwise.

    Unlike the paper's code, which averages over each sequence and then over sequences, the sum over counted tokens
    is divided by `num_items` or their count (the convention of `logits`). There is no T^2 factor: this is a
    distance between probabilities, not a KL.

    Args:
        student_logits: ``[..., V_s]`` in the student's vocabulary.
        teacher_probs: ``[..., k]`` the teacher's top-k probabilities at the aligned positions, any order
            (e.g. ``teacher_buckets(values, tail)[..., :-1].exp()``); a constant.
        mask: optional boolean ``[...]``: the positions that count.
        num_items: optional global denominator.
        temperature: of the student's softmax (the teacher's probabilities come as they are); 1 in the paper.
        chunk_size: tokens per chunk.
    """
    _check_temperature(temperature)
    items = tuple(student_logits.shape[:-1])
    if tuple(teacher_probs.shape[:-1]) != items:
        raise ValueError(f"teacher probabilities have shape {tuple(teacher_probs.shape)} but student logits have "
                         f"items of shape {items}")

    def per_token(s: Tensor, p: Tensor) -> Tensor:
        q = F.softmax(s.to(_work_dtype(s)) / temperature, dim=-1)
        p = p.to(q.dtype).sort(dim=-1, descending=True).values
        top = q.topk(min(p.shape[-1], q.shape[-1]), dim=-1).values
        head = (p[..., : top.shape[-1]] - top).abs().sum(dim=-1) + p[..., top.shape[-1] :].sum(dim=-1)
        rest_t = (1 - p.sum(dim=-1)).clamp(min=0)
        rest_s = (1 - top.sum(dim=-1)).clamp(min=0)
        return head + (rest_t - rest_s).abs()

    return _chunked(per_token, student_logits, (teacher_probs,), mask, num_items, chunk_size)
