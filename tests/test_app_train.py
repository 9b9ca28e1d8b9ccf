"""The Train page in AppTest: the form comes from the round's dataclass, not-ready sentences, the
Train button starts a job with the form's config, progress from job rows, the versions table."""
from __future__ import annotations

import re

import pytest

from tests.preference_fixtures import import_pairs, on_the_cpu_in_fp32
from tests.test_app_label import generator, open_app  # noqa: F401  (generator is a fixture)
from tests.test_audit import voted  # noqa: F401  (a fixture)
from training import config_fields, jobs, preferences, versions
from training.dpo_config import DPORoundConfig
from labeling import db
from labeling.models import Job, JobMetric


def open_train():
    return open_app("ana", "train.py")


def pick_round(at, label: str):
    at.radio(key="round").set_value(label)
    return at.run()


def press_train(at):
    next(b for b in at.button if b.label == "Train").click()
    return at.run()


@pytest.fixture
def started(monkeypatch):
    calls = []

    def fake_start(kind, config, threads=None):
        calls.append((kind, config))
        return 41

    monkeypatch.setattr(jobs, "start_job", fake_start)
    return calls


def test_form_is_built_from_the_dataclass(workspace, generator):  # noqa: F811
    at = pick_round(open_train(), "DPO")
    labels = {w.label for w in [*at.number_input, *at.selectbox, *at.checkbox, *at.text_input]}
    for field in config_fields.form_fields(DPORoundConfig):
        assert field.name.replace("_", " ") in labels
    beta = next(w for w in at.number_input if w.label == "beta")
    assert beta.value == 0.1 and "β" in beta.help
    assert next(w for w in at.selectbox if w.label == "loss type").value == "sigmoid"


def test_not_ready_sentences_and_no_job(workspace, generator, started, monkeypatch):  # noqa: F811
    from labeling import store

    monkeypatch.setattr(store, "ensure_builtin_prompts", lambda: 0)  # a workspace with no prompts at all
    at = pick_round(open_train(), "DPO")
    assert "DPO needs at least 8 labeled pairs; you have 0." in at.warning[0].value
    at = press_train(at)
    assert started == [] and "DPO needs at least 8 labeled pairs" in at.error[0].value
    at = pick_round(at, "PPO")
    assert at.warning[0].value == "PPO needs a reward model: train one first."
    monkeypatch.setattr(versions, "latest_reward_id", lambda: "v1-reward")
    at = pick_round(at, "PPO")  # the page and the CLI ask the same check: PPO also needs training prompts
    assert at.warning[0].value == 'PPO needs training prompts (split "train"): import some on the Data page first.'
    at = pick_round(at, "Reward model")
    assert "The reward round needs at least 8 labeled pairs; you have 0." in at.warning[0].value


def test_train_button_starts_a_job_with_the_form_values(workspace, generator, started, tmp_path):  # noqa: F811
    import_pairs(tmp_path, 9)
    at = pick_round(open_train(), "DPO")
    assert [w.value[:39] for w in at.warning] == ["Only 8 training pairs (1 more held out)"]  # ready; the caution alone
    next(w for w in at.number_input if w.label == "beta").set_value(0.25)
    next(w for w in at.selectbox if w.label == "loss type").select("ipo")
    next(w for w in at.number_input if w.label == "max steps (0 = all)").set_value(5)
    at = press_train(at)
    assert len(started) == 1
    kind, config = started[0]
    assert kind == "dpo" and config["beta"] == 0.25 and config["loss_type"] == "ipo" and config["max_steps"] == 5
    assert "max_pairs" not in config and config["epochs"] is None  # empty: chosen from the number of pairs
    assert "Job #41 (dpo) started." in at.success[0].value


def test_the_dpo_form_says_what_the_settings_will_do(workspace, generator, tmp_path):  # noqa: F811
    import_pairs(tmp_path, 12)
    at = pick_round(open_train(), "DPO")
    plan = next(c.value for c in at.caption if c.value.startswith("With the defaults"))
    # 12 pairs: at most 3 steps a pass, so the most passes the default allows
    assert re.fullmatch(r"With the defaults: (\d+) training pairs \((\d+) held out\), 4 epochs, (\d+) steps; "
                        r"the time is known after a first round\.", plan)


