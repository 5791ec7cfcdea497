"""The segmentation branch from a handful of annotated images (DatasetGAN, as EditGAN trains it).

1. Embed the annotated images into W+ with the generator (`invert`): the labels then describe what the
   generator draws for those latents.
2. Take the generator's feature maps for those latents, upsampled bilinearly to the output size and
   concatenated (the official `[D, H, W]` stack), and train each ensemble member on every pixel with
   cross-entropy, Adam 1e-3, shuffled mini-batches (official `train_interpreter.py`). Members differ only
   by their initialisation seed and data order.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engine.bundle import Bundle
from engine.errors import InputError
from engine.generator import Generator, GeneratorConfig
from engine.inversion import invert
from engine.perceptual import PerceptualLoss
from engine.segmenter import Segmenter, SegmenterConfig, upsample_features

Progress = Callable[[str, int, int, dict[str, float]], None]  # (stage, done, total, numbers)


@dataclass(frozen=True)
class SegmenterTrainConfig:
    num_models: int = 10  # ensemble members (official: 10)
    # Members' hidden widths (h1, h2); None: the official rule. Rendering time is about linear in M * h1.
    hidden: tuple[int, int] | None = None
    epochs: int = 4  # passes over every pixel; the official early stop fires after about 4
    batch_size: int = 512  # pixels per step (official 64: slower on a CPU, same optimum here)
    lr: float = 1e-3
    invert_steps: int = 300  # W+ optimisation steps per annotated image
    seed: int = 0
    # Train only on pixels the embedding reproduces: mean |G(w) - x| over RGB, on the [0, 1] scale, at most
    # this. Where the generator draws the annotated image differently (an eye a pixel off), the label
    # describes something the features do not show; None keeps every pixel (the official training).
    max_pixel_error: float | None = None
    # Also embed every annotated image mirrored left-right (labels mirrored with it): twice the training
    # pixels from the same annotations, for a domain whose distribution is mirror-symmetric.
    mirror: bool = False


def embed(
    bundle: Bundle,
    images: Tensor,
    *,
    steps: int,
    perceptual: PerceptualLoss,
    progress: Progress | None = None,
) -> tuple[Tensor, list[float]]:
    """W+ [N, L, S] of canvases [N, 3, S, S] in [-1, 1], one inversion each; returns PSNRs (dB) too."""
    latents, psnrs = [], []
    for i in range(images.shape[0]):
        result = invert(bundle, images[i : i + 1], perceptual=perceptual, params={"steps": steps})
        latents.append(result.w_plus)
        psnrs.append(result.psnr)
        if progress is not None:
            progress("embed", i + 1, images.shape[0], {"psnr": result.psnr})
    return torch.cat(latents), psnrs


def pixel_features(generator: Generator, latents: Tensor, *, chunk: int = 4) -> Tensor:
    """Every pixel's feature vector for W+ [N, L, S]: [N * H * W, D] (bilinear, as the official training)."""
    rows = []
    with torch.no_grad():
        for start in range(0, latents.shape[0], chunk):
            out = generator.synthesis(latents[start : start + chunk], return_features=True)
            assert out.features is not None
            stack = upsample_features(out.features, generator.config.size, "bilinear")  # [n, D, H, W]
            rows.append(stack.permute(0, 2, 3, 1).reshape(-1, stack.shape[1]))
    return torch.cat(rows)


def aligned_pixels(generator: Generator, latents: Tensor, images: Tensor, max_error: float) -> Tensor:
    """[N * H * W] bool, row-aligned with `pixel_features`: where the render of W+ [N, L, S] is within
    `max_error` (mean absolute RGB difference on the [0, 1] scale) of the annotated images [N, 3, S, S]."""
    with torch.no_grad():
        renders = torch.cat([generator.synthesis(w[None]).image for w in latents])
    error = ((renders.clamp(-1, 1) - images).abs() * 0.5).mean(1)  # [N, H, W]
    return (error <= max_error).reshape(-1)


def _init(member: nn.Module) -> None:
    for m in member.modules():  # official init_weights('normal', 0.02) on the Linear layers
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.02)
            nn.init.zeros_(m.bias)


def train_ensemble(
    features: Tensor,
    labels: Tensor,
    segmenter_config: SegmenterConfig,
    config: SegmenterTrainConfig,
    *,
    progress: Progress | None = None,
) -> tuple[Segmenter, list[dict[str, float]]]:
    """Fit every member on (features [P, D], labels [P]); returns the ensemble (eval mode) and per-member stats."""
    if features.shape[0] != labels.shape[0] or features.shape[1] != segmenter_config.feature_dim:
        raise InputError(f"features {list(features.shape)} do not match labels {list(labels.shape)} / config")
    if config.epochs < 1:
        raise InputError(f"epochs must be >= 1, got {config.epochs}")
    if labels.numel() < 2:  # e.g. a pixel-error bound that no embedded pixel meets
        raise InputError(f"{labels.numel()} training pixels, at least 2 needed (a pixel-error bound too tight?)")
    if int(labels.max()) >= segmenter_config.num_classes or int(labels.min()) < 0:
        raise InputError(f"labels must lie in [0, {segmenter_config.num_classes})")
    segmenter = Segmenter(segmenter_config)
    stats = []
    for index, member in enumerate(segmenter.models):
        gen = torch.Generator().manual_seed(config.seed + index)
        torch.manual_seed(config.seed + index)
        _init(member)
        member.train()
        opt = torch.optim.Adam(member.parameters(), lr=config.lr)
        for epoch in range(config.epochs):
            order = torch.randperm(features.shape[0], generator=gen)
            total, count = 0.0, 0
            for start in range(0, order.numel(), config.batch_size):
                idx = order[start : start + config.batch_size]
                if idx.numel() < 2:
                    continue  # BatchNorm needs two samples
                loss = F.cross_entropy(member(features[idx]), labels[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total, count = total + float(loss.detach()) * idx.numel(), count + idx.numel()
            if progress is not None:
                progress("train", index * config.epochs + epoch + 1, len(segmenter.models) * config.epochs,
                         {"member": index, "loss": total / max(count, 1)})  # fmt: skip
        member.eval()
        with torch.no_grad():
            correct = sum(
                int((member(features[s : s + 8192]).argmax(1) == labels[s : s + 8192]).sum())
                for s in range(0, features.shape[0], 8192)
            )
        stats.append({"member": index, "train_loss": total / max(count, 1), "train_accuracy": correct / labels.numel()})
    return segmenter.eval().requires_grad_(False), stats


def segmenter_config_for(
    generator: GeneratorConfig, num_classes: int, num_models: int, hidden: tuple[int, int] | None = None
) -> SegmenterConfig:
    """The ensemble that reads every feature map of `generator` at its output size."""
    return SegmenterConfig(
        feature_channels=tuple(c for c, _ in generator.feature_shapes),
        num_classes=num_classes,
        out_size=generator.size,
        num_models=num_models,
        hidden=hidden,
    )


def config_dict(config: SegmenterTrainConfig) -> dict[str, Any]:
    return dataclasses.asdict(config)
