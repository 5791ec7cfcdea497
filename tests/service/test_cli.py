"""The `editgan` model tools, run as real processes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from engine.bundle import Bundle, save_bundle
from tests.conftest import save_tiny_model


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "service.cli", *args], capture_output=True, text=True, check=False)


def test_info_and_render(tiny_bundle: Bundle, tmp_path: Path) -> None:
    save_bundle(tiny_bundle, tmp_path / "tiny")
    info = _run("info", str(tmp_path / "tiny"))
    assert info.returncode == 0, info.stderr
    summary = json.loads(info.stdout)
    assert summary["name"] == "tiny" and summary["n_latent"] == 8 and summary["examples"] == 2
    assert summary["parameters"]["generator"] == sum(p.numel() for p in tiny_bundle.generator.parameters())

    out = _run("render", str(tmp_path / "tiny"), str(tmp_path / "out"), "--count", "2", "--seed", "5")
    assert out.returncode == 0, out.stderr
    for seed in (5, 6):
        for kind, mode in (("image", "RGB"), ("mask", "RGB"), ("uncertainty", "L")):
            img = Image.open(tmp_path / "out" / f"sample_{seed}_{kind}.png")
            assert img.size == (32, 24) and img.mode == mode  # the content box of the tiny geometry


def test_errors_are_one_line_and_exit_2(tmp_path: Path) -> None:
    out = _run("info", str(tmp_path / "missing"))
    assert out.returncode == 2
    assert out.stderr.startswith("editgan: error:") and "bundle.json is missing" in out.stderr
    # A bad setting is named as it is set, in one line, whichever command reads the settings.
    env = os.environ | {"EDITGAN_PORT": "abc"}
    bad = subprocess.run([sys.executable, "-m", "service.cli", "healthcheck"], env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.startswith("editgan: error: invalid settings: EDITGAN_PORT:")
    assert "Traceback" not in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


def test_figure_rows_and_columns(tmp_path: Path) -> None:
    save_tiny_model(tmp_path)  # with its own conv perceptual network: no LPIPS backbone file needed
    images = []
    for k in range(2):
        path = tmp_path / f"in{k}.png"
        Image.new("RGB", (40, 30), (40 + 100 * k, 90, 160)).save(path)
        images.append(str(path))
    out = _run(
        "figure", str(tmp_path / "tiny"), str(tmp_path / "fig.png"), "--images", *images,
        "--paint", "grow:c1", "--vectors", "grow:0.5", "grow:2", "--zoom", "1",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    figure = Image.open(tmp_path / "fig.png")
    # 5 fixed columns + 2 vector columns of the 32 x 24 content box, 4 px gaps, a 28 px header
    assert figure.size == (7 * (32 + 4) + 4, 28 + 2 * (24 + 4) + 4) == tuple(json.loads(out.stdout)["size"])
    bad = _run("figure", str(tmp_path / "tiny"), str(tmp_path / "x.png"), "--images", *images, "--paint", "nope")
    assert bad.returncode == 2 and "--paint" in bad.stderr


def test_train_perceptual_writes_a_loadable_network(tmp_path: Path) -> None:
    out = _run("train", "perceptual", "--out", str(tmp_path / "p"), "--steps", "2", "--batch", "2", "--threads", "1")
    assert out.returncode == 0, out.stderr
    record = json.loads(out.stdout.strip().splitlines()[-1])
    from engine.train.perceptual import load_trained

    network, saved = load_trained(tmp_path / "p")
    assert saved == record and record["training"]["steps"] == 2
    assert not any(p.requires_grad for p in network.parameters())
    assert (tmp_path / "p" / "perceptual.safetensors").stat().st_mode & 0o777 == 0o644  # readable by a container
    again = _run("train", "perceptual", "--out", str(tmp_path), "--steps", "1")  # holds `p`: not a run of its own
    assert again.returncode == 2 and "refusing to replace" in again.stderr and (tmp_path / "p").is_dir()


def test_worker_without_redis_says_where_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # In process, with the connection's minute of retries cut to none: the message is the subject here.
    # The URL's password must not reach the log.
    from redis import Redis

    import workers.worker
    from service.cli import main

    with socket.socket() as s:  # a port that nothing listens on: connections are refused at once
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    save_tiny_model(tmp_path / "models")
    monkeypatch.setenv("REDIS_URL", f"redis://:hunter2@127.0.0.1:{port}/0")
    monkeypatch.setenv("EDITGAN_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setattr(workers.worker, "worker_redis", lambda url: Redis.from_url(url, socket_connect_timeout=1))
    assert main(["worker", "--burst"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"editgan: error: Redis at 127.0.0.1:{port} is unreachable:"), err
    assert len(err.strip().splitlines()) == 1 and "hunter2" not in err and "Traceback" not in err