def test_progress_panel_and_versions_table(workspace, generator, monkeypatch):  # noqa: F811
    on_the_cpu_in_fp32(monkeypatch)  # the version records what trained it
    with db.session() as s:  # a finished job as the worker leaves it
        job = Job(kind="reward", status="done", step=2, total_steps=2, result={"version": "v1-reward"})
        s.add(job)
        s.flush()
        s.add_all([JobMetric(job_id=job.id, step=1, values={"loss": 0.7, "accuracy": 0.5}),
                   JobMetric(job_id=job.id, step=2, values={"loss": 0.6, "accuracy": 0.75})])
    versions.create_version("reward", "reward", None, {}, [1, 2], {"heldout_accuracy": 0.8},
                            lambda folder: (folder / "x").write_text("x"))
    at = pick_round(open_train(), "Reward model")
    assert at.get("progress")[0].proto.value == 100  # 2 of 2 steps
    table = at.dataframe[0].value
    assert list(table.version) == ["v1-reward"] and table["held-out accuracy"].iloc[0] == 0.8
    assert table.lineage.iloc[0] == "v1-reward" and table["trained on"].iloc[0] == "cpu fp32"


def test_make_current_from_the_versions_table(workspace, generator):  # noqa: F811
    write = lambda folder: (folder / "x").write_text("x")  # noqa: E731
    first = versions.create_version("policy", "dpo", None, {}, [], {}, write, make_current=True)
    second = versions.create_version("policy", "dpo", first, {}, [], {}, write, make_current=True)
    at = open_train()
    assert at.dataframe[0].value.lineage.iloc[1] == f"{first} → {second}"
    at.selectbox(key="current-choice").select(first)
    next(b for b in at.button if b.label == "Make current").click()
    at.run()
    assert versions.current_policy_id() == first


def test_empty_optional_boxes_of_the_ppo_form_mean_none(workspace, generator, started, monkeypatch,  # noqa: F811
                                                         tmp_path):
    # An empty "reward version" box once reached the PPO round as '' and failed it ("'' is not a
    # reward model"); found by bench/loop.py clicking through the real app.
    monkeypatch.setattr(versions, "latest_reward_id", lambda: "v1-reward")
    import_pairs(tmp_path, 9)  # their prompts are the training prompts PPO samples from
    press_train(pick_round(open_train(), "PPO"))
    kind, config = started[0]
    assert kind == "ppo"
    assert (config["reward_version"], config["max_prompts"], config["max_steps"]) == (None, None, None)


def test_ppo_curves_are_the_metrics_the_ppo_round_logs():
    from training import ppo, registry

    curves = registry.get("ppo").curves
    assert set(curves) <= set(ppo.LOG_KEYS) and {"policy_loss", "reward", "kl"} <= set(curves)


def test_export_starts_a_job_and_a_bad_folder_is_one_sentence(workspace, generator, started, tmp_path):  # noqa: F811
    write = lambda folder: (folder / "x").write_text("x")  # noqa: E731
    version = versions.create_version("policy", "dpo", None, {}, [], {}, write, make_current=True)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "model.safetensors").write_text("x")
    at = open_train()
    at.text_input(key="export-folder").input(str(tmp_path / "full"))
    next(b for b in at.button if b.label == "Export merged model").click()
    at = at.run()
    assert started == [] and "is not empty; choose a new folder" in at.error[0].value
    at.text_input(key="export-folder").input(str(tmp_path / "out"))
    next(b for b in at.button if b.label == "Export merged model").click()
    at = at.run()
    assert started == [("export", {"version": version, "folder": str(tmp_path / "out")})]
    assert "Job #41 (export) started." in at.success[0].value


def test_reward_card_shows_accuracy_with_its_interval_beside_the_baselines(workspace, generator):  # noqa: F811
    import numpy as np

    from training import reward_report

    prompts = [[{"role": "user", "content": f"q{i}"}] for i in range(4)]
    pairs = reward_report.EvalSet("hh (held-out)", prompts, ["a much longer answer", "bb", "cc", "dddd"],
                                  ["no", "a longer rejected one", "c", "d"])
    model = (np.array([1.0, 1.0, 0.0, 0.0]), np.array([0.0, 0.0, 1.0, 1.0]))  # 0.50; longer wins: 0.75
    report = reward_report.build_report([pairs], [model], [(np.zeros(4), np.zeros(4))])
    write = lambda folder: reward_report.write_report(folder, report)  # noqa: E731
    old = versions.create_version("reward", "reward", None, {}, [], {}, lambda folder: None)
    at = open_train()
    assert any(f"{old} has no evaluation yet" in c.value for c in at.caption)
    assert len(at.dataframe) == 1  # the versions table alone
    version = versions.create_version("reward", "reward", None, {}, [], {}, write)
    at = open_train()
    assert at.subheader[0].value == f"Reward card: {version}"
    card = at.dataframe[0].value
    row = card.iloc[0]
    assert (row["set"], row["pairs"], row["conversations"]) == ("hh (held-out)", 4, 4)
    assert row["reward model"].startswith("0.50 [") and row["longer wins"].startswith("0.75 [")
    assert row["untrained backbone"].startswith("0.50 [") and row["shorter wins"].startswith("0.25 [")
    assert row["ECE"] == f"{report['all']['ece']:.2f}" and row["length r"] != "n/a"
    verdicts = [w.value for w in at.warning if "longer wins" in w.value]
    assert verdicts == [report["verdict"]] and verdicts[0].startswith(
        'The reward model does not beat "longer wins" on hh (held-out) (0.50 vs 0.75)')


