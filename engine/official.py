"""Importer for the official EditGAN release layout (nv-tlabs/editGAN_release) into a bundle.

Reads, relative to the release directory (paths from `experiments/tool_<category>.json` when present):
    checkpoint/stylegan_pretrain/*.pt                 {"g_ema": state dict, "latent_avg": [512], ...}
    checkpoint/encoder_pretrain/*.pth                 {"model_state_dict": FPN encoder state dict}
    checkpoint/datasetgan_pretrain/classifier/<category>_model_{i}.pth   {"model_state_dict": "module."-keys}
    checkpoint/encoder_pretrain/testing_embedding/latents_image_{i}.npy  optional example W+ codes
    static/editing_vectors/*.npy                      optional vectors, (1, 16, 512) float32
Architectures are inferred from the tensors themselves, then every file is loaded strictly; `.pt` and
`.pth` files are read with `torch.load(weights_only=True)` and nowhere else in the project.
"""

from __future__ import annotations

import colorsys
import json
import re
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from engine.bundle import (
    NAME_PATTERN,
    VECTOR_NAME_PATTERN,
    Bundle,
    BundleSpec,
    ClassInfo,
    Geometry,
    build_networks,
    save_bundle,
)
from engine.checkpoints import load_strict, sha256_file, strip_prefix, torch_load
from engine.encoder import EncoderConfig
from engine.errors import BundleError, CheckpointError
from engine.generator import GeneratorConfig
from engine.npyio import read_w_plus
from engine.segmenter import SegmenterConfig

MEAN_LATENT_SAMPLES = 4086  # sic: the official tool averages 4086 mapped z for its truncation centre
TRUNCATION = 0.7  # the official tool's psi for random samples


def _state(path: Path, key: str) -> dict[str, Tensor]:
    obj = torch_load(path)
    if not isinstance(obj, dict) or key not in obj or not isinstance(obj[key], dict):
        found = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
        raise CheckpointError(f"{path}: expected a dict with key {key!r}, found {found}")
    state: dict[str, Tensor] = obj[key]
    return state


def _count(state: dict[str, Tensor], pattern: str) -> int:
    rx = re.compile(pattern)
    return len({m.group(1) for k in state if (m := rx.match(k))})


def _need(state: dict[str, Tensor], key: str, source: Path) -> Tensor:
    if key not in state:
        raise CheckpointError(f"{source}: missing key {key}")
    return state[key]


def generator_config(state: dict[str, Tensor], source: Path) -> GeneratorConfig:
    """Infer size, widths, style dim and mapping depth from a `g_ema` state dict."""
    num_noise = _count(state, r"noises\.noise_(\d+)$")
    n_mlp = _count(state, r"style\.(\d+)\.weight$")
    if num_noise < 5 or num_noise % 2 == 0 or n_mlp == 0:
        raise CheckpointError(f"{source}: g_ema lacks the StyleGAN2 layout (noises.noise_*, style.*)")
    log_size = (num_noise - 1) // 2 + 2
    channels = [int(_need(state, "input.input", source).shape[1])]
    channels += [int(_need(state, f"convs.{2 * j}.conv.weight", source).shape[1]) for j in range(log_size - 2)]
    kernel = _need(state, "convs.0.conv.blur.kernel", source)
    if tuple(kernel.shape) != (4, 4):
        raise CheckpointError(f"{source}: convs.0.conv.blur.kernel has shape {list(kernel.shape)}, expected [4, 4]")
    return GeneratorConfig(
        size=2**log_size,
        style_dim=int(_need(state, "style.1.weight", source).shape[0]),
        n_mlp=n_mlp,
        channels=tuple(channels),
    )


def encoder_config(state: dict[str, Tensor], resolution: int, source: Path) -> EncoderConfig:
    """Infer widths, depths and head counts from an FPN encoder state dict."""
    stem = _need(state, "FPN_module.conv1.weight", source)
    blocks = tuple(_count(state, rf"FPN_module\.layer{k}\.(\d+)\.conv1\.weight$") for k in range(1, 5))
    rows = [_count(state, rf"{g}\.(\d+)\.linear\.weight$") for g in ("course_styles", "medium_styles", "fine_styles")]
    return EncoderConfig(
        resolution=resolution,
        n_latent=sum(rows),
        style_dim=int(_need(state, "course_styles.0.linear.weight", source).shape[0]),
        in_channels=int(stem.shape[1]),
        base_width=int(stem.shape[0]),
        blocks=(blocks[0], blocks[1], blocks[2], blocks[3]),
        fpn_channels=int(_need(state, "FPN_module.toplayer.weight", source).shape[0]),
        coarse_rows=rows[0],
        medium_rows=rows[1],
    )


