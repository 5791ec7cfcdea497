"""The editor page as the tests drive it: real clicks, key presses and pointer strokes, then reads of its state."""

from __future__ import annotations

import io
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from PIL import Image
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import Select

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[2]
# Screenshots (and, on failure, the console log): one folder per test. Git-ignored by default.
ARTIFACTS = Path(os.environ.get("EDITGAN_TEST_ARTIFACTS") or ROOT / "tests" / "web" / "artifacts")


def rgb(hex_colour: str) -> tuple[int, int, int]:
    value = int(hex_colour[1:], 16)
    return value >> 16, (value >> 8) & 255, value & 255


def labels_from_colours(image: np.ndarray, classes: Sequence[dict[str, Any]]) -> np.ndarray:
    """[h, w, 3] uint8 in the model's palette -> class ids; a colour outside the palette fails the test."""
    ids = np.full(image.shape[:2], -1, dtype=np.int64)
    for c in classes:
        ids[(image[..., :3] == rgb(c["color"])).all(axis=-1)] = c["id"]
    assert (ids >= 0).all(), "the mask holds colours outside the model's palette"
    return ids


def decode_png(data: bytes) -> np.ndarray:
    assert data.startswith(b"\x89PNG"), data[:40]
    return np.asarray(Image.open(io.BytesIO(data)))


class EditorPage:
    def __init__(self, driver: WebDriver, base_url: str, downloads: Path, artifacts: Path) -> None:
        self.driver, self.base_url, self.downloads, self.artifacts = driver, base_url, downloads, artifacts

    # ---- waiting and reading

    def wait(self, condition: Callable[[], T], timeout: float = 30, what: str = "condition") -> T:
        """Poll `condition` until it returns something truthy (the page's own work is asynchronous)."""
        deadline = time.monotonic() + timeout
        while True:
            value = condition()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout} s waiting for {what}; messages: {self.messages()!r}")
            time.sleep(0.05)

    def el(self, element_id: str) -> WebElement:
        return self.driver.find_element(By.ID, element_id)

    def text(self, element_id: str) -> str:
        return self.el(element_id).text

    def attr(self, element_id: str, name: str) -> str | None:
        value: str | None = self.el(element_id).get_attribute(name)
        return value

    def messages(self) -> str:
        return self.text("messages")

    def progress(self) -> float:
        return float(self.attr("job-progress", "value") or 0)

    def wait_job(self, label: str, timeout: float = 180, on_poll: Callable[[], object] | None = None) -> str:
        """Until the progress line says the job `label` ("Editing", ...) is over; returns that line."""

        def over() -> str:  # "" (falsy) until the job is over
            if on_poll is not None:
                on_poll()
            line = self.text("job-label")
            return line if line.startswith(label) and line.endswith(("done.", "cancelled.", "failed.")) else ""

        return self.wait(over, timeout, f"{label} to end")

    def screenshot(self, name: str, *, full_page: bool = False) -> Path:
        """The window (or, with `full_page`, the whole page from the top) as artifacts/<test>/<name>.png."""
        path = self.artifacts / f"{name}.png"
        size = self.driver.get_window_size()
        if full_page:
            height = self.driver.execute_script("return document.documentElement.scrollHeight")
            self.driver.set_window_size(size["width"], height + 140)  # + the window's chrome, even headless
            self.driver.execute_script("window.scrollTo(0, 0)")
        self.driver.save_screenshot(str(path))
        if full_page:
            self.driver.set_window_size(size["width"], size["height"])
        return path

    # ---- acting

    def open(self) -> None:
        self.driver.get(self.base_url + "/")
        self.wait(lambda: self.driver.find_element(By.TAG_NAME, "body").get_attribute("data-ready"), what="page load")

    def click(self, element_id: str) -> None:
        self.wait(lambda: self.el(element_id).is_enabled(), what=f"#{element_id} enabled")
        self.el(element_id).click()

    def fill(self, element_id: str, value: str) -> None:
        field = self.el(element_id)
        field.clear()
        field.send_keys(value)

    def select(self, element_id: str, value: str) -> None:
        Select(self.el(element_id)).select_by_value(value)

    def set_range(self, element_id: str, value: float) -> None:
        """Move a slider the way a drag ends: value set, then its `input` event."""
        self.driver.execute_script(
            "const e = document.getElementById(arguments[0]); e.value = arguments[1];"
            "e.dispatchEvent(new Event('input', {bubbles: true}));",
            element_id,
            str(value),
        )

    def choose_tool(self, tool: str) -> None:
        self.driver.find_element(By.CSS_SELECTOR, f'input[name="tool"][value="{tool}"]').click()

    def choose_class(self, name: str) -> None:
        self.driver.find_element(By.XPATH, f'//fieldset[@id="palette"]//label[normalize-space()="{name}"]').click()

    def palette(self) -> list[tuple[int, str]]:
        labels = self.driver.find_elements(By.CSS_SELECTOR, "#palette label")
        return [(int(label.get_attribute("data-class-id") or -1), label.text.strip()) for label in labels]

    def checked_class(self) -> int:
        checked = self.driver.find_element(By.CSS_SELECTOR, '#palette input[name="class"]:checked')
        return int(checked.get_attribute("value") or -1)

    def _offset(self, canvas: WebElement, x: int, y: int) -> tuple[int, int]:
        """Pointer offset from the canvas' centre (selenium's origin) to the centre of label pixel (x, y)."""
        width, height = int(canvas.get_attribute("width") or 0), int(canvas.get_attribute("height") or 0)
        rect = canvas.rect
        return (
            round((x + 0.5) * rect["width"] / width - rect["width"] / 2),
            round((y + 0.5) * rect["height"] / height - rect["height"] / 2),
        )

    def stroke(self, points: Sequence[tuple[int, int]]) -> None:
        """Press at the first label pixel, drag through the others, release."""
        canvas = self.el("mask-canvas")
        chain = ActionChains(self.driver, duration=20)
        chain.move_to_element_with_offset(canvas, *self._offset(canvas, *points[0])).click_and_hold()
        for point in points[1:]:
            chain.move_to_element_with_offset(canvas, *self._offset(canvas, *point))
        chain.release().perform()

    def click_pixel(self, x: int, y: int) -> None:
        canvas = self.el("mask-canvas")
        ActionChains(self.driver).move_to_element_with_offset(canvas, *self._offset(canvas, x, y)).click().perform()

    def mask_labels(self, classes: Sequence[dict[str, Any]]) -> np.ndarray:
        """What the mask canvas shows, as class ids through the model's palette."""
        width, height, data = self.driver.execute_script(
            "const c = document.getElementById('mask-canvas');"
            "return [c.width, c.height, Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data)];"
        )
        return labels_from_colours(np.array(data, dtype=np.uint8).reshape(height, width, 4), classes)

    def download(self, element_id: str, filename: str, timeout: float = 30) -> bytes:
        """Click a download control; returns the file the browser saved."""
        target = self.downloads / filename
        target.unlink(missing_ok=True)
        self.click(element_id)
        self.wait(lambda: target.is_file() and target.stat().st_size > 0, timeout, f"download of {filename}")
        time.sleep(0.2)  # Chromium renames the .crdownload when complete; make sure the size is final
        return target.read_bytes()
