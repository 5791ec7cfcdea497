"""Cancelling an edit from the page, and the API's `{code, message}` errors shown as readable messages."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
from selenium.webdriver.common.by import By

from schemas.settings import SHIPPED_MODELS
from tests.processes import gateway_alone
from tests.service.test_readiness import READY_REDIS_URL
from tests.web.page import EditorPage


def test_api_errors_show_in_the_page_and_a_running_edit_can_be_cancelled(
    page: EditorPage, api: httpx.Client, tmp_path: Path
) -> None:
    model: dict[str, Any] = api.get("/models").json()["models"][0]
    page.open()

    # An upload that is not an image: the gateway's 415 reaches the person as its code and message.
    fake = tmp_path / "not-an-image.png"
    fake.write_text("just text")
    page.el("image-file").send_keys(str(fake))
    page.click("invert-button")
    message = page.wait(page.messages, what="an error message")
    assert message.startswith("unsupported_media_type: ") and "Dismiss" in message
    assert re.search(r"\(request [0-9a-f]{16}\)", message), message  # the id a report quotes
    assert page.text("latent-id") == "none yet"
    page.driver.find_element(By.CSS_SELECTOR, "#messages button").click()
    assert page.messages() == ""

    # Editing an unpainted mask is refused in the page, with a message, before anything is sent.
    page.click("sample-button")
    page.wait(lambda: page.text("latent-id").startswith("lat_"), what="a random sample")
    page.click("edit-button")
    assert page.wait(page.messages, what="a message").startswith("nothing_painted: ")
    page.driver.find_element(By.CSS_SELECTOR, "#messages button").click()

    # A long edit: the bar follows the job's own progress, and Cancel stops it at its next step.
    page.choose_class("hair")
    page.stroke([(20, 2), (44, 2)])
    page.fill("edit-steps", "2000")
    page.click("edit-button")
    page.wait(lambda: 0 < page.progress() < 100, 120, "progress between 0 and 100 %")
    shown = page.progress()
    job = api.get(page.attr("job-link", "href") or "").json()
    assert job["kind"] == "optimize" and job["status"] == "started" and job["progress"]["total"] == 2000
    assert shown <= 100 * job["progress"]["step"] / 2000  # the page shows what the job reported, never ahead
    # While it runs, the model and the vector sliders stay as they are: the result belongs to them
    assert not page.el("model").is_enabled()
    sliders = page.driver.find_elements(By.CSS_SELECTOR, "#vector-list input[type=range]")
    assert sliders and not any(s.is_enabled() for s in sliders)
    # A dropped connection is waited out: the page keeps following the job once the network is back
    page.driver.set_network_conditions(offline=True, latency=0, download_throughput=0, upload_throughput=0)
    page.wait(lambda: "waiting for the service" in page.text("job-label"), 20, "the page noticing the outage")
    page.driver.set_network_conditions(offline=False, latency=0, download_throughput=-1, upload_throughput=-1)
    before = page.progress()
    page.wait(lambda: page.progress() > before, 60, "progress again after the outage")
    assert page.el("cancel-job").is_enabled() and page.messages() == ""
    page.click("cancel-job")
    assert page.wait_job("Editing", timeout=60) == "Editing: cancelled."
    job = api.get(page.attr("job-link", "href") or "").json()
    assert job["status"] == "stopped" and job["error"]["code"] == "cancelled"
    assert job["progress"]["step"] < 2000
    assert page.attr("after-image", "src") is None and page.messages() == ""  # a cancel is not an error
    assert page.el("edit-button").is_enabled() and not page.el("cancel-job").is_enabled()
    page.screenshot("cancelled")
    assert model["name"] in page.text("model")


def test_a_job_that_no_worker_serves_says_so(page: EditorPage, tmp_path: Path) -> None:
    """A gateway without a worker (a fleet scaled to zero): the queued job's label says why it does not start."""
    with gateway_alone(READY_REDIS_URL, SHIPPED_MODELS, tmp_path / "gateway.log") as base_url:
        page.base_url = base_url
        page.open()
        page.click("sample-button")
        page.wait(lambda: page.text("latent-id").startswith("lat_"), what="a random sample")
        page.choose_class("hair")
        page.stroke([(20, 2), (44, 2)])
        page.click("edit-button")
        label = page.wait(lambda: "no worker" in page.text("job-label") and page.text("job-label"), what="the hint")
        assert label.startswith("Editing: queued (position 0)") and "the job starts when one does" in label
        page.click("cancel-job")
        assert page.wait_job("Editing", timeout=60) == "Editing: cancelled."