def generic_classes(n: int) -> list[ClassInfo]:
    """Names class_0.. and well-spread colours for releases without a known palette."""
    out = [ClassInfo(0, "background", "#000000")]
    for i in range(1, n):
        r, g, b = colorsys.hsv_to_rgb((i * 0.618034) % 1.0, 0.65 + 0.35 * (i % 2), 0.95 - 0.3 * (i % 3) / 2)
        out.append(ClassInfo(i, f"class_{i}", f"#{round(r * 255):02x}{round(g * 255):02x}{round(b * 255):02x}"))
    return out


def _tool_config(release: Path) -> dict[str, Any]:
    found = sorted((release / "experiments").glob("tool_*.json"))
    if not found:
        return {}
    try:
        cfg: dict[str, Any] = json.loads(found[0].read_text())
    except json.JSONDecodeError as exc:
        raise BundleError(f"{found[0]} is not valid JSON: {exc}") from exc
    return cfg


def _resolve(release: Path, configured: str | None, fallback_glob: str, what: str) -> Path:
    """The configured path (relative to the release) when it exists, else the single glob match."""
    if configured:
        path = release / configured.removeprefix("./")
        if path.exists():
            return path
    matches = sorted(release.glob(fallback_glob))
    if len(matches) == 1:
        return matches[0]
    hint = f"{configured!r} not found and " if configured else ""
    raise BundleError(f"{what}: {hint}{len(matches)} files match {release}/{fallback_glob} (need exactly one)")


