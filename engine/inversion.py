"""Embedding a real image into W+: encoder initialisation, then optimisation (official `run_embedding`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from engine.bundle import Bundle
from engine.errors import InputError
from engine.optim import ProgressFn, StopFn, encoder_term, logged, loop_graph, mse01, optimize_w, psnr
from engine.params import InvertParams, lr_schedule
from engine.perceptual import PerceptualLoss
from engine.rendering import Rendering, render


@dataclass
class Inversion:
    """What `invert` returns."""

    w_plus: Tensor  # [1, L, S]
    rendering: Rendering  # reconstruction, segmentation and uncertainty in the content box
    losses: dict[str, float]  # terms at the returned step
    psnr: float  # dB, reconstruction vs input inside the content box
    best_step: int
    history: list[dict[str, float]] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)


def check_canvas(bundle: Bundle, image: Tensor) -> Tensor:
    size = bundle.spec.resolution
    if image.ndim == 3:
        image = image.unsqueeze(0)
    if tuple(image.shape) != (1, 3, size, size) or not image.is_floating_point():
        raise InputError(f"image must be a float [1, 3, {size}, {size}] canvas, got {list(image.shape)}")
    if not bool(torch.isfinite(image).all()) or float(image.min()) < -1.001 or float(image.max()) > 1.001:
        raise InputError("image values must be finite and in [-1, 1]")
    return image.to(bundle.device)


def invert(
    bundle: Bundle,
    image: Tensor,
    *,
    perceptual: PerceptualLoss | None = None,
    params: Mapping[str, Any] | None = None,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
) -> Inversion:
    """Find the W+ whose render matches `image`, a [1, 3, S, S] canvas in [-1, 1] (see `images.fit_to_canvas`).

    Loss per step: lpips_weight * LPIPS + mse_weight * MSE (on [0, 1]) + encoder_weight * ||w - E(G(w))||^2,
    over the whole canvas as the official code. The learning rate follows the warm-up / cosine schedule.
    The returned latent is the step with the lowest reconstruction loss (LPIPS and MSE terms).
    """
    p = InvertParams.resolve(bundle.spec.defaults.get("invert"), params)
    target = check_canvas(bundle, image)
    perceptual = perceptual if perceptual is not None else bundle.perceptual()
    g, encoder = bundle.generator, bundle.encoder

    if p.use_encoder and encoder is not None:
        previous = encoder.batch_statistics
        encoder.use_batch_statistics(p.encoder_batch_statistics)
        try:
            with torch.no_grad():
                w0 = encoder(target)  # the encoder was trained on [-1, 1] inputs
        finally:
            encoder.use_batch_statistics(previous)
    else:
        w0 = g.broadcast(g.w_avg.unsqueeze(0))
    target_features = perceptual.target(target)
    enc = encoder if p.encoder_weight > 0 else None

    def loss_fn(w: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        x = g.synthesis(w).image
        lp = perceptual.to_target(x, target_features).mean()
        mse = mse01(x, target).mean()
        e = encoder_term(enc, w, x, range_=p.encoder_input, batch_statistics=p.encoder_batch_statistics).mean()
        recon = p.lpips_weight * lp + p.mse_weight * mse
        total = recon + p.encoder_weight * e
        return total, logged(total=total, reconstruction=recon, lpips=lp, mse=mse, encoder=e)

    # Official schedule: update k of `steps` uses progress t = (k + 1) / (steps + 1).
    def lr(k: int) -> float:
        return lr_schedule((k + 1) / (p.steps + 1), p.lr, p.lr_rampup, p.lr_rampdown)

    result = optimize_w(
        w0,
        loss_fn,
        steps=p.steps,
        lr=lr,
        best_key="reconstruction",
        progress=progress,
        should_stop=should_stop,
        precision=p.precision,
        graph=loop_graph(w0.device, p.cuda_graphs),
    )
    rendering = render(bundle, result.w_plus)
    assert bundle.spec.geometry is not None
    top, left, h, w = bundle.spec.geometry.box
    quality = psnr(rendering.image, target[:, :, top : top + h, left : left + w])
    return Inversion(
        w_plus=result.w_plus,
        rendering=rendering,
        losses=result.history[result.best_step],
        psnr=quality,
        best_step=result.best_step,
        history=result.history,
        params=p.to_dict(),
    )
