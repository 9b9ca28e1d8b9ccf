"""Hostile text in every field a page renders (prompt, responses, comment, source, annotator name,
arena answers), in real Chromium: shown as text on Label, Data and Compare, never executed."""
from __future__ import annotations

import pytest

from labeling import db, queue
from labeling.models import ModelVersion
from labeling.store import add_generated_pair, add_prompts
from tests.test_browser import CHROMIUM, CHROMIUM_ARGS, IMG, SCRIPT, server  # noqa: F401 (fixture)
from tests.test_queue import seed_pairs

pytestmark = pytest.mark.browser
SVG = "<svg onload=alert(3)>"
ATTACKS = (SCRIPT, IMG, SVG)


def seed_hostile() -> None:
    seed_pairs([(f"Prompt {SVG} {SCRIPT}", f"left {IMG}", f"right {SCRIPT}"),
                ("Second", "plain a", "plain b")], source=f"src{IMG}")
    queue.submit_judgment(f"eve{SVG}", 2, "a", "a", comment=f"comment {SCRIPT} {IMG}")
    add_prompts([f"Arena prompt {IMG}"], source="xss")
    with db.session() as s:
        s.add(ModelVersion(id="v1-base", kind="policy", method="base", path="/m"))
        s.add(ModelVersion(id="v2-dpo", kind="policy", method="dpo", parent_id="v1-base", path="/d", is_current=True))
        s.flush()
        add_generated_pair(s, 3,  # the arena prompt is the third prompt
                           f"base {SVG}", f"tuned {SCRIPT}", ("v1-base", "v2-dpo"),
                           ({"reward": 0.1, "base_logprob": -3.0, "tokens": 4},) * 2, kind="arena")


def assert_inert(page, dialogs) -> None:
    assert page.locator("img[src='x']").count() == 0
    assert page.locator("svg[onload]").count() == 0
    assert page.evaluate("[...document.scripts].some(s => s.textContent.includes('alert('))") is False
    assert dialogs == [], f"a dialog fired: {dialogs}"


def test_every_rendered_field_shows_hostile_text_as_text(server):  # noqa: F811
    from playwright.sync_api import expect, sync_playwright

    seed_hostile()
    dialogs: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 1200})
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        page.goto(f"{server}/?annotator=pat", wait_until="domcontentloaded")
        expect(page.get_by_role("heading", name="prefloop")).to_be_visible(timeout=20_000)
        page.get_by_role("link", name="Label").click()
        expect(page.get_by_text(f"left {IMG}", exact=True)).to_be_visible(timeout=15_000)
        expect(page.get_by_text(f"Prompt {SVG} {SCRIPT}", exact=True)).to_be_visible()
        assert_inert(page, dialogs)
        page.get_by_role("link", name="Data").click()
        expect(page.get_by_role("heading", name="Data")).to_be_visible(timeout=15_000)
        page.wait_for_timeout(2000)  # the table is drawn on a canvas: its cells are never HTML
        for tab in ("Import / export", "Statistics"):
            page.get_by_role("tab", name=tab).click()
            page.wait_for_timeout(1000)
        assert_inert(page, dialogs)
        page.get_by_role("link", name="Compare").click()
        expect(page.get_by_text(f"tuned {SCRIPT}", exact=True).first).to_be_attached(timeout=15_000)
        for expander in page.locator("[data-testid='stExpander'] summary").all():
            expander.click()
        page.wait_for_timeout(1000)
        expect(page.get_by_text(f"base {SVG}", exact=True).first).to_be_visible()
        assert_inert(page, dialogs)
        browser.close()
