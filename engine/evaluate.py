"""Quality of a bundle on held-out images: sampling (KID), inversion, shipped vectors, optimisation edits.

Every function returns plain numbers and prints nothing; `evaluate_bundle` gathers them into one JSON-ready
dict with the issue's targets and whether each was met. Images and labels cover the content box
(uint8 [N, h, w, 3] and class ids [N, h, w]); the default held-out set is the procedural faces of
`faces.eval_seeds`, which no training run has seen.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from engine.bundle import Bundle
from engine.domains import faces
from engine.editing import apply_vectors, optimize_edit
from engine.errors import InputError
from engine.images import dilate
from engine.inversion import invert
from engine.perceptual import ConvPerceptual, ConvPerceptualConfig, PerceptualLoss
from engine.rendering import render
from engine.train.demo_bundle import mean_iou
from engine.vectors import EditingVector

Metrics = dict[str, Any]
HeldOut = Callable[[int], tuple[np.ndarray, np.ndarray]]  # n -> images uint8 [N, h, w, 3], labels [N, h, w]
Progress = Callable[[str, int, int], None]  # (stage, done, total)

TARGETS: dict[str, float] = {  # issue 5's acceptance figures
    "inversion_psnr_db": 27.0,
    "segmentation_miou": 0.80,
    "vector_success": 0.90,
    "edit_reached": 0.5,
    "psnr_outside_db": 28.0,
}
PSNR_CAP = 100.0  # dB reported for identical pixels (MSE floored at 1e-10), so that the JSON stays finite
CHUNK = 16  # latents or images per network pass: bounds memory at 512 px
VECTOR_ROI_DILATION = 2  # px around a vector's classes that count as edited
MIN_CHANGE_PX = 3.0  # a vector's class count must move by more than this (and 1 %) to count as an edit


@dataclass(frozen=True)
class MaskEdit:
    """A programmatic optimisation edit: grow class `grow` by `pixels` px over the classes `into`."""

    name: str
    grow: int
    into: tuple[int, ...]
    pixels: int = 1

    def apply(self, labels: Tensor) -> Tensor:
        """The painted mask: `labels` [h, w] with the grown pixels set to `grow`."""
        into = torch.tensor(self.into, device=labels.device)
        grown = dilate(labels == self.grow, self.pixels) & torch.isin(labels, into)
        return torch.where(grown, torch.full_like(labels, self.grow), labels)


FACE_EDITS = (
    MaskEdit("left_eye_larger", faces.LEFT_EYE, (faces.SKIN,)),
    MaskEdit("mouth_larger", faces.MOUTH, (faces.SKIN,)),
)


@dataclass
class EvalConfig:
    """What `evaluate_bundle` measures and how hard it tries."""

    images: int = 50  # held-out images: KID reference set, inversions, vector latents
    seed_offset: int = 0  # index of the first held-out face (faces.eval_seeds)
    seed: int = 0  # generator samples and KID subsets
    invert_steps: int | None = None  # None: the bundle's default
    edit_steps: int | None = None  # None: the bundle's default
    edit_images: int = 10  # inverted images that get the edits: each edit is a whole optimisation
    ablation_images: int = 10  # of the held-out images, also inverted with pixel MSE alone (0: skip)
    vector_scale: float = 1.0  # for vectors whose metadata has no "scale"
    kid_subsets: int = 10
    kid_subset_size: int = 50  # clean-fid draws 1000 of 50k; with 50 images every subset is the whole set
    edits: tuple[MaskEdit, ...] | None = None  # None: FACE_EDITS for a bundle with the faces classes, else none


# ---------------------------------------------------------------------------------------------- measures


def kid(
    features_a: Tensor, features_b: Tensor, *, subsets: int = 10, subset_size: int = 50, seed: int = 0
) -> tuple[float, float]:
    """Kernel Inception Distance (Bińkowski et al. 2018) of two feature sets [N_a, D] and [N_b, D].

    Unbiased MMD² with the cubic kernel k(x, y) = (x·y / D + 1)³, on `subsets` random subsets of
    m = min(subset_size, N_a, N_b) rows of each set drawn without replacement; returns the mean and the
    (population) standard deviation of the subset estimates, as clean-fid and torch-fidelity. About 0 for
    two samples of one distribution (it can be slightly negative), positive when they differ.
    """
    if features_a.ndim != 2 or features_b.ndim != 2 or features_a.shape[1] != features_b.shape[1]:
        raise InputError(
            f"kid wants [N, D] features of one depth, got {list(features_a.shape)} and {list(features_b.shape)}"
        )
    m = min(subset_size, features_a.shape[0], features_b.shape[0])
    if m < 2 or subsets < 1:
        raise InputError(f"kid needs at least 2 rows per subset and 1 subset, got m={m}, subsets={subsets}")
    a, b = features_a.detach().double().cpu(), features_b.detach().double().cpu()  # float64: sums of cubes
    d = a.shape[1]
    gen = torch.Generator().manual_seed(seed)
    values = []
    for _ in range(subsets):
        x = a[torch.randperm(a.shape[0], generator=gen)[:m]]
        y = b[torch.randperm(b.shape[0], generator=gen)[:m]]
        kxx, kyy, kxy = ((p @ q.T / d + 1) ** 3 for p, q in ((x, x), (y, y), (x, y)))
        # within-set terms leave out the diagonal k(x_i, x_i): that is what makes the estimate unbiased
        within = (kxx.sum() - kxx.diagonal().sum() + kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
        values.append(float(within - 2 * kxy.mean()))
    v = np.array(values)
    return float(v.mean()), float(v.std())


def segmentation_scores(predicted: Tensor, target: Tensor, num_classes: int) -> tuple[float, float]:
    """(mean over images of the per-image mIoU, mIoU of all pixels pooled) for label maps [N, h, w]."""
    if predicted.shape != target.shape or predicted.ndim != 3:
        raise InputError(f"label maps must both be [N, h, w], got {list(predicted.shape)} and {list(target.shape)}")
    per_image = [mean_iou(p, t, num_classes) for p, t in zip(predicted, target, strict=True)]
    return float(np.mean(per_image)), mean_iou(predicted, target, num_classes)


def psnr_outside(x: Tensor, y: Tensor, region: Tensor) -> float | None:
    """PSNR in dB of [3, h, w] images in [-1, 1] (on the [0, 1] scale) over the pixels outside `region` [h, w];
    capped at PSNR_CAP; None when the region covers everything."""
    keep = (~region).to(x.dtype)
    if not bool(keep.any()):
        return None
    mse = float((((x - y) * 0.5).square() * keep).sum() / (3 * keep.sum()))
    return min(PSNR_CAP, 10 * math.log10(1.0 / max(mse, 1e-10)))


@dataclass
class FeatureExtractor:
    """Download-free image features for KID: each stage of `network` unit-normalised over channels (as its
    perceptual distance), averaged over space, concatenated. `name` says which network: KID values compare
    only between runs that used the same extractor."""

    name: str
    network: PerceptualLoss

    @torch.no_grad()
    def __call__(self, images: Tensor) -> Tensor:
        """[N, 3, h, w] in [-1, 1] -> [N, D] on the CPU."""
        device = next(self.network.parameters()).device
        out = []
        for chunk in images.split(CHUNK):
            # x sqrt(C): unit-norm pixel vectors have components of about 1 / sqrt(C); rescaled to about 1, like
            # Inception's pool features, the kernel's x·y / D term is O(1) and its cubic part matters
            stages = self.network.features(chunk.to(device))
            out.append(torch.cat([f.mean((2, 3)) * math.sqrt(f.shape[1]) for f in stages], 1).cpu())
        return torch.cat(out)


def feature_extractor(bundle: Bundle, *, seed: int = 0) -> FeatureExtractor:
    """The bundle's own perceptual network when it ships a trained conv one, else a fixed seeded random CNN.

    No Inception network can be downloaded here. Random-feature KID is a weaker proxy than Inception KID
    (it sees colour and texture statistics, not semantics), but it is deterministic and needs no file.
    """
    if bundle.spec.perceptual.get("kind") == "conv" and bundle.perceptual_state is not None:
        widths = "-".join(str(w) for w in bundle.spec.perceptual["config"]["widths"])
        return FeatureExtractor(
            f"{bundle.spec.name}@{bundle.spec.version} conv perceptual {widths}", bundle.perceptual()
        )
    config = ConvPerceptualConfig(widths=(32, 64, 128), learned_weights=False)
    with torch.random.fork_rng(devices=[]):  # seeded weights without disturbing the caller's RNG
        torch.manual_seed(seed)
        network = ConvPerceptual(config).freeze().to(bundle.device)
    return FeatureExtractor(f"random CNN 32-64-128 seed {seed}", network)


# ---------------------------------------------------------------------------------------------- evaluations


def faces_heldout(bundle: Bundle, *, offset: int = 0) -> HeldOut:
    """Held-out procedural faces at the bundle's resolution (for bundles with the faces classes only)."""
    names = [c.name for c in bundle.spec.classes]
    if names != [name for name, _ in faces.CLASSES]:
        raise InputError(f"the faces held-out set needs the faces classes; {bundle.spec.name} has {names}")
    assert bundle.spec.geometry is not None
    _, _, h, w = bundle.spec.geometry.box
    if h != w:
        raise InputError(f"faces are square, this bundle's content box is {h}x{w}")
    return lambda n: faces.batch(faces.eval_seeds(offset + n)[offset:], size=h)


