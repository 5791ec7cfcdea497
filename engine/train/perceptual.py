"""A domain-trained perceptual network for bundles whose domain has no ImageNet backbone to hand.

LPIPS measures distances in the features of a network that learned to recognise what images show. With no
ImageNet weights available offline, the demo bundle teaches its small `ConvPerceptual` CNN what its own domain
shows: every stage gets a 1x1 linear head, the heads' logits are upsampled to the image and summed, and the
whole is trained to predict the exact per-pixel labels of procedural images. The heads are then dropped; the
stages' unit-normalised features are what the LPIPS-style distance compares, so that a change to an eye or
the mouth costs more than the same pixel change in flat skin.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from engine.atomic import replace_directory
from engine.checkpoints import load_strict
from engine.errors import BundleError
from engine.perceptual import ConvPerceptual, ConvPerceptualConfig

WEIGHTS, RECORD = "perceptual.safetensors", "perceptual.json"

# (step, numbers): called every `log_every` steps and after the last one
Progress = Callable[[int, dict[str, float]], None]
# (first seed, count) -> images float [N, 3, S, S] in [-1, 1], labels long [N, S, S]
LabelledData = Callable[[int, int], tuple[Tensor, Tensor]]


@dataclass(frozen=True)
class PerceptualTrainConfig:
    steps: int = 600
    batch_size: int = 24
    lr: float = 2e-3
    seed: int = 0
    first_seed: int = 700_000_000  # data seeds: apart from the GAN's and the annotated images'
    log_every: int = 50


class _Probe(nn.Module):
    """The network plus one 1x1 classifier per stage; logits summed at full resolution."""

    def __init__(self, network: ConvPerceptual, num_classes: int) -> None:
        super().__init__()
        self.network = network
        self.heads = nn.ModuleList(nn.Conv2d(w, num_classes, 1) for w in network.config.widths)

    def forward(self, x: Tensor) -> Tensor:
        size = x.shape[-2:]
        logits: Tensor | None = None
        for head, f in zip(self.heads, self.network.features(x), strict=True):
            out = F.interpolate(head(f), size=size, mode="bilinear", align_corners=False)
            logits = out if logits is None else logits + out
        assert logits is not None
        return logits


def train_perceptual(
    config: ConvPerceptualConfig,
    data: LabelledData,
    num_classes: int,
    train: PerceptualTrainConfig | None = None,
    *,
    progress: Progress | None = None,
) -> tuple[ConvPerceptual, dict[str, Any]]:
    """Train a `ConvPerceptual` as a per-pixel classifier of `data`'s labels; -> (frozen network, record).

    The record holds the training configuration, the final loss and pixel accuracy on a held-back batch,
    and the time taken, for the bundle's provenance.
    """
    train = train or PerceptualTrainConfig()
    start = time.perf_counter()
    torch.manual_seed(train.seed)
    probe = _Probe(ConvPerceptual(config), num_classes)
    optimizer = torch.optim.Adam(probe.parameters(), lr=train.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=train.steps)
    check_x, check_y = data(train.first_seed - train.batch_size, train.batch_size)  # never trained on
    numbers: dict[str, float] = {}
    for step in range(train.steps):
        x, y = data(train.first_seed + step * train.batch_size, train.batch_size)
        loss = F.cross_entropy(probe(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        last = step == train.steps - 1
        if last or (step + 1) % train.log_every == 0:
            with torch.no_grad():
                logits = probe(check_x)
            numbers = {
                "loss": float(loss.detach()),
                "check_loss": float(F.cross_entropy(logits, check_y)),
                "check_accuracy": float((logits.argmax(1) == check_y).float().mean()),
            }
            if progress is not None:
                progress(step + 1, numbers)
    record = {
        "objective": "per-pixel classification of the domain's labels from every stage (1x1 heads, dropped)",
        "training": dataclasses.asdict(train),
        "final": {k: round(v, 4) for k, v in numbers.items()},
        "seconds": round(time.perf_counter() - start, 1),
    }
    return probe.network.freeze(), record


def save_trained(out_dir: Path, network: ConvPerceptual, record: dict[str, Any]) -> None:
    """Write `perceptual.safetensors` and `perceptual.json` (config + training record) as one directory swap."""
    with replace_directory(out_dir, marker=RECORD) as tmp:
        save_file({k: v.contiguous() for k, v in network.state_dict().items()}, str(tmp / WEIGHTS))
        (tmp / WEIGHTS).chmod(0o644)  # safetensors writes 0600: as in a bundle, other users must read it
        meta = {"config": network.config.to_dict(), "record": record}
        (tmp / RECORD).write_text(json.dumps(meta, indent=1) + "\n")


def load_trained(run_dir: Path) -> tuple[ConvPerceptual, dict[str, Any]]:
    """Read what `save_trained` wrote: (frozen network, training record)."""
    if not (run_dir / WEIGHTS).is_file() or not (run_dir / RECORD).is_file():
        raise BundleError(f"{run_dir} holds no trained perceptual network (`editgan train perceptual` writes one)")
    meta = json.loads((run_dir / RECORD).read_text())
    network = ConvPerceptual(ConvPerceptualConfig.from_dict(meta["config"]))
    load_strict(network, load_file(str(run_dir / WEIGHTS)), f"{run_dir / WEIGHTS}")
    return network.freeze(), dict(meta["record"])
