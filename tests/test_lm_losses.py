"""Causal-LM distillation losses from a top-k teacher (kdistill.losses.lm): the k + 1 buckets, each divergence
against the dense one and by hand, chunking, gradients and the edge cases of zero mass, and ULD."""

import math

import pytest
import torch
import torch.nn.functional as F

from kdistill.losses import (
    LM_DIVERGENCES,
    soft_kl,
    student_buckets,
    teacher_buckets,
    topk_divergence,
    uld_loss,
)
from kdistill.soft_labels import read_cache, write_cache

from conftest import seeded_randn as _rand

NAMES = sorted(LM_DIVERGENCES)
# A parameter away from each default, so that the tests see it used.
PARAMS = {"jsd": {"beta": 0.3}, "skew_forward_kl": {"alpha": 0.2}, "skew_reverse_kl": {"alpha": 0.2}}


def topk_of(teacher: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The cache's payload, computed here in float64 from the teacher's full logits: values, indices, and the log
    of the T = 1 softmax mass outside the top k (-inf when k = V)."""
    values, indices = teacher.topk(k, dim=-1)
    p = F.softmax(teacher.double(), dim=-1)
    tail = p.scatter(-1, indices, 0.0).sum(dim=-1).log()
    return values, indices, tail.to(teacher.dtype)


def dense(student, teacher, name, temperature=1.0, **params):
    """The divergence over the whole vocabulary, T^2 times its mean over rows."""
    log_p = F.log_softmax(teacher.double() / temperature, dim=-1)
    log_q = F.log_softmax(student.double() / temperature, dim=-1)
    return (LM_DIVERGENCES[name](log_p, log_q, **params).mean() * temperature**2).item()


def loss(student, teacher, k, name, temperature=1.0, **kw):
    return topk_divergence(student, *topk_of(teacher, k), divergence=name, temperature=temperature,
                           **PARAMS.get(name, {}), **kw)


# --- the k + 1 buckets -------------------------------------------------------------------------------------------


def test_buckets_group_the_softmax_exactly_at_T1():
    t = _rand(6, 20, seed=1).double()
    values, indices, tail = topk_of(t, 5)
    p = F.softmax(t, dim=-1)
    want = torch.cat([p.gather(-1, indices), p.scatter(-1, indices, 0.0).sum(-1, keepdim=True)], dim=-1)
    assert torch.allclose(teacher_buckets(values, tail).exp(), want, atol=1e-12)
    # the student's buckets at the teacher's indices, from the same logits, are the same distribution
    assert torch.allclose(student_buckets(t, indices).exp(), want, atol=1e-12)


def test_tail_bucket_is_softened_as_one_class_whose_logit_is_its_logsumexp():
    t = _rand(4, 9, seed=2).double()
    values, indices, tail = topk_of(t, 3)
    rest = torch.logsumexp(t.scatter(-1, indices, -math.inf), dim=-1, keepdim=True)
    want = F.log_softmax(torch.cat([values, rest], dim=-1) / 2.5, dim=-1)
    assert torch.allclose(teacher_buckets(values, tail, 2.5), want, atol=1e-12)
    assert torch.allclose(student_buckets(t, indices, 2.5), want, atol=1e-12)


# --- against the dense divergence --------------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [1.0, 2.5])
@pytest.mark.parametrize("name", NAMES)
def test_k_equal_to_the_vocabulary_is_the_dense_divergence(name, temperature):
    s, t = _rand(2, 5, 12), _rand(2, 5, 12, seed=1)
    got = loss(s, t, 12, name, temperature)
    assert got.item() == pytest.approx(dense(s, t, name, temperature, **PARAMS.get(name, {})), rel=1e-5, abs=1e-7)


def test_forward_kl_with_k_equal_to_the_vocabulary_is_soft_kl():
    s, t = _rand(3, 4, 10), _rand(3, 4, 10, seed=1)
    mask = torch.rand(3, 4, generator=torch.Generator().manual_seed(3)) > 0.3
    got = topk_divergence(s, *topk_of(t, 10), temperature=2.0, mask=mask, num_items=17)
    assert got.item() == pytest.approx(soft_kl(s, t, 2.0, mask=mask, num_items=17).item(), rel=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_grouping_the_tail_never_raises_the_divergence_at_T1(name):
    # data-processing inequality: every divergence here is an f-divergence
    s, t = _rand(40, 30), _rand(40, 30, seed=1)
    params = PARAMS.get(name, {})
    for k in (1, 4, 29):
        per_row = [loss(s[i : i + 1], t[i : i + 1], k, name).item() for i in range(len(s))]
        dense_rows = [dense(s[i : i + 1], t[i : i + 1], name, **params) for i in range(len(s))]
        assert all(a <= b * (1 + 1e-5) + 1e-6 for a, b in zip(per_row, dense_rows))  # float32 against float64
    assert loss(s, t, 4, name).item() < dense(s, t, name, **params) - 1e-3


@pytest.mark.parametrize("temperature", [1.0, 3.0])
@pytest.mark.parametrize("name", NAMES)
def test_zero_when_the_student_is_the_teacher(name, temperature):
    t = _rand(7, 25, seed=4)
    assert abs(loss(t.clone(), t, 5, name, temperature).item()) < 1e-6
    assert loss(_rand(7, 25, seed=5), t, 5, name, temperature).item() > 1e-3


# --- by hand -----------------------------------------------------------------------------------------------------

# One token, V = 3, k = 1: the teacher's buckets are (0.75, 0.25) whatever its top logit; the student's logits
# (log 2, 0, 0) give it probabilities (1/2, 1/4, 1/4), so its buckets at the teacher's class 0 are (0.5, 0.5).
P, Q = (0.75, 0.25), (0.5, 0.5)


def kl(a, b):
    return sum(x * math.log(x / y) for x, y in zip(a, b))


def mix(w, a, b):
    return tuple(w * x + (1 - w) * y for x, y in zip(a, b))


HAND = {
    "forward_kl": kl(P, Q),
    "reverse_kl": kl(Q, P),
    "jsd": 0.3 * kl(P, mix(0.3, P, Q)) + 0.7 * kl(Q, mix(0.3, P, Q)),
    "skew_forward_kl": kl(P, mix(0.2, P, Q)),
    "skew_reverse_kl": kl(Q, mix(0.8, P, Q)),
    "total_variation": 0.25,
}


def hand_token():
    """In float64, so the values can be pinned to the last digits."""
    student = torch.tensor([[math.log(2.0), 0.0, 0.0]], dtype=torch.float64)
    return student, torch.tensor([[3.7]], dtype=torch.float64), torch.tensor([[0]]), torch.tensor([math.log(0.25)],
                                                                                                   dtype=torch.float64)


@pytest.mark.parametrize("name", NAMES)
def test_each_divergence_by_hand(name):
    got = topk_divergence(*hand_token(), divergence=name, **PARAMS.get(name, {}))
    assert got.item() == pytest.approx(HAND[name], rel=1e-12)
    in_float32 = topk_divergence(*(x.float() if x.is_floating_point() else x for x in hand_token()), divergence=name,
                                 **PARAMS.get(name, {}))
    assert in_float32.dtype == torch.float32 and in_float32.item() == pytest.approx(HAND[name], rel=1e-5)


def test_forward_kl_by_hand_at_T2_softens_both_bucket_distributions_and_scales_by_T_squared():
    # at T = 2 the buckets become p^(1/2) normalised: (sqrt .75, sqrt .25) / sum; the student's stay (1/2, 1/2)
    root = (math.sqrt(0.75), math.sqrt(0.25))
    p2 = tuple(r / sum(root) for r in root)
    got = topk_divergence(*hand_token(), temperature=2.0)
    assert got.item() == pytest.approx(4 * kl(p2, Q), rel=1e-12)


# --- chunks, masks, gradients ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_chunked_equals_unchunked_in_value_and_gradient(name):
    t = _rand(3, 13, 40, seed=1)
    mask = torch.rand(3, 13, generator=torch.Generator().manual_seed(2)) > 0.25
    results = []
    for chunk_size in (1, 7, 1000):
        s = _rand(3, 13, 40).requires_grad_()
        value = loss(s, t, 6, name, 2.0, mask=mask, chunk_size=chunk_size)
        value.backward()
        results.append((value.detach(), s.grad))
    for value, grad in results[:-1]:
        assert torch.allclose(value, results[-1][0], rtol=1e-6, atol=1e-7)
        assert torch.allclose(grad, results[-1][1], rtol=1e-5, atol=1e-7)
    assert results[-1][1].abs().sum() > 0
    assert torch.equal(results[-1][1][~mask], torch.zeros(int((~mask).sum()), 40))


@pytest.mark.parametrize("name", ["forward_kl", "jsd", "skew_reverse_kl"])
def test_gradcheck_in_double(name):
    t = _rand(5, 6, seed=1).double()
    values, indices, tail = topk_of(t, 3)
    mask = torch.tensor([True, True, False, True, True])
    s = _rand(5, 6, seed=2).double().requires_grad_()

    def f(x):
        return topk_divergence(x, values, indices, tail, divergence=name, temperature=1.5, mask=mask, chunk_size=2,
                               **PARAMS.get(name, {}))

    assert torch.autograd.gradcheck(f, (s,))


def test_uncounted_tokens_are_not_read_and_num_items_divides_the_sum():
    s, t = _rand(6, 10), _rand(6, 10, seed=1)
    values, indices, tail = topk_of(t, 3)
    mask = torch.tensor([True, False, True, True, False, True])
    s_bad, indices_bad = s.clone(), indices.clone()
    s_bad[~mask] = math.nan
    indices_bad[~mask] = 10_000  # out of range: would fail if gathered
    got = topk_divergence(s_bad, values, indices_bad, tail, mask=mask, chunk_size=4)
    want = topk_divergence(s[mask], values[mask], indices[mask], tail[mask])
    assert got.item() == pytest.approx(want.item(), rel=1e-6)
    summed = topk_divergence(s, values, indices, tail, mask=mask, num_items=torch.tensor(10))
    assert summed.item() == pytest.approx(want.item() * 4 / 10, rel=1e-6)


def test_nothing_counted_gives_a_zero_that_backpropagates():
    s = _rand(4, 8).requires_grad_()
    got = topk_divergence(s, *topk_of(_rand(4, 8, seed=1), 2), mask=torch.zeros(4, dtype=torch.bool))
    assert got.item() == 0.0 and got.grad_fn is not None
    got.backward()
    assert torch.equal(s.grad, torch.zeros(4, 8))


@pytest.mark.parametrize("shifted", [False, True])
def test_chunks_keep_no_float_tensor_of_the_whole_batch_for_backward(shifted):
    # Record the float tensors autograd keeps outside the checkpointed chunks, other than views of the logits:
    # less than one chunk's [16, vocab] (without checkpointing they would add up to more than [tokens, vocab]).
    # The shifted view logits[:, :-1] of a causal LM is not copied either.
    vocab = 50
    full = _rand(4, 17 if shifted else 16, vocab).requires_grad_()
    s = full[:, :-1] if shifted else full
    saved = []

    def pack(x):
        own = x.is_floating_point() and x.untyped_storage().data_ptr() != full.untyped_storage().data_ptr()
        saved.append(x.numel() if own else 0)
        return x

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        value = loss(s, _rand(4, 16, vocab, seed=1), 5, "jsd", chunk_size=16)
    value.backward()
    assert sum(saved) < 16 * vocab
    assert full.grad.abs().sum() > 0


def test_a_shifted_view_of_the_logits_gives_what_its_copy_gives():
    t = _rand(3, 10, 30, seed=1)
    mask = torch.rand(3, 10, generator=torch.Generator().manual_seed(2)) > 0.2
    full = _rand(3, 11, 30).requires_grad_()
    copy = full.detach()[:, :-1].clone().requires_grad_()
    for chunk_size in (2, 7, 100):
        full.grad = copy.grad = None
        a = loss(full[:, :-1], t, 4, "reverse_kl", mask=mask, chunk_size=chunk_size)
        b = loss(copy, t, 4, "reverse_kl", mask=mask, chunk_size=chunk_size)
        a.backward()
        b.backward()
        assert a.item() == pytest.approx(b.item(), rel=1e-6)
        assert torch.allclose(full.grad[:, :-1], copy.grad, rtol=1e-5, atol=1e-8)
        assert torch.equal(full.grad[:, -1], torch.zeros(3, 30))


@pytest.mark.parametrize("name", ["forward_kl", "reverse_kl", "jsd"])
def test_chunks_where_every_token_counts_give_what_the_masked_route_gives(name):
    # Packed text: every token of a shifted view counts, so chunks are read as views; some rows put almost all of the
    # student's mass on the teacher's classes (the tail's exact route, on a strided 3-d chunk). The reference runs
    # the masked route: the same positions with one uncounted position appended.
    t = _rand(3, 10, 30, seed=1)
    values, indices, tail = topk_of(t, 4)
    full = _rand(3, 11, 30).detach()
    full[:, :-1] = full[:, :-1].scatter_add(-1, indices, torch.full(indices.shape, 25.0) * (torch.rand(3, 10, 1) > 0.5))
    full.requires_grad_()
    padded = torch.cat([full.detach()[:, :-1], torch.zeros(3, 1, 30)], dim=1).requires_grad_()
    keep = torch.ones(3, 11, dtype=torch.bool)
    keep[:, -1] = False
    pad = lambda x, fill: torch.cat([x, torch.full((3, 1, *x.shape[2:]), fill, dtype=x.dtype)], dim=1)  # noqa: E731
    for chunk_size in (4, 1000):
        full.grad = padded.grad = None
        a = topk_divergence(full[:, :-1], values, indices, tail, name, chunk_size=chunk_size)
        b = topk_divergence(padded, pad(values, 0.0), pad(indices, 0), pad(tail, -1.0), name, mask=keep,
                            chunk_size=1000)
        a.backward()
        b.backward()
        assert a.item() == pytest.approx(b.item(), rel=1e-6)
        torch.testing.assert_close(full.grad[:, :-1], padded.grad[:, :-1], rtol=1e-5, atol=1e-8)


# --- zero mass and -inf ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_zero_teacher_mass_and_minus_inf_student_logits_give_no_nan(name):
    # The teacher puts no mass outside its top 2 (tail -inf); row 1 of the student has -inf logits outside the top,
    # row 2 has nothing but -inf there (its tail bucket is empty too), row 0 is ordinary.
    values = torch.tensor([[2.0, 1.0]] * 3)
    indices = torch.tensor([[0, 1]] * 3)
    tail = torch.full((3,), -math.inf)
    s = _rand(3, 6, seed=3)
    s[1, 3:] = -math.inf
    s[2, 2:] = -math.inf
    s.requires_grad_()
    got = topk_divergence(s, values, indices, tail, divergence=name, temperature=2.0, **PARAMS.get(name, {}))
    got.backward()
    assert torch.isfinite(got) and got.item() >= 0
    assert torch.isfinite(s.grad).all()


def test_k_equal_to_the_vocabulary_has_an_empty_tail_on_both_sides():
    t = _rand(3, 5, seed=1)
    values, indices, tail = topk_of(t, 5)
    assert torch.isneginf(tail).all()
    assert torch.isneginf(teacher_buckets(values, tail)[:, -1]).all()
    s = _rand(3, 5).requires_grad_()
    assert torch.isneginf(student_buckets(s, indices)[:, -1]).all()
    for name in NAMES:
        value = topk_divergence(s, values, indices, tail, divergence=name)
        (grad,) = torch.autograd.grad(value, s)
        assert torch.isfinite(value) and torch.isfinite(grad).all()


# --- the cache's payload -----------------------------------------------------------------------------------------


def test_against_the_payload_read_back_from_a_top_k_cache(tmp_path):
    t = _rand(5, 16, seed=6)
    path = str(tmp_path / "topk.safetensors")
    write_cache(path, t, "f" * 64, payload="topk", top_k=4)
    values, indices, tail = read_cache(path, "f" * 64).gather_topk(range(5))
    assert topk_divergence(t.clone(), values, indices, tail).abs().item() < 1e-6
    s = _rand(5, 16, seed=7)
    want = topk_divergence(s, *topk_of(t, 4), divergence="jsd", temperature=2.0)
    got = topk_divergence(s, values, indices, tail, divergence="jsd", temperature=2.0)
    assert got.item() == pytest.approx(want.item(), rel=1e-5)


# --- errors ------------------------------------------------------------------------------------------------------


def test_bad_arguments_are_refused_with_what_to_do():
    s = _rand(4, 8)
    payload = topk_of(_rand(4, 8, seed=1), 3)
    with pytest.raises(ValueError, match="unknown divergence 'kl'; choose one of forward_kl, reverse_kl, jsd"):
        topk_divergence(s, *payload, divergence="kl")
    with pytest.raises(ValueError, match=r"jsd needs 0 < beta < 1, got 0 \(use forward_kl or reverse_kl"):
        topk_divergence(s, *payload, divergence="jsd", beta=0)
    with pytest.raises(ValueError, match="skew_reverse_kl needs 0 <= alpha < 1, got 1"):
        topk_divergence(s, *payload, divergence="skew_reverse_kl", alpha=1)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        topk_divergence(s, *payload, temperature=0)
    with pytest.raises(ValueError, match="chunk_size must be >= 1"):
        topk_divergence(s, *payload, chunk_size=0)
    with pytest.raises(ValueError, match=r"items of shape \(4,\) but the teacher's top-k values have shape \(3, 3\)"):
        topk_divergence(s, payload[0][:3], payload[1][:3], payload[2][:3])
    with pytest.raises(ValueError, match=r"the teacher's tail has shape \(2,\)"):
        topk_divergence(s, payload[0], payload[1], payload[2][:2])
    with pytest.raises(ValueError, match="k=9 but the student's vocabulary has 8 classes"):
        topk_divergence(s, *topk_of(_rand(4, 9), 9))


# --- ULD ---------------------------------------------------------------------------------------------------------


def dense_uld(student, teacher_probs):
    """The paper's closed form per token: sort both, pad the shorter with zeros, L1; mean over tokens."""
    q = F.softmax(student.double(), dim=-1).sort(dim=-1, descending=True).values
    p = teacher_probs.double().sort(dim=-1, descending=True).values
    width = max(p.shape[-1], q.shape[-1])
    q, p = F.pad(q, (0, width - q.shape[-1])), F.pad(p, (0, width - p.shape[-1]))
    return (p - q).abs().sum(dim=-1).mean().item()


def test_uld_by_hand():
    # teacher top 2: (0.5, 0.3), so 0.2 outside; student sorted (0.4, 0.35, 0.25), so 0.25 outside its top 2:
    # |0.5 - 0.4| + |0.3 - 0.35| + |0.2 - 0.25| = 0.2
    student = torch.tensor([[math.log(0.25), math.log(0.4), math.log(0.35)]])
    assert uld_loss(student, torch.tensor([[0.3, 0.5]])).item() == pytest.approx(0.2, rel=1e-6)


@pytest.mark.parametrize("student_vocab,teacher_vocab", [(5, 7), (9, 5), (6, 6)])
def test_uld_with_the_whole_teacher_distribution_is_the_dense_uld(student_vocab, teacher_vocab):
    s = _rand(8, student_vocab)
    p = F.softmax(_rand(8, teacher_vocab, seed=1), dim=-1)
    assert uld_loss(s, p).item() == pytest.approx(dense_uld(s, p), rel=1e-5)


def test_uld_from_a_top_k_teacher_is_a_lower_bound_of_the_dense_uld():
    s, p = _rand(20, 12), F.softmax(_rand(20, 15, seed=1), dim=-1)
    top = p.topk(4, dim=-1).values
    for i in range(len(s)):
        assert uld_loss(s[i : i + 1], top[i : i + 1]).item() <= dense_uld(s[i : i + 1], p[i : i + 1]) + 1e-6
    assert uld_loss(s, top).item() > 0.05


def test_uld_needs_no_vocabulary_alignment():
    s, p = _rand(2, 6, 11), F.softmax(_rand(2, 6, 8, seed=1), dim=-1)[..., :5]
    base = uld_loss(s, p)
    g = torch.Generator().manual_seed(4)
    # equal up to the order of float sums in the softmax
    assert uld_loss(s[..., torch.randperm(11, generator=g)], p).item() == pytest.approx(base.item(), rel=1e-6)
    assert uld_loss(s, p[..., torch.randperm(5, generator=g)]).item() == pytest.approx(base.item(), rel=1e-6)
    # the student holding the teacher's distribution on other classes (and nothing elsewhere) costs nothing
    full = F.softmax(_rand(3, 4, seed=2), dim=-1)
    student = torch.full((3, 7), -math.inf)
    student[:, [6, 2, 0, 4]] = full.log()
    assert uld_loss(student, full).item() < 1e-6


def test_uld_chunked_equals_unchunked_with_mask_and_gradients():
    p = F.softmax(_rand(4, 9, 20, seed=1), dim=-1).topk(6, dim=-1).values
    mask = torch.rand(4, 9, generator=torch.Generator().manual_seed(2)) > 0.3
    results = []
    for chunk_size in (1, 5, 1000):
        s = _rand(4, 9, 15).requires_grad_()
        value = uld_loss(s, p, mask=mask, chunk_size=chunk_size)
        value.backward()
        results.append((value.detach(), s.grad))
    for value, grad in results[:-1]:
        assert torch.allclose(value, results[-1][0], rtol=1e-6)
        assert torch.allclose(grad, results[-1][1], rtol=1e-5, atol=1e-7)
    assert results[-1][1].abs().sum() > 0


def test_uld_refuses_misaligned_positions():
    with pytest.raises(ValueError, match=r"teacher probabilities have shape \(3, 4\) but student logits have items of "
                                         r"shape \(2,\)"):
        uld_loss(_rand(2, 6), torch.rand(3, 4))


# --- several teachers --------------------------------------------------------------------------------------------


def _stacked(*teachers, k):
    """Several teachers' payloads with a teacher dim before k: values/indices [..., n, k], tail [..., n]."""
    parts = [topk_of(t, k) for t in teachers]
    return (torch.stack([p[0] for p in parts], dim=-2), torch.stack([p[1] for p in parts], dim=-2),
            torch.stack([p[2] for p in parts], dim=-1))


def test_several_teachers_forward_kl_has_the_gradient_of_the_kl_from_their_mixture():
    from kdistill.losses import ensemble_topk_divergence

    vocab = 11
    student = _rand(2, 5, vocab, seed=1).double().requires_grad_()
    a, b = _rand(2, 5, vocab, seed=2).double() * 2, _rand(2, 5, vocab, seed=3).double()
    weights = [3.0, 1.0]
    got = ensemble_topk_divergence(student, *_stacked(a, b, k=vocab), weights, "forward_kl", temperature=2.0)
    (grad,) = torch.autograd.grad(got, student)
    # The teachers' probability mixture at T = 2, and the dense KL from it.
    mix = 0.75 * F.softmax(a / 2, -1) + 0.25 * F.softmax(b / 2, -1)
    s = student.detach().clone().requires_grad_()
    want = (F.kl_div(F.log_softmax(s / 2, -1), mix, reduction="none").sum(-1).mean() * 4)
    (want_grad,) = torch.autograd.grad(want, s)
    assert torch.allclose(grad, want_grad, atol=1e-10)
    # The value is the weighted mean of each teacher's own divergence (the mixture's KL plus a constant).
    each = [topk_divergence(student, *topk_of(t, vocab), divergence="forward_kl", temperature=2.0) for t in (a, b)]
    assert float(got) == pytest.approx(0.75 * float(each[0]) + 0.25 * float(each[1]), rel=1e-12)
    assert float(got) >= float(want) - 1e-12


@pytest.mark.parametrize("name", NAMES)
def test_several_teachers_at_top_k_are_each_teachers_divergence_weighted(name):
    from kdistill.losses import ensemble_topk_divergence

    student = _rand(3, 4, 20, seed=4)
    teachers = [_rand(3, 4, 20, seed=s) * 2 for s in (5, 6, 7)]
    mask = torch.ones(3, 4, dtype=torch.bool)
    mask[0, 1:] = False
    got = ensemble_topk_divergence(student, *_stacked(*teachers, k=6), [1.0, 0.0, 2.0], name, temperature=1.5,
                                   mask=mask, **PARAMS.get(name, {}))
    each = [loss(student, t, 6, name, 1.5, mask=mask) for t in teachers]
    assert float(got) == pytest.approx(float(each[0]) / 3 + 2 * float(each[2]) / 3, rel=1e-5)
    # One teacher given twice is that teacher.
    twice = ensemble_topk_divergence(student, *_stacked(teachers[0], teachers[0], k=6), [1.0, 1.0], name,
                                     temperature=1.5, mask=mask, **PARAMS.get(name, {}))
    assert float(twice) == pytest.approx(float(each[0]), rel=1e-5)
    with pytest.raises(ValueError, match="weights must be 3 non-negative numbers, not all 0"):
        ensemble_topk_divergence(student, *_stacked(*teachers, k=6), [1.0, 1.0], name)


def test_mixture_of_top_k_teachers_is_the_dense_mixture_when_k_is_the_vocabulary_and_a_lower_bound_otherwise():
    from kdistill.metrics import TopKMixture, mixture_kl, mixture_topk

    vocab = 9
    a, b = _rand(6, vocab, seed=8) * 2, _rand(6, vocab, seed=9) * 2
    student = _rand(6, vocab, seed=10)
    mix = 0.25 * F.softmax(a.double(), -1) + 0.75 * F.softmax(b.double(), -1)
    classes, probs, tail = mixture_topk(TopKMixture([topk_of(a, vocab), topk_of(b, vocab)], [1, 3]))
    assert classes.shape == (6, 2 * vocab) and bool((tail == 0).all())
    dense_back = torch.zeros(6, vocab, dtype=torch.float64).scatter_add_(-1, classes, probs.double())
    assert torch.allclose(dense_back, mix, atol=1e-6)  # each class once, at its mixture probability
    assert bool((probs[:, :-1] >= probs[:, 1:]).all())  # largest first, the repeated slots (0) last
    assert torch.equal(classes[:, 0], mix.argmax(-1))
    want = (mix * (mix.log() - F.log_softmax(student.double(), -1))).sum(-1)
    assert torch.allclose(mixture_kl(student, classes, probs, tail).double(), want, atol=1e-5)
    # At k < V: the union's classes keep at most their mixture probability, the rest goes to the tail, and all of it
    # still sums to 1.
    classes, probs, tail = mixture_topk(TopKMixture([topk_of(a, 3), topk_of(b, 3)], [1, 3]))
    got = torch.zeros(6, vocab, dtype=torch.float64).scatter_add_(-1, classes, probs.double())
    assert bool((got <= mix + 1e-6).all())
    assert torch.allclose(probs.double().sum(-1) + tail.double(), torch.ones(6, dtype=torch.float64), atol=1e-5)
    assert bool((mixture_kl(student, classes, probs, tail) >= -1e-6).all())


def test_student_buckets_match_float64_at_every_share_of_the_students_tail():
    # From a flat student (most of its mass outside the teacher's 8 classes: the one-pass route) to one that puts
    # almost everything on them (under EXACT_TAIL_BELOW outside: the masked-copy route): values and gradients.
    from kdistill.losses.lm import EXACT_TAIL_BELOW

    torch.manual_seed(0)
    vocab, k = 500, 8
    indices = torch.stack([torch.randperm(vocab)[:k] for _ in range(120)])
    s = torch.randn(120, vocab)
    boost = torch.linspace(0.0, 30.0, 120).unsqueeze(1)  # row by row, more of the mass on the k classes
    s = s.scatter_add(1, indices, boost.expand(-1, k).contiguous())
    weights = torch.rand(120, k + 1)

    def run(x):
        x = x.clone().requires_grad_()
        out = student_buckets(x, indices, 1.5)
        (out * weights.to(out.dtype)).sum().backward()
        return out.detach(), x.grad

    got, got_grad = run(s)
    want, want_grad = run(s.double())
    tail_share = torch.softmax(s.double(), 1).scatter(1, indices, 0.0).sum(1)
    assert (tail_share > 0.5).any() and (tail_share < EXACT_TAIL_BELOW).any() and (tail_share < 1e-9).any()
    assert ((tail_share > EXACT_TAIL_BELOW) & (tail_share < 2 * EXACT_TAIL_BELOW)).any()
    assert ((got.double() - want).abs() / want.abs().clamp(min=1.0)).max() < 1e-5
    torch.testing.assert_close(got_grad.double(), want_grad, rtol=1e-4, atol=1e-6)


def test_student_minus_inf_at_every_teacher_class_gives_a_finite_gradient():
    # k = 1 and the student masks the teacher's top token with a -inf bias: its bucket is -inf (a reverse KL or JSD
    # stays finite there) and no NaN may reach the logits through the tail bucket's logsumexp.
    torch.manual_seed(0)
    vocab = 20
    bias = torch.zeros(vocab)
    bias[3] = -math.inf
    weight = torch.randn(vocab, vocab, requires_grad=True)
    out = student_buckets(torch.randn(2, vocab) @ weight + bias, torch.tensor([[3], [5]]))
    assert torch.isneginf(out[0, 0]) and torch.isfinite(out[1]).all()
    torch.where(torch.isfinite(out), out, 0.0).sum().backward()
    assert torch.isfinite(weight.grad).all()
