"""The editor's files themselves (no browser needed): offline, shipped in the package, run by CI."""

from __future__ import annotations

import re
import tomllib

from service.routes.editor import STATIC_DIR
from tests.web.page import ROOT

FILES = sorted(p for p in STATIC_DIR.rglob("*") if p.is_file())


def test_the_editor_loads_nothing_from_another_origin() -> None:
    """No CDN, no font service: every URL in the page and its modules is relative to the service."""
    assert {p.suffix for p in FILES} == {".html", ".css", ".js"}
    for path in FILES:
        text = path.read_text()
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text, flags=re.I), path
        for target in re.findall(r"""(?:import|from)\s*["']([^"']+)["']""", text):  # ES module imports
            assert (path.parent / target).resolve().is_file(), (path, target)


def test_the_editor_is_package_data_and_ci_installs_the_browser() -> None:
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["service"]
    for path in FILES:
        assert any(path.relative_to(STATIC_DIR.parent).match(p) for p in patterns), path
    ci = (ROOT / ".ci" / "run").read_text()
    for package in ("chromium", "chromium-driver"):  # queued for apt-get when missing, before the tests run
        assert f"missing+=({package})" in ci, package
    assert ci.index('apt-get install -y -qq "${missing[@]}"') < ci.index("\nmake test")
