from __future__ import annotations

import pytest
import torch

from engine.bundle import Bundle
from engine.errors import CancelledError, InputError
from engine.inversion import invert
from engine.params import InvertParams, lr_schedule
from engine.perceptual import ConvPerceptual, ConvPerceptualConfig, PerceptualLoss


@pytest.fixture
def perceptual() -> PerceptualLoss:
    torch.manual_seed(0)
    return ConvPerceptual(ConvPerceptualConfig(widths=(8, 16))).freeze()


def test_inversion_reconstructs_a_rendered_image(tiny_bundle: Bundle, perceptual: PerceptualLoss) -> None:
    g = tiny_bundle.generator
    target = g.synthesis(g.sample_w_plus(1, seed=11)).image.clamp(-1, 1)
    result = invert(tiny_bundle, target, perceptual=perceptual, params={"steps": 30})
    recon = [h["reconstruction"] for h in result.history]
    assert result.best_step > 0 and recon[result.best_step] == min(recon) < recon[0]
    assert result.losses == result.history[result.best_step]
    assert result.w_plus.shape == (1, 8, 32)
    assert result.rendering.image.shape == (1, 3, 24, 32) and result.rendering.labels.shape == (1, 24, 32)
    assert 0 < result.psnr < 100
    again = invert(tiny_bundle, target, perceptual=perceptual, params={"steps": 30})
    assert torch.equal(again.w_plus, result.w_plus)  # deterministic


def test_encoder_starts_the_optimisation(tiny_bundle: Bundle, perceptual: PerceptualLoss) -> None:
    g, e = tiny_bundle.generator, tiny_bundle.encoder
    assert e is not None
    target = g.synthesis(g.sample_w_plus(1, seed=3)).image.clamp(-1, 1)
    zero = invert(tiny_bundle, target, perceptual=perceptual, params={"steps": 0})
    with torch.no_grad():
        assert torch.equal(zero.w_plus, e(target))
    avg = invert(tiny_bundle, target, perceptual=perceptual, params={"steps": 0, "use_encoder": False})
    assert torch.equal(avg.w_plus[0, 0], g.w_avg)


def test_learning_rate_schedule_is_the_official_one() -> None:
    # EDITGAN.md 3a: 99 updates with lr 0.02, 0.04, 0.06, 0.08, then 0.1, cosine decay to 0.000394
    p = InvertParams()
    lrs = [lr_schedule((k + 1) / (p.steps + 1), p.lr, p.lr_rampup, p.lr_rampdown) for k in range(p.steps)]
    assert lrs[:5] == pytest.approx([0.02, 0.04, 0.06, 0.08, 0.1])
    assert lrs[74] == pytest.approx(0.1)
    assert lrs[-1] == pytest.approx(0.000394, abs=2e-6)
    assert sum(lrs) / len(lrs) == pytest.approx(0.0859, abs=5e-4)


def test_stop_and_bad_inputs(tiny_bundle: Bundle, perceptual: PerceptualLoss) -> None:
    target = torch.zeros(1, 3, 32, 32)
    with pytest.raises(CancelledError):
        invert(tiny_bundle, target, perceptual=perceptual, should_stop=lambda: True)
    with pytest.raises(InputError, match="canvas"):
        invert(tiny_bundle, torch.zeros(1, 3, 16, 16), perceptual=perceptual)
    with pytest.raises(InputError, match="\\[-1, 1\\]"):
        invert(tiny_bundle, torch.full((1, 3, 32, 32), 3.0), perceptual=perceptual)
    with pytest.raises(InputError, match="unknown InvertParams keys"):
        invert(tiny_bundle, target, perceptual=perceptual, params={"lr_max": 1})
