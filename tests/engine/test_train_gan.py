from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from torch import Tensor

from engine.discriminator import DiscriminatorConfig
from engine.errors import BundleError, CheckpointError, InputError
from engine.generator import Generator, GeneratorConfig
from engine.train import GanTrainConfig, export_generator, train_gan
from tests.conftest import TINY_GENERATOR

TINY_D = DiscriminatorConfig(size=32, channels=TINY_GENERATOR.channels)
METRIC_KEYS = {"step", "kimg", "loss_G", "loss_D", "d_real", "d_fake", "images_per_s", "seconds"}


def config(steps: int, **overrides: Any) -> GanTrainConfig:
    """`steps` iterations of batch 4; R1 every 2 steps and a short EMA half-life so that tiny runs show them.

    Path length is off unless a test is about it: its double backward is the slowest part of a tiny step.
    """
    kw: dict[str, Any] = {"batch_size": 4, "r1_interval": 2, "ema_kimg": 0.01, "path_length": False} | overrides
    return GanTrainConfig(TINY_GENERATOR, TINY_D, total_kimg=steps * kw["batch_size"] / 1000, **kw)


def noise_data(step: int, batch: int) -> Tensor:
    gen = torch.Generator().manual_seed(1000 + step)
    return torch.rand(batch, 3, 32, 32, generator=gen) * 2 - 1


def stop_after(n: int) -> Any:
    polls = [0]

    def should_stop() -> bool:
        polls[0] += 1
        return polls[0] > n

    return should_stop


def state(run: Path) -> dict[str, Tensor]:
    return load_file(str(run / "checkpoint" / "state.safetensors"))