def _to_tensor(bundle: Bundle, images: np.ndarray, labels: np.ndarray | None = None) -> tuple[Tensor, Tensor]:
    """uint8 [N, h, w, 3] (+ labels [N, h, w]) over the content box -> float [N, 3, h, w] in [-1, 1], long labels."""
    assert bundle.spec.geometry is not None
    _, _, h, w = bundle.spec.geometry.box
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (h, w, 3):
        raise InputError(f"images must be uint8 [N, {h}, {w}, 3] (the content box), got {images.dtype} {images.shape}")
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    y = torch.zeros(x.shape[0], h, w, dtype=torch.long)
    if labels is not None:
        if labels.shape != images.shape[:3]:
            raise InputError(f"labels must be [N, {h}, {w}] like the images, got {labels.shape}")
        y = torch.from_numpy(labels.astype(np.int64))
    return x, y


def _render_images(bundle: Bundle, w_plus: Tensor) -> Tensor:
    # clamped as the uint8 images a user sees; real images cannot leave [-1, 1] either
    return torch.cat([render(bundle, c, uncertainty=False).image.clamp(-1, 1).cpu() for c in w_plus.split(CHUNK)])


def evaluate_sampling(
    bundle: Bundle,
    n: int,
    seed: int = 0,
    *,
    real: np.ndarray | None = None,
    extractor: FeatureExtractor | None = None,
    subsets: int = 10,
    subset_size: int = 50,
) -> Metrics:
    """KID between `n` generator samples (the bundle's "sample" truncation) and `real` images
    (uint8 [N, h, w, 3] content boxes; default: `n` held-out faces)."""
    real = real if real is not None else faces_heldout(bundle)(n)[0]
    extractor = extractor or feature_extractor(bundle)
    psi = float(bundle.spec.defaults.get("sample", {}).get("truncation", 1.0))
    fake = _render_images(bundle, bundle.generator.sample_w_plus(n, seed=seed, psi=psi))
    mean, std = kid(
        extractor(fake), extractor(_to_tensor(bundle, real)[0]), subsets=subsets, subset_size=subset_size, seed=seed
    )
    return {"kid_mean": mean, "kid_std": std, "samples": n, "truncation": psi, "extractor": extractor.name}


