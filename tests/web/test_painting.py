"""The painting tools on a random sample: brush shapes and sizes, undo/redo, eyedropper, fill, erase, zoom."""

from __future__ import annotations

from collections import deque
from typing import Any

import httpx
import numpy as np
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.keys import Keys

from tests.web.page import EditorPage


def component(labels: np.ndarray, x: int, y: int) -> np.ndarray:
    """The 4-connected region of (x, y)'s class, as a boolean mask."""
    target, seen = labels[y, x], np.zeros(labels.shape, dtype=bool)
    queue = deque([(y, x)])
    while queue:
        r, c = queue.popleft()
        if 0 <= r < labels.shape[0] and 0 <= c < labels.shape[1] and not seen[r, c] and labels[r, c] == target:
            seen[r, c] = True
            queue.extend([(r - 1, c), (r + 1, c), (r, c - 1), (r, c + 1)])
    return seen


def test_brush_undo_redo_eyedropper_fill_erase_and_zoom(page: EditorPage, api: httpx.Client) -> None:
    model: dict[str, Any] = api.get("/models").json()["models"][0]
    classes = model["classes"]
    ids = {c["name"]: c["id"] for c in classes}
    page.open()
    page.click("sample-button")
    page.wait(lambda: page.text("latent-id").startswith("lat_"), what="a random sample")
    assert page.text("job-label").startswith("Random sample, seed ")
    original = page.mask_labels(classes)
    (x, y), (x2, y2) = (5, 5), (15, 5)  # the top corner: background in every face the model draws
    assert original[y, x] == original[y2, x2] == ids["background"]

    # A round 5 px brush covers a disc of 21 pixels, a square one 25; each click is one undo level.
    page.choose_class("nose")
    page.set_range("brush-size", 5)
    page.click_pixel(x, y)
    page.select("brush-shape", "square")
    page.click_pixel(x2, y2)
    after_two = page.mask_labels(classes)
    disc, square = after_two[y - 2 : y + 3, x - 2 : x + 3], after_two[y2 - 2 : y2 + 3, x2 - 2 : x2 + 3]
    assert int((disc == ids["nose"]).sum()) == 21 and not (disc[[0, 0, 4, 4], [0, 4, 0, 4]] == ids["nose"]).any()
    assert (square == ids["nose"]).all() and int((after_two != original).sum()) == 21 + 25

    # Undo twice (button, then Ctrl+Z), redo once: several levels, in order.
    page.click("undo")
    assert int((page.mask_labels(classes) != original).sum()) == 21
    ActionChains(page.driver).key_down(Keys.CONTROL).send_keys("z").key_up(Keys.CONTROL).perform()
    assert np.array_equal(page.mask_labels(classes), original) and not page.el("undo").is_enabled()
    page.click("redo")
    page.click("redo")
    assert np.array_equal(page.mask_labels(classes), after_two) and not page.el("redo").is_enabled()

    # The eyedropper picks the class under the pointer, then hands back the brush.
    skin_rows, skin_cols = np.nonzero(after_two == ids["skin"])
    page.choose_tool("eyedropper")
    page.click_pixel(int(skin_cols[0]), int(skin_rows[0]))
    assert page.checked_class() == ids["skin"]
    assert page.driver.find_element("css selector", 'input[name="tool"]:checked').get_attribute("value") == "brush"

    # Fill replaces exactly the 4-connected region under the pointer.
    page.choose_class("hair")
    page.choose_tool("fill")
    before_fill = page.mask_labels(classes)
    page.click_pixel(0, 63)
    filled = page.mask_labels(classes)
    region = component(before_fill, 0, 63)
    assert (filled[region] == ids["hair"]).all() and np.array_equal(filled[~region], before_fill[~region])

    # Erase-to-original brushes the service's segmentation back.
    page.choose_tool("erase")
    page.stroke([(x - 2, y), (x2 + 2, y2)])
    erased = page.mask_labels(classes)
    assert np.array_equal(erased[y - 2 : y + 3, x - 2 : x2 + 3], original[y - 2 : y + 3, x - 2 : x2 + 3])

    # Reset is one undoable step.
    page.click("reset-mask")
    assert np.array_equal(page.mask_labels(classes), original)
    page.click("undo")
    assert np.array_equal(page.mask_labels(classes), erased)

    # Zoom scales the 64 px canvas with crisp pixels; opacity fades the overlay.
    page.set_range("zoom", 10)
    canvas = page.el("mask-canvas")
    assert canvas.rect["width"] == model["content_box"]["width"] * 10
    assert canvas.value_of_css_property("image-rendering") == "pixelated"
    page.set_range("opacity", 0.25)
    assert canvas.value_of_css_property("opacity") == "0.25"
    assert page.messages() == ""
    page.screenshot("painted")


