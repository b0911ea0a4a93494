"""The annotation page in a real browser (Debian's Chromium, headless, driven by Playwright).

Open the app, click on a sample image, receive a mask, accept it with a label, reload and see
it kept, export COCO and read the file with pycocotools; describe an object in words on a server
with CLIP. A screenshot of the page is kept in test-artifacts/ for people to look at.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest

from segany.masks import decode_rle

from tiny_clip import ARCHITECTURE, REGISTER_THEN_CLI, config_path

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="needs Debian's Chromium: apt-get install -y chromium (scripts/test.sh does this)"
)


@pytest.fixture
def page():
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 800}, accept_downloads=True)
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.errors = errors
        yield page
        browser.close()


def click_canvas(page, fx: float, fy: float, shift: bool = False) -> None:
    """Click at a fraction of the drawn image (the canvas letterboxes it)."""
    page.wait_for_function("state.picture !== null")  # the photo loads after the page settles
    x, y = page.evaluate(
        "([fx, fy]) => { const r = document.getElementById('canvas').getBoundingClientRect();"
        " const k = r.width / document.getElementById('canvas').width;"
        " return [r.left + (state.view.x + fx * state.picture.width * state.view.scale) * k,"
        "         r.top + (state.view.y + fy * state.picture.height * state.view.scale) * k]; }",
        [fx, fy],
    )
    if shift:
        page.keyboard.down("Shift")
    page.mouse.click(x, y)
    if shift:
        page.keyboard.up("Shift")


def test_click_accept_reload_export(server, images_dir, tmp_path, page):
    from pycocotools.coco import COCO

    shutil.copy(Path(__file__).resolve().parents[2] / "segany" / "assets" / "dog.jpg", images_dir / "0-dog.jpg")
    running = server()
    page.goto(running.url + "/")
    page.wait_for_selector("#image-list li.current")
    assert page.inner_text("#image-name") == "0-dog.jpg"
    page.wait_for_selector("#busy", state="hidden")

    click_canvas(page, 0.5, 0.5)
    page.wait_for_selector("#candidates button.chosen")
    assert page.locator("#candidates button").count() == 3
    click_canvas(page, 0.2, 0.8, shift=True)  # a negative point refines it
    page.wait_for_function("state.prompt.points.length === 2 && state.answered === state.sequence")
    page.keyboard.press("2")
    assert page.evaluate("state.chosen") == 1
    shown = np.array(page.evaluate("Array.from(maskOf(state.candidates[1]))"), dtype=bool)

    page.fill("#label", "dog")
    page.keyboard.press("Enter")
    page.wait_for_selector("#object-list li .what >> text=dog")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "engine-app.png"))
    assert page.errors == []

    page.reload()
    page.wait_for_selector("#object-list li .what >> text=dog")
    assert "1 object" in page.inner_text("#image-list li.current")

    with page.expect_download() as download:
        page.click("#export")
    coco_path = tmp_path / "export.json"
    download.value.save_as(coco_path)
    coco = COCO(str(coco_path))
    (annotation,) = coco.loadAnns(coco.getAnnIds())
    assert coco.loadCats(annotation["category_id"])[0]["name"] == "dog"
    assert coco.loadImgs(annotation["image_id"])[0]["file_name"] == "0-dog.jpg"
    stored = coco.annToMask(annotation).astype(bool)
    assert stored.shape == shown.reshape(stored.shape).shape
    # What the page drew (logits upscaled in the browser) is what was stored (exact, on the server)
    disagreement = np.mean(stored != shown.reshape(stored.shape))
    assert disagreement < 0.01, disagreement  # the logits are sent in steps of 1/1024
    assert np.array_equal(stored, decode_rle(annotation["segmentation"]))


def drag_canvas(page, start: tuple[float, float], end: tuple[float, float]) -> None:
    page.wait_for_function("state.picture !== null")
    points = page.evaluate(
        "(pairs) => { const c = document.getElementById('canvas'); const r = c.getBoundingClientRect();"
        " const k = r.width / c.width; return pairs.map(([fx, fy]) => ["
        " r.left + (state.view.x + fx * state.picture.width * state.view.scale) * k,"
        " r.top + (state.view.y + fy * state.picture.height * state.view.scale) * k]); }",
        [list(start), list(end)],
    )
    page.mouse.move(*points[0])
    page.mouse.down()
    page.mouse.move(*points[1], steps=5)
    page.mouse.up()


def test_box_undo_redo_edit_delete_and_next_image(server, page):
    running = server()
    page.goto(running.url + "/")
    page.wait_for_selector("#busy", state="hidden")
    assert page.inner_text("#image-name") == "a.png"
    assert page.is_hidden("#text-prompt")  # this server has no CLIP

    drag_canvas(page, (0.2, 0.2), (0.6, 0.7))
    page.wait_for_function("state.prompt.box !== null && state.answered === state.sequence")
    box = page.evaluate("state.prompt.box")
    assert 10 < box[0] < 20 and 38 < box[3] < 46  # 80 x 60 image: (16, 12) to (48, 42)
    page.keyboard.press("Control+z")
    assert page.evaluate("state.prompt.box") is None and page.evaluate("state.candidates.length") == 0
    page.keyboard.press("Control+Shift+z")
    assert page.evaluate("state.prompt.box") == box and page.evaluate("state.candidates.length") == 3

    page.keyboard.press("Enter")  # accept without a label
    page.wait_for_selector("#object-list li[data-id]")
    page.click("#object-list li[data-id]")  # select it, relabel it
    page.fill("#selected-label", "renamed")
    page.click("#save-label")
    page.wait_for_selector("#object-list li .what >> text=renamed")
    page.click("#canvas", position={"x": 5, "y": 5})  # focus back on the page, outside the image
    page.keyboard.press("Delete")
    page.wait_for_selector("#object-list li.empty")
    assert httpx.get(f"{running.url}/api/images/{page.evaluate('state.current.id')}").json()["objects"] == []

    page.keyboard.press("n")
    page.wait_for_function("state.current.path === 'b.jpg'")
    page.keyboard.press("m")  # mark done
    page.wait_for_selector("#image-list li.done")
    assert page.errors == []


def test_typing_a_description_segments_it(server, text_checkpoint, clip_weights, page):
    running = server("--clip-model", ARCHITECTURE, "--clip-checkpoint", str(clip_weights), checkpoint=text_checkpoint,
                     cli=("-c", REGISTER_THEN_CLI, str(config_path(clip_weights))))
    page.goto(running.url + "/")
    page.wait_for_selector("#busy", state="hidden")
    assert page.is_visible("#text-prompt")  # the server said it takes text
    page.keyboard.press("t")
    page.keyboard.type("a red square")
    page.keyboard.press("Enter")
    page.wait_for_function("state.answered === state.sequence && state.candidates.length === 3")
    assert page.evaluate("state.prompt") == {"points": [], "labels": [], "box": None, "text": "a red square"}
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "engine-app-text.png"))
    page.click("#accept")
    page.wait_for_selector("#object-list li[data-id]")
    assert page.input_value("#text-prompt") == ""  # the next object starts afresh
    (stored,) = httpx.get(f"{running.url}/api/images/{page.evaluate('state.current.id')}").json()["objects"]
    assert stored["prompts"]["text"] == "a red square"
    assert page.errors == []