def meta(run: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((run / "checkpoint" / "state.json").read_text())
    return data


def metric_lines(run: Path) -> list[dict[str, float]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def changed(a: dict[str, Tensor], b: dict[str, Tensor], prefix: str) -> bool:
    return any(not torch.equal(a[k], b[k]) for k in a if k.startswith(prefix))


def test_training_steps_change_g_d_and_the_ema(tmp_path: Path) -> None:
    cfg = config(3)
    rng = torch.get_rng_state()
    start = train_gan(cfg, noise_data, tmp_path / "start", should_stop=lambda: True)
    assert (start.status, start.step) == ("stopped", 0)  # a stop before any step still leaves a checkpoint
    result = train_gan(cfg, noise_data, tmp_path / "run")
    assert torch.equal(torch.get_rng_state(), rng)  # the caller's global RNG is left alone
    assert (result.status, result.step, result.kimg, result.resumed_from) == ("finished", 3, 0.012, None)
    before, after = state(tmp_path / "start"), state(tmp_path / "run")
    for prefix in ("G.", "D.", "G_ema."):
        assert changed(before, after, prefix), prefix
    assert changed(before, after, "G.style.")  # the mapping network learns too (it feeds w_avg)
    params = [k.removeprefix("G.") for k in after if k.startswith("G.") and "noises" not in k and k != "G.w_avg"]
    assert any(not torch.equal(after[f"G.{k}"], after[f"G_ema.{k}"]) for k in params)
    assert {"opt_G.0.exp_avg", "opt_G.0.exp_avg_sq", "opt_G.0.step", "opt_D.0.exp_avg", "pl_mean"} <= set(after)
    # the exported generator is G_ema with the tracked w_avg
    g = export_generator(tmp_path / "run")
    assert isinstance(g, Generator) and not g.training
    assert torch.equal(g.w_avg, after["G_ema.w_avg"]) and torch.equal(g.w_avg, after["G.w_avg"])
    assert not torch.equal(g.w_avg, before["G.w_avg"])
    for k, v in g.state_dict().items():
        assert torch.equal(v, after[f"G_ema.{k}"]), k


def test_regularisers_run_on_their_intervals(tmp_path: Path) -> None:
    seen: list[tuple[int, set[str]]] = []
    cfg = config(4, path_length=True, pl_interval=3)
    train_gan(cfg, noise_data, tmp_path / "a", progress=lambda step, kimg, m: seen.append((step, set(m))))
    assert [step for step, _ in seen] == [1, 2, 3, 4]
    # iteration i = step - 1 regularises when i % interval == 0, iteration 0 included
    assert [step for step, keys in seen if "r1" in keys] == [1, 3]
    assert [step for step, keys in seen if "pl_penalty" in keys] == [1, 4]
    assert all(METRIC_KEYS - {"step", "kimg"} <= keys for _, keys in seen)
    seen.clear()
    train_gan(config(2, r1_gamma=0.0), noise_data, tmp_path / "b", progress=lambda s, k, m: seen.append((s, set(m))))
    assert not any("r1" in keys or "pl_penalty" in keys for _, keys in seen)


def test_resume_continues_bit_identically(tmp_path: Path) -> None:
    # Each iteration seeds its own generator from (seed, step) and the checkpoint holds every float the next
    # step reads (weights, Adam moments and counts, w_avg, pl_mean), so the CPU result is bit-identical.
    cfg = config(6, path_length=True, pl_interval=2)
    train_gan(cfg, noise_data, tmp_path / "whole")
    first = train_gan(cfg, noise_data, tmp_path / "split", should_stop=stop_after(3))
    assert (first.status, first.step) == ("stopped", 3)
    second = train_gan(cfg, noise_data, tmp_path / "split")
    assert (second.status, second.step, second.resumed_from) == ("finished", 6, 3)
    whole, split = state(tmp_path / "whole"), state(tmp_path / "split")
    assert whole.keys() == split.keys()
    assert [k for k in whole if not torch.equal(whole[k], split[k])] == []
    lines_whole, lines_split = metric_lines(tmp_path / "whole"), metric_lines(tmp_path / "split")
    assert [m["step"] for m in lines_split] == [1, 2, 3, 4, 5, 6]
    for key in ("loss_G", "loss_D", "d_real", "d_fake", "r1", "pl_penalty"):
        assert [m.get(key) for m in lines_whole] == [m.get(key) for m in lines_split], key


def test_stop_request_ends_the_loop_and_saves(tmp_path: Path) -> None:
    steps: list[int] = []
    result = train_gan(
        config(10), noise_data, tmp_path, should_stop=stop_after(2), progress=lambda s, k, m: steps.append(s)
    )
    assert (result.status, result.step, steps) == ("stopped", 2, [1, 2])
    saved = meta(tmp_path)
    assert (saved["step"], saved["images_seen"]) == (2, 8)
    assert [m["step"] for m in saved["metrics_tail"]] == [1, 2]
    lines = metric_lines(tmp_path)
    assert [m["step"] for m in lines] == [1, 2] and all(set(m) >= METRIC_KEYS for m in lines)
    assert not list(tmp_path.glob(".checkpoint.tmp-*"))
    # a spent time budget stops the same way
    limited = train_gan(config(10), noise_data, tmp_path, max_seconds=0.0)
    assert (limited.status, limited.step, limited.resumed_from) == ("time_limit", 2, 2)


def test_resume_refuses_a_different_run_but_accepts_a_longer_schedule(tmp_path: Path) -> None:
    train_gan(config(1), noise_data, tmp_path)
    with pytest.raises(CheckpointError, match="lr"):
        train_gan(config(2, lr=0.001), noise_data, tmp_path)
    other_g = GeneratorConfig(size=32, style_dim=16, n_mlp=2, channels=TINY_GENERATOR.channels)
    with pytest.raises(CheckpointError, match="generator"):
        train_gan(GanTrainConfig(other_g, TINY_D, total_kimg=0.008, batch_size=4), noise_data, tmp_path)
    with pytest.raises(InputError, match="resume=True"):
        train_gan(config(2), noise_data, tmp_path, resume=False)
    longer = train_gan(config(2, checkpoint_every_steps=1), noise_data, tmp_path)
    assert (longer.status, longer.step, longer.resumed_from) == ("finished", 2, 1)


def test_a_save_interrupted_between_renames_is_recovered(tmp_path: Path) -> None:
    train_gan(config(1), noise_data, tmp_path)
    (tmp_path / "checkpoint").rename(tmp_path / "checkpoint.old")
    assert export_generator(tmp_path).w_avg.shape == (TINY_GENERATOR.style_dim,)
    result = train_gan(config(2), noise_data, tmp_path)
    assert (result.step, result.resumed_from) == (2, 1)
    assert (tmp_path / "checkpoint").is_dir() and not (tmp_path / "checkpoint.old").exists()
    with pytest.raises(BundleError, match="no training checkpoint"):
        export_generator(tmp_path / "missing")


def test_a_damaged_checkpoint_is_named_not_a_traceback(tmp_path: Path) -> None:
    train_gan(config(1), noise_data, tmp_path)
    weights, record = tmp_path / "checkpoint" / "state.safetensors", tmp_path / "checkpoint" / "state.json"
    whole = weights.read_bytes()
    weights.write_bytes(whole[: len(whole) // 2])  # a copy cut short
    with pytest.raises(CheckpointError, match="state.safetensors is not a readable safetensors file"):
        train_gan(config(2), noise_data, tmp_path)
    weights.write_bytes(whole)
    for text in ("{cut", "[1, 2]"):
        record.write_text(text)
        with pytest.raises(CheckpointError, match="state.json"):
            train_gan(config(2), noise_data, tmp_path)


def test_bad_data_and_configs_are_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"\[-1, 1\]"):
        train_gan(config(1), lambda step, b: torch.full((b, 3, 32, 32), 2.0), tmp_path / "a")
    with pytest.raises(InputError, match=r"\[4, 3, 32, 32\]"):
        train_gan(config(1), lambda step, b: torch.zeros(b, 3, 16, 16), tmp_path / "b")
    with pytest.raises(InputError, match="multiple of 4"):
        config(1, batch_size=6)
    with pytest.raises(InputError, match="discriminator reads 64 px"):
        GanTrainConfig(TINY_GENERATOR, DiscriminatorConfig(64), total_kimg=1)
    cfg = config(3, path_length=True, ema_rampup=0.05, betas=(0.5, 0.9))
    assert GanTrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(BundleError, match="unknown training config keys"):
        GanTrainConfig.from_dict({**cfg.to_dict(), "lr_D": 1})


def test_generator_learns_a_constant_colour(tmp_path: Path) -> None:
    # A trivially learnable data set: every real image is one colour. After 30 steps D separates real from
    # fake and G_ema's images move most of the way to that colour (over 9 seeds the distance fell to <= 0.26
    # of its start; the bound below leaves 2x margin).
    colour = torch.tensor([0.8, -0.6, 0.2]).reshape(1, 3, 1, 1)
    cfg = config(30, batch_size=8, lr=0.01, ema_kimg=0.02)
    history: list[dict[str, float]] = []
    train_gan(
        cfg, lambda step, b: colour.expand(b, 3, 32, 32).clone(), tmp_path, progress=lambda s, k, m: history.append(m)
    )

    def colour_error(g: Generator) -> float:
        with torch.no_grad():
            image = g.synthesis(g.sample_w_plus(16, seed=123)).image
        return float((image.mean(dim=(0, 2, 3)) - colour.flatten()).norm())

    with torch.random.fork_rng():
        torch.manual_seed(cfg.seed)  # the trainer's initialisation, rebuilt
        initial = Generator(TINY_GENERATOR)
    assert colour_error(export_generator(tmp_path)) < 0.5 * colour_error(initial)
    late_gap = sum(m["d_real"] - m["d_fake"] for m in history[-5:]) / 5
    assert late_gap > 0


def test_bfloat16_checkpoints_are_smaller_and_resume(tmp_path: Path) -> None:
    cfg = config(4, checkpoint_dtype="bfloat16")
    first = train_gan(cfg, noise_data, tmp_path / "bf16", should_stop=stop_after(2))
    train_gan(config(2), noise_data, tmp_path / "f32")
    small, full = state(tmp_path / "bf16"), state(tmp_path / "f32")
    assert small["G.input.input"].dtype == torch.bfloat16 and small["opt_D.0.exp_avg"].dtype == torch.bfloat16
    assert small["G_ema.input.input"].dtype == torch.float32 and small["G_ema.w_avg"].dtype == torch.float32
    size = lambda run: (run / "checkpoint" / "state.safetensors").stat().st_size  # noqa: E731
    assert size(tmp_path / "bf16") < 0.8 * size(tmp_path / "f32")
    assert full.keys() == small.keys()
    second = train_gan(cfg, noise_data, tmp_path / "bf16")
    assert (first.step, second.resumed_from, second.step, second.status) == (2, 2, 4, "finished")
