"""README's promises: the two set-up commands exist, every setting is listed, the curl walkthrough works."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from schemas.settings import client_env_names, env_names
from tests.processes import free_port, start, stop, wait_ready

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_the_two_setup_commands_are_make_targets() -> None:
    setup = README.split("## Set-up: the two commands", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"```bash\n(.+?)\n```", setup)
    assert commands == ["make up", "make test"]
    targets = set(re.findall(r"^([a-z]+):", (ROOT / "Makefile").read_text(), flags=re.M))
    assert {"up", "test"} <= targets
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_every_setting_is_documented() -> None:
    documented = set(re.findall(r"^\| `([A-Z_]+)` \|", README, flags=re.M))
    assert documented == set(env_names()) | set(client_env_names())


def test_the_curl_walkthrough_runs_as_written_against_editgan_up(tmp_path: Path) -> None:
    block = README.split("<!-- walkthrough -->", 1)[1].split("```bash\n", 1)[1].split("\n```", 1)[0]
    port = free_port()
    script = block.replace("BASE=http://127.0.0.1:8000", f"BASE=http://127.0.0.1:{port}", 1)
    assert script != block, "the walkthrough must start with BASE=http://127.0.0.1:8000"
    for name in ("examples", ".venv"):  # the walkthrough's relative paths, from a scratch directory
        (tmp_path / name).symlink_to(ROOT / name)
    env = {"EDITGAN_PORT": str(port), "EDITGAN_DATA_DIR": str(tmp_path / "data"), "REDIS_URL": ""}
    log = tmp_path / "up.log"
    up = start(["up"], env, log)
    try:
        wait_ready(f"http://127.0.0.1:{port}", [up], log)
        run = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300
        )
        assert run.returncode == 0, run.stderr + run.stdout + log.read_text()[-3000:]
    finally:
        stop(up)
    # every file the walkthrough promises exists and is what it claims to be
    assert (tmp_path / "edited_image.png").read_bytes().startswith(b"\x89PNG")
    assert (tmp_path / "wide_mouth.npy").read_bytes().startswith(b"\x93NUMPY")
    assert run.stdout.strip().startswith("/results/img_")
