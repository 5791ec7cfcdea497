"""Opt-in reduced precision of the optimisation loops (engine/precision.py), on the CPU."""

from __future__ import annotations

import pytest
import torch

import engine.precision
from engine.bundle import Bundle
from engine.editing import EditingVector, optimize_edit, refine
from engine.errors import InputError
from engine.inversion import invert
from engine.params import EditParams, InvertParams, RefineParams
from engine.perceptual import ConvPerceptual, ConvPerceptualConfig, PerceptualLoss
from engine.precision import Precision, check_precision, ieee_float32, loop_precision, native_precisions
from tests.engine.test_editing import _edit_mask


@pytest.fixture
def perceptual() -> PerceptualLoss:
    torch.manual_seed(0)
    return ConvPerceptual(ConvPerceptualConfig(widths=(8, 16))).freeze()


def _target(bundle: Bundle) -> torch.Tensor:
    g = bundle.generator
    return g.synthesis(g.sample_w_plus(1, seed=11)).image.clamp(-1, 1)


def test_tf32_is_float32_on_the_cpu(tiny_bundle: Bundle, perceptual: PerceptualLoss) -> None:
    target = _target(tiny_bundle)
    exact = invert(tiny_bundle, target, perceptual=perceptual, params={"steps": 5})
    tf32 = invert(tiny_bundle, target, perceptual=perceptual, params={"steps": 5, "precision": "tf32"})
    assert torch.equal(exact.w_plus, tf32.w_plus) and tf32.params["precision"] == "tf32"


def test_bfloat16_inversion_follows_float32(tiny_bundle: Bundle, perceptual: PerceptualLoss) -> None:
    target = _target(tiny_bundle)
    exact = invert(tiny_bundle, target, perceptual=perceptual, params={"steps": 12})
    low = invert(tiny_bundle, target, perceptual=perceptual, params={"steps": 12, "precision": "bfloat16"})
    assert not torch.equal(exact.w_plus, low.w_plus)  # autocast did run
    assert low.w_plus.dtype == torch.float32 and low.rendering.image.dtype == torch.float32
    for key in ("reconstruction", "mse"):
        assert low.history[-1][key] == pytest.approx(exact.history[-1][key], rel=0.1)
    assert low.psnr == pytest.approx(exact.psnr, abs=0.5)


def test_bfloat16_edit_and_refinement_follow_float32(tiny_bundle: Bundle, perceptual: PerceptualLoss) -> None:
    w = tiny_bundle.generator.sample_w_plus(1, seed=2)
    mask = _edit_mask(tiny_bundle, w)
    runs = {
        p: optimize_edit(tiny_bundle, w, mask, perceptual=perceptual, params={"steps": 8, "precision": p})
        for p in ("float32", "bfloat16")
    }
    exact, low = runs["float32"], runs["bfloat16"]
    assert low.params["precision"] == "bfloat16" and not torch.equal(exact.w_plus, low.w_plus)
    assert low.history[-1]["total"] == pytest.approx(exact.history[-1]["total"], rel=0.15)
    # the returned rendering is a float32 render of the latent found
    assert low.rendering.image.dtype == torch.float32
    vec = EditingVector(delta=tiny_bundle.vectors["grow"] * 0.3, model="tiny", classes=low.vector.classes)
    refined = {
        p: refine(tiny_bundle, w, [(vec, 1.0)], steps=4, perceptual=perceptual, params={"precision": p})
        for p in ("float32", "bfloat16")
    }
    assert refined["bfloat16"].params["precision"] == "bfloat16"
    first = [r.history[0]["total"] for r in refined.values()]
    assert first[1] == pytest.approx(first[0], rel=0.1)  # the same starting point, measured in bfloat16


@pytest.mark.parametrize("params", [InvertParams, EditParams, RefineParams])
def test_an_unknown_precision_is_refused(params: type[InvertParams]) -> None:
    assert params.resolve(None, {"precision": "bfloat16"}).precision == "bfloat16"
    with pytest.raises(InputError, match="precision must be one of"):
        params.resolve(None, {"precision": "float16"})


def test_tf32_switches_are_restored_after_a_cuda_loop() -> None:
    # The flags are process-wide: a loop must leave them as it found them, even when it fails.
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    with pytest.raises(RuntimeError), loop_precision(torch.device("cuda"), "tf32"):
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        raise RuntimeError("a failing step")
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == before
    with loop_precision(torch.device("cpu"), "tf32"):
        assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == before


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_a_cuda_loop_other_than_tf32_runs_without_tf32_whatever_the_process_default(precision: Precision) -> None:
    # PyTorch's own default has TF32 on for cuDNN convolutions: "float32" must not inherit it.
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    try:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        with loop_precision(torch.device("cuda"), precision):
            assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def test_ieee_float32_turns_tf32_off_for_convolutions() -> None:
    before = torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cudnn.allow_tf32 = True
        ieee_float32()
        assert not torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cudnn.allow_tf32 = before


@pytest.mark.parametrize(
    ("capability", "expected"),
    [
        ((7, 0), ("float32",)),
        ((7, 5), ("float32",)),
        ((8, 0), ("float32", "tf32", "bfloat16")),
        ((9, 0), ("float32", "tf32", "bfloat16")),
    ],
)
def test_a_gpu_offers_reduced_precisions_from_ampere_on(capability: tuple[int, int], expected: tuple[str, ...]) -> None:
    # V100 (7.0) and T4 (7.5) have neither TF32 nor bfloat16 tensor cores; A100 (8.0) and H100 (9.0) both.
    assert native_precisions(torch.device("cuda:0"), capability) == expected


@pytest.mark.parametrize("onednn_bfloat16", [True, False])
def test_a_cpu_offers_bfloat16_where_onednn_has_it_and_runs_tf32_as_float32(
    monkeypatch: pytest.MonkeyPatch, onednn_bfloat16: bool
) -> None:
    # Whether this machine's CPU has AVX-512 decides nothing here: both kinds are stood in for.
    monkeypatch.setattr(engine.precision, "_cpu_bfloat16", lambda: onednn_bfloat16)
    cpu = torch.device("cpu")
    assert native_precisions(cpu) == (("float32", "bfloat16") if onednn_bfloat16 else ("float32",))
    assert check_precision(cpu, "float32") is None
    assert "float32" in (check_precision(cpu, "tf32") or "")
    if onednn_bfloat16:
        assert check_precision(cpu, "bfloat16") is None
    else:
        with pytest.raises(ValueError, match="needs a CPU with AVX-512"):
            check_precision(cpu, "bfloat16")


def test_this_cpus_answer_comes_from_onednn() -> None:
    assert engine.precision._cpu_bfloat16() == bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def test_bfloat16_on_a_gpu_without_its_tensor_cores_is_refused() -> None:
    gpu = torch.device("cuda:0")
    with pytest.raises(ValueError, match=r"compute capability 8.0 or later.*has 7.0"):
        check_precision(gpu, "bfloat16", (7, 0))
    assert "no TF32" in (check_precision(gpu, "tf32", (7, 0)) or "")
    assert check_precision(gpu, "bfloat16", (8, 0)) is None and check_precision(gpu, "tf32", (9, 0)) is None
