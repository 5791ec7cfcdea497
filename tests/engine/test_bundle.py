from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from engine.bundle import VECTOR_NAME_PATTERN, Bundle, BundleSpec, load_bundle, save_bundle
from engine.checkpoints import sha256_file
from engine.errors import BundleError, CheckpointError, EngineError
from engine.images import colorize, image_to_uint8
from engine.rendering import render
from schemas.edits import VECTOR_NAME


def _states(b: Bundle) -> dict[str, torch.Tensor]:
    nets = {"g": b.generator, "s": b.segmenter, "e": b.encoder}
    out = {f"{n}.{k}": v for n, net in nets.items() if net is not None for k, v in net.state_dict().items()}
    out["w_avg"] = b.generator.w_avg
    return out


def test_round_trip_is_bit_identical(tiny_bundle: Bundle, tmp_path: Path) -> None:
    spec = save_bundle(tiny_bundle, tmp_path / "b")
    loaded = load_bundle(tmp_path / "b")
    before, after = _states(tiny_bundle), _states(loaded)
    assert before.keys() == after.keys()
    for k in before:
        assert torch.equal(before[k], after[k]), k
    assert loaded.vectors.keys() == tiny_bundle.vectors.keys()
    assert torch.equal(loaded.vectors["grow"], tiny_bundle.vectors["grow"])
    assert loaded.examples is not None and tiny_bundle.examples is not None
    assert torch.equal(loaded.examples, tiny_bundle.examples)
    assert (
        loaded.spec.to_json()
        == BundleSpec.from_json(json.loads((tmp_path / "b" / "bundle.json").read_text())).to_json()
    )
    # saving the loaded bundle again writes byte-identical files
    save_bundle(loaded, tmp_path / "again")
    for name, digest in spec.files.items():
        assert sha256_file(tmp_path / "again" / name) == digest, name
    # and the two render the same pixels
    w = tiny_bundle.generator.sample_w_plus(1, seed=4)
    a, b = render(tiny_bundle, w), render(loaded, w)
    assert torch.equal(a.image, b.image) and torch.equal(a.labels, b.labels)


def test_loaded_models_are_frozen_and_in_eval_mode(tiny_bundle: Bundle, tmp_path: Path) -> None:
    save_bundle(tiny_bundle, tmp_path / "b")
    b = load_bundle(tmp_path / "b")
    for net in (b.generator, b.segmenter, b.encoder):
        assert net is not None and not net.training
        assert not any(p.requires_grad for p in net.parameters())


def test_networks_go_to_the_device_and_vectors_stay_on_the_cpu(tiny_bundle: Bundle, tmp_path: Path) -> None:
    # "meta" stands in for a GPU here: a device that is not the CPU. The gateway adds vectors on its event
    # loop, which must not issue GPU work.
    save_bundle(tiny_bundle, tmp_path / "b")
    b = load_bundle(tmp_path / "b", "meta")
    assert b.device.type == "meta" and next(b.generator.parameters()).device.type == "meta"
    assert b.vectors and all(v.device.type == "cpu" for v in b.vectors.values())


def test_render_crops_to_the_content_box(tiny_bundle: Bundle) -> None:
    r = render(tiny_bundle, tiny_bundle.generator.sample_w_plus(2, seed=0))
    assert r.image.shape == (2, 3, 24, 32)  # geometry: rows 4:28 of the 32 px canvas
    assert r.labels.shape == r.uncertainty.shape == (2, 24, 32)
    assert int(r.labels.max()) < len(tiny_bundle.spec.classes)
    assert image_to_uint8(r.image).shape == (2, 24, 32, 3)
    assert colorize(r.labels[0], tiny_bundle.spec.classes).shape == (24, 32, 3)


def test_missing_file_is_named(tiny_bundle: Bundle, tmp_path: Path) -> None:
    save_bundle(tiny_bundle, tmp_path / "b")
    (tmp_path / "b" / "segmenter.safetensors").unlink()
    with pytest.raises(BundleError, match="segmenter.safetensors is missing"):
        load_bundle(tmp_path / "b")
    with pytest.raises(BundleError, match="bundle.json is missing"):
        load_bundle(tmp_path / "nowhere")


def test_checksum_mismatch_is_refused(tiny_bundle: Bundle, tmp_path: Path) -> None:
    save_bundle(tiny_bundle, tmp_path / "b")
    path = tmp_path / "b" / "generator.safetensors"
    state = load_file(str(path))
    state["input.input"] = state["input.input"] + 1
    save_file(state, str(path))
    with pytest.raises(BundleError, match="checksum mismatch for generator.safetensors"):
        load_bundle(tmp_path / "b")


def test_wrong_shape_tensor_names_file_and_key(tiny_bundle: Bundle, tmp_path: Path) -> None:
    save_bundle(tiny_bundle, tmp_path / "b")
    root = tmp_path / "b"
    state = load_file(str(root / "segmenter.safetensors"))
    state["models.1.layers.3.weight"] = torch.zeros(3, 3)
    save_file(state, str(root / "segmenter.safetensors"))
    meta = json.loads((root / "bundle.json").read_text())
    meta["files"]["segmenter.safetensors"] = sha256_file(root / "segmenter.safetensors")  # a consistent forgery
    (root / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"segmenter.safetensors.*models\.1\.layers\.3\.weight \[3, 3\]"):
        load_bundle(root)


