"""Assemble the demo bundle: trained GAN + segmentation branch from 16 annotated procedural faces.

The perceptual network is the domain-trained one of `editgan train perceptual` when given (see
`engine.train.perceptual`), else a fixed, seeded random CNN used LPIPS-style: random deep features are
already a usable perceptual distance, but a trained one inverts better (`editgan eval` compares them).
With an encoder from `editgan train encoder`, the annotated images are embedded as the official code does
(encoder, then optimisation) and the bundle's inversions start from the encoder.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.bundle import Bundle, BundleSpec, ClassInfo, Geometry, save_bundle
from engine.domains import faces
from engine.encoder import Encoder, EncoderConfig
from engine.errors import BundleError
from engine.generator import GeneratorConfig
from engine.perceptual import ConvPerceptual, ConvPerceptualConfig, build_perceptual
from engine.segmenter import Segmenter
from engine.train.encoder import load_trained_encoder
from engine.train.gan import export_generator, run_source
from engine.train.perceptual import load_trained
from engine.train.segmenter import (
    Progress,
    SegmenterTrainConfig,
    aligned_pixels,
    config_dict,
    embed,
    pixel_features,
    segmenter_config_for,
    train_ensemble,
)

ANNOTATED_SEED_OFFSET = 900_000_000  # training seeds far from those the GAN has seen so far
PERCEPTUAL = ConvPerceptualConfig(widths=(32, 64, 128), layers_per_stage=2, learned_weights=False)


def faces_spec(
    generator_config: GeneratorConfig,
    num_models: int,
    *,
    perceptual: ConvPerceptualConfig = PERCEPTUAL,
    encoder: EncoderConfig | None = None,
    hidden: tuple[int, int] | None = None,
) -> BundleSpec:
    classes = [ClassInfo(i, name, color) for i, (name, color) in enumerate(faces.CLASSES)]
    spec = BundleSpec(
        name="demo-faces",
        generator=generator_config,
        segmenter=segmenter_config_for(generator_config, len(classes), num_models, hidden),
        classes=classes,
        regions=dict(faces.REGIONS),
        geometry=Geometry(generator_config.size),
        encoder=encoder,
        perceptual={"kind": "conv", "config": perceptual.to_dict()},
        defaults={
            "sample": {"truncation": 0.7},
            "segment": {"upsample": "bilinear"},
            # The trained perceptual network's distances run about 3x the random one's: its weights are set so
            # that the image terms keep the balance with MSE and the cross-entropy that the edits were tuned
            # at (inversion: lpips 1 gave the best held-out mIoU of 0.1 / 0.3 / 1 / 3 / 10 on 4 faces).
            # Inversion MSE 10 (v0.5; 1 before): on 10 held-out faces +0.9 dB and the same mIoU (27.0 -> 27.9 dB,
            # 0.838 -> 0.843); 300 steps instead of 200 another +0.6 dB (28.5), mIoU 0.842.
            "invert": {
                "steps": 300,
                "lpips_weight": 1.0,
                "mse_weight": 10.0,
                "use_encoder": encoder is not None,
                "encoder_weight": 0.0,
            },
            # Tuned on this model (official values: ce 1, lr 0.02, nearest, dilation 3, which at 64 px reach
            # 0-40 % of the painted pixels): 70-100 % reached with ~37 dB PSNR outside the region.
            "edit": {
                "steps": 40,
                "ce_weight": 10.0,
                "lpips_weight": 3.0,
                "lr": 0.05,
                "upsample": "bilinear",
                "roi_dilation": 2,
                "encoder_weight": 0.0,
            },
            "refine": {
                "steps": 20,
                "ce_weight": 10.0,
                "lpips_weight": 3.0,
                "lr": 0.05,
                "upsample": "bilinear",
                "roi_dilation": 2,
            },
        },
        version="0.7",
        description="Demo model: 64 px procedural cartoon faces (engine/domains/faces.py), trained on 2 CPU cores.",
    )
    return spec


def class_ious(predicted: torch.Tensor, target: torch.Tensor, num_classes: int) -> list[float | None]:
    """|P ∩ T| / |P ∪ T| of each class over all pixels; None where the class is in neither map."""
    ious: list[float | None] = []
    for k in range(num_classes):
        p, t = predicted == k, target == k
        union = int((p | t).sum())
        ious.append(int((p & t).sum()) / union if union else None)
    return ious


def mean_iou(predicted: torch.Tensor, target: torch.Tensor, num_classes: int) -> float:
    """Mean over the classes present in either map of |P ∩ T| / |P ∪ T|."""
    return float(np.mean([iou for iou in class_ious(predicted, target, num_classes) if iou is not None]))


def annotated_faces(count: int, size: int, *, mirror: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The annotated training faces (uint8 images [N, S, S, 3], labels [N, S, S]); with `mirror` each one's
    mirror image follows them all, so that the first `count` stay the originals (the bundle's examples)."""
    images, labels = faces.batch([ANNOTATED_SEED_OFFSET + i for i in range(count)], size=size)
    if mirror:
        flipped = faces.mirror(images, labels)
        images, labels = np.concatenate([images, flipped[0]]), np.concatenate([labels, flipped[1]])
    return images, labels


