"""The app in real Chromium: pick a name, label three pairs with the keyboard, check the rows,
take a screenshot, and make sure responses carrying <script> and onerror= show as text, never run."""
from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from bench.loop import start_server
from labeling import db, queue
from labeling.models import Judgment
from tests.test_queue import seed_pairs

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
SCRIPT = "<script>alert(1)</script>"
IMG = "<img src=x onerror=alert(1)>"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


def require_chromium() -> None:
    if CHROMIUM.exists():
        return
    message = f"{CHROMIUM} is missing: install Debian's chromium package (apt-get install chromium)"
    if os.environ.get("PREFLOOP_REQUIRE_BROWSER") == "1":
        pytest.fail(message + "; PREFLOOP_REQUIRE_BROWSER=1 makes this a failure.")
    pytest.skip(message)


@pytest.fixture
def server(workspace):
    """`streamlit run app.py` on a free localhost port, on this test's workspace."""
    require_chromium()
    db.engine()  # the workspace folder and schema exist before the server opens the database
    env = {**os.environ, "PREFLOOP_HOME": str(workspace), "PREFLOOP_AUTOGENERATE": "0", "OMP_NUM_THREADS": "1"}
    proc, url = start_server(workspace, env)
    try:
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def stored() -> list[Judgment]:
    with db.session() as s:
        return list(s.scalars(select(Judgment).order_by(Judgment.id)))


def wait_for_rows(n: int, timeout: float = 20) -> list[Judgment]:
    deadline = time.monotonic() + timeout
    while len(rows := stored()) < n and time.monotonic() < deadline:
        time.sleep(0.2)
    return rows


def open_label_as(page, server: str, name: str) -> None:
    """What a new labeler does: type a name on the home page, start, and open Label."""
    from playwright.sync_api import expect

    page.goto(server, wait_until="domcontentloaded")
    page.get_by_label("or type a new name").fill(name)
    page.get_by_role("button", name="Start labeling").click()
    expect(page).to_have_url(f"{server}/?annotator={name}", timeout=15_000)
    page.get_by_role("link", name="Label").click()


def test_label_three_pairs_with_the_keyboard_and_no_script_runs(server, workspace):
    from playwright.sync_api import expect, sync_playwright

    ids = seed_pairs([
        ("Show me some HTML.", SCRIPT, IMG),
        ("Write a Python hello world.", "```python\nprint('hello')\n```", "Use `print`."),
        ("Name a colour.", "**Blue**", "Red"),
        ("One more?", "Yes", "No"),
    ])
    ARTIFACTS.mkdir(exist_ok=True)
    dialogs: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        open_label_as(page, server, "pat")
        expect(page.get_by_text("Response A", exact=True)).to_be_visible(timeout=15_000)

        # The first pair carries the two attacks: both show as literal text.
        expect(page.get_by_text(SCRIPT, exact=True)).to_be_visible()
        expect(page.get_by_text(IMG, exact=True)).to_be_visible()
        assert page.locator("img[src='x']").count() == 0
        assert page.evaluate("[...document.scripts].some(s => s.textContent.includes('alert(1)'))") is False
        expect(page.get_by_text("Keys:")).to_be_visible()
        page.screenshot(path=str(ARTIFACTS / "label_xss_pair.png"), full_page=True)

        for number, key in enumerate(("1", "2", "3"), start=1):
            if key == "2":  # digits typed into the comment box are text, not shortcuts
                page.get_by_label("Comment (optional)").click()
                page.keyboard.type("point 2 is wrong")
                page.wait_for_timeout(500)
                assert len(stored()) == 1, "typing a digit in the comment box submitted a judgment"
            page.get_by_role("heading", name="Label").click()  # focus on the page, not in the comment box
            page.wait_for_timeout(300)
            page.keyboard.press(key)
            assert len(wait_for_rows(number)) == number, f"key {key} stored no judgment"
            expect(page.get_by_text("Response A", exact=True)).to_be_visible()
            if number == 1:  # the second pair: its markdown code block renders as code
                expect(page.locator("pre code").filter(has_text="print('hello')")).to_be_visible()
        page.wait_for_timeout(500)
        page.screenshot(path=str(ARTIFACTS / "label_after_three.png"), full_page=True)
        browser.close()

    rows = stored()
    assert [r.pair_id for r in rows] == ids[:3]
    assert {r.annotator.name for r in rows} == {"pat"}
    for row, choice in zip(rows, ("left", "right", "tie")):
        assert row.left == queue.left_side(row.pair_id, "pat")
        assert row.outcome == queue.stored_outcome(choice, row.left)
    assert [r.comment for r in rows] == [None, "point 2 is wrong", None]
    assert dialogs == [], f"a dialog fired: {dialogs}"


