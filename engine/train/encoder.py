"""Training the image -> W+ encoder for a frozen generator (the official `train_encoder.py` objective).

Each step draws a synthetic batch, whose true latents are known, and (after a warm-up share of the run) a batch
of real domain images, whose latents are not:

    synthetic: latent_weight * MSE(E(x), w+) + perceptual_weight * P(G(E(x)), x) + mse_weight * MSE01(G(E(x)), x)
    real:      perceptual_weight * P(G(E(x)), x) + mse_weight * MSE01(G(E(x)), x)

with x = G(w+) for w+ = psi-truncated mapped z repeated over the rows (the official targets), or, with
`mixing_prob`, two such codes crossed at a random row so that the encoder also meets row-varied codes like
those the inversion produces. The official code steps its optimiser once per batch; here both batches share
one step. The heads' biases start at the generator's average latent, so an untrained encoder already answers
the average face instead of w = 0, which the generator has never seen.

A run lives in a directory: `checkpoint/` (encoder, optimiser, step; swapped as a whole) and
`metrics.jsonl`. A later call with the same directory resumes it.
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
from safetensors.torch import save_file
from torch import Tensor

from engine.atomic import replace_directory
from engine.checkpoints import load_strict, read_json, read_safetensors, torch_load
from engine.encoder import Encoder, EncoderConfig
from engine.errors import BundleError, InputError
from engine.generator import Generator
from engine.optim import mse01
from engine.perceptual import PerceptualLoss

RealData = Callable[[int, int], Tensor]  # (first seed, count) -> images [N, 3, S, S] in [-1, 1]
Progress = Callable[[int, int, dict[str, float]], None]  # (step, total steps, numbers)
StopFn = Callable[[], bool]
SCHEDULE_FIELDS = ("total_kimg", "checkpoint_every_seconds", "log_every")  # a resume may change these only


@dataclass(frozen=True)
class EncoderTrainConfig:
    total_kimg: float = 30.0  # synthetic + real images over the whole run (all invocations)
    batch_size: int = 8  # per kind: a step sees batch_size synthetic and (later) batch_size real images
    lr: float = 3e-4  # official 3e-5 fine-tunes a ResNet-50; a small encoder from scratch wants more
    real_from: float = 0.1  # share of the run before real images join (official: after 5 of 100 epochs)
    latent_weight: float = 5.0
    perceptual_weight: float = 10.0
    mse_weight: float = 1.0
    truncation: float = 0.7  # psi of the synthetic targets (official)
    mixing_prob: float = 0.5
    seed: int = 0
    first_real_seed: int = 800_000_000  # apart from the GAN's and the annotated images' seeds
    checkpoint_every_seconds: float = 300.0
    log_every: int = 20

    @property
    def total_steps(self) -> int:
        return max(1, round(self.total_kimg * 1000 / (2 * self.batch_size)))


def demo_encoder_config(generator: Generator) -> EncoderConfig:
    """A small FPN encoder for a small generator: ResNet stages of one bottleneck, 64-channel FPN and heads."""
    g = generator.config
    return EncoderConfig(
        resolution=g.size,
        n_latent=g.n_latent,
        style_dim=g.style_dim,
        base_width=16,
        blocks=(1, 1, 1, 1),
        fpn_channels=64,
        head_channels=64,
        coarse_rows=min(3, g.n_latent - 1),
        medium_rows=min(4, max(0, g.n_latent - 4)),
    )


def init_encoder(config: EncoderConfig, generator: Generator, *, seed: int) -> Encoder:
    """A fresh encoder whose output starts at (about) the generator's average latent on every row."""
    torch.manual_seed(seed)
    encoder = Encoder(config)
    heads = [*encoder.course_styles, *encoder.medium_styles, *encoder.fine_styles]
    with torch.no_grad():
        for head in heads:
            head.linear.weight.mul_(0.1)
            head.linear.bias.copy_(generator.w_avg)
    return encoder


