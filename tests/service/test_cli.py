"""The `editgan` model tools, run as real processes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from PIL import Image

from engine.bundle import Bundle, save_bundle


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
