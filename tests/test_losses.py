import math

import pytest
import torch
import torch.nn.functional as F

from kdistill.losses import (
    TERMS,
    TermInputs,
    hard_ce,
    logit_mse,
    soft_kl,
)

from conftest import seeded_randn as _rand


# --- hard_ce -----------------------------------------------------------------


def test_hard_ce_hand_computed():
    logits = torch.tensor([[1.0, 2.0, 3.0], [1.0, 0.0, -1.0]])
    labels = torch.tensor([2, 0])
    # -log softmax(z)[y] = log(sum exp z) - z[y]
    ce0 = math.log(math.exp(1) + math.exp(2) + math.exp(3)) - 3.0
    ce1 = math.log(math.exp(1) + math.exp(0) + math.exp(-1)) - 1.0
    expected = (ce0 + ce1) / 2
    assert hard_ce(logits, labels).item() == pytest.approx(expected, abs=1e-6)
    assert hard_ce(logits, labels).item() == pytest.approx(
        F.cross_entropy(logits, labels).item(), abs=1e-6
    )


def test_hard_ce_ignores_minus_100():
    logits = _rand(5, 4)
    labels = torch.tensor([0, -100, 3, -100, 1])
    keep = labels != -100
    expected = F.cross_entropy(logits[keep], labels[keep])
    assert hard_ce(logits, labels).item() == pytest.approx(expected.item(), abs=1e-6)
    # With a global denominator the ignored items are not counted either.
    got = hard_ce(logits, labels, num_items=10)
    assert got.item() == pytest.approx(expected.item() * 3 / 10, abs=1e-6)


def test_hard_ce_token_level_with_mask():
    logits = _rand(2, 3, 5)  # 2 sequences x 3 tokens
    labels = torch.tensor([[1, 2, 3], [4, 0, -100]])
    mask = torch.tensor([[True, False, True], [True, True, True]])
    keep = mask & (labels != -100)
    expected = F.cross_entropy(logits[keep], labels[keep])
    assert hard_ce(logits, labels, mask=mask).item() == pytest.approx(expected.item(), abs=1e-6)


# --- soft_kl -----------------------------------------------------------------


def _softmax(z, T):
    e = [math.exp(v / T) for v in z]
    return [v / sum(e) for v in e]


def test_soft_kl_hand_computed_at_T2():
    s, t = [1.0, 0.0, -1.0], [2.0, 0.5, 0.0]
    p_s, p_t = _softmax(s, 2.0), _softmax(t, 2.0)
    kl = sum(pt * (math.log(pt) - math.log(ps)) for pt, ps in zip(p_t, p_s))
    expected = 4.0 * kl  # T^2 = 4
    got = soft_kl(torch.tensor([s]), torch.tensor([t]), temperature=2.0)
    assert got.item() == pytest.approx(expected, rel=1e-5)
    assert expected > 0.01  # the example is not trivially zero


def test_soft_kl_zero_when_equal_and_nonnegative():
    x = _rand(8, 6)
    assert abs(soft_kl(x, x.clone(), 3.0).item()) < 1e-6
    for seed in range(5):
        s, t = _rand(8, 6, seed=seed), _rand(8, 6, seed=seed + 100)
        assert soft_kl(s, t, 1.5).item() >= 0.0


def test_soft_kl_zero_probability_classes_are_finite():
    s = torch.tensor([[1.0, 0.0, 2.0]], requires_grad=True)
    t = torch.tensor([[2.0, float("-inf"), 0.0]])
    loss = soft_kl(s, t, 1.0)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s.grad).all()


def test_soft_kl_validation():
    x = _rand(2, 3)
    with pytest.raises(ValueError, match=r"^temperature must be > 0, got 0$"):
        soft_kl(x, x, 0)
    with pytest.raises(ValueError, match=r"^temperature must be > 0, got -1.0$"):
        soft_kl(x, x, -1.0)
    with pytest.raises(ValueError, match="student logits have shape"):
        soft_kl(x, _rand(2, 4), 1.0)


def test_soft_kl_mask_selects_items():
    s, t = _rand(6, 5), _rand(6, 5, seed=1)
    mask = torch.tensor([True, False, True, True, False, False])
    expected = soft_kl(s[mask], t[mask], 2.0)
    s2 = s.clone()
    s2[~mask] = 1e4  # garbage in masked-out items must not matter
    assert soft_kl(s2, t, 2.0, mask=mask).item() == pytest.approx(expected.item(), rel=1e-6)


def test_soft_kl_num_items():
    s, t = _rand(5, 4), _rand(5, 4, seed=1)
    full = soft_kl(s, t, 2.0)
    assert soft_kl(s, t, 2.0, num_items=10).item() == pytest.approx(full.item() / 2, rel=1e-6)
    assert soft_kl(s, t, 2.0, num_items=torch.tensor(10)).item() == pytest.approx(
        full.item() / 2, rel=1e-6
    )


def test_soft_kl_chunked_equals_whole():
    s, t = _rand(8, 5), _rand(8, 5, seed=1)
    whole = soft_kl(s, t, 3.0)
    halves = soft_kl(s[:3], t[:3], 3.0, num_items=8) + soft_kl(s[3:], t[3:], 3.0, num_items=8)
    assert halves.item() == pytest.approx(whole.item(), rel=1e-6)


