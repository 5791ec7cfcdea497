"""Ensemble size against segmentation quality and render time, on one bundle's generator (JSON).

    .venv/bin/python scripts/sweep_segmenter_sizes.py models/demo-faces 10x64,32 5x24,16 5x16,16 --threads 2

Each size is MxH1,H2 (members x hidden widths). The 16 annotated faces and their mirror images are embedded
once with the bundle's encoder and perceptual network (as `editgan train segmenter --mirror
--max-pixel-error 0.15 --invert-steps 400`), the held-out faces (`--offset` 100 and up, which `editgan
eval` does not use) are inverted once, and every size is trained on the same pixels and scored on the same
inversions: mIoU and per-class IoU. Render cost: the median `segment` time of one 64 px image, the sizes
measured in turns so that a slower spell of the machine falls on all of them alike.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from engine.bundle import load_bundle
from engine.evaluate import _to_tensor, evaluate_inversion, faces_heldout, segmentation_scores
from engine.segmenter import Segmenter
from engine.train.demo_bundle import annotated_faces, class_ious
from engine.train.segmenter import SegmenterTrainConfig, aligned_pixels, embed, pixel_features, train_ensemble


def parse_size(text: str) -> tuple[int, int, int]:
    members, hidden = text.split("x")
    h1, h2 = hidden.split(",")
    return int(members), int(h1), int(h2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle", type=Path, help="bundle whose generator, encoder and perceptual network to use")
    parser.add_argument("sizes", nargs="+", type=parse_size, help="MxH1,H2, e.g. 10x64,32")
    parser.add_argument("--images", type=int, default=30, help="held-out faces")
    parser.add_argument("--offset", type=int, default=100, help="index of the first held-out face")
    parser.add_argument("--timing-rounds", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    bundle = load_bundle(args.bundle)
    names = [c.name for c in bundle.spec.classes]
    perceptual = bundle.perceptual()

    images, labels = annotated_faces(16, bundle.spec.resolution, mirror=True)
    canvases = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    latents, psnrs = embed(bundle, canvases, steps=400, perceptual=perceptual)
    features = pixel_features(bundle.generator, latents)
    targets = torch.from_numpy(labels.astype(np.int64)).reshape(-1)
    keep = aligned_pixels(bundle.generator, latents, canvases, 0.15)
    features, targets = features[keep], targets[keep]

    held_images, held_labels = faces_heldout(bundle, offset=args.offset)(args.images)
    inversion, held = evaluate_inversion(bundle, held_images, held_labels)
    _, truth = _to_tensor(bundle, held_images, held_labels)
    with torch.no_grad():
        maps = bundle.generator.synthesis(held, return_features=True).features
    assert maps is not None

    report: dict[str, object] = {
        "bundle": str(args.bundle),
        "embedding_psnr_db": round(float(np.mean(psnrs)), 2),
        "held_out": {"images": args.images, "offset": args.offset, "inversion": inversion},
        "sizes": {},
    }
    trained: dict[str, Segmenter] = {}
    for m, h1, h2 in args.sizes:
        key = f"{m}x{h1},{h2}"
        config = dataclasses.replace(bundle.spec.segmenter, num_models=m, hidden=(h1, h2))
        start = time.perf_counter()
        segmenter, _ = train_ensemble(features, targets, config, SegmenterTrainConfig(num_models=m, hidden=(h1, h2)))
        seconds = time.perf_counter() - start
        with torch.no_grad():
            predicted = torch.cat([segmenter.segment([f[i : i + 1] for f in maps]).labels for i in range(len(held))])
        mean, pooled = segmentation_scores(predicted, truth, len(names))
        ious = class_ious(predicted, truth, len(names))
        trained[key] = segmenter
        report["sizes"][key] = {  # type: ignore[index]
            "miou_mean": round(mean, 4),
            "miou_pooled": round(pooled, 4),
            "per_class": {n: None if v is None else round(v, 4) for n, v in zip(names, ious, strict=True)},
            "train_seconds": round(seconds, 1),
        }
    one = [f[:1] for f in maps]
    times: dict[str, list[float]] = {k: [] for k in trained}
    with torch.no_grad():
        for _ in range(args.timing_rounds):
            for key, segmenter in trained.items():
                start = time.perf_counter()
                segmenter.segment(one)
                times[key].append((time.perf_counter() - start) * 1000)
    for key, values in times.items():
        report["sizes"][key]["segment_ms_p50"] = round(statistics.median(values[3:]), 2)  # type: ignore[index]
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
