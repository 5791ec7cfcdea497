"""Model bundles: one directory = `bundle.json` (architecture, classes, regions, defaults, checksums)
plus safetensors weights. `load_bundle` returns ready models; `save_bundle` writes atomically.

Layout:
    bundle.json             BundleSpec, `files` maps each file below to its sha256
    generator.safetensors   the generator state dict (official `g_ema` keys)
    latents.safetensors     `latent_avg` [S] (truncation centre), optional `examples` [E, L, S]
    segmenter.safetensors   the ensemble, keys `models.{i}.layers.*`
    encoder.safetensors     optional, official FPN encoder keys
    perceptual.safetensors  optional, a bundle-trained perceptual network (kind "conv")
    vectors.safetensors     optional, shipped editing vectors by name [L, S]
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from engine.atomic import replace_directory
from engine.checkpoints import load_strict, sha256_file
from engine.encoder import Encoder, EncoderConfig
from engine.errors import BundleError, InputError
from engine.generator import Generator, GeneratorConfig
from engine.params import EditParams, InvertParams, RefineParams
from engine.perceptual import PerceptualLoss, build_perceptual
from engine.segmenter import Segmenter, SegmenterConfig

FORMAT = "editgan-bundle"
FORMAT_VERSION = 1
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
# Vector names as the service's requests spell them (`schemas.edits.VECTOR_NAME`): lower case, so that a
# shipped vector and a registry one of the same name cannot differ by case alone.
VECTOR_NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
_COLOR = re.compile(r"^#[0-9a-f]{6}$")
MODES = ("sample", "segment", "invert", "edit", "refine")


@dataclass(frozen=True)
class ClassInfo:
    id: int
    name: str
    color: str  # "#rrggbb", lower case

    @property
    def rgb(self) -> tuple[int, int, int]:
        return int(self.color[1:3], 16), int(self.color[3:5], 16), int(self.color[5:7], 16)


@dataclass(frozen=True)
class Geometry:
    """Where real content lives on the generator's square canvas (the car model: rows 64:448)."""

    canvas: int  # generator output size
    top: int = 0
    left: int = 0
    height: int = 0  # 0: the whole canvas
    width: int = 0

    @property
    def box(self) -> tuple[int, int, int, int]:
        return (self.top, self.left, self.height or self.canvas, self.width or self.canvas)