def test_malformed_bundle_json_is_refused(tiny_bundle: Bundle, tmp_path: Path) -> None:
    save_bundle(tiny_bundle, tmp_path / "b")
    meta_path = tmp_path / "b" / "bundle.json"
    meta = json.loads(meta_path.read_text())
    for breakage, message in [
        ({"format": "other"}, "not an editgan-bundle"),
        ({"n_latent": 99}, "n_latent=99"),
        ({"regions": {"bad": [99]}}, "region 'bad'"),
        ({"classes": meta["classes"][:-1]}, "classes must have ids"),
        ({"generator": dict(meta["generator"], size=48)}, "power of two"),
        ({"defaults": {"edit": {"steps": -3}}}, "defaults.edit: steps must be"),
        ({"defaults": {"refine": {"lr_typo": 1}}}, "unknown RefineParams keys"),
    ]:
        meta_path.write_text(json.dumps(meta | breakage))
        with pytest.raises(BundleError, match=message):
            load_bundle(tmp_path / "b")
    for text, message in (("{not json", "not valid JSON"), ("[]", "JSON object, not list")):
        meta_path.write_text(text)
        with pytest.raises(BundleError, match=message):
            load_bundle(tmp_path / "b")
    meta_path.write_text(json.dumps(meta | {"regions": [1, 2]}))
    with pytest.raises(BundleError, match="malformed"):
        load_bundle(tmp_path / "b")
    meta_path.write_bytes(b'{"name": "\xff"}')
    with pytest.raises(BundleError, match="not valid JSON"):
        load_bundle(tmp_path / "b")


def test_saving_replaces_only_an_empty_directory_or_a_bundle(tiny_bundle: Bundle, tmp_path: Path) -> None:
    """A mistyped output path must not delete what is there (`import-official REL models`, say)."""
    (tmp_path / "models" / "other").mkdir(parents=True)
    (tmp_path / "models" / "notes.txt").write_text("precious")
    (tmp_path / "afile").write_text("precious too")
    for target in (tmp_path / "models", tmp_path / "afile"):
        with pytest.raises(EngineError, match="refusing to replace"):
            save_bundle(tiny_bundle, target)
    assert (tmp_path / "models" / "notes.txt").read_text() == "precious" and (tmp_path / "models" / "other").is_dir()
    assert (tmp_path / "afile").read_text() == "precious too"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "models"]  # no temporary left behind
    (tmp_path / "empty").mkdir()
    save_bundle(tiny_bundle, tmp_path / "empty")  # an empty directory, then a bundle over a bundle
    save_bundle(tiny_bundle, tmp_path / "empty")
    load_bundle(tmp_path / "empty")


def test_failed_save_keeps_the_old_bundle(tiny_bundle: Bundle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    save_bundle(tiny_bundle, tmp_path / "b")
    before = json.loads((tmp_path / "b" / "bundle.json").read_text())
    tiny_bundle.generator.input.input.data.add_(1.0)

    calls = {"n": 0}
    real = save_file

    def failing(tensors: dict[str, torch.Tensor], filename: str, metadata: object = None) -> None:
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError("disk full")
        real(tensors, filename)

    monkeypatch.setattr("engine.bundle.save_file", failing)
    with pytest.raises(OSError, match="disk full"):
        save_bundle(tiny_bundle, tmp_path / "b")
    assert [p.name for p in tmp_path.iterdir()] == ["b"]  # no temporary directory left behind
    assert json.loads((tmp_path / "b" / "bundle.json").read_text()) == before
    load_bundle(tmp_path / "b")  # still intact, checksums included


def test_bundle_perceptual_network_travels_with_it(tiny_bundle: Bundle, tmp_path: Path) -> None:
    from engine.perceptual import ConvPerceptual, ConvPerceptualConfig

    config = ConvPerceptualConfig(widths=(4, 8))
    net = ConvPerceptual(config)
    tiny_bundle.spec.perceptual = {"kind": "conv", "config": config.to_dict()}
    tiny_bundle.perceptual_state = net.state_dict()
    save_bundle(tiny_bundle, tmp_path / "b")
    loaded = load_bundle(tmp_path / "b")
    loss = loaded.perceptual()
    x, y = torch.rand(2, 3, 32, 32) * 2 - 1, torch.rand(2, 3, 32, 32) * 2 - 1
    torch.testing.assert_close(loss(x, y), net.freeze()(x, y))


def test_lpips_bundle_without_backbone_says_which_file(
    tiny_bundle: Bundle, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from engine.errors import MissingWeightsError

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(MissingWeightsError, match="vgg16-397923af.pth"):
        tiny_bundle.perceptual()


def test_vector_names_are_lower_case_on_save_and_load(tiny_bundle: Bundle, tmp_path: Path) -> None:
    # As the service's requests spell them (`schemas.edits.VECTOR_NAME`): a shipped "Smile" could never be
    # applied, and would sit beside a registry "smile".
    assert VECTOR_NAME_PATTERN.pattern == VECTOR_NAME
    bad = dataclasses.replace(tiny_bundle, vectors={"Smile": next(iter(tiny_bundle.vectors.values()))})
    with pytest.raises(BundleError, match="vector name 'Smile' must match"):
        save_bundle(bad, tmp_path / "refused")
    assert not (tmp_path / "refused").exists()
    save_bundle(tiny_bundle, tmp_path / "b")
    root = tmp_path / "b"
    path = root / "vectors.safetensors"
    save_file({k.upper(): v for k, v in load_file(str(path)).items()}, str(path))
    meta = json.loads((root / "bundle.json").read_text())
    meta["files"]["vectors.safetensors"] = sha256_file(path)  # a consistent forgery
    (root / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="vector name '[A-Z_]+' must match"):
        load_bundle(root)
