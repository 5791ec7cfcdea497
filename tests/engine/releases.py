"""Synthetic official EditGAN releases with random weights, written in the official layout."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.layers import make_kernel
from tests.conftest import reference

SHAPE = tuple[int, ...]


def _from_listing(entries: list[dict[str, Any]], gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Random tensors with exactly the listed keys, shapes and dtypes (sane values where it matters)."""
    out: dict[str, torch.Tensor] = {}
    for e in entries:
        key, shape = e["key"], tuple(e["shape"])
        if e["dtype"] == "int64":
            out[key] = torch.zeros(shape, dtype=torch.int64)
        elif key.endswith("running_var"):
            out[key] = torch.rand(shape, generator=gen) + 0.5
        elif key.endswith("blur.kernel") or key.endswith("upsample.kernel"):
            out[key] = make_kernel((1, 3, 3, 1)) * 4
        else:
            out[key] = torch.randn(shape, generator=gen) * (0.05 if len(shape) == 2 and shape[1] > 1000 else 1.0)
    return out


def write_release(
    root: Path,
    generator: dict[str, torch.Tensor],
    encoder: dict[str, torch.Tensor],
    classifiers: list[dict[str, torch.Tensor]],
    *,
    im_size: tuple[int, int],
    n_latent: int,
    style_dim: int,
    num_class: int,
    vectors: int = 2,
    examples: int = 3,
    category: str = "car",
) -> Path:
    """Lay the files out as nv-tlabs/editGAN_release does (EDITGAN.md section 0 and 2)."""
    ck = root / "checkpoint"
    (ck / "stylegan_pretrain").mkdir(parents=True)
    (ck / "encoder_pretrain" / "testing_embedding").mkdir(parents=True)
    (ck / "datasetgan_pretrain" / "classifier").mkdir(parents=True)
    (root / "static" / "editing_vectors").mkdir(parents=True)
    (root / "experiments").mkdir()
    g_name = f"stylegan2_networks_stylegan2-{category}-config-f.pt"
    torch.save({"g_ema": generator, "latent_avg": torch.zeros(style_dim)}, ck / "stylegan_pretrain" / g_name)
    e_name = "BEST_loss2.841871976852417.pth"
    torch.save({"model_state_dict": encoder}, ck / "encoder_pretrain" / e_name)
    for i, state in enumerate(classifiers):
        prefixed = {f"module.{k}": v for k, v in state.items()}
        torch.save(
            {"model_state_dict": prefixed},
            ck / "datasetgan_pretrain" / "classifier" / f"{category}_model_{i}.pth",
        )
    rng = np.random.default_rng(0)
    names = ["wheel_enlarge", "frontlight_enlarge", "license_plate_disappear"][:vectors]
    for name in names:
        arr = (rng.standard_normal((1, n_latent, style_dim)) * 0.1).astype(np.float32)
        np.save(root / "static" / "editing_vectors" / f"{name}.npy", arr)
    for i in range(examples):
        arr = rng.standard_normal((n_latent, style_dim)).astype(np.float32)
        np.save(ck / "encoder_pretrain" / "testing_embedding" / f"latents_image_{i}.npy", arr)
    tool = {
        "category": category,
        "im_size": list(im_size),
        "num_class": num_class,
        "n_latent": n_latent,
        "stylegan_checkpoint": f"./checkpoint/stylegan_pretrain/{g_name}",
        "encoder_checkpoint": f"./checkpoint/encoder_pretrain/{e_name}",
        "classfier_checkpoint": "./checkpoint/datasetgan_pretrain/classifier",
        "datasetgan_testimage_embedding_path": "./checkpoint/encoder_pretrain/testing_embedding/",
        "num_classifier": len(classifiers),
        "classifier_iter": 0,
        "dim": 0,
        "loss_dict": {"p_loss": 10, "mse_loss": 1, "encoder_loss": 5},
        "steps": 30,
        "embedding_steps": 100,
        "rgb_loss_weight": 15,
    }
    (root / "experiments" / f"tool_{category}.json").write_text(json.dumps(tool))
    return root


def write_car_release(root: Path, num_classifiers: int = 10) -> Path:
    """The full 512 px car release, every tensor drawn from the official key listings."""
    gen = torch.Generator().manual_seed(0)
    g = _from_listing(reference("generator_car.json")["entries"], gen)
    e = _from_listing(reference("encoder_car.json")["entries"], gen)
    c_entries = [dict(e, key=e["key"].removeprefix("module.")) for e in reference("classifier_car.json")["entries"]]
    cs = [_from_listing(c_entries, gen) for _ in range(num_classifiers)]
    return write_release(root, g, e, cs, im_size=(384, 512), n_latent=16, style_dim=512, num_class=32, vectors=3)
