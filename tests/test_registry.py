"""The round registry drives the CLI, the job runner, the versions table and the Train page: a toy
round declared here (a config dataclass, a run function and one registry entry) appears in
`python -m training` and on the Train page with nothing else changed. And reading the registry
never loads torch."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass, field

import pytest

from tests.test_app_label import generator, open_app  # noqa: F401  (generator is a fixture)
from training import __main__ as cli_main, jobs, registry, versions

NOT_READY: list[str] = []  # a sentence here makes the toy round not ready


@dataclass
class ToyConfig:
    """A toy round: counts to `steps` and saves a policy version."""

    steps: int = field(default=2, metadata={"min": 1, "help": "Steps to count."})
    make_current: bool = field(default=False, metadata={"help": "Make the new version current."})


def toy_ready(config: ToyConfig) -> str | None:
    return NOT_READY[0] if NOT_READY else None


def run_toy(config: ToyConfig, reporter, max_steps: int | None = None, max_pairs: int | None = None) -> dict:
    steps = min(config.steps, max_steps or config.steps)
    reporter.start(steps)
    for step in range(1, steps + 1):
        reporter.step(step, {"loss": 1.0 / step})
    version = versions.create_version("policy", "toy", None, asdict(config), [], {"steps": steps},
                                      lambda folder: (folder / "weights.txt").write_text("toy"))
    return {"version": version, "steps": steps}


@pytest.fixture
def toy(monkeypatch):
    """The toy round registered as a new round is: one entry in ROUNDS."""
    monkeypatch.setitem(registry.ROUNDS, "toy", registry.Round(
        "toy", "Toy", f"{__name__}:ToyConfig", f"{__name__}:run_toy", produces="policy", ready=toy_ready,
        curves=("loss",)))
    monkeypatch.setattr(sys.modules[__name__], "NOT_READY", [])
    monkeypatch.setenv("PREFLOOP_THREADS", "1")  # the CLI pins torch's threads of this process


def last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


def test_a_registered_round_runs_from_the_cli(workspace, toy, capsys):
    assert cli_main.main([]) == 2
    assert "toy" in capsys.readouterr().err  # listed in the usage line
    assert cli_main.main(["toy", "--steps", "3", "--max-steps", "2"]) == 0
    summary = last_json(capsys.readouterr().out)
    assert summary["steps"] == 2
    row = versions.get_version(summary["version"])
    assert (row.kind, row.method, row.config) == ("policy", "toy", {"steps": 3, "make_current": False})


def test_the_cli_checks_a_registered_rounds_settings_and_readiness(workspace, toy, capsys):
    assert cli_main.main(["toy", "--steps", "0"]) == 2
    assert capsys.readouterr().err.strip() == "command line: field 'steps' must be at least 1; got 0."
    NOT_READY.append("Toy needs a toy box; you have none.")
    assert cli_main.main(["toy"]) == 1
    assert capsys.readouterr().err.strip() == "Toy needs a toy box; you have none."
    assert versions.list_versions() == []


def test_a_registered_round_is_a_heavy_job_and_a_policy_method(workspace, toy):
    assert "toy" in jobs.heavy_kinds()
    assert registry.version_kind("toy") == "policy" and registry.version_kind("base") == "policy"
    assert "toy" in registry.names(produces="policy") and "toy" not in registry.sweepable()
    with pytest.raises(versions.VersionError, match="must be of kind 'policy'"):
        versions.create_version("reward", "toy", None, None, [], None, lambda folder: None)


def test_a_registered_round_appears_on_the_train_page(workspace, generator, toy, monkeypatch):  # noqa: F811
    started = []
    monkeypatch.setattr(jobs, "start_job", lambda kind, config, threads=None: started.append((kind, config)) or 41)
    at = open_app("ana", "train.py")
    assert "Toy" in at.radio(key="round").options
    at.radio(key="round").set_value("Toy")
    at.run()
    assert not at.warning, [w.value for w in at.warning]
    assert next(w for w in at.number_input if w.label == "steps").value == 2
    assert {"max steps (0 = all)", "max pairs (0 = all)"} <= {w.label for w in at.number_input}
    next(w for w in at.number_input if w.label == "steps").set_value(5)
    next(b for b in at.button if b.label == "Train").click()
    at.run()
    assert started == [("toy", {"steps": 5, "make_current": False})]
    NOT_READY.append("Toy needs a toy box; you have none.")
    at.run()
    assert at.warning[0].value == "Toy needs a toy box; you have none."


def test_the_chart_colours_every_policy_round_and_keeps_dpo_blue_and_ppo_orange(toy):
    from matplotlib.colors import same_color

    from training import points

    colours = points.method_colours()
    assert same_color(colours["dpo"], "tab:blue") and same_color(colours["ppo"], "tab:orange")
    assert colours["base"] == "black" and "toy" in colours and "reward" not in colours


def test_a_sweep_sets_the_fields_each_round_declares(monkeypatch):
    from training import sweep
    from training.ppo_config import PPOConfig

    calls = []
    monkeypatch.setattr(registry, "run", lambda name, config, reporter, **limits: calls.append((config, limits)))
    settings = sweep.SweepConfig(max_steps=6, max_pairs=48, learning_rate=5e-4, max_length=32)
    sweep._round("dpo", 0.2, settings, None)
    sweep._round("ppo", 0.3, settings, None)
    (dpo, dpo_limits), (ppo, ppo_limits) = calls
    assert (dpo.beta, dpo.learning_rate, dpo.max_length, dpo.make_current) == (0.2, 5e-4, 32, False)
    assert dpo_limits == {"max_steps": 6, "max_pairs": 48}
    # PPO: max_length is the longest response sampled, max_steps its number of steps
    assert (ppo.beta, ppo.learning_rate, ppo.max_new_tokens, ppo.steps, ppo.make_current) == (0.3, 5e-4, 32, 6, False)
    assert ppo_limits == {"max_pairs": 48}
    sweep._round("ppo", 0.3, sweep.SweepConfig(), None)  # settings left empty: the round's own defaults
    defaults = PPOConfig()
    assert (calls[-1][0].max_new_tokens, calls[-1][0].steps) == (defaults.max_new_tokens, defaults.steps)


def test_every_round_declares_a_loadable_config_and_run_function():
    from training.config_fields import form_fields

    for chosen in registry.ROUNDS.values():
        assert chosen.produces in ("policy", "reward")
        fields = form_fields(chosen.config_class())
        assert fields and all(f.help for f in fields), chosen.name
        assert callable(chosen.run_function())
        for setting, name in (chosen.sweep or {}).items():
            assert name in {f.name for f in fields}, (chosen.name, setting)


def test_reading_the_registry_and_asking_readiness_loads_no_torch(workspace, tmp_path):
    # the registry and what the pages import, as the Train page uses them; with pairs and a DPO round's
    # pace, so the plan reads the versions (the page passes what the machine trains on, from a child)
    from tests.preference_fixtures import import_pairs
    from training import versions

    import_pairs(tmp_path, 12)
    versions.create_version("policy", "dpo", None, {}, [], {"pairs_per_second": 0.1},
                            lambda folder: (folder / "adapter.txt").write_text("a"))
    code = ("import sys\n"
            "from training import arena_answers, jobs, loop, points, registry, reward_report, sweep, verdict, versions\n"
            "from training.config_fields import form_fields\n"
            "for r in registry.ROUNDS.values():\n"
            "    form_fields(r.config_class()); r.problem(); r.plan_sentence(); r.plan_sentence('cpu fp32')\n"
            "assert 'minutes at the pace of' in registry.get('dpo').plan_sentence('cpu fp32')\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'trl', 'peft')))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=os.path.dirname(os.path.dirname(__file__)), env=dict(os.environ))
    assert out.stdout.strip() == "[]", out.stderr
