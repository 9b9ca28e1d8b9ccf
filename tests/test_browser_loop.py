"""The whole loop clicked through real Chromium (bench/loop.py) on a tiny model: import on the
Data page, reward, DPO and PPO rounds on the Train page, a measurement and a 3-β sweep on the
Evaluate page, arena answers on the Compare page. Catches what page-by-page AppTests miss: two
bugs of this kind (an empty form box failing PPO, the Evaluate page crashing after a sweep) were
found this way. The same script on SmolLM2 is in the README's benchmark table."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.test_browser import ARTIFACTS, ROOT, require_chromium
from tests.tiny_models import make_tiny_policy

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def test_the_whole_loop_in_chromium_on_a_tiny_model(tmp_path, shared_data):
    require_chromium()
    model = make_tiny_policy(tmp_path / "tiny")
    out = ARTIFACTS / "loop"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    env.pop("PREFLOOP_DB", None)
    done = subprocess.run(
        [sys.executable, "bench/loop.py", "--model", str(model), "--home", str(tmp_path / "home"), "--out", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    # base, DPO, PPO and three sweep versions, each a measured point
    assert (summary["points"], summary["sweep_points"]) == (6, 3), summary
    assert set(summary["stages_s"]) == {"import", "reward", "dpo", "ppo", "evaluate", "sweep", "arena answers"}
    for shot in ("1-data-import", "2-train-reward", "2-train-dpo", "2-train-ppo", "3-evaluate", "4-compare"):
        assert (out / f"{shot}.png").read_bytes()[:4] == b"\x89PNG"