@dataclass
class BundleSpec:
    """Everything `bundle.json` says; validated on construction."""

    name: str
    generator: GeneratorConfig
    segmenter: SegmenterConfig
    classes: list[ClassInfo]
    encoder: EncoderConfig | None = None
    perceptual: dict[str, Any] = field(default_factory=lambda: {"kind": "lpips", "net": "vgg"})
    regions: dict[str, list[int]] = field(default_factory=dict)  # named editing class groups (Q_edit)
    geometry: Geometry | None = None
    defaults: dict[str, dict[str, Any]] = field(default_factory=dict)  # per mode: sample, invert, edit...
    vectors: dict[str, dict[str, Any]] = field(default_factory=dict)  # shipped vectors' metadata by name
    version: str = "1"
    description: str = ""
    provenance: dict[str, Any] = field(default_factory=dict)  # where the weights came from
    files: dict[str, str] = field(default_factory=dict)  # file name -> sha256, filled by save_bundle

    def __post_init__(self) -> None:
        self.geometry = self.geometry or Geometry(self.generator.size)
        self.validate()

    @property
    def resolution(self) -> int:
        return self.generator.size

    @property
    def n_latent(self) -> int:
        return self.generator.n_latent

    def validate(self) -> None:
        g, s = self.generator, self.segmenter
        if not NAME_PATTERN.match(self.name):
            raise BundleError(f"bundle name {self.name!r} must match {NAME_PATTERN.pattern}")
        feature_channels = tuple(c for c, _ in g.feature_shapes)
        if s.feature_channels != feature_channels:
            raise BundleError(f"segmenter reads maps {s.feature_channels}, generator makes {feature_channels}")
        if s.out_size != g.size:
            raise BundleError(f"segmenter out_size {s.out_size} != generator size {g.size}")
        if self.encoder is not None and (
            self.encoder.resolution != g.size
            or self.encoder.n_latent != g.n_latent
            or self.encoder.style_dim != g.style_dim
        ):
            raise BundleError("encoder resolution, n_latent and style_dim must equal the generator's")
        if [c.id for c in self.classes] != list(range(s.num_classes)):
            raise BundleError(f"classes must have ids 0..{s.num_classes - 1} in order")
        for what, values in (
            ("names", [c.name for c in self.classes]),
            ("colours", [c.color for c in self.classes]),
        ):
            if len(set(values)) != len(values):
                raise BundleError(f"class {what} must be unique")
        for c in self.classes:
            if not _COLOR.match(c.color):
                raise BundleError(f"class {c.name!r} colour {c.color!r} is not #rrggbb (lower case)")
        for region, ids in self.regions.items():
            if not NAME_PATTERN.match(region) or not ids or any(not 0 <= i < s.num_classes for i in ids):
                raise BundleError(f"region {region!r} needs a valid name and class ids in [0, {s.num_classes})")
        top, left, height, width = self.geometry.box if self.geometry else (0, 0, g.size, g.size)
        if self.geometry is None or self.geometry.canvas != g.size or top + height > g.size or left + width > g.size:
            raise BundleError(f"geometry {self.geometry} does not fit the {g.size}px canvas")
        if unknown := set(self.defaults) - set(MODES):
            raise BundleError(f"unknown default modes {sorted(unknown)}; allowed: {list(MODES)}")
        for mode, params in (("invert", InvertParams), ("edit", EditParams), ("refine", RefineParams)):
            try:
                params.resolve(self.defaults.get(mode))
            except InputError as exc:
                raise BundleError(f"defaults.{mode}: {exc}") from exc

    def to_json(self) -> dict[str, Any]:
        assert self.geometry is not None
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "name": self.name,
            "version": self.version,
            "description": self.description,
            "resolution": self.resolution,
            "n_latent": self.n_latent,
            "generator": self.generator.to_dict(),
            "encoder": self.encoder.to_dict() if self.encoder else None,
            "segmenter": self.segmenter.to_dict(),
            "perceptual": self.perceptual,
            "classes": [{"id": c.id, "name": c.name, "color": c.color} for c in self.classes],
            "regions": self.regions,
            "geometry": vars(self.geometry),
            "defaults": self.defaults,
            "vectors": self.vectors,
            "provenance": self.provenance,
            "files": self.files,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> BundleSpec:
        if not isinstance(d, dict):
            raise BundleError(f"bundle.json must hold a JSON object, not {type(d).__name__}")
        if d.get("format") != FORMAT or d.get("format_version") != FORMAT_VERSION:
            raise BundleError(f"not an {FORMAT} v{FORMAT_VERSION} bundle.json (format={d.get('format')!r})")
        try:
            spec = cls(
                name=d["name"],
                version=str(d.get("version", "1")),
                description=d.get("description", ""),
                generator=GeneratorConfig.from_dict(d["generator"]),
                encoder=EncoderConfig.from_dict(d["encoder"]) if d.get("encoder") else None,
                segmenter=SegmenterConfig.from_dict(d["segmenter"]),
                perceptual=dict(d.get("perceptual") or {}),
                classes=[ClassInfo(int(c["id"]), str(c["name"]), str(c["color"])) for c in d["classes"]],
                regions={k: [int(i) for i in v] for k, v in d.get("regions", {}).items()},
                geometry=Geometry(**d["geometry"]) if d.get("geometry") else None,
                defaults=dict(d.get("defaults", {})),
                vectors=dict(d.get("vectors", {})),
                provenance=dict(d.get("provenance", {})),
                files=dict(d.get("files", {})),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:  # AttributeError: a list for a mapping
            raise BundleError(f"bundle.json is malformed: {type(exc).__name__}: {exc}") from exc
        for key, value in (("resolution", spec.resolution), ("n_latent", spec.n_latent)):
            if d.get(key, value) != value:
                raise BundleError(f"bundle.json says {key}={d[key]} but the generator config gives {value}")
        return spec


@dataclass
class Bundle:
    """A loaded model: spec plus ready networks (eval mode, frozen) on one device."""

    spec: BundleSpec
    generator: Generator
    segmenter: Segmenter
    encoder: Encoder | None = None
    perceptual_state: dict[str, Tensor] | None = None  # weights of a kind-"conv" perceptual network
    # Shipped editing vectors [L, S], on the CPU whatever `device`: the engine moves a sum of them where it
    # is needed, and the gateway adds them on its event loop, which must never wait for a GPU's queue.
    vectors: dict[str, Tensor] = field(default_factory=dict)
    examples: Tensor | None = None  # example W+ codes [E, L, S]
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    _perceptual: dict[tuple[str, bool], PerceptualLoss] = field(default_factory=dict, repr=False)

    @property
    def latent_avg(self) -> Tensor:
        return self.generator.w_avg

    def perceptual(
        self, *, lpips_backbone_path: Path | None = None, allow_random_backbone: bool = False
    ) -> PerceptualLoss:
        """The perceptual loss the spec names, frozen on the bundle's device.

        LPIPS needs its torchvision backbone file (`lpips_backbone_path` or TORCH_HOME); a bundle-trained
        network ("conv") ships its weights in `perceptual.safetensors`. Built once, then cached.
        """
        key = (str(lpips_backbone_path), allow_random_backbone)
        if key not in self._perceptual:
            self._perceptual[key] = build_perceptual(
                self.spec.perceptual,
                state_dict=self.perceptual_state,
                lpips_backbone_path=lpips_backbone_path,
                allow_random_backbone=allow_random_backbone,
                device=self.device,
            )
        return self._perceptual[key]


def build_networks(spec: BundleSpec, *, empty: bool = False) -> tuple[Generator, Segmenter, Encoder | None]:
    """Networks for a spec: randomly initialised (training starts here), or with uninitialised memory
    when `empty=True` because every tensor is about to be loaded (skips seconds of init at 512 px)."""
    with torch.device("meta" if empty else "cpu"):
        generator = Generator(spec.generator)
        segmenter = Segmenter(spec.segmenter)
        encoder = Encoder(spec.encoder) if spec.encoder is not None else None
    if empty:
        generator.to_empty(device="cpu")
        generator.w_avg.zero_()  # non-persistent, so never loaded from a state dict
        segmenter.to_empty(device="cpu")
        if encoder is not None:
            encoder.to_empty(device="cpu")
    return generator, segmenter, encoder


def _freeze(*modules: torch.nn.Module | None) -> None:
    for m in modules:
        if m is not None:
            m.eval().requires_grad_(False)


def read_spec(path: str | Path) -> BundleSpec:
    """A bundle directory's bundle.json, checked as a spec (no weights read)."""
    meta = Path(path) / "bundle.json"
    if not meta.is_file():
        raise BundleError(f"{path} is not a bundle: {meta.name} is missing")
    try:
        return BundleSpec.from_json(json.loads(meta.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{meta} is not valid JSON: {exc}") from exc


def load_bundle(path: str | Path, device: str | torch.device = "cpu", *, verify: bool = True) -> Bundle:
    """Read a bundle directory; check every file's sha256 (unless `verify=False`) and load strictly."""
    root = Path(path)
    meta = root / "bundle.json"
    spec = read_spec(root)
    required = {"generator.safetensors", "latents.safetensors", "segmenter.safetensors"}
    if spec.encoder is not None:
        required.add("encoder.safetensors")
    if spec.perceptual.get("kind") == "conv":
        required.add("perceptual.safetensors")
    if missing := sorted(required - set(spec.files)):
        raise BundleError(f"{meta} lists no checksum for {missing}")
    for name, digest in spec.files.items():
        file = root / name
        if not file.is_file():
            raise BundleError(f"bundle {spec.name}: file {name} is missing from {root}")
        if verify and sha256_file(file) != digest:
            raise BundleError(f"bundle {spec.name}: checksum mismatch for {name} (corrupt or modified file)")

    dev = torch.device(device)

    def read(name: str) -> dict[str, Tensor]:
        try:
            return load_file(str(root / name), device="cpu")
        except (SafetensorError, OSError) as exc:
            raise BundleError(f"bundle {spec.name}: cannot read {name}: {exc}") from exc

    generator, segmenter, encoder = build_networks(spec, empty=True)
    load_strict(generator, read("generator.safetensors"), f"{root.name}/generator.safetensors")
    load_strict(segmenter, read("segmenter.safetensors"), f"{root.name}/segmenter.safetensors")
    if encoder is not None:
        load_strict(encoder, read("encoder.safetensors"), f"{root.name}/encoder.safetensors")
    latents = read("latents.safetensors")
    if "latent_avg" not in latents or tuple(latents["latent_avg"].shape) != (spec.generator.style_dim,):
        raise BundleError(f"bundle {spec.name}: latents.safetensors needs latent_avg [{spec.generator.style_dim}]")
    generator.w_avg.copy_(latents["latent_avg"])
    examples = latents.get("examples")
    shape = (spec.n_latent, spec.generator.style_dim)
    if examples is not None and tuple(examples.shape[1:]) != shape:
        raise BundleError(f"bundle {spec.name}: examples must be [E, {shape[0]}, {shape[1]}]")
    vectors = read("vectors.safetensors") if "vectors.safetensors" in spec.files else {}
    for vname, v in vectors.items():
        if not VECTOR_NAME_PATTERN.match(vname):
            raise BundleError(f"bundle {spec.name}: vector name {vname!r} must match {VECTOR_NAME_PATTERN.pattern}")
        if tuple(v.shape) != shape:
            raise BundleError(f"bundle {spec.name}: vector {vname} has shape {list(v.shape)}, expected {list(shape)}")
    perceptual = read("perceptual.safetensors") if "perceptual.safetensors" in spec.files else None

    _freeze(generator, segmenter, encoder)
    return Bundle(
        spec=spec,
        generator=generator.to(dev),
        segmenter=segmenter.to(dev),
        encoder=encoder.to(dev) if encoder is not None else None,
        perceptual_state=perceptual,
        vectors=vectors,  # on the CPU: see `Bundle.vectors`
        examples=examples.to(dev) if examples is not None else None,
        device=dev,
    )


def _tensors(state: dict[str, Tensor]) -> dict[str, Tensor]:
    # safetensors refuses shared or non-contiguous storage; copies cost little next to the disk write.
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}


def save_bundle(bundle: Bundle, path: str | Path) -> BundleSpec:
    """Write `bundle` to directory `path` and return the spec with fresh checksums.

    Everything is written into a temporary sibling directory first, then swapped in with renames,
    so a reader never sees a half-written bundle and a failed save leaves the old one intact.
    """
    for name in bundle.vectors:
        if not VECTOR_NAME_PATTERN.match(name):
            raise BundleError(f"vector name {name!r} must match {VECTOR_NAME_PATTERN.pattern}")
    with replace_directory(Path(path), marker="bundle.json") as tmp:
        files: dict[str, dict[str, Tensor]] = {
            "generator.safetensors": bundle.generator.state_dict(),
            "segmenter.safetensors": bundle.segmenter.state_dict(),
            "latents.safetensors": {"latent_avg": bundle.generator.w_avg}
            | ({"examples": bundle.examples} if bundle.examples is not None else {}),
        }
        if bundle.encoder is not None:
            files["encoder.safetensors"] = bundle.encoder.state_dict()
        if bundle.perceptual_state is not None:
            files["perceptual.safetensors"] = bundle.perceptual_state
        if bundle.vectors:
            files["vectors.safetensors"] = bundle.vectors
        checksums = {}
        for name, state in files.items():
            save_file(_tensors(state), str(tmp / name))
            (tmp / name).chmod(0o644)  # safetensors writes 0600: other users (a container's) must read it
            checksums[name] = sha256_file(tmp / name)
        bundle.spec.files = dict(sorted(checksums.items()))
        bundle.spec.validate()
        (tmp / "bundle.json").write_text(json.dumps(bundle.spec.to_json(), indent=1) + "\n")
    return bundle.spec
