"""Compare segmentation branches of one GAN on the same inversions: mIoU and per-class IoU (JSON).

    .venv/bin/python scripts/compare_segmenters.py /tmp/seg-plain /tmp/seg-mirror --images 30 --offset 100

The bundles must share their generator and encoder (two `editgan train segmenter` runs of one GAN and
encoder run): the held-out faces are inverted once, with the first bundle's defaults, and each ensemble
segments the same latents, so only the segmentation branch differs. Use faces that `editgan eval` does not
(`--offset` 100 and up) when choosing what to ship.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from engine import render
from engine.bundle import load_bundle
from engine.evaluate import _to_tensor, evaluate_inversion, faces_heldout, segmentation_scores
from engine.train.demo_bundle import class_ious


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundles", type=Path, nargs="+", help="bundle directories of the same generator")
    parser.add_argument("--images", type=int, default=30, help="held-out faces")
    parser.add_argument("--offset", type=int, default=100, help="index of the first held-out face")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    bundles = [load_bundle(p) for p in args.bundles]
    first = bundles[0]
    images, labels = faces_heldout(first, offset=args.offset)(args.images)
    inversion, latents = evaluate_inversion(first, images, labels)
    _, truth = _to_tensor(first, images, labels)
    report: dict[str, object] = {"images": args.images, "offset": args.offset, "inversion": inversion}
    for path, bundle in zip(args.bundles, bundles, strict=True):
        with torch.no_grad():
            predicted = torch.cat([render(bundle, w[None]).labels.cpu() for w in latents])
        names = [c.name for c in bundle.spec.classes]
        mean, pooled = segmentation_scores(predicted, truth, len(names))
        ious = class_ious(predicted, truth, len(names))
        per_class = {n: None if v is None else round(v, 4) for n, v in zip(names, ious, strict=True)}
        report[str(path)] = {"miou_mean": round(mean, 4), "miou_pooled": round(pooled, 4), "per_class": per_class}
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