def test_the_pair_audit_on_the_train_page_leaves_flagged_pairs_out_of_every_round(workspace, generator, voted):  # noqa: F811
    from labeling import settings
    from training import preferences

    assert preferences.count_pairs() == 12
    at = open_train()
    next(b for b in at.button if b.label == "Audit the pairs").click()
    at = at.run()
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["only longer"] == "1 of 12" and metrics["skewed annotator"] == "8 of 12"
    at = at.multiselect(key="train-exclude").set_value(["only_longer", "near_identical"]).run()
    at = at.button(key="train-exclude-save").click().run()
    assert settings.training_exclusions() == ("only_longer", "near_identical")
    assert preferences.count_pairs() == 10
    data = preferences.preference_data("DPO", None, 0.2, 0)
    assert data.origin["left_out_by_audit"] == {"only_longer": 1, "near_identical": 1}
    with pytest.raises(settings.SettingError, match="Unknown pair-audit check 'longer'"):
        settings.set_training_exclusions(["longer"])


def test_the_autopilot_starts_from_the_train_page_once_a_reward_model_exists(workspace, generator, started):  # noqa: F811
    at = open_train()
    assert any("Train a reward model first" in c.value for c in at.caption)
    versions.create_version("reward", "reward", None, {}, [], {}, lambda folder: (folder / "x").write_text("x"))
    at = open_train()
    next(w for w in at.number_input if w.key == "autopilot-form-rounds").set_value(2)
    at = at.button(key="FormSubmitter:autopilot-form-Start autopilot").click().run()
    assert started and started[0][0] == "autopilot" and started[0][1]["rounds"] == 2


def test_the_sft_and_kto_rounds_come_with_their_forms_and_readiness_from_the_registry(workspace, generator, started):  # noqa: F811
    at = open_train()
    assert {"KTO", "SFT"} <= set(at.radio(key="round").options)
    at = pick_round(at, "SFT")
    assert at.warning[0].value.startswith("SFT needs at least 4 written answers; you have 0.")
    assert "learning rate" in [w.label for w in at.number_input]
    at = pick_round(at, "KTO")
    assert at.warning[0].value.startswith("KTO needs at least 16 answers marked good or bad")
    assert not started


