"""bench/gpu_check.py, the script a GPU machine runs as is: it says "skipped" where there is no CUDA,
and with --allow-cpu the same stages run end to end on a tiny model, so the script keeps working
between the rare runs on a card."""
from __future__ import annotations

import json

import torch


def test_without_cuda_it_says_skipped_and_succeeds(monkeypatch, capsys):
    from bench import gpu_check

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check.main([]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == {"skipped": "no CUDA"}


def test_every_stage_runs_through_the_app_on_the_cpu(tmp_path, monkeypatch, capsys):
    from bench import gpu_check
    from tests.tiny_models import make_tiny_policy

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("PREFLOOP_THREADS", "1")
    monkeypatch.setenv("PREFLOOP_DEVICE", "cpu")
    for name in ("PREFLOOP_HOME", "PREFLOOP_MODEL"):  # the script sets them: restored after the test
        monkeypatch.setenv(name, "")
    monkeypatch.delenv("PREFLOOP_DB", raising=False)
    model = make_tiny_policy(tmp_path / "tiny")
    assert gpu_check.main(["--allow-cpu", "--model", str(model), "--prompts", "40", "--max-new-tokens", "8",
                           "--ppo-steps", "1", "--home", str(tmp_path / "run")]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{\"")]
    out = lines[-1]
    assert [line["stage"] for line in lines[:-1] if "stage" in line] == ["generate", "label", "reward", "dpo", "ppo",
                                                                         "evaluate"]
    assert (out["device"], out["dtype"], out["card"]) == ("cpu", "fp32", None)
    stages = out["stages"]
    assert stages["generate"]["pairs"] == out["labels"]["judged"] > 0 and stages["generate"]["tokens_per_s"] > 0
    assert stages["dpo"]["steps"] > 0 and stages["dpo"]["pairs_per_s"] > 0
    assert all(row["seconds"] > 0 and row["peak_gib"] is None for row in stages.values())
    assert stages["generate"]["mfu"] is None and stages["dpo"]["mfu"] is None  # no card, no peak to divide by
    assert out["gpu_over_cpu"]["dpo"] > 0
    assert out["skipped"] == {"dpo qlora 4bit": "needs a CUDA card and bitsandbytes",
                              "generate vllm": "needs a CUDA card and vllm"}


def test_mfu_is_flops_over_the_cards_peak():
    from bench.gpu_check import mfu

    assert mfu(989e12 * 10 * 0.5, 10, 989.0) == 0.5
    assert mfu(1e12, 10, None) is None