def evaluate_inversion(
    bundle: Bundle,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    steps: int | None = None,
    perceptual: PerceptualLoss | None = None,
    mse_only: bool = False,
    progress: Progress | None = None,
) -> tuple[Metrics, Tensor]:
    """Invert each image, placed on a black canvas as `fit_to_canvas` does; -> (metrics, latents [N, L, S]).

    Metrics: PSNR of the reconstruction (mean, min), the perceptual distance (mean), and the mIoU of the
    reconstruction's segmentation against `labels` (mean of per-image mIoUs, and pooled over all pixels).
    `mse_only` drops the perceptual term from the inversion loss (it is still measured): the ablation that
    shows what the bundle's perceptual network adds.
    """
    targets, truth = _to_tensor(bundle, images, labels)
    perceptual = perceptual if perceptual is not None else bundle.perceptual()
    assert bundle.spec.geometry is not None
    top, left, h, w = bundle.spec.geometry.box
    size = bundle.spec.resolution
    psnrs, distances, predicted, latents = [], [], [], []
    for i, target in enumerate(targets):
        canvas = torch.full((1, 3, size, size), -1.0)
        canvas[0, :, top : top + h, left : left + w] = target
        params: dict[str, Any] = {"steps": steps} if steps is not None else {}
        inv = invert(bundle, canvas, perceptual=perceptual, params=params | ({"lpips_weight": 0.0} if mse_only else {}))
        with torch.no_grad():
            distances.append(float(perceptual(inv.rendering.image, target[None].to(bundle.device))[0]))
        psnrs.append(inv.psnr)
        predicted.append(inv.rendering.labels[0].cpu())
        latents.append(inv.w_plus.cpu())
        if progress is not None:
            progress("inversion", i + 1, len(targets))
    miou_mean, miou_pooled = segmentation_scores(torch.stack(predicted), truth, len(bundle.spec.classes))
    metrics = {
        "images": len(targets),
        "psnr_mean": float(np.mean(psnrs)),
        "psnr_min": float(np.min(psnrs)),
        "perceptual_mean": float(np.mean(distances)),
        "miou_mean": miou_mean,
        "miou_pooled": miou_pooled,
    }
    return metrics, torch.cat(latents)


