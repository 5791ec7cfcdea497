"""Resumable StyleGAN2 training for small generators (CPU first, GPU when given one).

One iteration = a D step (non-saturating logistic loss), a lazy R1 step every `r1_interval` iterations, a G step
with style mixing, an optional lazy path-length step every `pl_interval` iterations, then the EMA update of
`G_ema` (whose `w_avg` follows the running mean of mapped w, so truncation works on the exported generator).

Determinism: iteration `i` draws all its randomness (z, mixing cut-offs, noise maps, path-length noise) from a
`torch.Generator` seeded from `(seed, i)`, and asks the caller's `data(i, batch)` for its real images. A resumed
run therefore needs no saved RNG state: the weights, both Adam states and `pl_mean` are restored exactly and
the continuation is bit-identical to an uninterrupted run on the same machine and thread count.

Checkpoints: `out_dir/checkpoint/{state.safetensors, state.json}`, replaced by directory renames so a reader
never sees half a checkpoint; metrics go to `out_dir/metrics.jsonl`, one JSON object per step.
"""

from __future__ import annotations

import copy
import json
import math
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import Tensor

from engine.atomic import replace_directory
from engine.checkpoints import load_strict, read_json, read_safetensors
from engine.discriminator import Discriminator, DiscriminatorConfig
from engine.errors import BundleError, CheckpointError, InputError
from engine.generator import Generator, GeneratorConfig

DataFn = Callable[[int, int], Tensor]  # (iteration, batch) -> real images [B, 3, S, S] float in [-1, 1]
ProgressFn = Callable[[int, float, dict[str, float]], None]  # (steps done, kimg, metrics of that step)
StopFn = Callable[[], bool]  # polled before every step; True checkpoints and returns

FORMAT = "editgan.gan-train/1"
# Fields that may change between sessions of one run: they decide when to stop and save, not what is learned.
SCHEDULE_FIELDS = frozenset({"total_kimg", "checkpoint_every_steps", "checkpoint_every_seconds", "checkpoint_dtype"})
_TAIL = 100  # metric records kept in state.json


@dataclass(frozen=True)
class GanTrainConfig:
    """Hyperparameters of one StyleGAN2 run. Defaults follow StyleGAN2 config-f, scaled for small images."""

    generator: GeneratorConfig
    discriminator: DiscriminatorConfig
    total_kimg: float = 100.0  # thousands of real images shown to D
    batch_size: int = 16
    lr: float = 0.002  # before the lazy-regularisation correction
    betas: tuple[float, float] = (0.0, 0.99)  # Adam (beta1, beta2), before the same correction
    # R1 weight. StyleGAN2-ADA's heuristic gamma = 0.0002 * res^2 / batch gives 0.05 at 64 px / batch 16;
    # 0.1 is a slightly stronger, safe value for 32-64 px. Set 0 to disable R1.
    r1_gamma: float = 0.1
    r1_interval: int = 16  # lazy R1: every 16 iterations, scaled by 16
    ema_kimg: float = 10.0  # half-life of G_ema in thousands of images
    ema_rampup: float | None = None  # StyleGAN2-ADA's ramp: half-life <= images seen * rampup (e.g. 0.05)
    w_avg_beta: float = 0.995  # running mean of mapped w, per step (StyleGAN2-ADA)
    mixing_prob: float = 0.9  # share of samples rendered from two latents with a random cross-over row
    # Path-length regularisation (StyleGAN2: weight 2 every 4 iterations) smooths W, which inversion and
    # editing rely on. Its double backward makes the steps that run it ~1.4x slower; at interval 4 that measured
    # 7-10 % fewer images/s on 2 CPU cores at 64 px, so it stays on by default.
    path_length: bool = True
    pl_weight: float = 2.0
    pl_interval: int = 4
    pl_decay: float = 0.01  # running-mean rate of the target path length
    pl_batch_shrink: int = 2  # the path-length batch is batch_size // shrink
    checkpoint_every_steps: int | None = None
    checkpoint_every_seconds: float | None = 600.0
    # "bfloat16" halves the checkpoint (G, D and Adam moments; G_ema and w_avg stay float32) so that a run
    # can be carried between machines in git; resuming from it is close to, not bit-identical with, float32.
    checkpoint_dtype: Literal["float32", "bfloat16"] = "float32"
    seed: int = 0

    def __post_init__(self) -> None:
        g, d = self.generator, self.discriminator
        if g.size != d.size:
            raise InputError(f"generator renders {g.size} px but the discriminator reads {d.size} px")
        group = min(self.batch_size, d.stddev_group)
        if self.batch_size < 1 or self.batch_size % group:
            raise InputError(f"batch_size {self.batch_size} must be a positive multiple of {group} (stddev group)")
        if min(self.r1_interval, self.pl_interval, self.pl_batch_shrink) < 1:
            raise InputError("r1_interval, pl_interval and pl_batch_shrink must be >= 1")
        if self.total_kimg <= 0 or self.lr <= 0 or self.ema_kimg <= 0 or self.r1_gamma < 0 or self.pl_weight < 0:
            raise InputError("total_kimg, lr and ema_kimg must be positive; r1_gamma and pl_weight non-negative")
        if not (0 <= self.betas[0] < 1 and 0 <= self.betas[1] < 1 and 0 <= self.mixing_prob <= 1):
            raise InputError(
                f"betas must lie in [0, 1) and mixing_prob in [0, 1], got {self.betas}, {self.mixing_prob}"
            )
        if not 0 < self.w_avg_beta < 1 or not 0 < self.pl_decay <= 1:
            raise InputError("w_avg_beta must lie in (0, 1) and pl_decay in (0, 1]")

    @property
    def total_images(self) -> int:
        return round(self.total_kimg * 1000)

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["generator"], d["discriminator"] = self.generator.to_dict(), self.discriminator.to_dict()
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GanTrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise BundleError(f"unknown training config keys {sorted(unknown)}; allowed: {sorted(known)}")
        kw = dict(d)
        kw["generator"] = GeneratorConfig.from_dict(d["generator"])
        kw["discriminator"] = DiscriminatorConfig.from_dict(d["discriminator"])
        if "betas" in kw:
            kw["betas"] = (float(kw["betas"][0]), float(kw["betas"][1]))
        return cls(**kw)


