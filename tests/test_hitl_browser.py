"""The review page in a real browser: Debian's chromium driven by Playwright against a uvicorn server
on 127.0.0.1. A reviewer names themself, reviews two examples with the keyboard only, edits one answer,
and the database holds exactly that. Skipped when /usr/bin/chromium is absent (`make test` installs it).
"""
import os
import socket
import threading
import time
from pathlib import Path

import pytest

import hitl
from test_hitl import answer, make_two_runs

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                reason=f"{CHROMIUM} is missing: `apt-get install -y chromium` (make test does it)")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def served(tmp_path):
    """The app on a random free loopback port, in a thread; stopped after the test."""
    import uvicorn
    run_a, run_b, ids = make_two_runs(tmp_path)
    db = tmp_path / "reviews.sqlite"
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(hitl.create_app(db, [run_a, run_b]), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    yield f"http://127.0.0.1:{port}/", db, ids
    server.should_exit = True
    thread.join(10)


@pytest.fixture
def page():
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        tab = browser.new_page(viewport={"width": 1400, "height": 1000})
        tab.set_default_timeout(15_000)
        yield tab
        browser.close()


def wait_for(condition, timeout=10.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def test_a_reviewer_reviews_two_examples_with_the_keyboard_and_edits_one_answer(served, page):
    from playwright.sync_api import expect
    url, db, ids = served
    page.goto(url)
    expect(page.locator("#modal")).to_be_visible()
    page.fill("#nameInput", "carol")
    page.keyboard.press("Enter")
    page.wait_for_selector("body[data-ready='1']")
    expect(page.locator("#exTitle")).to_have_text("AAA · 2012-03-08 to 2012-03-15")
    expect(page.locator("#revealBox")).to_be_hidden()
    assert "teacher point" not in page.content()                     # the teacher answer is not in the page

    # example 1: rate A 4 and B 2, prefer A, comment, reveal, mark directions
    page.keyboard.press("4")
    expect(page.locator("[data-rate='A4']")).to_have_class("on")
    page.keyboard.press("Shift+Digit2")
    expect(page.locator("[data-rate='B2']")).to_have_class("on")
    page.keyboard.press("a")
    expect(page.locator("#prefRow [data-pref='A']")).to_have_class("on")
    page.keyboard.press("c")
    page.keyboard.type("grounded in the news")
    page.keyboard.press("Control+Enter")
    page.keyboard.press("r")
    expect(page.locator("#revealBox")).to_be_visible()
    expect(page.locator("#outcome")).to_have_text("up by 1-2%")
    page.keyboard.press("y")
    page.keyboard.press("Shift+KeyN")
    expect(page.locator("#out-B button", has_text="wrong")).to_have_class("on")
    expect(page.locator("#progress")).to_have_text("Reviewed 1 / 6")
    if os.environ.get("HITL_SCREENSHOT"):                         # a look at the page, never committed
        page.screenshot(path=os.environ["HITL_SCREENSHOT"], full_page=True)

    # example 2: rate, prefer B, edit A's answer with the live well-formedness check
    page.keyboard.press("j")
    expect(page.locator("#exTitle")).to_have_text("AAA · 2012-03-15 to 2012-03-22")
    page.keyboard.press("3")
    page.keyboard.press("Shift+Digit5")
    page.keyboard.press("b")
    expect(page.locator("#prefRow [data-pref='B']")).to_have_class("on")
    page.keyboard.press("e")
    editor = page.locator("#editor-A")
    expect(editor).to_be_focused()
    editor.fill("Prediction: up")
    expect(page.locator("#wellformed")).to_contain_text("not well-formed")
    corrected = answer("Down by 0-1%", positive="Guidance cut, as the news says")
    editor.fill(corrected)
    expect(page.locator("#wellformed")).to_contain_text("well-formed — Prediction: Down by 0-1%")
    page.keyboard.press("Control+Enter")
    expect(page.locator("#out-A .badge.warn")).to_have_text("edited")
    expect(page.locator("#progress")).to_have_text("Reviewed 2 / 6")

    store = hitl.ReviewStore(db)
    state = {r["example_id"]: r for r in store.reviews("carol")}
    first, second = state[ids[0]], state[ids[1]]
    assert (first["rating_A"], first["rating_B"], first["preference"]) == (4, 2, "A")
    assert first["comment"] == "grounded in the news" and first["revealed_at"]
    assert (first["direction_A"], first["direction_B"]) == ("right", "wrong")
    assert (second["rating_A"], second["rating_B"], second["preference"]) == (3, 5, "B")
    assert second["edit_A"] == corrected and second["edit_A_after_reveal"] == 0 and second["revealed_at"] is None
    assert len(store.history(reviewer="carol")) == 11

    # the name is kept in the browser: a reload goes straight to the page
    page.reload()
    page.wait_for_selector("body[data-ready='1']")
    expect(page.locator("#modal")).to_be_hidden()
    expect(page.locator("#reviewerName")).to_have_text("carol")
