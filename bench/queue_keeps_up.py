"""Does the queue keep up with a labeler? One person labels in Chromium at a steady pace for ten minutes.

    python bench/queue_keeps_up.py [--minutes 10] [--pace 6] [--home DIR]

The condition of issue 19: the default model converted once (untimed, as `make run` does), a fresh workspace,
`streamlit run app.py` with the generator the server starts, one Chromium on the Label page, all
on this machine's cores. After the first pair the labeler reads each pair for `--pace` seconds,
presses 1 or 2, and waits for the next pair. A wait is the time from the key press to the next
pair on screen (a rerun alone takes a few hundred ms). Reported: the first pair's time, the longest
wait, the median wait, the share of the labeling time spent waiting, how often the "No pairs are
waiting" notice showed, pairs judged, generation jobs run, and the generator workers still alive
15 s after the server stopped (orphans). Targets: longest wait <= 2 s, no orphans. Last line JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.first_pair import CHROMIUM, CHROMIUM_ARGS, prepare, set_up  # noqa: E402
from training.jobs import pid_alive  # noqa: E402

PAIR_BUTTON = re.compile(r"st-key-left-(\d+)")
NO_PAIRS = "No pairs are waiting for you right now"


def pair_on_screen(page) -> int | None:
    """The id of the pair whose buttons are on screen (their keys carry it), else None."""
    for element in page.locator("[class*='st-key-left-']").all():
        match = PAIR_BUTTON.search(element.get_attribute("class") or "")
        if match and element.is_visible():
            return int(match.group(1))
    return None


def next_pair(page, previous: int | None, timeout: float) -> tuple[int, bool]:
    """Wait for a pair other than `previous`; (its id, whether the "no pairs" notice showed meanwhile)."""
    deadline, saw_empty = time.monotonic() + timeout, False
    while time.monotonic() < deadline:
        pair = pair_on_screen(page)
        if pair is not None and pair != previous:
            return pair, saw_empty
        saw_empty = saw_empty or page.get_by_text(NO_PAIRS).count() > 0
        page.wait_for_timeout(100)
    raise TimeoutError(f"no new pair within {timeout:.0f} s")


def job_rows(home: Path) -> list[dict]:
    """The workspace's generation jobs (kind, status, pid), read in a child process."""
    code = ("import json; from labeling import runs; "
            "print(json.dumps([{'id': j.id, 'kind': j.kind, 'status': j.status, 'pid': j.pid} "
            "for j in runs.list_jobs(500)]))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "PREFLOOP_HOME": str(home)})
    return json.loads(out.stdout) if out.returncode == 0 else []


def label_for(page, seconds: float, pace: float, rng: random.Random) -> dict:
    """Label at `pace` seconds a pair for `seconds`; the waits between pairs."""
    waits, empty_seen = [], 0
    pair, _ = next_pair(page, None, timeout=60)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        page.wait_for_timeout(pace * 1000)
        page.get_by_role("heading", name="Label").click()  # focus on the page, not in the comment box
        page.keyboard.press(rng.choice("12"))
        pressed = time.monotonic()
        pair, empty = next_pair(page, pair, timeout=max(60.0, end - pressed + 60))
        waits.append(time.monotonic() - pressed)
        empty_seen += empty
    return {"pairs_judged": len(waits), "longest_wait_s": round(max(waits), 2),
            "median_wait_s": round(statistics.median(waits), 2),
            "share_waiting": round(sum(waits) / (sum(waits) + pace * len(waits)), 3),
            "waits_over_2s": sum(w > 2 for w in waits), "empty_notice_seen": empty_seen}


def one_run(home: Path, model: Path, minutes: float, pace: float, seed: int) -> dict:
    from playwright.sync_api import sync_playwright

    from bench.loop import start_server

    home.mkdir(parents=True)
    env = {**os.environ, "PREFLOOP_HOME": str(home), "PREFLOOP_MODEL": str(model), "PREFLOOP_AUTOGENERATE": "1"}
    prepare(env)  # as `make run` does before the server starts
    started = time.monotonic()
    proc, url = start_server(home, env)
    result: dict = {}
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(url, wait_until="domcontentloaded")
            page.get_by_label("or type a new name").fill("steady")
            page.get_by_role("button", name="Start labeling").click()
            page.wait_for_url(f"{url}/?annotator=steady", timeout=120_000)
            page.get_by_role("link", name="Label").click()
            page.get_by_text("Response A", exact=True).first.wait_for(timeout=600_000)
            result["first_pair_on_screen_s"] = round(time.monotonic() - started, 1)
            try:
                result.update(label_for(page, minutes * 60, pace, random.Random(seed)))
            finally:
                page.screenshot(path=str(home / "label_page.png"))
                browser.close()
    finally:
        jobs_before = job_rows(home)
        proc.terminate()
        proc.wait(timeout=30)
    time.sleep(15)
    jobs_after = job_rows(home)
    result["generation_jobs"] = sum(j["kind"] == "generate" for j in jobs_after)
    result["orphans"] = sum(pid_alive(j["pid"]) for j in jobs_before if j["kind"] == "generate")
    result["job_statuses"] = sorted({j["status"] for j in jobs_after})
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--home", help="folder for the workspaces (default: a temporary one)")
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--pace", type=float, default=6, help="seconds the labeler reads each pair")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    root, model = set_up(args.home, "queue-keeps-up-")
    result = one_run(root / "run", model, args.minutes, args.pace, args.seed)
    result.update(minutes=args.minutes, pace_s=args.pace, target_longest_wait_s=2,
                  met=result.get("longest_wait_s", 1e9) <= 2 and result["orphans"] == 0)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
