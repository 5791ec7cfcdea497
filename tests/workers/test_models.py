"""Start-up checks of the loaded models (workers/models.py)."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
import torch
from torch._dynamo.utils import counters

import engine.precision
import workers.models
from engine import Bundle, BundleError, render
from engine.precision import forward_precision, loop_precision
from workers.models import check_precisions, compile_models, load_models, missing_compiler, warn_cuda_graphs


def _gpu_bundle(defaults: dict[str, Any]) -> Bundle:
    # Only what check_precisions reads: a device and the bundle's defaults (no GPU here).
    return cast(Bundle, SimpleNamespace(device=torch.device("cuda:0"), spec=SimpleNamespace(defaults=defaults)))


def test_tf32_on_the_cpu_starts_with_one_warning(
    monkeypatch: pytest.MonkeyPatch, tiny_bundle: Bundle, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(engine.precision, "_cpu_bfloat16", lambda: True)  # a CPU with AVX-512
    with caplog.at_level(logging.WARNING, logger="workers.models"):
        check_precisions({"tiny": tiny_bundle}, "tf32")
        check_precisions({"tiny": tiny_bundle}, "bfloat16")
        check_precisions({"tiny": tiny_bundle}, None)
    assert [r.getMessage() for r in caplog.records] == [
        "EDITGAN_PRECISION: precision tf32 has no TF32 tensor cores on cpu: the loops run in float32"
    ]


def test_bfloat16_is_refused_at_start_up_on_a_cpu_without_avx512(
    monkeypatch: pytest.MonkeyPatch, tiny_bundle: Bundle
) -> None:
    monkeypatch.setattr(engine.precision, "_cpu_bfloat16", lambda: False)
    with pytest.raises(BundleError, match=r"^EDITGAN_PRECISION: precision bfloat16 needs a CPU with AVX-512"):
        check_precisions({"tiny": tiny_bundle}, "bfloat16")
    check_precisions({"tiny": tiny_bundle}, "float32")


@pytest.mark.parametrize("capability", [(7, 0), (8, 0)])
def test_bfloat16_is_refused_at_start_up_on_a_gpu_without_its_tensor_cores(
    monkeypatch: pytest.MonkeyPatch, capability: tuple[int, int]
) -> None:
    monkeypatch.setattr(engine.precision, "_capability", lambda device: capability)
    from_setting = {"m": _gpu_bundle({})}
    from_bundle = {"m": _gpu_bundle({"edit": {"precision": "bfloat16"}})}
    if capability >= (8, 0):
        check_precisions(from_setting, "bfloat16")
        check_precisions(from_bundle, None)
        return
    with pytest.raises(BundleError, match=r"^EDITGAN_PRECISION: precision bfloat16 needs a GPU"):
        check_precisions(from_setting, "bfloat16")
    with pytest.raises(BundleError, match=r"^bundle m defaults\.edit\.precision: precision bfloat16"):
        check_precisions(from_bundle, None)
    check_precisions(from_bundle, "float32")  # the setting wins over the bundle's default


def test_cuda_graphs_leave_the_models_off_the_gpu_eager_with_one_warning(
    tiny_bundle: Bundle, caplog: pytest.LogCaptureFixture
) -> None:
    # One setting may serve gateways on CPUs and workers on GPUs (as tf32): no refusal, a warning.
    with caplog.at_level(logging.WARNING, logger="workers.models"):
        warn_cuda_graphs({"tiny": tiny_bundle}, False)
        warn_cuda_graphs({"car": _gpu_bundle({})}, True)
        assert not caplog.records
        warn_cuda_graphs({"car": _gpu_bundle({}), "tiny": tiny_bundle}, True)
    assert [r.getMessage() for r in caplog.records] == [
        "EDITGAN_CUDA_GRAPHS applies to models on a CUDA device; tiny on cpu: eager"
    ]


@pytest.mark.parametrize(("device", "variable"), [("cpu", "CXX"), ("cuda:0", "CC")])
def test_compiling_without_a_compiler_is_refused_with_what_to_install(
    monkeypatch: pytest.MonkeyPatch, tiny_bundle: Bundle, device: str, variable: str
) -> None:
    assert missing_compiler(torch.device("cpu")) is None  # this machine has g++
    monkeypatch.setattr(workers.models.shutil, "which", lambda name: None)
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.delenv("CC", raising=False)
    message = missing_compiler(torch.device(device))
    assert message is not None and variable in message and "apt-get install g++" in message
    monkeypatch.setenv(variable, "/opt/compiler")
    assert missing_compiler(torch.device(device)) is None
    monkeypatch.delenv(variable)
    if device == "cpu":  # refused before anything is compiled
        with pytest.raises(BundleError, match="EDITGAN_COMPILE needs a C\\+\\+ compiler"):
            compile_models({"tiny": tiny_bundle}, gradients=False)
        assert tiny_bundle.generator._compiled is None


def test_a_workers_compilation_covers_its_loops_precision(tiny_bundle: Bundle) -> None:
    # autocast is part of what a graph is compiled for: a bfloat16 loop's first job must not compile again.
    compile_models({"tiny": tiny_bundle}, gradients=True, setting="bfloat16")
    counters.clear()
    generator = tiny_bundle.generator
    for batch in (1, 2, 5):  # renders: the batch sizes micro-batching makes
        render(tiny_bundle, generator.sample_w_plus(batch, seed=batch))
    w = generator.sample_w_plus(1, seed=9).requires_grad_(True)
    with loop_precision(w.device, "bfloat16"), forward_precision(w.device, "bfloat16"):
        out = generator.synthesis(w, return_features=True)
    out.image.float().sum().backward()
    assert w.grad is not None and not counters["stats"]["unique_graphs"], dict(counters["stats"])


def test_a_directory_without_bundles_is_refused_naming_the_setting(tmp_path: Path) -> None:
    (tmp_path / "not-a-bundle").mkdir()  # e.g. an installed package, which carries no models/
    with pytest.raises(BundleError, match="EDITGAN_MODELS_DIR"):
        load_models(tmp_path, torch.device("cpu"))
