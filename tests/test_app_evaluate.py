"""The Evaluate page in AppTest: the chart's data equals the stored points; a note when points were
scored by different reward models; the forms start the right jobs."""
from __future__ import annotations


from labeling import db
from labeling.models import EvalPoint, ModelVersion
from tests.test_app_label import open_app
from training import jobs, points


def seed_points(reward_versions=("v2-reward", "v2-reward")):
    with db.session() as s:
        s.add(ModelVersion(id="v1-base", kind="policy", method="base", path="/m", is_current=False))
        s.add(ModelVersion(id="v2-reward", kind="reward", method="reward", path="/r"))
        s.add(ModelVersion(id="v3-reward", kind="reward", method="reward", path="/r3"))
        s.add(ModelVersion(id="v4-dpo", kind="policy", method="dpo", parent_id="v1-base", path="/d",
                           config={"beta": 0.1}, is_current=True))
        s.flush()
        s.add(EvalPoint(version_id="v1-base", reward_version_id=reward_versions[0], reward=-0.20, reward_se=0.05,
                        kl=0.0, kl_se=0.0, kl_per_token=0.0, details={"samples": 32, "mean_tokens": 41.5}))
        s.add(EvalPoint(version_id="v4-dpo", reward_version_id=reward_versions[1], reward=0.35, reward_se=0.06,
                        kl=4.2, kl_se=0.8, kl_per_token=0.07, details={"samples": 32, "mean_tokens": 63.0}))


def chart_rows(at) -> list[dict]:
    """The rows the Vega-Lite chart on the page plots, decoded from its Arrow dataset."""
    import pyarrow as pa

    (chart,) = at.get("vega_lite_chart")
    tables = [pa.ipc.open_stream(d.data.data).read_all().to_pylist() for d in chart.proto.datasets]
    return max(tables, key=len)  # the points; any other table is a frontier line through some of them


def test_chart_and_table_show_the_stored_points(workspace):
    seed_points()
    at = open_app(page="evaluate.py")
    assert not at.exception
    table = at.dataframe[0].value
    assert list(table["version"]) == ["v1-base", "v4-dpo"]
    assert list(table["reward"]) == [-0.20, 0.35] and list(table["kl"]) == [0.0, 4.2]
    assert list(table["beta"].fillna(-1)) == [-1, 0.1] and list(table["parent"].fillna("")) == ["", "v1-base"]
    assert list(table["mean_tokens"]) == [41.5, 63.0]  # answer length per version
    plotted = {r["version"]: (r["reward"], r["kl"], r["reward_se"], r["kl_se"]) for r in chart_rows(at)}
    assert plotted == {"v1-base": (-0.20, 0.0, 0.05, 0.0), "v4-dpo": (0.35, 4.2, 0.06, 0.8)}
    assert not at.warning
    assert (workspace / "plots" / "reward_vs_kl.png").read_bytes()[:4] == b"\x89PNG"
    assert {b.label for b in at.get("download_button")} == {"Download PNG", "Download CSV"}


def test_sweep_points_beside_points_of_no_sweep(workspace):
    # Once raised TypeError on the page: pandas made the missing sweep ids NaN (found by bench/loop.py).
    seed_points()
    with db.session() as s:
        for n, beta in ((5, 0.05), (6, 0.5)):
            s.add(ModelVersion(id=f"v{n}-dpo", kind="policy", method="dpo", parent_id="v4-dpo", path="/s",
                               config={"beta": beta, "sweep": "dpo-sweep-1"}))
            s.flush()
            s.add(EvalPoint(version_id=f"v{n}-dpo", reward_version_id="v2-reward", reward=0.1 * n, reward_se=0.1,
                            kl=float(n), kl_se=0.5, kl_per_token=0.1, details={"samples": 32}))
    at = open_app(page="evaluate.py")
    assert not at.exception
    layers = at.get("vega_lite_chart")[0].proto.spec
    assert layers.count('"strokeDash"') == 1  # one dashed frontier, through the sweep's points
    assert {r["version"] for r in chart_rows(at)} == {"v1-base", "v4-dpo", "v5-dpo", "v6-dpo"}


def test_points_scored_by_different_reward_models_get_a_note(workspace):
    seed_points(("v2-reward", "v3-reward"))
    at = open_app(page="evaluate.py")
    assert "different reward models" in at.warning[0].value


def test_measure_button_starts_an_evaluate_job_with_the_form_values(workspace, monkeypatch):
    started = []
    monkeypatch.setattr(jobs, "start_job", lambda kind, config: started.append((kind, config)) or 41)
    monkeypatch.setattr("pages.widgets.job_panel", lambda *a, **k: None)
    at = open_app(page="evaluate.py")
    assert "No measured points yet" in at.info[0].value
    at.number_input(key="evaluate-form-prompts").set_value(5)
    at.button(key="FormSubmitter:evaluate-form-Measure").click().run()
    assert started and started[0][0] == "evaluate" and started[0][1]["prompts"] == 5
    assert (started[0][1]["versions"], started[0][1]["reward_version"]) == ("", None)  # nothing picked: all, newest
    at.text_input(key="sweep-form-betas").set_value("0.01,0.1,1.0")
    at.button(key="FormSubmitter:sweep-form-Run sweep").click().run()
    assert started[1] == ("sweep", {**started[1][1], "betas": "0.01,0.1,1.0", "method": "dpo"})