def _defaults(tool: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per-mode hyperparameters of the official tool (EDITGAN.md section 6), faithful to its quirks.

    `steps` counts updates: the official loops run range(1, steps). The encoder sees [0, 1] images
    with batch-statistics BatchNorm in the official code; both quirks are kept for imported models.
    """
    losses = tool.get("loss_dict", {})
    p, mse = float(losses.get("p_loss", 10)), float(losses.get("mse_loss", 1))
    rgb = float(tool.get("rgb_loss_weight", 15))
    quirks = {"encoder_input": "unit", "encoder_batch_statistics": True}
    shared = {"lr": 0.02, "rgb_weight": rgb, "lpips_weight": p, "mse_weight": 5 * mse, "ce_weight": 1.0}
    return {
        "sample": {"truncation": TRUNCATION},
        "segment": {"upsample": "bilinear"},
        "invert": {
            "steps": int(tool.get("embedding_steps", 100)) - 1,
            "lr": 0.1,
            "lpips_weight": p,
            "mse_weight": mse,
            "encoder_weight": 1.0,
            **quirks,
        },
        "edit": {"steps": int(tool.get("steps", 30)) - 1, "encoder_weight": 1.0, **shared, **quirks},
        "refine": {"steps": 29, **shared},
    }


def import_official(release_dir: str | Path, out_dir: str | Path, *, name: str | None = None) -> BundleSpec:
    """Convert an official EditGAN release directory into a bundle at `out_dir`; returns its spec."""
    release = Path(release_dir)
    if not release.is_dir():
        raise BundleError(f"release directory {release} does not exist")
    tool = _tool_config(release)
    category = str(tool.get("category", "car"))
    name = name or category
    if not NAME_PATTERN.match(name):
        raise BundleError(f"bundle name {name!r} must match {NAME_PATTERN.pattern}")

    g_path = _resolve(release, tool.get("stylegan_checkpoint"), "checkpoint/stylegan_pretrain/*.pt", "generator")
    g_state = _state(g_path, "g_ema")
    g_cfg = generator_config(g_state, g_path)

    e_path = _resolve(release, tool.get("encoder_checkpoint"), "checkpoint/encoder_pretrain/*.pth", "encoder")
    e_state = _state(e_path, "model_state_dict")
    e_cfg = encoder_config(e_state, g_cfg.size, e_path)

    c_dir = release / str(tool.get("classfier_checkpoint", "checkpoint/datasetgan_pretrain/classifier")).removeprefix(
        "./"
    )
    num_models = int(tool.get("num_classifier", 10))
    iteration = int(tool.get("classifier_iter", 0))
    c_paths = [
        c_dir / (f"{category}_model_{i}.pth" if iteration == 0 else f"{category}_model_iter{iteration}_number_{i}.pth")
        for i in range(num_models)
    ]
    c_states = [strip_prefix(_state(p, "model_state_dict"), "module.") for p in c_paths]
    first = _need(c_states[0], "layers.0.weight", c_paths[0])
    num_classes = int(_need(c_states[0], "layers.6.weight", c_paths[0]).shape[0])
    s_cfg = SegmenterConfig(
        feature_channels=tuple(c for c, _ in g_cfg.feature_shapes),
        num_classes=num_classes,
        out_size=g_cfg.size,
        num_models=num_models,
        hidden=(int(first.shape[0]), int(_need(c_states[0], "layers.3.weight", c_paths[0]).shape[0])),
    )
    if int(first.shape[1]) != g_cfg.feature_dim:
        raise CheckpointError(
            f"{c_paths[0]}: layers.0.weight reads {first.shape[1]} features, the generator makes {g_cfg.feature_dim}"
        )

    known: dict[str, Any] = {}
    if category == "car" and num_classes == 32:
        known = json.loads(resources.files("engine").joinpath("data/car.json").read_text())
    classes = [ClassInfo(**c) for c in known["classes"]] if known else generic_classes(num_classes)
    regions: dict[str, list[int]] = known.get("regions", {})
    im_h, im_w = (int(v) for v in tool.get("im_size", [g_cfg.size, g_cfg.size]))
    size = g_cfg.size
    geometry = Geometry(size, (size - im_h) // 2, (size - im_w) // 2, im_h, im_w)

    generator, segmenter, encoder = build_networks(
        BundleSpec(name=name, generator=g_cfg, segmenter=s_cfg, classes=classes, encoder=e_cfg), empty=True
    )
    assert encoder is not None
    load_strict(generator, g_state, f"{g_path} [g_ema]")
    load_strict(encoder, e_state, f"{e_path} [model_state_dict]")
    for model, state, path in zip(segmenter.models, c_states, c_paths, strict=True):
        load_strict(model, state, f"{path} [model_state_dict, 'module.' prefix removed]")
    generator.eval()
    generator.w_avg.copy_(generator.mean_latent(MEAN_LATENT_SAMPLES, seed=0))

    shape = (g_cfg.n_latent, g_cfg.style_dim)
    ex_dir = release / str(
        tool.get("datasetgan_testimage_embedding_path", "checkpoint/encoder_pretrain/testing_embedding/")
    ).removeprefix("./")
    ex_files = sorted(ex_dir.glob("latents_image_*.npy"), key=lambda p: int(re.sub(r"\D", "", p.stem) or 0))
    examples = [read_w_plus(p, *shape, what=str(p)) for p in ex_files]

    vectors: dict[str, Tensor] = {}
    vector_meta: dict[str, dict[str, Any]] = {}
    for path in sorted((release / "static" / "editing_vectors").glob("*.npy")):
        if not VECTOR_NAME_PATTERN.match(path.stem):
            raise BundleError(
                f"{path}: vector name {path.stem!r} must match {VECTOR_NAME_PATTERN.pattern} (rename the file)"
            )
        vectors[path.stem] = read_w_plus(path, *shape, what=str(path))
        prefix = path.stem.split("_")[0]
        vector_meta[path.stem] = {
            "region": prefix if prefix in regions else None,
            "description": f"official release vector {path.stem}",
            "scale_range": [-2.0, 2.0],  # the official UI slider -4..4, halved by its HTTP layer
            "source": "official",
        }

    spec = BundleSpec(
        name=name,
        description=f"Official EditGAN {category} model imported from {release.name}",
        generator=g_cfg,
        encoder=e_cfg,
        segmenter=s_cfg,
        perceptual={"kind": "lpips", "net": "vgg"},
        classes=classes,
        regions=regions,
        geometry=geometry,
        defaults=_defaults(tool),
        vectors=vector_meta,
        provenance={
            "importer": "editgan import-official",
            "release": str(release.resolve()),
            "sources": {str(p.relative_to(release)): sha256_file(p) for p in [g_path, e_path, *c_paths]},
            "latent_avg": f"mean of mapping(z) over {MEAN_LATENT_SAMPLES} seeded draws, as the official tool",
            "encoder_batch_norm": "the official tool runs the encoder with batch statistics",
        },
    )
    bundle = Bundle(
        spec=spec,
        generator=generator,
        segmenter=segmenter,
        encoder=encoder,
        vectors=vectors,
        examples=torch.stack(examples) if examples else None,
    )
    return save_bundle(bundle, out_dir)
