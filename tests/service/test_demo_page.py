"""The demo page at ``/``, driven in headless Chromium (Debian's ``/usr/bin/chromium``, through
Playwright's Python driver: no browser is downloaded) against a live server: what it shows is
what the API answers for the same image and question.

Skipped when the browser or the driver is missing (``.ci/run`` installs the browser and the
``dev`` extras the driver, so CI runs it)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

CHROMIUM = os.environ.get("PYTHIA_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]

if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
    pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api",
                               reason="the playwright driver is not installed (pip install -e "
                                      "'.[dev]')")

QUESTION = "what color is the circle?"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=60_000)
        yield b
        b.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1100, "height": 760})
    pg = context.new_page()
    pg.set_default_timeout(30_000)
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    yield pg
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def open_page(page: Any, url: str, image: bytes | None = None) -> None:
    """Load the page, wait for the model list, choose ``image`` (if given)."""
    page.goto(url + "/")
    page.wait_for_selector("#model option[value=demo]", state="attached")
    if image is not None:
        page.set_input_files("#image", files=[{"name": "shapes.jpg", "mimeType": "image/jpeg",
                                               "buffer": image}])
        page.wait_for_selector("#preview[src^='blob:']", state="attached")


def submit(page: Any, button: str) -> None:
    """Click ``button`` and wait until the page has rendered the response (or its error)."""
    before = int(page.get_attribute("body", "data-done") or 0)
    page.click(button)
    page.wait_for_function(f"Number(document.body.dataset.done || 0) > {before}")


def listed(page: Any, selector: str) -> list[tuple[str, float]]:
    """(answer text, score) of each ``li`` of a result list, as the page shows them."""
    rows: list[list[Any]] = page.eval_on_selector_all(
        f"{selector} li",
        "els => els.map(e => [e.querySelector('.answer').textContent, Number(e.dataset.score),"
        " e.querySelector('.score').textContent])")
    for _, score, shown in rows:
        assert shown == f"{score:.3f}"
    return [(text, score) for text, score, _ in rows]


def api(client: httpx.Client, url: str, task: str, image: bytes, **fields: Any) -> Any:
    data = {k: v if isinstance(v, str) else json.dumps(v) for k, v in fields.items()}
    r = client.post(f"{url}/{task}", files={"image": ("shapes.jpg", image, "image/jpeg")},
                    data=data)
    assert r.status_code == 200, r.text
    return r.json()


def same(shown: list[tuple[str, float]], answers: list[dict[str, Any]]) -> bool:
    return [a for a, _ in shown] == [a["answer"] for a in answers] and \
        [s for _, s in shown] == pytest.approx([a["score"] for a in answers], abs=1e-5)


def test_vqa_answers_match_the_api(serve: Callable[..., Any], page: Any, image_bytes: bytes,
                                   client: httpx.Client, tmp_path: Path) -> None:
    server = serve()
    open_page(page, server.url, image_bytes)
    page.fill("#question", QUESTION)
    submit(page, "#ask")
    shown = listed(page, "#answers")
    expected = api(client, server.url, "vqa", image_bytes, question=QUESTION)["answers"]
    assert len(shown) == len(expected) == 5
    assert same(shown, expected), (shown, expected)
    assert page.text_content("#error") == ""
    assert "total" in page.text_content("#timing")
    # PYTHIA_DEMO_SCREENSHOT=/some/file.png keeps a picture of the page to look at
    page.screenshot(path=os.environ.get("PYTHIA_DEMO_SCREENSHOT") or tmp_path / "page.png")


def test_caption_and_beams(serve: Callable[..., Any], page: Any, image_bytes: bytes,
                           client: httpx.Client) -> None:
    server = serve()
    open_page(page, server.url, image_bytes)
    page.click("#tab-caption")
    page.select_option("#beam-size", "3")
    submit(page, "#caption-button")
    expected = api(client, server.url, "caption", image_bytes, beam_size=3)
    assert page.get_attribute("#caption", "class") == "done"
    assert page.text_content("#caption") == expected["caption"]
    beams = page.eval_on_selector_all("#beams li", "els => els.map(e => Number(e.dataset.score))")
    assert beams == pytest.approx([b["score"] for b in expected["beams"]], abs=1e-5)


def test_textvqa_shows_ocr_and_copied(serve: Callable[..., Any], page: Any,
                                      image_bytes: bytes, client: httpx.Client) -> None:
    server = serve()
    open_page(page, server.url, image_bytes)
    page.click("#tab-textvqa")
    page.fill("#tq-question", "what does it say?")
    submit(page, "#tq-ask")
    assert page.text_content("#error") == ""
    expected = api(client, server.url, "textvqa", image_bytes, question="what does it say?")
    assert same(listed(page, "#tq-answers"), expected["answers"])
    words = page.eval_on_selector_all("#tq-ocr span", "els => els.map(e => e.textContent)")
    assert words == expected["ocr_tokens"]
    assert ("copied from the text" in page.text_content("#tq-copied")) == expected["copied"]


def test_server_errors_are_shown(serve: Callable[..., Any], page: Any,
                                 image_bytes: bytes) -> None:
    server = serve()
    open_page(page, server.url, image_bytes)
    page.fill("#question", QUESTION)
    submit(page, "#ask")
    assert page.locator("#answers li").count() == 5
    page.fill("#question", "   ")
    submit(page, "#ask")  # the server, not the page, refuses it
    error = page.locator("#error")
    assert error.is_visible()
    assert error.text_content() == "422 empty_question: question: must not be empty"
    assert page.locator("#answers li").count() == 0  # no stale answers beside the error
    # a later success clears it
    page.fill("#question", QUESTION)
    submit(page, "#ask")
    assert not error.is_visible()


def test_dialog_sends_the_history(serve: Callable[..., Any], page: Any,
                                  image_bytes: bytes) -> None:
    server = serve()
    # the text fields of each multipart request (Chromium does not expose bodies with files)
    page.add_init_script("""
        window.sentFields = [];
        const fetch0 = window.fetch;
        window.fetch = (url, init) => {
          if (init && init.body instanceof FormData) {
            window.sentFields.push(Object.fromEntries(
              [...init.body].filter(([, v]) => typeof v === "string")));
          }
          return fetch0(url, init);
        };""")
    open_page(page, server.url, image_bytes)
    page.click("#tab-dialog")
    page.fill("#dialog-question", "is there a circle?")
    submit(page, "#dialog-ask")
    first = page.text_content("#dialog-history li .a")
    assert first in page.input_value("#dialog-options").replace(" ", "").split(",")
    page.fill("#dialog-question", "what color is it?")
    submit(page, "#dialog-ask")
    sent = page.evaluate("window.sentFields.at(-1)")
    assert json.loads(sent["history"]) == [{"question": "is there a circle?", "answer": first}]
    assert json.loads(sent["options"])[:3] == ["yes", "no", "red"]
    assert page.locator("#dialog-history li").count() == 2
    # without options this model refuses: the server's message is shown, the history kept
    page.fill("#dialog-options", "")
    page.fill("#dialog-question", "and the square?")
    submit(page, "#dialog-ask")
    assert "send options" in page.text_content("#error")
    assert page.locator("#dialog-history li").count() == 2
    page.click("#dialog-reset")
    assert page.locator("#dialog-history li").count() == 0


def test_api_key(serve: Callable[..., Any], page: Any, image_bytes: bytes) -> None:
    server = serve(api_key="s3cret")
    page.goto(server.url + "/")  # the page itself is open
    page.wait_for_selector("#error:has-text('unauthorized')")
    page.fill("#api-key", "s3cret")
    page.press("#api-key", "Tab")  # change: stored, the models reloaded with the key
    page.wait_for_selector("#model option[value=demo]", state="attached")
    assert page.text_content("#error") == ""
    assert page.evaluate("sessionStorage.getItem('pythia.apiKey')") == "s3cret"
    page.set_input_files("#image", files=[{"name": "shapes.jpg", "mimeType": "image/jpeg",
                                           "buffer": image_bytes}])
    with page.expect_request(lambda r: r.url.endswith("/vqa")) as sent:
        submit(page, "#ask")
    assert sent.value.headers.get("authorization") == "Bearer s3cret"
    assert page.locator("#answers li").count() == 5