def test_the_ai_judges_opinion_shows_only_after_the_vote(server, workspace):
    from playwright.sync_api import expect, sync_playwright

    from labeling import suggestions

    ids = seed_pairs([("Is the sea salty?", "Yes, it is salty.", "No."), ("Next?", "Yes", "No")])
    suggestions.store(ids[0], "ai", "local:judge", "a", 0.9, "It answers the question.", rubric_version=1)
    left_is_a = queue.left_side(ids[0], "pat") == "a"
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        open_label_as(page, server, "pat")
        expect(page.get_by_text("Response A", exact=True)).to_be_visible(timeout=15_000)
        expect(page.get_by_text("Is the sea salty?")).to_be_visible()
        assert page.get_by_text("The AI judge").count() == 0  # nothing to anchor the vote
        page.get_by_role("button", name="Tie").click()
        expect(page.get_by_text("On the pair you just judged")).to_be_visible(timeout=15_000)
        expect(page.get_by_text("It answers the question.", exact=False)).to_be_visible()
        expect(page.locator("strong", has_text="A" if left_is_a else "B").first).to_be_visible()
        page.screenshot(path=str(ARTIFACTS / "label_suggestion_after_vote.png"), full_page=True)
        browser.close()
    assert [(r.pair_id, r.outcome) for r in stored()] == [(ids[0], "tie")]


def test_both_bad_then_a_rewrite_typed_with_digits_and_one_answer_rated_by_key(server, workspace):
    from playwright.sync_api import expect, sync_playwright

    from labeling import demonstrations, ratings

    ids = seed_pairs([("How many legs has a spider?", "Six.", "Ten."), ("Name a planet.", "Mars", "The Moon")])
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 1100})
        open_label_as(page, server, "pat")
        expect(page.get_by_text("How many legs has a spider?")).to_be_visible(timeout=15_000)
        page.get_by_role("heading", name="Label").click()  # focus on the page, as the first test does
        page.wait_for_timeout(300)
        page.keyboard.press("4")  # Both bad
        expect(page.get_by_text("Both answers were bad.", exact=False)).to_be_visible(timeout=15_000)
        page.get_by_label("Your answer").fill("")
        page.get_by_label("Your answer").type("A spider has 8 legs, 4 on each side.")  # digits are text here
        page.wait_for_timeout(500)
        assert len(stored()) == 1, "typing digits in the rewrite box voted"
        page.get_by_role("button", name="Save rewrite").click()
        expect(page.get_by_text("Both answers were bad.", exact=False)).to_have_count(0, timeout=15_000)
        page.wait_for_timeout(1000)  # the rerun's last elements settle
        page.screenshot(path=str(ARTIFACTS / "label_after_rewrite.png"), full_page=True)
        page.get_by_text("Rate one").click()
        expect(page.get_by_text("The answer", exact=True)).to_be_visible(timeout=15_000)
        page.get_by_role("heading", name="Label").click()
        page.wait_for_timeout(300)
        page.keyboard.press("1")  # good
        deadline = time.monotonic() + 15
        while ratings.counts("pat")["up"] == 0 and time.monotonic() < deadline:
            time.sleep(0.2)
        page.wait_for_timeout(1000)
        page.screenshot(path=str(ARTIFACTS / "label_rate_one.png"), full_page=True)
        browser.close()
    assert [(r.pair_id, r.outcome) for r in stored()] == [(ids[0], "both_bad")]
    (demo,) = demonstrations.sft_rows()
    assert demo["completion"][0]["content"] == "A spider has 8 legs, 4 on each side."
    assert ratings.counts("pat") == {"up": 1, "down": 0, "skip": 0}