def _synthetic(generator: Generator, cfg: EncoderTrainConfig, step: int) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
    n, rows = cfg.batch_size, generator.n_latent
    z = torch.randn(2, n, generator.config.style_dim, generator=gen)
    with torch.no_grad():
        w = generator.truncate(generator.mapping(z.flatten(0, 1)), cfg.truncation).view(2, n, -1)
        w_plus = generator.broadcast(w[0])
        cut = torch.randint(1, rows, (n,), generator=gen)
        mixed = torch.rand(n, generator=gen) < cfg.mixing_prob
        second = torch.arange(rows).view(1, -1, 1) >= cut.view(-1, 1, 1)
        w_plus = torch.where(second & mixed.view(-1, 1, 1), w[1].unsqueeze(1), w_plus)
        image = generator.synthesis(w_plus).image
    return image, w_plus


def _reconstruction(
    generator: Generator, perceptual: PerceptualLoss, cfg: EncoderTrainConfig, w_hat: Tensor, image: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    out = generator.synthesis(w_hat).image
    p = perceptual(out, image).mean()
    m = mse01(out, image).mean()
    return cfg.perceptual_weight * p + cfg.mse_weight * m, p, m


def _save(out_dir: Path, encoder: Encoder, optimizer: torch.optim.Optimizer, step: int, meta: dict[str, Any]) -> None:
    with replace_directory(out_dir / "checkpoint", marker="state.json", old_name="checkpoint.old") as tmp:
        save_file({k: v.contiguous() for k, v in encoder.state_dict().items()}, str(tmp / "encoder.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")  # tensors and numbers: loads weights_only
        (tmp / "state.json").write_text(json.dumps(meta | {"step": step}, indent=1) + "\n")


def _checkpoint(out_dir: Path) -> Path | None:
    for name in ("checkpoint", "checkpoint.old"):  # `.old` survives a death between the two renames
        if (out_dir / name / "state.json").is_file():
            return out_dir / name
    return None


def load_trained_encoder(out_dir: Path) -> tuple[Encoder, dict[str, Any]]:
    """The encoder of the run in `out_dir`, in eval mode and frozen, with the run's state.json."""
    ckpt = _checkpoint(out_dir)
    if ckpt is None:
        raise BundleError(f"no encoder training checkpoint in {out_dir} (`editgan train encoder` writes one)")
    meta = read_json(ckpt / "state.json")
    encoder = Encoder(EncoderConfig.from_dict(meta["encoder"]))
    load_strict(encoder, read_safetensors(ckpt / "encoder.safetensors"), str(ckpt / "encoder.safetensors"))
    return encoder.eval().requires_grad_(False), meta


def _bundle_encoder(bundle_dir: Path) -> Encoder:
    from engine.bundle import load_bundle  # the bundle module is heavy and only this path needs it

    bundle = load_bundle(bundle_dir)
    if bundle.encoder is None:
        raise BundleError(f"{bundle_dir} holds no encoder to start from")
    encoder = Encoder(bundle.encoder.config)
    encoder.load_state_dict(bundle.encoder.state_dict())
    return encoder.requires_grad_(True)


def train_encoder(
    generator: Generator,
    perceptual: PerceptualLoss,
    real: RealData,
    out_dir: Path,
    config: EncoderTrainConfig | None = None,
    *,
    encoder_config: EncoderConfig | None = None,
    init_from: Path | None = None,
    source: str = "",
    minutes: float | None = None,
    progress: Progress | None = None,
    should_stop: StopFn | None = None,
) -> dict[str, Any]:
    """Train (or resume) the encoder of `generator` (frozen) in `out_dir`; -> the run's state.json contents.

    `source` names the generator (e.g. its GAN run and kimg); a resume from another source is refused, since
    an encoder is only meaningful for the generator it was trained against. A new run may start from the
    weights of another run instead (an encoder of an earlier checkpoint of the same GAN: a fine-tune is much
    shorter than training from scratch): `init_from` names that run's directory, or a bundle whose encoder to
    start from (bundles are what is committed; run directories also hold the optimiser state).
    """
    cfg = config or EncoderTrainConfig()
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt = _checkpoint(out_dir)
    step = 0
    if ckpt is not None:
        meta = read_json(ckpt / "state.json")
        if meta.get("source") != source:
            raise InputError(f"{out_dir} trains an encoder for {meta.get('source')!r}, not {source!r}")
        saved = EncoderTrainConfig(**meta["config"])
        cfg = dataclasses.replace(saved, **{k: getattr(cfg, k) for k in SCHEDULE_FIELDS}) if config else saved
        meta["config"] = dataclasses.asdict(cfg)
        encoder, _ = load_trained_encoder(out_dir)
        encoder.requires_grad_(True)
        step = int(meta["step"])
    else:
        meta = {"source": source, "config": dataclasses.asdict(cfg), "seconds": 0.0, "initialised_from": None}
        if init_from is not None and (init_from / "bundle.json").is_file():
            encoder = _bundle_encoder(init_from)
            meta["initialised_from"] = f"the encoder of bundle {init_from}"
        elif init_from is not None:
            encoder, earlier = load_trained_encoder(init_from)
            encoder.requires_grad_(True)
            meta["initialised_from"] = f"{earlier['source']} ({init_from}, step {earlier['step']})"
        else:
            encoder = init_encoder(encoder_config or demo_encoder_config(generator), generator, seed=cfg.seed)
        meta["encoder"] = encoder.config.to_dict()
    optimizer = torch.optim.Adam(encoder.parameters(), lr=cfg.lr, betas=(0.9, 0.99))
    if ckpt is not None:
        optimizer.load_state_dict(torch_load(ckpt / "optimizer.pt"))  # type: ignore[arg-type]
    generator.eval().requires_grad_(False)
    encoder.train()

    start = last_save = time.perf_counter()
    seconds_before = float(meta.get("seconds", 0.0))
    metrics = (out_dir / "metrics.jsonl").open("a")
    total = cfg.total_steps
    try:
        while step < total:
            if (should_stop is not None and should_stop()) or (
                minutes is not None and time.perf_counter() - start > 60 * minutes
            ):
                break
            image, w_plus = _synthetic(generator, cfg, step)
            w_hat = encoder(image)
            latent = (w_hat - w_plus).square().mean()
            recon, p, m = _reconstruction(generator, perceptual, cfg, w_hat, image)
            loss = cfg.latent_weight * latent + recon
            numbers = {
                "latent": float(latent.detach()),
                "synthetic_p": float(p.detach()),
                "synthetic_mse": float(m.detach()),
            }
            if step >= cfg.real_from * total:
                x = real(cfg.first_real_seed + step * cfg.batch_size, cfg.batch_size)
                recon_r, p_r, m_r = _reconstruction(generator, perceptual, cfg, encoder(x), x)
                loss = loss + recon_r
                numbers |= {"real_p": float(p_r.detach()), "real_mse": float(m_r.detach())}
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            if step % cfg.log_every == 0 or step == total:
                numbers = {"step": step, "kimg": round(step * 2 * cfg.batch_size / 1000, 3)} | numbers
                metrics.write(json.dumps(numbers) + "\n")
                metrics.flush()
                if progress is not None:
                    progress(step, total, numbers)
            if time.perf_counter() - last_save > cfg.checkpoint_every_seconds:
                meta["seconds"] = seconds_before + time.perf_counter() - start
                _save(out_dir, encoder, optimizer, step, meta)
                last_save = time.perf_counter()
    finally:
        metrics.close()
    meta["seconds"] = round(seconds_before + time.perf_counter() - start, 1)
    _save(out_dir, encoder, optimizer, step, meta)
    result: dict[str, Any] = meta | {"step": step, "total_steps": total}
    return result