@dataclass
class TrainResult:
    """What `train_gan` returns. The checkpoint in `out_dir` always holds the state at `step`."""

    out_dir: Path
    step: int  # optimisation iterations done in total, over all sessions
    kimg: float  # thousands of real images shown to D in total
    status: Literal["finished", "stopped", "time_limit"]
    seconds: float  # training wall time summed over all sessions
    resumed_from: int | None  # the step this session started from; None for a fresh run
    metrics: dict[str, float]  # the last step's metrics (empty when no step ran in this session)


@dataclass
class _State:
    G: Generator
    G_ema: Generator
    D: Discriminator
    opt_g: torch.optim.Adam
    opt_d: torch.optim.Adam
    pl_mean: Tensor  # scalar, running mean of path lengths
    step: int = 0
    images: int = 0
    seconds: float = 0.0
    tail: list[dict[str, float]] = field(default_factory=list)  # the last metric records


def _adam(params: list[torch.nn.Parameter], cfg: GanTrainConfig, interval: int | None) -> torch.optim.Adam:
    # Lazy regularisation (StyleGAN2 appx. C): with the regulariser run every k steps, scale lr and the betas
    # by c = k / (k + 1) so that the optimiser's effective time constants match the non-lazy schedule.
    c = interval / (interval + 1) if interval is not None else 1.0
    return torch.optim.Adam(params, lr=cfg.lr * c, betas=(cfg.betas[0] ** c, cfg.betas[1] ** c), eps=1e-8)


def _build(cfg: GanTrainConfig, device: torch.device) -> _State:
    # Seeded on a forked RNG so that initialisation is reproducible and the caller's global RNG is untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        G, D = Generator(cfg.generator), Discriminator(cfg.discriminator)
    # Start w_avg at the true mean of the initial mapping (not at zero) so truncation is meaningful early on.
    G.w_avg.copy_(G.mean_latent(1024, seed=cfg.seed))
    G, D = G.to(device).train(), D.to(device).train()
    g_ema = copy.deepcopy(G).eval().requires_grad_(False)
    return _State(
        G=G,
        G_ema=g_ema,
        D=D,
        opt_g=_adam(list(G.parameters()), cfg, cfg.pl_interval if cfg.path_length else None),
        opt_d=_adam(list(D.parameters()), cfg, cfg.r1_interval if cfg.r1_gamma > 0 else None),
        pl_mean=torch.zeros((), device=device),
    )


