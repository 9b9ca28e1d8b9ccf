"""How long does a new labeler wait for the first pair? Server start to the first pair on screen.

    python bench/first_pair.py [--home DIR] [--runs 1]

The condition of issue 19: the set-up has run once (the default model is converted: this script
converts it first, untimed, into a shared folder, and `python -m training prepare` converts it for
the generator's engine, untimed, as `make run` does), then a fresh workspace, `streamlit run app.py`,
one Chromium (a name typed on the home page, then the Label page), the generator started by the server, all on
this machine's cores. Reported per run: seconds from launching the server to its health check and
to the first pair on screen (the "Response A" heading), and the pairs stored by then. Target:
first pair on screen within 60 s. Last line JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


def stored_pairs(home: Path) -> int:
    """Pairs in the workspace's database, read in a child process (this one never opens it)."""
    code = "from labeling import queue; print(queue.pairs_waiting())"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "PREFLOOP_HOME": str(home)})
    return int(out.stdout.strip() or 0) if out.returncode == 0 else 0


def what_happened(home: Path, page) -> str:
    """Why no pair showed, for the error: the page's text, the workspace's jobs, the ends of their
    logs, the busiest processes; whatever of it can be read."""
    parts = []
    for name, read in (
        ("page", lambda: repr(page.inner_text("body", timeout=5000)[:1500])),
        ("jobs", lambda: subprocess.run([sys.executable, "-m", "training", "worker", "list"], cwd=ROOT, text=True,
                                        capture_output=True, timeout=60, env={**os.environ, "PREFLOOP_HOME": str(home)}
                                        ).stdout.strip()),
        ("pairs waiting", lambda: stored_pairs(home)),
        ("logs", lambda: "".join(f"\n--- {log}:\n{log.read_text(errors='replace')[-1500:]}" for log in
                                 sorted(home.glob("jobs/*/log.txt"), key=lambda p: int(p.parent.name))
                                 + [home / "streamlit.log"] if log.is_file())),
        ("busiest processes", lambda: "\n" + "\n".join(line[:200] for line in subprocess.run(
            ["ps", "-eo", "pid,ni,pcpu,etime,args", "--sort=-pcpu"], capture_output=True, text=True,
            timeout=10).stdout.splitlines()[:8])),
    ):
        try:
            parts.append(f"{name}: {read()}")
        except Exception as error:  # a crashed page or a hung child must not hide the rest
            parts.append(f"{name}: unreadable ({type(error).__name__}: {error})")
    return "\n".join(parts)


def prepare(env: dict[str, str]) -> None:
    """What `make run` does before it starts the server, untimed: `python -m training prepare`
    (the model converted for the generator's engine, in this workspace)."""
    subprocess.run([sys.executable, "-m", "training", "prepare"], cwd=ROOT, env=env, check=True, capture_output=True)


def one_run(home: Path, model: Path, timeout: float) -> dict:
    from playwright.sync_api import sync_playwright

    from bench.loop import start_server

    home.mkdir(parents=True)
    env = {**os.environ, "PREFLOOP_HOME": str(home), "PREFLOOP_MODEL": str(model), "PREFLOOP_AUTOGENERATE": "1"}
    prepare(env)
    started = time.monotonic()
    proc, url = start_server(home, env)
    result = {"server_up_s": round(time.monotonic() - started, 1)}
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(url, wait_until="domcontentloaded")  # what a new labeler does: a name, then Label
            page.get_by_label("or type a new name").fill("first-pair")
            page.get_by_role("button", name="Start labeling").click()
            page.wait_for_url(f"{url}/?annotator=first-pair", timeout=timeout * 1000)
            page.get_by_role("link", name="Label").click()
            try:
                page.get_by_text("Response A", exact=True).first.wait_for(timeout=timeout * 1000)
            except Exception as error:  # playwright's TimeoutError: say what the page and the jobs showed
                raise RuntimeError(f"no pair on screen after {timeout:.0f} s.\n{what_happened(home, page)}") from error
            finally:
                page.screenshot(path=str(home / "label_page.png"))
            result["first_pair_on_screen_s"] = round(time.monotonic() - started, 1)
            browser.close()
        result["pairs_stored_by_then"] = stored_pairs(home)
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    return result


def set_up(home: str | None, prefix: str) -> tuple[Path, Path]:
    """(folder for the workspaces, converted default model): the set-up `make run` does once, untimed."""
    if not CHROMIUM.exists():
        sys.exit(f"{CHROMIUM} is missing: install Debian's chromium package (apt-get install chromium).")
    root = Path(home or tempfile.mkdtemp(prefix=prefix))
    os.environ["PREFLOOP_HOME"] = str(root / "convert")
    from training.model import convert_default_model

    return root, convert_default_model()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--home", help="folder for the workspaces (default: a temporary one)")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=600, help="seconds to wait for the first pair")
    args = parser.parse_args()
    root, model = set_up(args.home, "first-pair-")
    runs = []
    for k in range(args.runs):
        runs.append(one_run(root / f"run-{k}", model, args.timeout))
        print(json.dumps(runs[-1]), flush=True)
    first = [r["first_pair_on_screen_s"] for r in runs]
    print(json.dumps({"first_pair_on_screen_s": statistics.median(first), "runs": len(runs),
                      "target_s": 60, "met": statistics.median(first) <= 60}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