def test_redo_survives_a_click_that_changes_nothing_and_strokes_follow_the_pointer(
    page: EditorPage, api: httpx.Client
) -> None:
    classes = api.get("/models").json()["models"][0]["classes"]
    ids = {c["name"]: c["id"] for c in classes}
    page.open()
    page.click("sample-button")
    page.wait(lambda: page.text("latent-id").startswith("lat_"), what="a random sample")
    original = page.mask_labels(classes)
    assert original[5, 5] == ids["background"]
    page.set_range("brush-size", 1)
    page.choose_class("nose")
    page.click_pixel(5, 5)
    page.click("undo")
    assert page.el("redo").is_enabled()
    page.choose_class("background")
    page.click_pixel(5, 5)  # already background: no step, and the undone one can still come back
    assert page.el("redo").is_enabled()
    page.click("redo")
    assert page.mask_labels(classes)[5, 5] == ids["nose"]

    # A round 3 px brush stamps a plus of 5 pixels (the square stamps 9).
    page.set_range("brush-size", 3)
    page.choose_class("nose")
    before = page.mask_labels(classes)
    assert (before[4:7, 9:12] == ids["background"]).all()
    page.click_pixel(10, 5)
    stamp = (page.mask_labels(classes) != before)[4:7, 9:12]
    assert stamp.tolist() == [[False, True, False], [True, True, True], [False, True, False]]

    # A drag that leaves the canvas paints only where the pointer was on it, not along the border; the
    # painted-pixel count (a live region, read aloud) is announced once, when the stroke ends.
    page.choose_class("hair")
    page.set_range("brush-size", 1)
    before = page.mask_labels(classes)
    page.driver.execute_script(
        "window.announced = 0; new MutationObserver(() => window.announced++)"
        ".observe(document.getElementById('painted'), {childList: true, characterData: true, subtree: true});"
    )
    page.stroke([(50, 30), (70, 30), (70, 56)])
    after = page.mask_labels(classes)
    assert (after[30, 50:] == ids["hair"]).all()
    assert np.array_equal(after[31:57, 63], before[31:57, 63]), "the border column was painted"
    assert page.driver.execute_script("return window.announced") == 1
    changed = int((after != original).sum())
    assert page.text("painted") == f"{changed} pixels painted."

    # Letters typed into a select pick its options: they are not tool shortcuts there
    page.el("region").send_keys("e")
    assert page.driver.find_element("css selector", 'input[name="tool"]:checked').get_attribute("value") == "brush"
    assert page.messages() == ""


def test_the_mask_can_be_painted_and_edited_with_the_keyboard_alone(page: EditorPage, api: httpx.Client) -> None:
    classes = api.get("/models").json()["models"][0]["classes"]
    ids = {c["name"]: c["id"] for c in classes}
    page.open()
    page.select("example", "0")  # a fixed face: the pixels painted below hold no hair in it
    page.click("example-button")
    page.wait(lambda: page.text("latent-id").startswith("lat_"), what="the example latent")
    original = page.mask_labels(classes)
    assert (original[30:33, 29] != ids["hair"]).all()
    page.choose_class("hair")
    page.set_range("brush-size", 1)
    canvas = page.el("mask-canvas")
    assert canvas.get_attribute("tabindex") == "0"
    page.driver.execute_script("arguments[0].focus()", canvas)
    chain = ActionChains(page.driver)
    # from the centre (32, 32): three left, then Space paints (29, 32); Shift+Up twice paints (29, 31), (29, 30)
    chain.send_keys(Keys.ARROW_LEFT * 3, Keys.SPACE)
    chain.key_down(Keys.SHIFT).send_keys(Keys.ARROW_UP, Keys.ARROW_UP).key_up(Keys.SHIFT).perform()
    painted = page.mask_labels(classes)
    expected = original.copy()
    expected[30:33, 29] = ids["hair"]
    assert np.array_equal(painted, expected)
    assert page.text("cursor-info").startswith("Cursor at 29, 30: ")
    assert page.el("key-cursor").is_displayed()
    ActionChains(page.driver).key_down(Keys.CONTROL).send_keys("z").key_up(Keys.CONTROL).perform()
    undone = expected.copy()
    undone[30, 29] = original[30, 29]  # one press, one undo step: the last one
    assert np.array_equal(page.mask_labels(classes), undone)
    # the edit runs from the keyboard too: Tab reaches the form, Enter submits it
    page.el("edit-steps").send_keys(Keys.CONTROL, "a")
    page.el("edit-steps").send_keys("2", Keys.ENTER)
    assert page.wait_job("Editing").endswith("done."), page.messages()