def test_points_measured_partly_on_training_prompts_get_a_warning(workspace):
    seed_points()
    at = open_app(page="evaluate.py")
    assert not at.warning
    with db.session() as s:
        point = s.query(EvalPoint).filter_by(version_id="v4-dpo").one()
        point.details = {"samples": 32, "train_prompts": 3}
    at = open_app(page="evaluate.py")
    assert len(at.warning) == 1 and "up to 3 training prompts" in at.warning[0].value


def test_curves_of_a_version_trained_after_the_last_measurement_can_be_picked(workspace):
    from labeling.models import Job, JobMetric

    seed_points()
    with db.session() as s:  # v5-dpo is newer than every measured point
        s.add(ModelVersion(id="v5-dpo", kind="policy", method="dpo", parent_id="v4-dpo", path="/d5"))
        job = Job(kind="dpo", status="done", config={}, result={"version": "v5-dpo"})
        s.add(job)
        s.flush()
        s.add_all([JobMetric(job_id=job.id, step=n, values={"loss": 0.7 - 0.1 * n}) for n in (1, 2)])
    at = open_app(page="evaluate.py")
    picker = at.selectbox(key="curves-version")
    assert picker.value == "v5-dpo" and {o.split(" · ")[0] for o in picker.options} == {"v1-base", "v4-dpo", "v5-dpo"}
    assert not at.exception


def test_frontier_keeps_only_points_no_other_beats():
    rows = [{"kl": 0.0, "reward": 0.0}, {"kl": 1.0, "reward": 0.5}, {"kl": 2.0, "reward": 0.4},
            {"kl": 3.0, "reward": 0.9}]
    assert [p["kl"] for p in points.frontier(rows)] == [0.0, 1.0, 3.0]


def test_a_ppo_version_scored_by_its_own_reward_model_is_marked_in_sample(workspace):
    seed_points()
    with db.session() as s:
        s.add(ModelVersion(id="v5-ppo", kind="policy", method="ppo", parent_id="v1-base", path="/p",
                           config={"beta": 0.05}, metrics={"reward_version": "v2-reward"}))
        s.flush()
        s.add(EvalPoint(version_id="v5-ppo", reward_version_id="v2-reward", reward=0.9, reward_se=0.1,
                        kl=2.0, kl_se=0.3, kl_per_token=0.05, details={"samples": 32}))
    at = open_app(page="evaluate.py")
    assert not at.exception
    assert [r["version"] for r in points.latest_points() if r["in_sample"]] == ["v5-ppo"]
    assert any(w.value.startswith("v5-ppo trained against the reward model that scores it here") for w in at.warning)


def date_versions(**created):
    import datetime as dt

    with db.session() as s:
        for version_id, when in created.items():
            s.get(ModelVersion, version_id.replace("_", "-")).created_at = dt.datetime.fromisoformat(when)


def test_versions_are_picked_from_lists_showing_name_method_parent_and_date(workspace, monkeypatch):
    started = []
    monkeypatch.setattr(jobs, "start_job", lambda kind, config: started.append((kind, config)) or 41)
    monkeypatch.setattr("pages.widgets.job_panel", lambda *a, **k: None)
    seed_points()
    date_versions(v1_base="2026-11-20 09:00", v2_reward="2026-11-21 10:00", v3_reward="2026-11-22 11:30",
                  v4_dpo="2026-11-23 12:45")
    at = open_app(page="evaluate.py")
    assert not [t for t in at.text_input if t.label in ("versions", "reward version")]  # no typed ids
    measured = at.multiselect(key="evaluate-versions")
    assert measured.options == ["v4-dpo · DPO from v1-base · 2026-11-23 12:45 · current",
                                "v1-base · base model · 2026-11-20 09:00"]
    assert at.selectbox(key="evaluate-reward").options == [
        "the newest reward model", "v3-reward · reward model · 2026-11-22 11:30",
        "v2-reward · reward model · 2026-11-21 10:00"]
    assert at.selectbox(key="verdict-version").options == ["v4-dpo · DPO from v1-base · 2026-11-23 12:45 · current"]
    measured.select("v4-dpo").run()
    at.selectbox(key="evaluate-reward").select("v2-reward").run()
    at.button(key="FormSubmitter:evaluate-form-Measure").click().run()
    assert not at.exception
    assert (started[0][1]["versions"], started[0][1]["reward_version"]) == ("v4-dpo", "v2-reward")
