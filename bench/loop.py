"""The whole preference loop in Chromium, clicked as a user would, on a real model: import
hh-rlhf pairs on the Data page; train a reward model, a DPO round and a PPO round on the Train
page; measure reward and KL, then run a β sweep, on the Evaluate page; generate base-vs-tuned
answers on the Compare page and vote in the blind arena. Times each stage and keeps a screenshot
of each page in --out (look at them).

    python bench/loop.py [--model FOLDER] [--data FILE.jsonl.gz] [--out DIR] [--home DIR]

Settings are cut for a 2-core CPU (48 pairs, 6 steps per round, 8 evaluation prompts), so the
figures say that the loop runs and how long each stage takes, not how good the model gets.
Needs Debian's chromium. Last line: JSON {"stages_s": {...}, "points": n, "sweep_points": m,
"arena_votes": k, "arena_pairs_exported": e, "total_s": t}.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]
JOB_TIMEOUT_MS = 40 * 60 * 1000
ROUND = {"batch size": 8, "max length": 192}  # the Train form's fields, as labelled on the page
QUICK = {"max pairs (0 = all)": 48, "max steps (0 = all)": 6}
EVALUATION = {"prompts": 8, "samples": 2, "max new tokens": 48}


def start_server(home: Path, env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    """`streamlit run app.py` on a free localhost port, logging to HOME/streamlit.log; (process, url)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with open(home / "streamlit.log", "wb") as log:  # the server keeps its own copy of the handle
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true", "--server.port",
             str(port), "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false",
             "--server.fileWatcherType", "none"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2):
                return proc, url
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError(f"streamlit did not start: {(home / 'streamlit.log').read_text()[-2000:]}")


def fill(scope, values: dict[str, object]) -> None:
    for label, value in values.items():
        box = scope.get_by_label(label, exact=True)
        box.fill(str(value))
        box.press("Tab")


def unfold(scope, label: str) -> None:
    """Open the form's "Advanced" fold when the field `label` sits folded inside it."""
    if not scope.get_by_label(label, exact=True).is_visible():
        scope.get_by_text("Advanced", exact=True).click()


def form(page, button: str):
    """The Streamlit form whose submit button is `button`."""
    return page.get_by_test_id("stForm").filter(has=page.get_by_role("button", name=button, exact=True))


def wait_for_job(page, kind: str) -> None:
    """Until the job panel says the `kind` job is done; a failed job stops the run with its error."""
    from playwright.sync_api import expect

    finished = page.get_by_text(re.compile(rf"Job #\d+ {kind}: (done|failed|cancelled)"))
    expect(finished.first).to_be_visible(timeout=JOB_TIMEOUT_MS)
    text = finished.first.inner_text()
    if "done" not in text:
        raise RuntimeError(f"the {kind} job ended as: {text}; see the Train page or the job's log")


