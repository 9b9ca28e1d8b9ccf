"""The router and home view in AppTest: workspace state, the generate button, annotator identity."""
from __future__ import annotations

from labeling import db, queue
from labeling.models import Job, ModelVersion
from tests.test_app_label import generator, open_app  # noqa: F401  (generator is a fixture)
from tests.test_queue import seed_pairs


def metrics(at) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def test_home_shows_the_workspace_state(workspace, generator):  # noqa: F811
    ids = seed_pairs(3)
    queue.submit_judgment("ana", ids[0], "a", "a")
    with db.session() as s:
        s.add(ModelVersion(id="dpo-7", kind="policy", method="dpo", path="/x", is_current=True))
        s.add(Job(kind="generate", status="running", step=2, total_steps=5))
    at = open_app()
    assert not at.exception
    shown = metrics(at)
    assert (shown["Prompts"], shown["Pairs waiting"], shown["Judgments"]) == ("3", "2", "1")
    assert shown["Current model"] == "dpo-7"
    jobs = at.dataframe[0].value
    assert jobs[["kind", "status", "step"]].values.tolist() == [["generate", "running", 2]]


def test_empty_workspace_says_base_model_and_no_job(workspace, generator):  # noqa: F811
    at = open_app()
    shown = metrics(at)
    assert (shown["Prompts"], shown["Pairs waiting"], shown["Current model"]) == ("0", "0", "base")
    assert any("No job is running" in c.value for c in at.caption)


def test_generate_pairs_button_starts_a_generation_job(workspace, generator):  # noqa: F811
    at = open_app()
    next(n for n in at.number_input if n.label.startswith("Prompts to generate")).set_value(12)
    next(b for b in at.button if b.label == "Generate pairs").click()
    at = at.run()
    assert generator.calls == [("start", 12)]
    assert any("job #8" in s.value for s in at.success)


def test_name_typed_on_first_visit_is_kept_across_reloads(workspace, generator):  # noqa: F811
    at = open_app(name=None)
    assert "annotator" not in at.query_params
    at.text_input(key="typed-name").input("ana")
    next(b for b in at.button if b.label == "Start labeling").click()
    at = at.run()
    assert at.query_params["annotator"] == "ana"
    reloaded = open_app(name="ana")  # a reload keeps the URL, and with it the name
    assert reloaded.session_state["annotator"] == "ana"
    assert any("Labeling as **ana**" in m.value for m in reloaded.sidebar.markdown)
    assert not any(b.label == "Start labeling" for b in reloaded.button)


def test_known_names_can_be_picked_and_bad_names_are_refused(workspace, generator):  # noqa: F811
    (pid,) = seed_pairs(1)
    queue.submit_judgment("ben", pid, "a", "a")
    at = open_app(name=None)
    picker = at.selectbox(key="picked-name")
    assert picker.options == ["", "ben"]
    at.text_input(key="typed-name").input("import:hh")
    next(b for b in at.button if b.label == "Start labeling").click()
    at = at.run()
    assert len(at.error) == 1 and "reserved" in at.error[0].value
    assert "annotator" not in at.session_state
    at.text_input(key="typed-name").input("")
    at.selectbox(key="picked-name").select("ben")
    next(b for b in at.button if b.label == "Start labeling").click()
    at = at.run()
    assert at.session_state["annotator"] == "ben"


def test_switch_annotator_forgets_the_name(workspace, generator):  # noqa: F811
    at = open_app(name="ana")
    next(b for b in at.sidebar.button if b.label == "Switch annotator").click()
    at = at.run()
    assert "annotator" not in at.query_params
    assert any(b.label == "Start labeling" for b in at.button)


def test_app_and_pages_stay_thin():
    """app.py and pages/ import no torch/trl/transformers/peft/sqlalchemy; labeling never imports torch."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    forbidden = {"torch", "trl", "transformers", "peft", "sqlalchemy"}
    for path in [root / "app.py", *sorted((root / "pages").glob("*.py")), root / "labeling/queue.py",
                 root / "labeling/stats.py"]:
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                names.add(node.module.split(".")[0])
        banned = forbidden - ({"sqlalchemy"} if path.parent.name == "labeling" else set())
        assert not names & banned, f"{path.name} imports {names & banned}"
