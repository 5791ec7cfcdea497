"""The editor with `EDITGAN_PUBLIC_READS=false`: nothing loads until the key is typed in, then the catalogue
does, and downloads (a plain link would send no key) come through the page with it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from selenium.webdriver.common.by import By

from tests.processes import gateway_alone
from tests.web.page import EditorPage

KEY = "web-private-" + "p" * 20
PRIVATE_REDIS_URL = os.environ.get("EDITGAN_TEST_WEB_PRIVATE_REDIS_URL", "redis://127.0.0.1:6379/15")


@pytest.fixture(scope="module")
def editor_url(chromium: tuple[str, str], tiny_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Overrides the directory's `editgan up`: a gateway whose every read needs the key (no worker); its
    /healthz answers without one, as probes need."""
    log = tmp_path_factory.mktemp("web-private") / "gateway.log"
    private = {"EDITGAN_API_KEYS": KEY, "EDITGAN_PUBLIC_READS": "false"}
    with gateway_alone(PRIVATE_REDIS_URL, tiny_models, log, **private) as base_url:
        yield base_url


def test_the_key_loads_the_catalogue_and_downloads_carry_it(page: EditorPage, editor_url: str) -> None:
    page.open()
    assert page.wait(page.messages, what="the refusal").startswith("unauthorized: ")
    assert not page.driver.find_elements(By.CSS_SELECTOR, "#model option")
    page.driver.find_element(By.CSS_SELECTOR, "#messages button").click()
    page.fill("api-key", KEY)
    page.el("api-key").send_keys("\n")  # "change": the page loads what the key may read
    page.wait(lambda: page.driver.find_elements(By.CSS_SELECTOR, "#model option"), what="the model list")
    link = page.wait(lambda: page.driver.find_element(By.CSS_SELECTOR, '#vector-list a[download="grow.npy"]'))
    assert httpx.get(editor_url + (link.get_attribute("href") or "").removeprefix(editor_url)).status_code == 401
    target = page.downloads / "grow.npy"
    link.click()
    page.wait(lambda: target.is_file() and target.stat().st_size > 0, what="the .npy download")
    expected = httpx.get(f"{editor_url}/vectors/tiny/grow/npy", headers={"Authorization": f"Bearer {KEY}"})
    assert expected.status_code == 200 and target.read_bytes() == expected.content
    assert page.messages() == ""