def arena_pairs_made() -> int:
    from training import jobs

    return next(j.result["pairs"] for j in jobs.list_jobs() if j.kind == "arena" and j.status == "done")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="PREFLOOP_MODEL for the run (default: the converted SmolLM2)")
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "hh-rlhf-harmless-base-test.jsonl.gz"))
    parser.add_argument("--out", default=str(ROOT / "bench" / "loop-screenshots"))
    parser.add_argument("--home", help="workspace folder (default: a new temporary one)")
    args = parser.parse_args()
    from playwright.sync_api import expect, sync_playwright

    home = Path(args.home or tempfile.mkdtemp(prefix="prefloop-loop-"))
    home.mkdir(parents=True, exist_ok=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PREFLOOP_HOME": str(home), "PREFLOOP_AUTOGENERATE": "0"}
    if args.model:
        env["PREFLOOP_MODEL"] = args.model
    os.environ.update(env)
    proc, url = start_server(home, env)
    stages: dict[str, float] = {}

    def stage(name: str, began: float) -> None:
        stages[name] = round(time.perf_counter() - began, 1)
        print(f"{name}: {stages[name]} s", file=sys.stderr, flush=True)

    total = time.perf_counter()
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1600})
            try:
                page.set_default_timeout(60_000)
                page.goto(url, wait_until="domcontentloaded")
                page.get_by_label("or type a new name").fill("pat")
                page.get_by_role("button", name="Start labeling").click()
                expect(page).to_have_url(re.compile(r"annotator=pat"), timeout=30_000)
                page.wait_for_timeout(1500)
                page.screenshot(path=str(out / "0-home-first-visit.png"), full_page=True)

                began = time.perf_counter()
                page.get_by_role("link", name="Data").click()
                page.get_by_role("tab", name="Import / export").click()
                page.get_by_test_id("stFileUploaderDropzoneInput").set_input_files(args.data)
                form(page, "Import").get_by_role("button", name="Import").click()
                expect(page.get_by_text(re.compile(r"imported \d+ \(hh"))).to_be_visible(timeout=300_000)
                page.screenshot(path=str(out / "1-data-import.png"), full_page=True)
                stage("import", began)

                page.get_by_role("link", name="Train").click()
                for label, kind, extra in (("Reward model", "reward", {}), ("DPO", "dpo", {"learning rate": 5e-4}),
                                           ("PPO", "ppo", None)):
                    began = time.perf_counter()
                    page.get_by_text(label, exact=True).first.click()
                    page.wait_for_timeout(1500)
                    submit = form(page, "Train")
                    unfold(submit, "batch size")  # the round's settings besides beta, epochs, learning rate
                    if extra is None:  # PPO: its own steps and prompts fields, no quick-run limits
                        fill(submit, {"steps": 3, "batch size": 4, "mini batch size": 4, "max new tokens": 32})
                    else:
                        if not page.get_by_label(next(iter(QUICK)), exact=True).is_visible():
                            page.get_by_text("Quick run (optional limits)").click()
                        fill(page, QUICK)
                        fill(submit, {**ROUND, **extra})
                    submit.get_by_role("button", name="Train").click()
                    wait_for_job(page, kind)
                    page.wait_for_timeout(2500)  # one more refresh of the panel: curves and result
                    page.get_by_role("heading", name="Progress").scroll_into_view_if_needed()
                    page.screenshot(path=str(out / f"2-train-{kind}.png"), full_page=True)
                    stage(kind, began)

                began = time.perf_counter()
                page.get_by_role("link", name="Evaluate").click()
                fill(form(page, "Measure"), EVALUATION)
                form(page, "Measure").get_by_role("button", name="Measure").click()
                wait_for_job(page, "evaluate")
                stage("evaluate", began)

                began = time.perf_counter()
                sweep = form(page, "Run sweep")
                fill(sweep, {**EVALUATION, "betas": "0.05,0.2,1.0", "max steps": 6, "max pairs": 48,
                             "learning rate": 5e-4, "max length": 192})
                sweep.get_by_role("button", name="Run sweep").click()
                wait_for_job(page, "sweep")
                stage("sweep", began)
                page.get_by_role("link", name="Home").click()  # and back: the page draws the new points
                page.get_by_role("link", name="Evaluate").click()
                chart = page.get_by_test_id("stVegaLiteChart").first
                expect(chart).to_be_visible(timeout=60_000)
                page.wait_for_timeout(3000)
                page.screenshot(path=str(out / "3-evaluate.png"), full_page=True)

                began = time.perf_counter()
                page.get_by_role("link", name="Compare").click()
                arena_form = form(page, "Generate answers")
                fill(arena_form, {"prompts": 4, "max new tokens": 64})
                arena_form.get_by_role("button", name="Generate answers").click()
                wait_for_job(page, "arena")
                stage("arena answers", began)
                page.get_by_role("link", name="Home").click()
                page.get_by_role("link", name="Compare").click()
                if arena_pairs_made() == 0:  # both versions gave the same answers (a tiny test model does)
                    print("arena: the two versions answered alike; no pairs to vote on", file=sys.stderr)
                else:
                    # A better, B better, A better, tie: as many as there are pairs (the answers of a tiny
                    # model to some of the 4 prompts may be the same, and such a pair is not stored)
                    for key in ("1", "2", "1", "3")[:arena_pairs_made()]:
                        expect(page.get_by_role("button", name="A is better")).to_be_visible(timeout=20_000)
                        page.get_by_role("heading", name="Blind arena").click()  # focus off the inputs
                        page.keyboard.press(key)
                        page.wait_for_timeout(2500)
                    expect(page.get_by_text("Bradley-Terry ratings")).to_be_visible(timeout=30_000)
                    page.get_by_text(re.compile(r"^Prompt \d+:")).first.click()
                    page.wait_for_timeout(1500)
                page.screenshot(path=str(out / "4-compare.png"), full_page=True)
                page.get_by_role("link", name="Home").click()  # the dashboard after one whole loop
                expect(page.get_by_text("Running jobs")).to_be_visible(timeout=30_000)
                page.wait_for_timeout(1500)
                page.screenshot(path=str(out / "5-home-after-the-loop.png"), full_page=True)
            except Exception:
                page.screenshot(path=str(out / "failed.png"), full_page=True)
                raise
            finally:
                browser.close()
    finally:
        proc.terminate()
        proc.wait(timeout=20)

    from labeling import arena
    from labeling.export import preference_rows
    from training import points

    measured = points.latest_points()
    arena_pairs = len(preference_rows(kinds=("arena",)).rows)
    print(json.dumps({
        "stages_s": stages, "points": len(measured), "sweep_points": sum(1 for p in measured if p.get("sweep")),
        "arena_votes": len(arena.arena_votes()),
        "arena_pairs_exported": arena_pairs,
        "total_s": round(time.perf_counter() - total, 1), "home": str(home),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
