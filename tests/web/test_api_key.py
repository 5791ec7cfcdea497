"""The editor with API keys on: the "job details" link opens the job's JSON fetched with the key (a plain link
would get 401). Its own gateway on the tiny test model with keys and no worker, so the job stays queued."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image
from selenium.webdriver.common.by import By

from tests.processes import gateway_alone
from tests.web.page import EditorPage

KEY = "web-secret-" + "k" * 20
KEY_REDIS_URL = os.environ.get("EDITGAN_TEST_WEB_KEY_REDIS_URL", "redis://127.0.0.1:6379/13")


@pytest.fixture(scope="module")
def editor_url(chromium: tuple[str, str], tiny_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Overrides the directory's `editgan up`: a keyed gateway (no worker), on its own Redis db."""
    log = tmp_path_factory.mktemp("web-keys") / "gateway.log"
    with gateway_alone(KEY_REDIS_URL, tiny_models, log, EDITGAN_API_KEYS=f"web:{KEY}") as base_url:
        yield base_url


def test_job_details_open_with_the_key(page: EditorPage, api: httpx.Client, tmp_path: Path) -> None:
    page.open()
    page.fill("api-key", KEY)
    page.el("api-key").send_keys("\n")  # "change" fires: the page keeps the key
    image = tmp_path / "i.png"
    Image.new("RGB", (32, 32), (200, 120, 90)).save(image)
    page.el("image-file").send_keys(str(image))
    page.click("invert-button")
    href = page.wait(lambda: page.attr("job-link", "href") or "", what="the job link")
    assert api.get(href).status_code == 401  # what following the plain link would get

    page.el("job-link").click()
    page.wait(lambda: len(page.driver.window_handles) == 2, what="a new tab")
    page.driver.switch_to.window(page.driver.window_handles[1])
    body = page.wait(lambda: page.driver.find_element(By.TAG_NAME, "body").text, what="the job's JSON")
    job = json.loads(body)
    assert href.endswith(job["job_id"]) and job["kind"] == "invert" and job["status"] == "queued"
