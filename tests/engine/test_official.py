from __future__ import annotations

import io
import json
import math
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.bundle import load_bundle
from engine.encoder import Encoder
from engine.errors import BundleError, CheckpointError, InputError
from engine.generator import Generator, GeneratorConfig
from engine.npyio import read_w_plus, write_npy
from engine.official import import_official
from engine.rendering import render
from engine.segmenter import PixelClassifier
from tests.conftest import TINY_ENCODER, randomise_batch_norm
from tests.engine.releases import write_car_release, write_release

TINY = GeneratorConfig(size=32, style_dim=32, n_mlp=2, channels=(32, 32, 16, 8))


def _tiny_release(root: Path, num_classes: int = 32, classifiers: int = 2) -> Path:
    torch.manual_seed(0)
    g = Generator(TINY)
    e = Encoder(TINY_ENCODER)
    cs = [PixelClassifier(TINY.feature_dim, (16, 8), num_classes) for _ in range(classifiers)]
    for c in cs:
        randomise_batch_norm(c)
    return write_release(
        root,
        g.state_dict(),
        e.state_dict(),
        [c.state_dict() for c in cs],
        im_size=(24, 32),
        n_latent=TINY.n_latent,
        style_dim=TINY.style_dim,
        num_class=num_classes,
    )


def test_tiny_release_imports_and_keeps_every_weight(tmp_path: Path) -> None:
    release = _tiny_release(tmp_path / "release")
    spec = import_official(release, tmp_path / "bundle")
    b = load_bundle(tmp_path / "bundle")
    g_state = torch.load(next((release / "checkpoint" / "stylegan_pretrain").glob("*.pt")), weights_only=True)["g_ema"]
    for k, v in g_state.items():
        assert torch.equal(b.generator.state_dict()[k], v), k
    c1 = torch.load(release / "checkpoint/datasetgan_pretrain/classifier/car_model_1.pth", weights_only=True)
    for k, v in c1["model_state_dict"].items():
        assert torch.equal(b.segmenter.state_dict()["models.1." + k.removeprefix("module.")], v), k
    assert spec.generator == TINY
    assert spec.segmenter.num_models == 2 and spec.segmenter.hidden_sizes == (16, 8)
    assert [c.name for c in spec.classes][:3] == ["background", "back_bumper", "bumper"]  # the car palette
    assert spec.regions["license"] == spec.regions["licenseplate"] == [13, 14]
    assert spec.geometry is not None and spec.geometry.box == (4, 0, 24, 32)
    # official steps=30 / embedding_steps=100 run range(1, steps): 29 and 99 updates
    assert spec.defaults["edit"]["steps"] == 29 and spec.defaults["invert"]["steps"] == 99
    assert spec.defaults["edit"]["rgb_weight"] == 15 and spec.defaults["edit"]["mse_weight"] == 5
    assert spec.defaults["edit"]["encoder_input"] == "unit"
    assert spec.vectors["wheel_enlarge"]["region"] == "wheel"
    vec = np.load(release / "static" / "editing_vectors" / "wheel_enlarge.npy")
    assert torch.equal(b.vectors["wheel_enlarge"], torch.from_numpy(vec[0]))
    assert b.examples is not None and b.examples.shape == (3, TINY.n_latent, TINY.style_dim)
    # the truncation centre is the official tool's: a seeded mean of mapped z, not zeros
    torch.testing.assert_close(b.generator.w_avg, b.generator.mean_latent(4086, seed=0))
    r = render(b, b.examples[:1])
    assert r.image.shape == (1, 3, 24, 32) and r.labels.shape == (1, 24, 32)


def test_unknown_categories_get_generic_classes(tmp_path: Path) -> None:
    release = _tiny_release(tmp_path / "release", num_classes=5)
    spec = import_official(release, tmp_path / "bundle", name="cars-5")
    assert spec.name == "cars-5" and len(spec.classes) == 5
    assert len({c.color for c in spec.classes}) == 5 and spec.regions == {}


def test_missing_classifier_names_the_file(tmp_path: Path) -> None:
    release = _tiny_release(tmp_path / "release")
    (release / "checkpoint/datasetgan_pretrain/classifier/car_model_1.pth").unlink()
    with pytest.raises(CheckpointError, match="car_model_1.pth"):
        import_official(release, tmp_path / "bundle")
    assert not (tmp_path / "bundle").exists()


def test_wrong_shape_names_file_and_key(tmp_path: Path) -> None:
    release = _tiny_release(tmp_path / "release")
    path = release / "checkpoint/encoder_pretrain/BEST_loss2.841871976852417.pth"
    state = torch.load(path, weights_only=True)
    state["model_state_dict"]["FPN_module.smooth2.weight"] = torch.zeros(1, 1, 3, 3)
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"BEST_loss.*FPN_module\.smooth2\.weight \[1, 1, 3, 3\]"):
        import_official(release, tmp_path / "bundle")