def build_demo_bundle(
    gan_dir: Path,
    out_dir: Path,
    *,
    annotated: int = 16,
    config: SegmenterTrainConfig | None = None,
    perceptual_dir: Path | None = None,
    encoder_dir: Path | None = None,
    progress: Progress | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train the segmentation branch for the GAN in `gan_dir` and write the bundle to `out_dir`, with the
    trained perceptual network in `perceptual_dir` and the encoder in `encoder_dir` when given."""
    config = config or SegmenterTrainConfig()
    start = time.perf_counter()
    generator = export_generator(gan_dir)
    encoder: Encoder | None = None
    record: dict[str, Any] = {"gan_dir": str(gan_dir), "gan": run_source(gan_dir)}
    if encoder_dir is not None:
        encoder, encoder_meta = load_trained_encoder(encoder_dir)
        if encoder_meta["source"] != record["gan"]:
            raise BundleError(f"{encoder_dir} was trained for {encoder_meta['source']!r}, not {record['gan']!r}")
        record["encoder"] = {k: encoder_meta[k] for k in ("config", "step", "seconds")}
    if perceptual_dir is not None:
        trained, record["perceptual"] = load_trained(perceptual_dir)
        perceptual_config, perceptual_state = trained.config, trained.state_dict()
    else:
        torch.manual_seed(config.seed)
        perceptual_config, perceptual_state = PERCEPTUAL, ConvPerceptual(PERCEPTUAL).state_dict()
        record["perceptual"] = "seeded random CNN (LPIPS-style, unit-normalised features, equal weights)"
    spec = faces_spec(
        generator.config,
        config.num_models,
        perceptual=perceptual_config,
        encoder=encoder.config if encoder is not None else None,
        hidden=config.hidden,
    )
    perceptual = build_perceptual(spec.perceptual, state_dict=perceptual_state)
    segmenter = Segmenter(spec.segmenter).eval()
    draft = Bundle(spec=spec, generator=generator, segmenter=segmenter, encoder=encoder)

    images, labels = annotated_faces(annotated, generator.config.size, mirror=config.mirror)
    canvases = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    latents, psnrs = embed(draft, canvases, steps=config.invert_steps, perceptual=perceptual, progress=progress)
    log(f"embedded {len(psnrs)} annotated images: PSNR {np.mean(psnrs):.2f} dB (min {np.min(psnrs):.2f})")

    features = pixel_features(generator, latents)
    targets = torch.from_numpy(labels.astype(np.int64)).reshape(-1)
    if config.max_pixel_error is not None:
        keep = aligned_pixels(generator, latents, canvases, config.max_pixel_error)
        kept = {
            name: round(float(keep[targets == k].float().mean()), 3) if bool((targets == k).any()) else None
            for k, name in enumerate(c.name for c in spec.classes)
        }
        record["pixels_kept"] = {"all": round(float(keep.float().mean()), 3)} | kept
        log(f"pixels kept for training (render within {config.max_pixel_error} of the annotation): {kept}")
        features, targets = features[keep], targets[keep]
    segmenter, stats = train_ensemble(features, targets, spec.segmenter, config, progress=progress)
    bundle = Bundle(
        spec=spec,
        generator=generator,
        segmenter=segmenter,
        encoder=encoder,
        perceptual_state=perceptual_state,
        examples=latents[:annotated],
    )
    with torch.no_grad():
        out = generator.synthesis(latents, return_features=True)
        assert out.features is not None
        predicted = segmenter.segment(out.features).labels
    train_miou = mean_iou(predicted, torch.from_numpy(labels.astype(np.int64)), len(spec.classes))
    record |= {
        "annotated_seeds": [ANNOTATED_SEED_OFFSET, ANNOTATED_SEED_OFFSET + annotated - 1],
        "segmenter_training": config_dict(config),
        "embedding_psnr_db": [round(p, 2) for p in psnrs],
        "members": [{k: round(v, 4) for k, v in s.items()} for s in stats],
        "annotated_miou": round(train_miou, 4),
        "seconds": round(time.perf_counter() - start, 1),
    }
    spec.provenance = record
    save_bundle(bundle, out_dir)
    return record