def test_the_train_page_says_where_a_round_runs_and_warns_when_it_may_not_fit(workspace, generator, tmp_path,  # noqa: F811
                                                                             monkeypatch):
    from tests.preference_fixtures import use_tiny_policy
    from training import env

    use_tiny_policy(tmp_path, monkeypatch)
    monkeypatch.setenv("PREFLOOP_DEVICE", "cpu")
    info = env.report_in_child()  # the child process the page asks, for real
    assert (info["device"], info["dtype"]) == ("cpu", "fp32") and info["dpo_peak_bytes"] > 0
    assert info["trained_on"] == "cpu fp32"  # what the DPO plan's pace is matched with
    assert env.sentence(info).startswith("Runs on cpu in fp32") and "peaks near" in env.sentence(info)
    assert env.sentence({"error": "boom."}) == "Device and memory unknown: boom."

    import threading
    import time

    import streamlit as st

    answer_now = threading.Event()
    monkeypatch.setattr(env, "report_in_child", lambda: answer_now.wait(30) and info)
    st.cache_resource.clear()  # the page asks at most every five minutes
    at = pick_round(open_train(), "DPO")  # the page does not wait for the child process
    assert "Checking the device and memory…" in [c.value for c in at.caption]
    answer_now.set()
    for free, warned in ((info["dpo_peak_bytes"] * 2, False), (info["dpo_peak_bytes"] // 2, True)):
        monkeypatch.setattr(env, "report_in_child", lambda free=free: {**info, "free_bytes": free})
        st.cache_resource.clear()
        at = pick_round(open_train(), "DPO")
        for _ in range(50):  # the answer lands on a later run of the page
            if env.sentence({**info, "free_bytes": free}) in [c.value for c in at.caption]:
                break
            time.sleep(0.1)
            at = at.run()
        assert env.sentence({**info, "free_bytes": free}) in [c.value for c in at.caption]
        assert bool([w for w in at.warning if "may not fit" in w.value]) is warned
    monkeypatch.setenv("PREFLOOP_ACCELERATE_CONFIG", "docs/accelerate/multi_gpu.yaml")
    captions = [c.value for c in pick_round(open_train(), "DPO").caption]
    assert "Starts under `accelerate launch --config_file docs/accelerate/multi_gpu.yaml` (PREFLOOP_ACCELERATE_CONFIG)." in captions
    captions = [c.value for c in pick_round(open_train(), "PPO").caption]
    assert "PPO runs in one process, without accelerate launch." in captions


def test_the_dpo_form_warns_when_ties_leave_few_pairs_to_learn_from(workspace, generator):  # noqa: F811
    from labeling import queue
    from tests.test_queue import seed_pairs

    ids = seed_pairs(20)
    for pid in ids[:12]:
        queue.submit_judgment("ana", pid, "a", "a")
    for pid in ids[12:18]:
        queue.submit_judgment("ana", pid, "tie", "a")
    for pid in ids[18:]:
        queue.submit_judgment("ana", pid, "both_bad", "a")
    at = pick_round(open_train(), "DPO")
    warning = next(w.value for w in at.warning if w.value.startswith("Only"))
    assert warning.startswith("Only 10 training pairs (2 more held out; of the other labeled pairs 6 tied, 2 both bad): "
                              "a DPO round on fewer than about 70")
    assert not any(w.value.startswith("Only") for w in pick_round(at, "Reward model").warning)  # DPO's alone

    for pid in seed_pairs([(f"More {i}?", f"Yes {i}.", f"No {i}.") for i in range(58)]):  # 70 pairs, 63 to train on
        queue.submit_judgment("ana", pid, "b", "a")
    assert preferences.few_pairs_caution().startswith("Only 63 training pairs (7 more held out;")
    assert preferences.few_pairs_caution(DPORoundConfig(pairs="on-policy")) is None  # one of several small rounds
    for pid in seed_pairs([(f"Yet more {i}?", f"Yes {i}.", f"No {i}.") for i in range(10)]):  # 80 pairs, 72 to train on
        queue.submit_judgment("ana", pid, "b", "a")
    at = pick_round(open_train(), "DPO")
    assert not any(w.value.startswith("Only") for w in at.warning)
    assert preferences.few_pairs_caution() is None
    assert preferences.few_pairs_caution(max_pairs=40).startswith("Only 36 training pairs (4 more held out;")


def test_a_round_run_on_few_pairs_says_so_in_its_log(workspace, tmp_path, capsys, monkeypatch):
    from training import registry

    import_pairs(tmp_path, 10)
    monkeypatch.setattr("training.dpo.run_round", lambda config, reporter, **limits: {"version": "v"})
    assert registry.run("dpo", DPORoundConfig(), reporter=None) == {"version": "v"}
    assert "Only 9 training pairs (1 more held out): a DPO round" in capsys.readouterr().err


def test_an_on_policy_dpo_round_is_refused_on_the_page_until_the_current_policy_sampled_enough_pairs(
        workspace, generator, started, tmp_path):  # noqa: F811
    import_pairs(tmp_path, 12)  # a user's file: no policy sampled these
    at = pick_round(open_train(), "DPO")
    next(w for w in at.selectbox if w.label == "pairs").select("on-policy")
    at = press_train(at)
    assert started == []
    assert at.error[0].value.startswith("DPO on on-policy pairs needs at least 8 labeled pairs that the current "
                                        "policy (") and "0 of your 12 labeled pairs are" in at.error[0].value


def test_a_rerun_of_the_train_page_exports_the_labels_once(workspace, generator, tmp_path, monkeypatch):  # noqa: F811
    from labeling import export

    import_pairs(tmp_path, 12)
    calls = []
    real = export.preference_rows
    monkeypatch.setattr(export, "preference_rows", lambda **kw: calls.append(kw) or real(**kw))
    at = pick_round(open_train(), "DPO")  # readiness, plan and caution: three reads of the labels
    assert any(c.value.startswith("With the defaults") for c in at.caption)
    assert any(w.value.startswith("Only") for w in at.warning)
    calls.clear()
    at.run()
    assert len(calls) == 1
    assert preferences.training_rows() is not preferences.training_rows()  # outside a rerun: no sharing