def evaluate_vector(
    bundle: Bundle,
    latents: Tensor,
    vector: EditingVector | Tensor,
    scale: float,
    *,
    target_class: int | Sequence[int],
    direction: int,
    classes: Sequence[int] | None = None,
) -> Metrics:
    """Apply `vector` at `scale` to each latent [N, L, S] and check the segmentation moved as intended.

    Success: the pixel count of the target class(es) moves in `direction` by more than max(3 px, 1 % of the
    count before), so that a few flickering boundary pixels are not an edit. A shrinking vector applies only
    where there is something to shrink (more than 3 px before: a face without eyebrows cannot lose them);
    `success` is the share of those, `success_all` the share of every latent. PSNR outside (every latent):
    over the pixels outside the edited region, every pixel whose class before or after is in the vector's
    classes (`classes`, else the EditingVector's, else the target classes) dilated by VECTOR_ROI_DILATION px.
    """
    if direction not in (1, -1):
        raise InputError(f"direction must be +1 (the target classes grow) or -1 (they shrink), got {direction!r}")
    targets = torch.tensor([target_class] if isinstance(target_class, int) else list(target_class))
    group = vector.classes if isinstance(vector, EditingVector) else targets.tolist()
    q = torch.tensor(list(classes if classes is not None else group))
    successes, applicable, psnrs, changes = [], [], [], []
    for chunk in latents.split(CHUNK):
        before = render(bundle, chunk, uncertainty=False)
        after = apply_vectors(bundle, chunk, [(vector, scale)]).rendering
        for i in range(chunk.shape[0]):
            s0, s1 = before.labels[i].cpu(), after.labels[i].cpu()
            n0, n1 = int(torch.isin(s0, targets).sum()), int(torch.isin(s1, targets).sum())
            successes.append(direction * (n1 - n0) > max(MIN_CHANGE_PX, 0.01 * n0))
            applicable.append(direction == 1 or n0 > MIN_CHANGE_PX)
            changes.append((n1 - n0) / max(n0, 1))
            region = dilate(torch.isin(s0, q) | torch.isin(s1, q), VECTOR_ROI_DILATION)
            psnrs.append(psnr_outside(before.image[i].cpu(), after.image[i].cpu(), region))
    measured = [p for p in psnrs if p is not None]
    moved = [s for s, a in zip(successes, applicable, strict=True) if a]
    return {
        "latents": len(successes),
        "applicable": len(moved),
        "success": float(np.mean(moved)) if moved else None,
        "success_all": float(np.mean(successes)),
        "relative_change_mean": float(np.mean(changes)),
        "psnr_outside_mean": float(np.mean(measured)) if measured else None,
    }


