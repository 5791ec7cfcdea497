"""Training recipes for the shipped demo model: the procedural cartoon-face domain at 64 px."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch
from torch import Tensor

from engine.discriminator import DiscriminatorConfig
from engine.domains import faces
from engine.generator import GeneratorConfig
from engine.train.gan import GanTrainConfig

FACES_SIZE = 64
# About 1.5 M generator parameters: trains at ~21 images/s on 2 CPU cores, large enough for clean 64 px faces.
FACES_WIDTHS = (128, 128, 128, 64, 32)


def faces_gan_config(**overrides: Any) -> GanTrainConfig:
    """The demo GAN: 64 px StyleGAN2, checkpoints compact enough to carry a run between sessions in git."""
    config = GanTrainConfig(
        generator=GeneratorConfig(size=FACES_SIZE, style_dim=256, n_mlp=4, channels=FACES_WIDTHS),
        discriminator=DiscriminatorConfig(size=FACES_SIZE, channels=FACES_WIDTHS),
        total_kimg=3000,
        batch_size=16,
        checkpoint_every_seconds=600,
        checkpoint_dtype="bfloat16",
    )
    return dataclasses.replace(config, **overrides)


def faces_data(step: int, batch: int) -> Tensor:
    """Real images of iteration `step`: training seeds step*batch ... (step+1)*batch - 1, in [-1, 1]."""
    start = step * batch
    if start + batch > faces.TRAIN_SEEDS.stop:
        raise ValueError("ran out of training seeds")
    images, _ = faces.batch(range(start, start + batch), size=FACES_SIZE)
    array = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()
    return array / 127.5 - 1.0


RECIPES = {"faces": (faces_gan_config, faces_data)}


def faces_labelled(first_seed: int, count: int) -> tuple[Tensor, Tensor]:
    """Faces of seeds first_seed ... first_seed + count - 1 with their exact labels: [-1, 1] images, class ids."""
    images, labels = faces.batch(range(first_seed, first_seed + count), size=FACES_SIZE)
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    return x, torch.from_numpy(labels.astype(np.int64))
