"""The page of `captioner serve` in a real browser: headless Chromium, driven over its DevTools
protocol, picks an image (and a file that is none) in the page's file input or drops images on
it, and the test reads what a person would see: the caption, the n-best table, each word's map
drawn on hover.

Chromium is driven over DevTools' websocket with aiohttp's client (the serve extra's own
framework), not Playwright: Playwright pins the browser builds it drives and downloads them,
while this drives Debian's chromium, whatever its version, offline. The screenshot is kept in
$CAPTIONER_ARTIFACTS/serve_screenshot.png when that is set (CI uploads it), else in tmp_path.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import shutil
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from io import BytesIO
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from helpers import wait_until
from helpers.serve import Served, jpeg, running_server
from PIL import Image, ImageStat

from captioner.model.explain_files import overlay
from captioner.model.inference import Captioner

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium) on PATH"
)
# No network but the test's own server: no sync, updates or component downloads.
_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
          "--disable-background-networking", "--disable-component-update", "--disable-sync",
          "--hide-scrollbars", "--window-size=1200,900", "--remote-debugging-port=0"]
_WAIT_S = 60.0
# A promise, in the page, of the value of EXPRESSION once it is truthy: tried now and again at
# each change of the document (a node, an attribute or a text added, changed or removed) and of
# its readyState, which is all the page's state that the tests read.
_WHEN_TRUTHY = """new Promise((resolve, reject) => {
    const observer = new MutationObserver(() => check());
    const stop = () => {
        observer.disconnect();
        document.removeEventListener('readystatechange', check);
    };
    function check() {
        let value;
        try {
            value = (EXPRESSION);
        } catch (err) {
            stop();
            reject(err);
            return;
        }
        if (value) {
            stop();
            resolve(value);
        }
    }
    observer.observe(document, {subtree: true, childList: true, attributes: true, characterData: true});
    document.addEventListener('readystatechange', check);
    check();
})"""


class Tab:
    """One page of the browser, over DevTools: commands answered in order, events ignored."""

    def __init__(self, socket: aiohttp.ClientWebSocketResponse, session: str | None = None) -> None:
        self.socket, self.session, self._id = socket, session, 0

    async def send(self, method: str, **params: Any) -> dict:
        self._id += 1
        await self.socket.send_json({"id": self._id, "method": method, "params": params,
                                     **({"sessionId": self.session} if self.session else {})})
        async for message in self.socket:
            answer = json.loads(message.data)
            if answer.get("id") == self._id:
                assert "error" not in answer, f"{method}: {answer['error']}"
                return answer["result"]
        raise AssertionError(f"{method}: the browser closed the connection")

    async def evaluate(self, expression: str, *, await_promise: bool = False) -> Any:
        result = await self.send("Runtime.evaluate", expression=expression, returnByValue=True,
                                 awaitPromise=await_promise)
        assert "exceptionDetails" not in result, result["exceptionDetails"]
        return result["result"].get("value")

    async def wait_for(self, expression: str) -> Any:
        """The expression's value (of the document's state) once it is truthy, or a failure
        after _WAIT_S. The page answers when it changes; nothing is polled."""
        promise = _WHEN_TRUTHY.replace("EXPRESSION", expression)
        try:
            return await asyncio.wait_for(self.evaluate(promise, await_promise=True), _WAIT_S)
        except asyncio.TimeoutError:
            raise AssertionError(f"timed out waiting for {expression}") from None

    async def choose_files(self, selector: str, *paths: Path) -> None:
        root = (await self.send("DOM.getDocument"))["root"]["nodeId"]
        node = (await self.send("DOM.querySelector", nodeId=root, selector=selector))["nodeId"]
        await self.send("DOM.setFileInputFiles", nodeId=node, files=[str(p) for p in paths])

    async def hover(self, selector: str) -> None:
        x, y = await self.centre(selector)
        await self.send("Input.dispatchMouseEvent", type="mouseMoved", x=x, y=y)

    async def drop(self, selector: str, *paths: Path) -> None:
        """Drag files from outside the page and drop them on the element."""
        x, y = await self.centre(selector)
        data = {"items": [], "files": [str(p) for p in paths], "dragOperationsMask": 1}  # copy
        for kind in ("dragEnter", "dragOver", "drop"):
            await self.send("Input.dispatchDragEvent", type=kind, x=x, y=y, data=data)

    async def centre(self, selector: str) -> tuple[float, float]:
        return tuple(await self.evaluate(f"(() => {{ const r = document.querySelector({selector!r})"
                                         ".getBoundingClientRect(); "
                                         "return [r.x + r.width / 2, r.y + r.height / 2]; })()"))


@asynccontextmanager
async def browser_tab(url: str, profile: Path) -> AsyncIterator[Tab]:
    """A headless Chromium showing `url`, stopped afterwards. Its stderr goes to a file beside
    the profile (a pipe nobody reads could fill and stall it)."""
    log = profile.with_suffix(".log")
    with open(log, "wb") as stderr:
        process = await asyncio.create_subprocess_exec(
            CHROMIUM, *_FLAGS, f"--user-data-dir={profile}", "about:blank",
            stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        endpoint = await _devtools_endpoint(process, log)
        async with aiohttp.ClientSession() as http, http.ws_connect(endpoint, max_msg_size=0) as socket:
            browser = Tab(socket)
            target = (await browser.send("Target.createTarget", url="about:blank"))["targetId"]
            attached = await browser.send("Target.attachToTarget", targetId=target, flatten=True)
            tab = Tab(socket, attached["sessionId"])
            await tab.send("Page.navigate", url=url)
            await tab.wait_for("document.readyState === 'complete'")
            yield tab
    finally:
        process.kill()
        await process.wait()


async def _devtools_endpoint(process: asyncio.subprocess.Process, log: Path) -> str:
    """Chromium says where its DevTools websocket listens on stderr, once it is up."""
    def said() -> re.Match | None:
        return re.search(r"DevTools listening on (ws://\S+)", log.read_text(errors="replace"))

    try:  # its line in the log, or its exit; polled off the loop, which sees the exit meanwhile
        await asyncio.to_thread(wait_until, lambda: said() or process.returncode is not None, _WAIT_S,
                                "chromium to open DevTools")
    except AssertionError:
        pass
    if found := said():
        return found.group(1)
    raise AssertionError(f"chromium did not open DevTools: {log.read_text(errors='replace')[-2000:]}")


@pytest.fixture(scope="module")
def server(best: Path, tmp_path_factory: pytest.TempPathFactory) -> Served:
    with running_server(best, tmp_path_factory.mktemp("serve")) as served:
        yield served


@pytest.fixture(scope="module")
def photo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("photos") / "holiday snap.jpg"
    path.write_bytes(jpeg(7))
    return path


def test_upload_shows_the_caption_n_best_and_word_maps(server: Served, photo: Path, best: Path,
                                                        tmp_path: Path) -> None:
    want = Captioner.from_checkpoint(best, device="cpu").caption(photo, n_best=3, explain=True)[0]

    async def visit() -> dict:
        async with browser_tab(server.url, tmp_path / "profile") as tab:
            await tab.wait_for("document.getElementById('model').textContent.includes('best.ckpt')")
            await tab.choose_files("#files", photo)
            await tab.wait_for("document.querySelector('.result')?.dataset.state !== 'pending'")
            seen = await tab.evaluate("""(() => {
                const card = document.querySelector('.result');
                return {state: card.dataset.state, name: card.querySelector('h2').textContent,
                        caption: card.querySelector('.caption').textContent,
                        rows: [...card.querySelectorAll('.nbest tbody tr')].map(
                            (row) => [...row.cells].map((cell) => cell.textContent))};
            })()""")
            await tab.wait_for("document.querySelector('.result').dataset.maps === 'ready'")
            seen["overlays"], seen["plain"] = await _hover_each_word(tab)
            shot = await tab.send("Page.captureScreenshot", format="png")
            seen["screenshot"] = base64.b64decode(shot["data"])
            return seen

    seen = asyncio.run(visit())
    assert seen["state"] == "done" and seen["name"] == "holiday snap.jpg"
    assert seen["caption"] == want.text
    assert [row[1] for row in seen["rows"]] == [c.text for c in want.captions]
    scores = [float(row[2]) for row in seen["rows"]]
    assert scores == pytest.approx([c.score for c in want.captions], abs=2e-3)
    # Each word's map as `captioner caption --explain` draws it (up to the browser's resampling
    # of the view), and the plain view again once the pointer leaves the words.
    explanation = want.explanations
    assert len(seen["overlays"]) == len(explanation.words)
    for t, drawn in enumerate(seen["overlays"]):
        assert np.abs(drawn - np.asarray(overlay(explanation, t, 224), dtype=float)).mean() < 2.0
    view = Image.fromarray(explanation.view).resize(seen["plain"].shape[1::-1], Image.Resampling.BICUBIC)
    assert np.abs(seen["plain"] - np.asarray(view, dtype=float)).mean() < 2.0
    _keep_screenshot(seen["screenshot"], tmp_path)


async def _hover_each_word(tab: Tab) -> tuple[list[np.ndarray], np.ndarray]:
    """The view's pixels while the pointer is on each word in turn, and after it leaves."""
    words = await tab.evaluate("document.querySelectorAll('.result .word').length")
    overlays = []
    for t in range(words):
        word = f".result .word:nth-of-type({t + 1})"
        await tab.hover(word)
        assert await tab.evaluate(f"document.querySelector({word!r}).classList.contains('active')")
        overlays.append(await _canvas(tab))
    await tab.hover("h1")
    return overlays, await _canvas(tab)