def evaluate_optimization_edit(
    bundle: Bundle,
    latent: Tensor,
    edited_mask: Tensor,
    region: str | Sequence[int] | None = None,
    *,
    steps: int | None = None,
    perceptual: PerceptualLoss | None = None,
) -> Metrics:
    """Run `optimize_edit` on one latent; "reached" is the share of the pixels the user relabelled (the mask
    [h, w] differs from the current segmentation) that the new segmentation gives the requested label."""
    before = render(bundle, latent, uncertainty=False)
    params = {"steps": steps} if steps is not None else None
    result = optimize_edit(bundle, latent, edited_mask, region, perceptual=perceptual, params=params)
    mask = edited_mask.to(before.labels.device).long()
    changed = mask != before.labels[0]
    reached = float((result.rendering.labels[0][changed] == mask[changed]).float().mean())
    outside = psnr_outside(before.image[0].cpu(), result.rendering.image[0].cpu(), result.region.cpu())
    return {"changed_pixels": int(changed.sum()), "reached": reached, "psnr_outside": outside}


# ---------------------------------------------------------------------------------------------- everything


def _vector_scores(bundle: Bundle, latents: Tensor, fallback_scale: float) -> tuple[dict[str, Metrics], dict[str, str]]:
    """Every shipped vector whose metadata names `target_class` (ids or names) and `direction` (+1 or -1),
    at its metadata's `scale` (else `fallback_scale`); -> (scores, {skipped vector: why})."""
    scores: dict[str, Metrics] = {}
    skipped: dict[str, str] = {}
    ids = {c.name: c.id for c in bundle.spec.classes}
    for name in sorted(bundle.vectors):
        meta = bundle.spec.vectors.get(name, {})
        raw, direction = meta.get("target_class"), meta.get("direction")
        found = [ids.get(t, t) if isinstance(t, str) else t for t in (raw if isinstance(raw, list) else [raw])]
        target = [t for t in found if type(t) is int and 0 <= t < len(ids)]
        if raw is None or direction not in (1, -1) or isinstance(direction, bool):
            skipped[name] = "its metadata lacks target_class and a direction of +1 or -1"
        elif len(target) != len(found):
            skipped[name] = f"unknown target_class {raw!r}"
        else:
            region = meta.get("region")
            group = set(bundle.spec.regions.get(str(region), [])) | set(meta.get("classes", [])) or set(target)
            vector = EditingVector(bundle.vectors[name], bundle.spec.name, sorted(group), region=region)
            scale = float(meta.get("scale", fallback_scale))
            scores[name] = evaluate_vector(
                bundle, latents, vector.check(bundle.spec), scale, target_class=target, direction=direction
            )
            scores[name] |= {"scale": scale, "target_class": target, "direction": direction}
    return scores, skipped


def _edit_scores(
    bundle: Bundle,
    latents: Tensor,
    edits: Sequence[MaskEdit],
    steps: int | None,
    perceptual: PerceptualLoss,
    progress: Progress | None,
) -> dict[str, Metrics]:
    """Each programmatic edit on each latent whose segmentation it changes (its class may be absent)."""
    scores: dict[str, Metrics] = {}
    for k, edit in enumerate(edits):
        runs = []
        for w in latents:
            current = render(bundle, w, uncertainty=False).labels[0]
            mask = edit.apply(current)
            if bool((mask != current).any()):
                runs.append(
                    evaluate_optimization_edit(bundle, w, mask, [edit.grow], steps=steps, perceptual=perceptual)
                )
        outside = [r["psnr_outside"] for r in runs if r["psnr_outside"] is not None]
        scores[edit.name] = {
            "images": len(runs),
            "reached_mean": float(np.mean([r["reached"] for r in runs])) if runs else None,
            "psnr_outside_mean": float(np.mean(outside)) if outside else None,
        }
        if progress is not None:
            progress("edits", k + 1, len(edits))
    return scores