def test_missing_and_unexpected_keys_are_listed(tmp_path: Path) -> None:
    release = _tiny_release(tmp_path / "release")
    path = next((release / "checkpoint" / "stylegan_pretrain").glob("*.pt"))
    state = torch.load(path, weights_only=True)
    del state["g_ema"]["to_rgb1.bias"]
    state["g_ema"]["extra.weight"] = torch.zeros(1)
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"missing keys: to_rgb1\.bias; unexpected keys: extra\.weight"):
        import_official(release, tmp_path / "bundle")
    torch.save({"generator": state["g_ema"]}, path)
    with pytest.raises(CheckpointError, match="expected a dict with key 'g_ema'"):
        import_official(release, tmp_path / "bundle")


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_pickled_checkpoint_code_is_never_run(tmp_path: Path) -> None:
    release = _tiny_release(tmp_path / "release")
    path = next((release / "checkpoint" / "stylegan_pretrain").glob("*.pt"))
    path.write_bytes(pickle.dumps(Path("/etc/passwd")))  # an arbitrary object: weights_only must refuse it
    with pytest.raises(CheckpointError, match="not a readable weights-only checkpoint"):
        import_official(release, tmp_path / "bundle")


def test_pickled_vector_is_refused(tmp_path: Path) -> None:
    release = _tiny_release(tmp_path / "release")
    bad = {"edit_vector": np.zeros((TINY.n_latent, TINY.style_dim), np.float32), "roi_ids": [1]}
    (release / "static/editing_vectors/evil.npy").write_bytes(pickle.dumps(bad))
    with pytest.raises(InputError, match="not a .npy file"):
        import_official(release, tmp_path / "bundle")


def test_npy_vectors_are_parsed_safely() -> None:
    good = torch.randn(TINY.n_latent, TINY.style_dim)
    for raw in (write_npy(good), write_npy(good, batch_axis=True)):
        assert torch.equal(read_w_plus(raw, TINY.n_latent, TINY.style_dim), good)
    buf = io.BytesIO()
    np.save(buf, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(InputError, match="unreadable|floating"):
        read_w_plus(buf.getvalue(), TINY.n_latent, TINY.style_dim)
    with pytest.raises(InputError, match="does not fit this model"):
        read_w_plus(write_npy(torch.zeros(3, TINY.style_dim)), TINY.n_latent, TINY.style_dim)
    with pytest.raises(InputError, match="NaN"):
        read_w_plus(write_npy(torch.full((TINY.n_latent, TINY.style_dim), float("nan"))), TINY.n_latent, TINY.style_dim)
    with pytest.raises(InputError, match="unreadable"):
        read_w_plus(write_npy(good)[:-10], TINY.n_latent, TINY.style_dim)
    with pytest.raises(InputError, match="bytes follow the array"):
        read_w_plus(write_npy(good) + b"\0", TINY.n_latent, TINY.style_dim)
    too_large = np.zeros((TINY.n_latent, TINY.style_dim))  # float64, finite, beyond float32 once cast
    too_large[0, 5] = 1e300
    buf = io.BytesIO()
    np.save(buf, too_large)
    with pytest.raises(InputError, match="float32's range"):
        read_w_plus(buf.getvalue(), TINY.n_latent, TINY.style_dim)


def test_missing_release_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="does not exist"):
        import_official(tmp_path / "nope", tmp_path / "bundle")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BundleError, match="need exactly one"):
        import_official(tmp_path / "empty", tmp_path / "bundle")


@pytest.mark.slow
def test_official_512px_car_release_imports_loads_and_renders(tmp_path: Path) -> None:
    """The issue's acceptance check: the CLI on a full-size synthetic release, then a render on the CPU."""
    release = write_car_release(tmp_path / "release")
    out = subprocess.run(
        [sys.executable, "-m", "service.cli", "import-official", str(release), str(tmp_path / "car")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert summary["resolution"] == 512 and summary["classes"] == 32 and summary["classifiers"] == 10
    assert summary["vectors"] == ["frontlight_enlarge", "license_plate_disappear", "wheel_enlarge"]
    b = load_bundle(tmp_path / "car")
    assert b.spec.generator.feature_dim == 6016 and b.spec.n_latent == 16
    r = render(b, b.generator.sample_w_plus(1, seed=0, psi=0.7))
    assert r.image.shape == (1, 3, 384, 512)
    assert r.labels.shape == r.uncertainty.shape == (1, 384, 512)
    assert bool(torch.isfinite(r.image).all()) and bool(torch.isfinite(r.uncertainty).all())
    assert int(r.labels.min()) >= 0 and int(r.labels.max()) < 32
    assert float(r.uncertainty.min()) > -1e-4  # a divergence: non-negative up to rounding
    assert float(r.uncertainty.max()) <= math.log(10) + 1e-4  # and at most log M

    # a bad edit to the release is reported by the CLI with the file, as a clean exit code
    (release / "checkpoint/datasetgan_pretrain/classifier/car_model_9.pth").unlink()
    out = subprocess.run(
        [sys.executable, "-m", "service.cli", "import-official", str(release), str(tmp_path / "car2")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 2 and "car_model_9.pth" in out.stderr


def test_vector_names_must_be_what_requests_can_name(tmp_path: Path) -> None:
    release = _tiny_release(tmp_path / "release")
    vectors = release / "static/editing_vectors"
    (vectors / "wheel_enlarge.npy").rename(vectors / "Wheel_Enlarge.npy")  # an edit request could not name it
    with pytest.raises(BundleError, match="vector name 'Wheel_Enlarge' must match .*rename the file"):
        import_official(release, tmp_path / "bundle")
    assert not (tmp_path / "bundle").exists()
