"""The objective (losses/objective.py): the strategy presets, the weighted sum of named terms, weights that follow
the step, terms skipped for missing inputs. The terms themselves are tested in test_losses.py."""

import pytest
import torch

from kdistill import schedules
from kdistill.losses import (
    STRATEGIES,
    TermInputs,
    distillation_loss,
    hard_ce,
    logit_mse,
    objective,
    preset_weights,
    soft_kl,
)

from conftest import seeded_randn as _rand


# --- distillation_loss -------------------------------------------------------


def _batch():
    return _rand(6, 4), torch.tensor([0, 1, 2, 3, -100, 1]), _rand(6, 4, seed=1)


def test_mixed_alpha_endpoints_and_interpolation():
    s, y, t = _batch()
    hard, _ = distillation_loss(s, y, t, "hard")
    soft, _ = distillation_loss(s, y, t, "soft", temperature=2.0)
    m0, _ = distillation_loss(s, y, t, "mixed", temperature=2.0, alpha=0.0)
    m1, _ = distillation_loss(s, y, t, "mixed", temperature=2.0, alpha=1.0)
    m3, parts = distillation_loss(s, y, t, "mixed", temperature=2.0, alpha=0.3)
    assert m0.item() == pytest.approx(hard.item(), rel=1e-6)
    assert m1.item() == pytest.approx(soft.item(), rel=1e-6)
    assert m3.item() == pytest.approx(0.3 * soft.item() + 0.7 * hard.item(), rel=1e-6)
    assert hard.item() == pytest.approx(hard_ce(s, y).item(), rel=1e-6)
    assert soft.item() == pytest.approx(soft_kl(s, t, 2.0).item(), rel=1e-6)
    assert parts["hard_ce"].item() == pytest.approx(hard.item(), rel=1e-6)
    assert parts["soft_kl"].item() == pytest.approx(soft.item(), rel=1e-6)


def test_parts_keys_and_grad():
    s, y, t = _batch()
    s.requires_grad_()
    assert STRATEGIES == ("hard", "soft", "mixed")
    total, parts = distillation_loss(s, y, None, "hard")
    assert set(parts) == {"hard_ce"} and total.requires_grad
    total, parts = distillation_loss(s, None, t, "soft")
    assert set(parts) == {"soft_kl"} and total.requires_grad
    total, parts = distillation_loss(s, y, t, "mixed", soft_loss="mse")
    assert list(parts) == ["logit_mse", "hard_ce"] and total.requires_grad
    assert not parts["logit_mse"].requires_grad
    assert parts["logit_mse"].item() == pytest.approx(logit_mse(s, t).item(), rel=1e-6)


def test_distillation_loss_errors():
    s, y, t = _batch()
    with pytest.raises(ValueError, match=r"^alpha must be in \[0, 1\], got 1.5$"):
        distillation_loss(s, y, t, "mixed", alpha=1.5)
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\], got -0.1"):
        distillation_loss(s, y, t, "mixed", alpha=-0.1)
    with pytest.raises(ValueError, match="hard, soft, mixed"):
        distillation_loss(s, y, t, "medium")
    with pytest.raises(ValueError, match="kl, mse"):
        distillation_loss(s, y, t, "soft", soft_loss="cosine")
    for strategy in ("soft", "mixed"):
        with pytest.raises(ValueError, match="teacher_logits"):
            distillation_loss(s, y, None, strategy)
    for strategy in ("hard", "mixed"):
        with pytest.raises(ValueError, match="labels"):
            distillation_loss(s, None, t, strategy)


# --- the objective: weighted named terms --------------------------------------


def test_presets_expand_to_terms_soft_part_first():
    assert preset_weights("hard") == {"hard_ce": 1.0}
    assert preset_weights("soft", soft_loss="mse") == {"logit_mse": 1.0}
    assert list(preset_weights("mixed", alpha=0.3).items()) == [("soft_kl", 0.3), ("hard_ce", 0.7)]


def test_mixed_preset_is_bitwise_the_old_formula():
    # The presets must give the figures the strategies gave before they became terms: alpha * soft + (1-alpha) * hard.
    s, y, t = _batch()
    for alpha in (0.0, 0.3, 0.5, 1.0):
        total, _ = distillation_loss(s, y, t, "mixed", temperature=2.0, alpha=alpha)
        old = alpha * soft_kl(s, t, 2.0) + (1.0 - alpha) * hard_ce(s, y)
        assert total.item() == old.item()


def test_objective_is_the_weighted_sum_of_its_terms():
    s, y, t = _batch()
    x = TermInputs(s, y, t, temperature=4.0)
    total, parts = objective({"soft_kl": 0.25, "logit_mse": 2.0, "hard_ce": 0.5}, x)
    expected = 0.25 * soft_kl(s, t, 4.0) + 2.0 * logit_mse(s, t) + 0.5 * hard_ce(s, y)
    assert total.item() == pytest.approx(expected.item(), rel=1e-6)
    assert parts["logit_mse"].item() == pytest.approx(logit_mse(s, t).item(), rel=1e-6)


def test_objective_weight_may_follow_the_step():
    s, y, t = _batch()
    x = TermInputs(s, y, t, temperature=2.0)
    ramp = schedules.linear(0.0, 1.0)
    start, _ = objective({"soft_kl": ramp, "hard_ce": 1.0}, x, step=0, max_steps=10)
    half, _ = objective({"soft_kl": ramp, "hard_ce": 1.0}, x, step=5, max_steps=10)
    assert start.item() == pytest.approx(hard_ce(s, y).item(), rel=1e-6)
    assert half.item() == pytest.approx(0.5 * soft_kl(s, t, 2.0).item() + hard_ce(s, y).item(), rel=1e-6)


def test_objective_skips_terms_without_inputs_only_when_asked():
    s, y, _ = _batch()
    x = TermInputs(s, y, None)
    total, parts = objective({"soft_kl": 0.5, "hard_ce": 0.5}, x, skip_missing=True)
    assert list(parts) == ["hard_ce"] and total.item() == pytest.approx(0.5 * hard_ce(s, y).item(), rel=1e-6)
    with pytest.raises(ValueError, match="^term 'soft_kl' needs teacher_logits, got None$"):
        objective({"soft_kl": 0.5, "hard_ce": 0.5}, x)