def evaluate_bundle(
    bundle: Bundle,
    config: EvalConfig | None = None,
    *,
    heldout: HeldOut | None = None,
    perceptual: PerceptualLoss | None = None,
    progress: Progress | None = None,
) -> Metrics:
    """Sampling KID, inversion, the shipped vectors and the programmatic edits on `heldout` images (default:
    faces at the bundle's resolution), with the targets and which were met; JSON-ready, rounded to 4 decimals.

    Vectors and edits start from the inverted held-out latents. Edits paint on those latents' own
    segmentation, as a user does: painting on the exact labels would also ask the edit to fix every
    segmentation error of the inversion. `passed` holds None where nothing was measured.
    """
    config = config or EvalConfig()
    start = time.perf_counter()
    images, labels = (heldout or faces_heldout(bundle, offset=config.seed_offset))(config.images)
    extractor = feature_extractor(bundle, seed=config.seed)
    kid_options = {"subsets": config.kid_subsets, "subset_size": config.kid_subset_size}
    sampling = evaluate_sampling(bundle, config.images, config.seed, real=images, extractor=extractor, **kid_options)
    perceptual = perceptual if perceptual is not None else bundle.perceptual()
    inversion, latents = evaluate_inversion(
        bundle, images, labels, steps=config.invert_steps, perceptual=perceptual, progress=progress
    )
    ablation = None
    if config.ablation_images > 0:
        k = config.ablation_images
        ablation = evaluate_inversion(
            bundle, images[:k], labels[:k], steps=config.invert_steps, perceptual=perceptual, mse_only=True
        )[0]
        same = evaluate_inversion(bundle, images[:k], labels[:k], steps=config.invert_steps, perceptual=perceptual)
        ablation = {"mse_only": ablation, "with_perceptual": same[0]}
    vectors, skipped = _vector_scores(bundle, latents, config.vector_scale)
    is_faces = [c.name for c in bundle.spec.classes] == [name for name, _ in faces.CLASSES]
    plan = config.edits if config.edits is not None else FACE_EDITS if is_faces else ()
    edits = _edit_scores(bundle, latents[: config.edit_images], plan, config.edit_steps, perceptual, progress)

    outside = [m["psnr_outside_mean"] for m in (*vectors.values(), *edits.values())]
    passed = {
        "inversion_psnr_db": inversion["psnr_mean"] >= TARGETS["inversion_psnr_db"],
        "segmentation_miou": inversion["miou_mean"] >= TARGETS["segmentation_miou"],
        "vector_success": _all_at_least([m["success"] for m in vectors.values()], TARGETS["vector_success"]),
        "edit_reached": _all_at_least([m["reached_mean"] for m in edits.values()], TARGETS["edit_reached"]),
        "psnr_outside_db": _all_at_least(outside, TARGETS["psnr_outside_db"]),
    }
    report = {
        "model": bundle.spec.name,
        "version": bundle.spec.version,
        "config": asdict(config) | {"edits": [e.name for e in plan]},
        "extractor": extractor.name,
        "sampling": sampling,
        "inversion": inversion,
        "inversion_ablation": ablation,
        "vectors": vectors,
        "vectors_skipped": skipped,
        "edits": edits,
        "targets": TARGETS,
        "passed": passed,
        "seconds": time.perf_counter() - start,
    }
    rounded: Metrics = _rounded(report)
    return rounded


def _all_at_least(values: list[Any], target: float) -> bool | None:
    known = [v for v in values if v is not None]
    return all(v >= target for v in known) if known else None


def _rounded(value: Any) -> Any:
    """Floats rounded to 4 decimals, tuples as lists, all the way down."""
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, Mapping):
        return {str(k): _rounded(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_rounded(v) for v in value]
    return value