async def _canvas(tab: Tab) -> np.ndarray:
    url = await tab.evaluate("document.querySelector('.result canvas').toDataURL()")
    with Image.open(BytesIO(base64.b64decode(url.split(",", 1)[1]))) as image:
        return np.asarray(image.convert("RGB"), dtype=float)


def _keep_screenshot(png: bytes, tmp_path: Path) -> None:
    folder = Path(os.environ.get("CAPTIONER_ARTIFACTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "serve_screenshot.png").write_bytes(png)
    with Image.open(BytesIO(png)) as image:
        assert max(ImageStat.Stat(image.convert("L")).stddev) > 20  # not a blank page


def test_a_file_that_is_no_image_shows_the_servers_message(server: Served, tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("a shopping list")

    async def visit() -> list[str]:
        async with browser_tab(server.url, tmp_path / "profile") as tab:
            await tab.choose_files("#files", notes)
            await tab.wait_for("document.querySelector('.result')?.dataset.state === 'error'")
            return await tab.evaluate("[...document.querySelectorAll('.result .error')]"
                                      ".map((e) => e.textContent)")

    assert asyncio.run(visit()) == ["notes.txt: not an image Pillow can read"]


def test_dropped_images_are_captioned_each(server: Served, photo: Path, best: Path,
                                           tmp_path: Path) -> None:
    other = tmp_path / "other.png"
    Image.open(BytesIO(jpeg(8, (300, 200)))).save(other)
    want = [r.text for r in Captioner.from_checkpoint(best, device="cpu").caption([photo, other], n_best=3)]

    async def visit() -> list[list[str]]:
        async with browser_tab(server.url, tmp_path / "profile") as tab:
            await tab.drop("#drop", photo, other)
            await tab.wait_for("[...document.querySelectorAll('.result')].filter("
                               "(card) => card.dataset.state === 'done').length === 2")
            return await tab.evaluate("[...document.querySelectorAll('.result')].map((card) => "
                                      "[card.querySelector('h2').textContent, "
                                      "card.querySelector('.caption').textContent])")

    assert asyncio.run(visit()) == [["holiday snap.jpg", want[0]], ["other.png", want[1]]]


def test_lowering_the_beam_lowers_n_best_and_says_so(server: Served, photo: Path, tmp_path: Path) -> None:
    """The page starts with beam 3 and n-best 3; a beam of 2 made every upload fail with the
    server's "n_best=3 needs beam_size >= 3" (issue 24 item 6)."""
    async def visit() -> dict:
        async with browser_tab(server.url, tmp_path / "profile") as tab:
            await tab.evaluate("""(() => {
                const beam = document.querySelector('input[name=beam_size]');
                beam.value = '2';
                beam.dispatchEvent(new Event('input', {bubbles: true}));
            })()""")
            await tab.choose_files("#files", photo)
            await tab.wait_for("document.querySelector('.result')?.dataset.state !== 'pending'")
            return await tab.evaluate("""(() => {
                const card = document.querySelector('.result');
                return {state: card.dataset.state, error: card.querySelector('.error').textContent,
                        rows: card.querySelectorAll('.nbest tbody tr').length,
                        nBest: document.querySelector('input[name=n_best]').value,
                        note: document.getElementById('settings-note')?.textContent};
            })()""")

    seen = asyncio.run(visit())
    assert seen["state"] == "done", seen["error"]
    assert seen["nBest"] == "2" and seen["rows"] == 2
    assert seen["note"] == "n-best lowered from 3 to 2: a beam of 2 keeps 2 captions at most"