def _step_generator(seed: int, step: int, device: torch.device) -> torch.Generator:
    # A distinct, reproducible stream per (seed, iteration): resuming needs no saved RNG state.
    return torch.Generator(device=device).manual_seed((seed * 0x9E3779B97F4A7C15 + step) % 2**63)


def _latents(G: Generator, n: int, mixing_prob: float, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """Random W+ [n, L, S] with per-sample style mixing, and the first latent's w [n, S]."""
    dev, s, L = G.w_avg.device, G.config.style_dim, G.n_latent
    z = torch.randn(2 * n, s, generator=gen, device=dev)
    w = G.mapping(z).reshape(2, n, s)
    cutoff = torch.randint(1, L, (n,), generator=gen, device=dev)
    mixed = torch.rand(n, generator=gen, device=dev) < mixing_prob
    cutoff = torch.where(mixed, cutoff, torch.full_like(cutoff, L))  # L = no mixing
    first = (torch.arange(L, device=dev)[None, :] < cutoff[:, None]).unsqueeze(-1)  # [n, L, 1]
    return torch.where(first, w[0].unsqueeze(1), w[1].unsqueeze(1)), w[0]


def _render(G: Generator, w_plus: Tensor, gen: torch.Generator) -> Tensor:
    return G.synthesis(w_plus, noise=G.random_noise(w_plus.shape[0], generator=gen)).image


def _real_batch(data: DataFn, step: int, cfg: GanTrainConfig, device: torch.device) -> Tensor:
    s, b = cfg.generator.size, cfg.batch_size
    real = data(step, b)
    if not isinstance(real, Tensor) or tuple(real.shape) != (b, 3, s, s) or not real.is_floating_point():
        got = list(real.shape) if isinstance(real, Tensor) else type(real).__name__
        raise InputError(f"data({step}, {b}) must return a float tensor [{b}, 3, {s}, {s}], got {got}")
    lo, hi = torch.aminmax(real)
    if lo < -1 or hi > 1:
        raise InputError(f"data({step}, {b}) must lie in [-1, 1], got [{float(lo):.3f}, {float(hi):.3f}]")
    return real.to(device=device, dtype=torch.float32)


def _train_step(st: _State, cfg: GanTrainConfig, real: Tensor) -> dict[str, float]:
    G, D, b, step = st.G, st.D, cfg.batch_size, st.step
    gen = _step_generator(cfg.seed, step, real.device)
    m: dict[str, float] = {}

    # D: non-saturating logistic loss. Fakes need no graph into G.
    G.requires_grad_(False)
    D.requires_grad_(True)
    with torch.no_grad():
        fake = _render(G, _latents(G, b, cfg.mixing_prob, gen)[0], gen)
    fake_pred, real_pred = D(fake), D(real)
    loss_d = F.softplus(fake_pred).mean() + F.softplus(-real_pred).mean()
    st.opt_d.zero_grad(set_to_none=True)
    loss_d.backward()
    st.opt_d.step()
    m.update(loss_D=loss_d.item(), d_real=real_pred.mean().item(), d_fake=fake_pred.mean().item())

    # Lazy R1 on reals: gamma/2 * E|grad D(x)|^2, scaled by the interval (iteration 0 included, as the references).
    if cfg.r1_gamma > 0 and step % cfg.r1_interval == 0:
        x = real.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(D(x).sum(), x, create_graph=True)
        r1 = grad.square().sum(dim=(1, 2, 3)).mean()
        st.opt_d.zero_grad(set_to_none=True)
        (r1 * (cfg.r1_gamma / 2 * cfg.r1_interval)).backward()
        st.opt_d.step()
        m["r1"] = r1.item()

    # G: non-saturating loss -log sigmoid(D(G(z))).
    G.requires_grad_(True)
    D.requires_grad_(False)
    w_plus, w = _latents(G, b, cfg.mixing_prob, gen)
    loss_g = F.softplus(-D(_render(G, w_plus, gen))).mean()
    st.opt_g.zero_grad(set_to_none=True)
    loss_g.backward()
    st.opt_g.step()
    m["loss_G"] = loss_g.item()
    with torch.no_grad():
        G.w_avg.lerp_(w.detach().mean(0), 1 - cfg.w_avg_beta)

    # Lazy path-length regularisation: |J^T y| for image-space noise y should stay near its running mean.
    if cfg.path_length and step % cfg.pl_interval == 0:
        w_plus, _ = _latents(G, max(1, b // cfg.pl_batch_shrink), cfg.mixing_prob, gen)
        img = _render(G, w_plus, gen)
        y = torch.randn(img.shape, generator=gen, device=img.device) / math.sqrt(img.shape[2] * img.shape[3])
        (grad,) = torch.autograd.grad((img * y).sum(), w_plus, create_graph=True)
        lengths = grad.square().sum(2).mean(1).sqrt()  # [n]
        pl_mean = st.pl_mean.lerp(lengths.mean().detach(), cfg.pl_decay)
        penalty = (lengths - pl_mean).square().mean()
        st.opt_g.zero_grad(set_to_none=True)
        (penalty * (cfg.pl_weight * cfg.pl_interval)).backward()
        st.opt_g.step()
        st.pl_mean.copy_(pl_mean)
        m.update(pl_penalty=penalty.item(), pl_mean=pl_mean.item())
    G.requires_grad_(False)

    st.step, st.images = step + 1, st.images + b
    # EMA with a half-life in images: beta per step = 0.5 ** (batch / half-life).
    ema_nimg = cfg.ema_kimg * 1000
    if cfg.ema_rampup is not None:
        ema_nimg = min(ema_nimg, st.images * cfg.ema_rampup)
    beta = 0.5 ** (b / max(ema_nimg, 1e-8))
    with torch.no_grad():
        for p_ema, p in zip(st.G_ema.parameters(), G.parameters(), strict=True):
            p_ema.copy_(p.lerp(p_ema, beta))
        for b_ema, buf in zip(st.G_ema.buffers(), G.buffers(), strict=True):
            b_ema.copy_(buf)  # noise maps and w_avg
    return m


# ---------------------------------------------------------------------------------------------- checkpoints


def _checkpoint_dir(out_dir: Path) -> Path | None:
    """The readable checkpoint: `checkpoint/`, or `checkpoint.old/` when a save died between its two renames."""
    for name in ("checkpoint", "checkpoint.old"):
        if (out_dir / name / "state.json").is_file():
            return out_dir / name
    return None


def _save(out_dir: Path, st: _State, cfg: GanTrainConfig) -> None:
    tensors: dict[str, Tensor] = {}
    for prefix, net in (("G", st.G), ("G_ema", st.G_ema), ("D", st.D)):
        tensors |= {f"{prefix}.{k}": v for k, v in net.state_dict().items()}
    tensors["G.w_avg"], tensors["G_ema.w_avg"], tensors["pl_mean"] = st.G.w_avg, st.G_ema.w_avg, st.pl_mean
    optims: dict[str, Any] = {}
    for name, opt in (("opt_G", st.opt_g), ("opt_D", st.opt_d)):
        for i, s in opt.state_dict()["state"].items():
            tensors |= {f"{name}.{i}.{k}": v for k, v in s.items()}  # step, exp_avg, exp_avg_sq
        group, steps = opt.param_groups[0], [int(s["step"]) for s in opt.state.values()]
        # For people reading the file; resuming takes lr and betas from the config and counts from the tensors.
        optims[name] = {"lr": group["lr"], "betas": list(group["betas"]), "steps": max(steps, default=0)}
    meta = {
        "format": FORMAT,
        "config": cfg.to_dict(),
        "step": st.step,
        "images_seen": st.images,
        "kimg": st.images / 1000,
        "seconds": st.seconds,
        "rng": {"seed": cfg.seed, "scheme": "iteration i draws from torch.Generator seeded by (seed, i)"},
        "optimizers": optims,
        "metrics_tail": st.tail[-_TAIL:],
        "torch": torch.__version__,
    }
    # A reader sees the old or the new checkpoint, never half; `checkpoint.old` survives a death mid-swap.
    with replace_directory(out_dir / "checkpoint", marker="state.json", old_name="checkpoint.old") as tmp:
        save_file({k: _stored(k, v, cfg) for k, v in tensors.items()}, str(tmp / "state.safetensors"))
        (tmp / "state.json").write_text(json.dumps(meta, indent=1) + "\n")


def _stored(key: str, value: Tensor, cfg: GanTrainConfig) -> Tensor:
    value = value.detach().to("cpu")
    compact = cfg.checkpoint_dtype == "bfloat16" and value.is_floating_point() and value.ndim != 0
    if compact and not key.startswith("G_ema.") and not key.endswith("w_avg") and key != "pl_mean":
        value = value.to(torch.bfloat16)  # module and Adam loading cast back to the parameters' float32
    return value.contiguous().clone()


def _read(ckpt: Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
    meta = read_json(ckpt / "state.json")
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{ckpt}/state.json has format {meta.get('format')!r}, expected {FORMAT!r}")
    return meta, read_safetensors(ckpt / "state.safetensors")


def _take(tensors: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {k[len(prefix) + 1 :]: v for k, v in tensors.items() if k.startswith(prefix + ".")}


def _load_generator(G: Generator, tensors: dict[str, Tensor], prefix: str, source: str) -> None:
    state = _take(tensors, prefix)
    if "w_avg" not in state:
        raise CheckpointError(f"{source} lacks {prefix}.w_avg")
    w_avg = state.pop("w_avg")
    load_strict(G, state, source)
    G.w_avg.copy_(w_avg)


def _restore(st: _State, meta: dict[str, Any], tensors: dict[str, Tensor], source: str) -> None:
    _load_generator(st.G, tensors, "G", source)
    _load_generator(st.G_ema, tensors, "G_ema", source)
    load_strict(st.D, _take(tensors, "D"), source)
    for name, opt in (("opt_G", st.opt_g), ("opt_D", st.opt_d)):
        state: dict[int, dict[str, Tensor]] = {}
        for key, v in _take(tensors, name).items():
            i, attr = key.split(".", 1)
            state.setdefault(int(i), {})[attr] = v
        n_params = len(opt.param_groups[0]["params"])
        if state and sorted(state) != list(range(n_params)):
            raise CheckpointError(f"{source}: {name} holds state for {len(state)} tensors, the model has {n_params}")
        # Param groups (lr, betas) come from the config, which must match; only the per-tensor state is loaded.
        opt.load_state_dict({"state": state, "param_groups": opt.state_dict()["param_groups"]})
    st.pl_mean.copy_(tensors["pl_mean"])
    st.step, st.images, st.seconds = int(meta["step"]), int(meta["images_seen"]), float(meta["seconds"])
    st.tail = list(meta.get("metrics_tail", []))


def _check_same_run(saved: dict[str, Any], cfg: GanTrainConfig, source: str) -> None:
    now = cfg.to_dict()
    diffs = [
        f"{k}: checkpoint {saved.get(k)!r}, now {now[k]!r}"
        for k in now
        if k not in SCHEDULE_FIELDS and saved.get(k) != now[k]
    ]
    if diffs:
        raise CheckpointError(
            f"{source} belongs to a different training run ({'; '.join(diffs)}); "
            f"only {sorted(SCHEDULE_FIELDS)} may change on resume. Use another out_dir to start afresh."
        )


def _trim_metrics(path: Path, step: int) -> None:
    # Lines logged after the checkpoint (a run killed between saves) are replayed on resume: drop them.
    if path.is_file():
        lines = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= step]
        path.write_text("".join(ln + "\n" for ln in lines))


# ---------------------------------------------------------------------------------------------- public API


@contextmanager
def _threads(n: int | None) -> Iterator[None]:
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train_gan(
    config: GanTrainConfig,
    data: DataFn,
    out_dir: str | Path,
    *,
    resume: bool = True,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
    max_seconds: float | None = None,
    device: str | torch.device | None = None,
    num_threads: int | None = None,
) -> TrainResult:
    """Train (or continue training) a StyleGAN2 generator until `config.total_kimg` images have been shown.

    Args:
        config: architecture and hyperparameters; on resume only `SCHEDULE_FIELDS` may differ from the checkpoint.
        data: `data(i, batch)` -> real images [batch, 3, S, S] float in [-1, 1] for iteration i; it should be a
            pure function of its arguments for runs to be reproducible and resumable bit for bit.
        out_dir: run directory: `checkpoint/` and `metrics.jsonl` live here.
        resume: continue from the checkpoint in `out_dir` if there is one; False refuses to touch an existing run.
        progress: called after every step with (steps done, kimg, that step's metrics).
        should_stop: polled before every step; True saves a checkpoint and returns with status "stopped".
        max_seconds: wall-clock budget of this call; when spent, saves and returns with status "time_limit".
        device: where to train; default CUDA when available, else the CPU.
        num_threads: `torch.set_num_threads` for the duration of the call (restored afterwards); None leaves it.

    Returns:
        A `TrainResult`; the checkpoint in `out_dir` holds the state it describes.
    """
    out, cfg = Path(out_dir), config
    dev = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    ckpt = _checkpoint_dir(out)
    if ckpt is not None and not resume:
        raise InputError(f"{out} already holds a training checkpoint; pass resume=True or use another directory")
    with _threads(num_threads):
        st = _build(cfg, dev)
        resumed_from: int | None = None
        if ckpt is not None:
            meta, tensors = _read(ckpt)
            _check_same_run(meta["config"], cfg, str(ckpt))
            _restore(st, meta, tensors, str(ckpt / "state.safetensors"))
            resumed_from = st.step
            _trim_metrics(out / "metrics.jsonl", st.step)
        out.mkdir(parents=True, exist_ok=True)
        for stale in out.glob(".checkpoint.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)

        started = last_save = time.monotonic()
        status: Literal["finished", "stopped", "time_limit"] = "finished"
        metrics: dict[str, float] = {}
        ran = 0
        with (out / "metrics.jsonl").open("a") as log:
            while st.images < cfg.total_images:
                if should_stop is not None and should_stop():
                    status = "stopped"
                    break
                if max_seconds is not None and time.monotonic() - started >= max_seconds:
                    status = "time_limit"
                    break
                t0 = time.perf_counter()
                metrics = _train_step(st, cfg, _real_batch(data, st.step, cfg, dev))
                dt = time.perf_counter() - t0  # includes the caller's data time: the rate a run really gets
                st.seconds, ran = st.seconds + dt, ran + 1
                metrics |= {"images_per_s": cfg.batch_size / dt, "seconds": st.seconds}
                record = {"step": st.step, "kimg": st.images / 1000, **metrics}
                log.write(json.dumps(record) + "\n")
                log.flush()
                st.tail = [*st.tail[-(_TAIL - 1) :], record]
                if progress is not None:
                    progress(st.step, st.images / 1000, metrics)
                due = cfg.checkpoint_every_steps is not None and st.step % cfg.checkpoint_every_steps == 0
                due |= cfg.checkpoint_every_seconds is not None and (
                    time.monotonic() - last_save >= cfg.checkpoint_every_seconds
                )
                if due and st.images < cfg.total_images:
                    _save(out, st, cfg)
                    last_save = time.monotonic()
        if ran or _checkpoint_dir(out) is None:
            _save(out, st, cfg)
    return TrainResult(out, st.step, st.images / 1000, status, st.seconds, resumed_from, metrics)


def export_generator(out_dir: str | Path, *, device: str | torch.device = "cpu") -> Generator:
    """The EMA generator of the checkpoint in `out_dir`, with its tracked `w_avg`, in eval mode and frozen."""
    ckpt = _checkpoint_dir(Path(out_dir))
    if ckpt is None:
        raise BundleError(f"no training checkpoint in {out_dir} (expected checkpoint/state.json)")
    meta, tensors = _read(ckpt)
    G = Generator(GanTrainConfig.from_dict(meta["config"]).generator)
    _load_generator(G, tensors, "G_ema", str(ckpt / "state.safetensors"))
    return G.to(device).eval().requires_grad_(False)


def run_source(out_dir: str | Path) -> str:
    """Names the generator a checkpoint holds, for what is trained on top of it: `<dir name>@step <n>`."""
    ckpt = _checkpoint_dir(Path(out_dir))
    if ckpt is None:
        raise BundleError(f"no training checkpoint in {out_dir} (expected checkpoint/state.json)")
    meta = read_json(ckpt / "state.json")
    return f"{Path(out_dir).resolve().name}@step {meta.get('step', '?')}"
