"""Rounds on several processes under `accelerate launch`, as a team with several GPUs runs them,
proven here on the CPU with two processes (gloo): the job runner starts the round under the
launcher when PREFLOOP_ACCELERATE_CONFIG names a config file; the two processes split the
batches; only the main one writes, so there is one version with one lineage and the judgments a
single process would have recorded; a failure in any process marks the job failed; PPO, which
runs in one process, is started without the launcher."""
from __future__ import annotations

import json
import socket
import sys
from pathlib import Path

import pytest
import yaml

from labeling import model_versions
from tests.preference_fixtures import import_pairs, use_tiny_policy
from training import distributed, jobs, preferences, registry, versions

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent

# Each process of rank 1 breaks the round's training function as soon as the round's module is
# loaded (sitecustomize runs at every interpreter's start, before the launcher's script).
BREAK_RANK_1 = '''
import os, sys, threading, time

def _break():
    while "training.dpo" not in sys.modules or not hasattr(sys.modules["training.dpo"], "train"):
        time.sleep(0.01)
    def broken(*args, **kwargs):
        raise RuntimeError("rank 1 broke")
    sys.modules["training.dpo"].train = broken

if os.environ.get("RANK") == "1":
    threading.Thread(target=_break, daemon=True).start()
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def two_processes(workspace, tmp_path, monkeypatch):
    """A workspace with 24 labeled pairs, a tiny policy, and an accelerate config for 2 processes."""
    use_tiny_policy(tmp_path, monkeypatch)
    import_pairs(tmp_path, 24)
    # the README's multi-GPU file: accelerate's torchrun launcher; without a card each process trains
    # on the CPU (gloo)
    shipped = yaml.safe_load((ROOT / "docs" / "accelerate" / "multi_gpu.yaml").read_text())
    config = tmp_path / "accelerate.yaml"
    config.write_text(yaml.safe_dump({**shipped, "num_processes": 2, "main_process_port": free_port()}))
    monkeypatch.setenv(distributed.ACCELERATE_CONFIG_ENV, str(config))
    monkeypatch.setenv("PREFLOOP_THREADS", "2")  # one thread for each process
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    return workspace


def summary_lines(job) -> list[dict]:
    """The job's summary lines, printed before the job row says done."""
    return [json.loads(line) for line in Path(job.log_path).read_text().splitlines() if line.startswith('{"version"')]


@pytest.mark.parametrize("kind, settings", [("dpo", {}), ("kto", {"max_steps": 2}), ("reward", {}),
                                            ("reward", {"method": "fine-tune", "backbone": "policy", "max_steps": 2})])
def test_a_round_on_two_processes_makes_one_version_from_the_same_judgments(two_processes, kind, settings):
    judgments = preferences.preference_data(kind, None, 0.1, 0).judgment_ids
    job = jobs.wait(jobs.start_job(kind, settings), timeout=600)
    log = Path(job.log_path).read_text()
    assert job.status == "done", log[-3000:]
    assert "accelerate.commands.launch" in " ".join(distributed.launch_command(kind, "c.yaml", 1, sys.executable))
    assert "[rank1]" not in log or "Traceback" not in log
    made = [v for v in versions.list_versions() if v.method == kind]
    assert len(made) == 1 and len(model_versions.version_ids()) == 2  # the base and this one, nothing twice
    version = made[0]
    assert version.judgment_ids == sorted(judgments)
    assert version.parent_id == (None if kind == "reward" else versions.ensure_base_version())
    assert [line["version"] for line in summary_lines(job)] == [version.id]  # one summary: the main process's
    assert job.result["version"] == version.id
    if kind == "dpo":  # each process takes half of every step's batch: the steps of a round on one process
        from training.dpo_config import DPORoundConfig

        assert job.result["steps"] == DPORoundConfig().plan(job.result["pairs"])["steps"] > 2


def test_a_failure_in_any_process_marks_the_job_failed_and_writes_nothing(two_processes, tmp_path, monkeypatch):
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(BREAK_RANK_1)
    monkeypatch.setenv("PYTHONPATH", str(hooks))
    job = jobs.wait(jobs.start_job("dpo", {"max_steps": 2}), timeout=600)
    assert job.status == "failed", Path(job.log_path).read_text()[-3000:]
    # the launcher's SIGTERM (RANK_FAILED), or, when it was waiting on the dead process, gloo's own error
    assert job.error
    assert "rank 1 broke" in Path(job.log_path).read_text()
    assert [v.method for v in versions.list_versions()] in ([], ["base"])
    assert not summary_lines(job)


def test_ppo_is_started_in_one_process_and_refuses_a_launcher(two_processes, monkeypatch):
    assert not registry.ROUNDS["ppo"].distributed
    assert all(registry.ROUNDS[k].distributed for k in ("reward", "dpo", "kto", "sft"))
    command = distributed.launch_command("dpo", "c.yaml", 7, "python")
    assert command[:5] == ["python", "-m", "accelerate.commands.launch", "--config_file",
                           str(Path(distributed.os.environ[distributed.ACCELERATE_CONFIG_ENV]))]
    assert command[5:] == ["-m", "training", "dpo", "--config", "c.yaml", "--job-id", "7"]
    monkeypatch.delenv(distributed.ACCELERATE_CONFIG_ENV)
    assert distributed.launch_command("dpo", "c.yaml", 7, "python") == ["python", "-m", "training", "dpo", "--config",
                                                                        "c.yaml", "--job-id", "7"]
    from training.ppo import run_round
    from training.ppo_config import PPOConfig

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(preferences.NotReady, match="PPO runs in one process"):
        run_round(PPOConfig(), jobs.Reporter(None))


def test_a_termination_nobody_asked_for_is_a_distributed_rounds_failure(workspace, monkeypatch):
    from labeling import runs

    def terminated_while_importing():  # the launcher's SIGTERM, wrapped by a library's lazy import
        try:
            jobs._raise_cancelled(15, None)
        except jobs.Cancelled as exc:
            raise RuntimeError("Failed to import trl.trainer.dpo_trainer") from exc

    monkeypatch.setattr(jobs, "_terminated", False)
    for world, cancelled_first, expected in (("2", False, ("failed", jobs.RANK_FAILED)),
                                             ("2", True, ("cancelled", None)),
                                             ("1", False, ("failed", "RuntimeError: Failed to import trl.trainer.dpo_trainer"))):
        monkeypatch.setenv("WORLD_SIZE", world)
        job_id = runs.queue_job("dpo", {}, unless_active=())
        if cancelled_first:
            runs.cancel_job(job_id)
        with pytest.raises(RuntimeError), jobs.reporting(job_id):
            terminated_while_importing()
        job = runs.get_job(job_id)
        assert (job.status, job.error if job.status == "failed" else None) == expected
        monkeypatch.setattr(jobs, "_terminated", False)


def test_the_documented_accelerate_configs_are_accelerate_configs():
    for path in sorted((ROOT / "docs" / "accelerate").glob("*.yaml")):
        config = yaml.safe_load(path.read_text())
        assert config["distributed_type"] in ("MULTI_GPU", "DEEPSPEED"), path  # whole weights in every process
        assert config.get("deepspeed_config", {}).get("zero_stage", 0) <= 2, path
        assert config["num_processes"] >= 2 and config["num_machines"] == 1, path
        assert path.name == "multi_gpu.yaml" or "UNTESTED HERE" in path.read_text(), path


def test_what_the_processes_share_and_what_they_refuse(workspace, monkeypatch):
    from training.dpo_config import DPORoundConfig

    assert distributed.from_main(lambda: 7) == 7 and distributed.per_process(8) == 8  # one process: as they are
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert distributed.per_process(8) == 4
    with pytest.raises(preferences.NotReady, match="batch_size 3 does not divide among 2 processes"):
        distributed.per_process(3)
    assert "does not work under accelerate launch" in DPORoundConfig(precompute_ref_log_probs="yes").problem()
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert DPORoundConfig(precompute_ref_log_probs="yes").problem() is None
    monkeypatch.setenv(distributed.ACCELERATE_CONFIG_ENV, "docs/accelerate/multi_gpu.yaml")  # the page refuses first
    assert "does not work under accelerate launch" in DPORoundConfig(precompute_ref_log_probs="yes").problem()
