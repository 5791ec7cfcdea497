"""Browser tests: Debian's headless Chromium, driven by selenium through chromedriver, against `editgan up`.

The service is the real thing on the shipped demo model (gateway, one worker, embedded Redis in a scratch
directory), started once for the directory. Each test gets a fresh browser whose downloads land in its
tmp_path; screenshots go to EDITGAN_TEST_ARTIFACTS (default tests/web/artifacts/, git-ignored), one folder per
test, with a `failure.png` and the browser's console log when a test fails.

These tests skip only when `chromium` or `chromedriver` is not installed (`.ci/run` installs both).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

from tests.processes import free_port, start, stop, wait_ready
from tests.web.page import ARTIFACTS, EditorPage

FAILED = pytest.StashKey[bool]()  # set by the report hook: did the test's call phase fail?


@pytest.fixture(scope="session")
def chromium() -> tuple[str, str]:
    """(browser, driver) paths; the only reason these tests may skip is their absence."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if browser is None or driver is None:
        missing = " and ".join(n for n, p in (("chromium", browser), ("chromedriver", driver)) if p is None)
        pytest.skip(f"{missing} not installed: apt-get install chromium chromium-driver (.ci/run does)")
    return browser, driver


@pytest.fixture(scope="session")
def editor_url(chromium: tuple[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`editgan up` on the shipped model, on a free port, with its own embedded Redis."""
    scratch = tmp_path_factory.mktemp("editor")
    port = free_port()
    env = {
        "REDIS_URL": "",
        "EDITGAN_DATA_DIR": str(scratch / "data"),
        "EDITGAN_PORT": str(port),
        "EDITGAN_THREADS": "1",
        "EDITGAN_LOG_LEVEL": "warning",
    }
    log = scratch / "up.log"
    up = start(["up"], env, log)
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base_url, [up], log)
        yield base_url
    finally:
        stop(up)


@pytest.fixture
def api(editor_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=editor_url, timeout=60) as client:
        yield client


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    report: pytest.TestReport = yield
    if report.when == "call":
        item.stash[FAILED] = report.failed
    return report


@pytest.fixture
def page(
    chromium: tuple[str, str], editor_url: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[EditorPage]:
    """A fresh headless Chromium on the editor; downloads go to tmp_path/downloads."""
    browser, driver_path = chromium
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1150"):
        options.add_argument(arg)
    options.add_experimental_option(
        "prefs", {"download.default_directory": str(downloads), "download.prompt_for_download": False}
    )
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(driver_path))
    artifacts = ARTIFACTS / request.node.name
    shutil.rmtree(artifacts, ignore_errors=True)
    artifacts.mkdir(parents=True)
    editor = EditorPage(driver, editor_url, downloads, artifacts)
    try:
        yield editor
    finally:
        if request.node.stash.get(FAILED, True):
            driver.save_screenshot(str(artifacts / "failure.png"))
            console = "\n".join(str(entry) for entry in driver.get_log("browser"))
            (artifacts / "console.log").write_text(console)
        driver.quit()
