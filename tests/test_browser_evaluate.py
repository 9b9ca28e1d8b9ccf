"""The Evaluate page in real Chromium with points measured on tiny models: the chart draws, its
table lists the measured versions, and a screenshot is kept to be looked at."""
from __future__ import annotations

import pytest

from tests.test_browser import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, server  # noqa: F401 (fixture)
from tests.test_evaluate import trained  # noqa: F401 (fixture)
from training import points
from training.evaluate import evaluate
from training.evaluate_config import EvaluateConfig

pytestmark = pytest.mark.browser


def test_reward_vs_kl_chart_with_measured_points(trained, server):  # noqa: F811
    from playwright.sync_api import expect, sync_playwright

    result = evaluate(EvaluateConfig(prompts=4, samples=2, max_new_tokens=12))
    assert len(result["points"]) == 2
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 1400})
        # the first request of a fresh server names a page: it must go through the router (app.py),
        # never run pages/evaluate.py alone with Streamlit's old pages-folder navigation
        page.goto(f"{server}/evaluate?annotator=pat", wait_until="domcontentloaded")
        expect(page.get_by_role("heading", name="prefloop")).to_be_visible(timeout=20_000)
        assert page.get_by_role("link", name="widgets").count() == 0
        page.get_by_role("link", name="Evaluate").click()
        expect(page.get_by_role("heading", name="Evaluate")).to_be_visible(timeout=20_000)
        chart = page.locator("[data-testid='stVegaLiteChart'] canvas, [data-testid='stVegaLiteChart'] svg").first
        expect(chart).to_be_visible(timeout=20_000)
        page.wait_for_timeout(1500)
        page.screenshot(path=str(ARTIFACTS / "evaluate_chart.png"), full_page=True)
        box = chart.bounding_box()
        assert box["width"] > 300 and box["height"] > 200
        browser.close()
    assert {p["version"] for p in points.latest_points()} == {trained["base"], trained["tuned"]}