def test_empty_selection_gives_zero_with_grad():
    s = _rand(3, 4).requires_grad_()
    loss = soft_kl(s, _rand(3, 4, seed=1), 2.0, mask=torch.zeros(3, dtype=torch.bool))
    assert loss.item() == 0.0 and loss.grad_fn is not None
    loss.backward()
    assert torch.equal(s.grad, torch.zeros_like(s))
    ce = hard_ce(s, torch.full((3,), -100))
    assert ce.item() == 0.0 and ce.grad_fn is not None


def test_soft_kl_gradient_scale_over_temperature():
    s, t = _rand(16, 10), _rand(16, 10, seed=1)

    def grad_norm(T, scaled):
        x = s.clone().requires_grad_()
        loss = soft_kl(x, t, T)
        (loss if scaled else loss / T**2).backward()
        return x.grad.norm().item()

    with_t2 = {T: grad_norm(T, True) for T in (1, 2, 5, 10, 20)}
    high = [with_t2[T] for T in (2, 5, 10, 20)]
    assert max(high) / min(high) < 10
    # Without T^2 the gradient decays like 1/T^2: (2/20)^2 = 1/100 asymptotically.
    # T=2 is not fully asymptotic, so allow a band around 1/100 rather than a strict bound.
    ratio = grad_norm(20, False) / grad_norm(2, False)
    assert 0.5 / 100 < ratio < 1.5 / 100


# --- logit_mse ---------------------------------------------------------------


def test_logit_mse_hand_computed():
    s = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    t = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    expected = ((0 + 4 + 9) / 3 + (1 + 1 + 1) / 3) / 2
    assert logit_mse(s, t).item() == pytest.approx(expected, abs=1e-6)
    assert TERMS["logit_mse"].fn(TermInputs(s, teacher_logits=t, temperature=7.0)).item() == pytest.approx(expected, abs=1e-6)


def test_ensemble_of_teachers_is_the_weighted_mixture_of_their_softened_probabilities():
    from kdistill.losses import ensemble_logits

    a, b = _rand(5, 3, seed=3), _rand(5, 3, seed=4)
    mixed = ensemble_logits([a, b], [3.0, 1.0], temperature=2.0)
    expected = 0.75 * F.softmax(a / 2, -1) + 0.25 * F.softmax(b / 2, -1)
    torch.testing.assert_close(F.softmax(mixed / 2, -1), expected)
    assert ensemble_logits([a], [5.0], 2.0) is a  # one teacher: its own logits, untouched


def test_ensemble_combines_probabilities_or_logits_by_hand():
    from kdistill.config_sections import ENSEMBLE_COMBINES
    from kdistill.losses import ENSEMBLE_COMBINES as MODES, ensemble_logits

    assert ENSEMBLE_COMBINES == MODES  # the config's copy of the modes (config_sections imports no torch)
    a, b = torch.tensor([[0.0, 0.0]]), torch.tensor([[math.log(3.0), 0.0]])
    # Probabilities at T=1: softmax(a) = (1/2, 1/2), softmax(b) = (3/4, 1/4); weights 1:1 mix to (5/8, 3/8).
    mixed = ensemble_logits([a, b], [1.0, 1.0], 1.0)
    torch.testing.assert_close(mixed, torch.tensor([[math.log(5 / 8), math.log(3 / 8)]]))
    # Logits, weights 1:3 normalised to 1/4, 3/4: (0 + 3 ln 3) / 4, 0, whatever the temperature.
    for t in (1.0, 4.0):
        torch.testing.assert_close(ensemble_logits([a, b], [1.0, 3.0], t, "logits"),
                                   torch.tensor([[0.75 * math.log(3.0), 0.0]]))
    # Weights are normalised: 2:6 is 1:3.
    torch.testing.assert_close(ensemble_logits([a, b], [2.0, 6.0], 2.0, "logits"),
                               ensemble_logits([a, b], [1.0, 3.0], 2.0, "logits"))
    torch.testing.assert_close(ensemble_logits([a, b], [2.0, 2.0], 1.0), mixed)
    # One teacher: its own logits, untouched, in either mode.
    assert ensemble_logits([b], [5.0], 2.0, "logits") is b
    # A confident teacher pulls the logit mean further than the mixture: softmax at T=1 of the two targets.
    confident, unsure = torch.tensor([[8.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    top = [F.softmax(ensemble_logits([confident, unsure], [1.0, 1.0], 1.0, how), -1)[0, 0].item()
           for how in ("probabilities", "logits")]
    assert top[0] == pytest.approx((F.softmax(confident, -1)[0, 0] + F.softmax(unsure, -1)[0, 0]).item() / 2)
    assert top[1] == pytest.approx(torch.sigmoid(torch.tensor(3.5)).item()) and top[1] > top[0]
    with pytest.raises(ValueError, match="combine must be one of probabilities, logits, got 'mean'"):
        ensemble_logits([a, b], [1.0, 1.0], 1.0, "mean")
