"""The router and home view in AppTest: workspace state, the generate button, annotator identity."""
from __future__ import annotations

from pathlib import Path

from labeling import db, queue
from labeling.models import Job, Meta, ModelVersion
from tests.test_app_label import generator, open_app  # noqa: F401  (generator is a fixture)
from tests.test_queue import seed_pairs


def metrics(at) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def builtin_prompts_loaded():
    """Mark the built-in prompts as loaded: the app loads them once per process (st.cache_resource),
    into whichever workspace the first test opened, so counts would depend on the tests' order."""
    with db.session() as s:
        s.add(Meta(key="builtin_prompts", value="0"))


def test_home_shows_the_workspace_state(workspace, generator):  # noqa: F811
    builtin_prompts_loaded()
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
    builtin_prompts_loaded()
    at = open_app()
    shown = metrics(at)
    assert (shown["Prompts"], shown["Pairs waiting"], shown["Current model"]) == ("0", "0", "base")
    assert any("No job is running" in c.value for c in at.caption)


def test_generate_pairs_button_starts_a_generation_job(workspace, generator):  # noqa: F811
    at = open_app()
    next(n for n in at.number_input if n.label.startswith("Prompts to generate")).set_value(12)
    next(b for b in at.button if b.label == "Generate pairs").click()
    at = at.run()
    assert [c for c in generator.calls if c[0] == "start"] == [("start", 12)]
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


def press_next_step(at, label: str, page_title: str):
    """The dashboard's one primary button says `label`, and a click opens the page titled `page_title`."""
    button = at.button(key="next-step")
    assert button.label == label
    at = button.click().run()
    assert not at.exception
    assert [t.value for t in at.title][0] == page_title
    return at


def test_the_next_step_button_leads_through_the_loop(workspace, generator, tmp_path):  # noqa: F811
    from labeling.export import decided_judgments
    from tests.preference_fixtures import import_pairs
    from tests.test_verdict import point

    def labeled() -> list[int]:
        return sorted(j for ids in decided_judgments().values() for j in ids)

    builtin_prompts_loaded()
    press_next_step(open_app(), "Label 40 more pairs", "Label")
    import_pairs(tmp_path, 12)
    press_next_step(open_app(), "Label 28 more pairs", "Label")
    import_pairs(tmp_path, 52)  # the same 12 (already stored) and 40 more
    at = press_next_step(open_app(), "Train a reward model", "Train")
    assert at.query_params["annotator"] == "ana"  # the switch keeps who is labeling
    with db.session() as s:
        s.add(ModelVersion(id="v1-base", kind="policy", method="base", path="/m"))
        s.add(ModelVersion(id="v2-reward", kind="reward", method="reward", path="/r", judgment_ids=labeled()))
    press_next_step(open_app(), "Run a DPO round", "Train")
    with db.session() as s:
        s.add(ModelVersion(id="v3-dpo", kind="policy", method="dpo", parent_id="v1-base", path="/d",
                           judgment_ids=labeled(), is_current=True))
    press_next_step(open_app(), "Measure v3-dpo", "Evaluate")
    with db.session() as s:
        s.add(point("v1-base", [0.1 * (i % 5) for i in range(12)], [40 + i for i in range(12)]))
        s.add(point("v3-dpo", [0.1 * (i % 5) + 1 for i in range(12)], [40 + i for i in range(12)]))
    at = open_app()
    assert metrics(at)["Labeled pairs"] == "52" and metrics(at)["Current model"] == "v3-dpo"
    assert "the reward model prefers its answers to v1-base's 100% of the time" in at.success[0].value
    press_next_step(at, "Compare v3-dpo with v1-base", "Compare")


def test_new_labels_after_the_last_round_make_training_the_next_step_again(workspace, generator,  # noqa: F811
                                                                          tmp_path):
    from tests.preference_fixtures import import_pairs

    builtin_prompts_loaded()
    import_pairs(tmp_path, 40)
    with db.session() as s:
        s.add(ModelVersion(id="v1-reward", kind="reward", method="reward", path="/r", judgment_ids=[]))
    press_next_step(open_app(), "Train a reward model", "Train")  # it trained on none of these 40


def test_today_agreement_and_an_unmeasured_version_on_the_dashboard(workspace, generator):  # noqa: F811
    builtin_prompts_loaded()
    ids = seed_pairs(3)
    for name, pair, outcome in (("ana", 0, "a"), ("ben", 0, "a"), ("ana", 1, "a"), ("ben", 1, "b"), ("ana", 2, "b")):
        queue.submit_judgment(name, ids[pair], outcome, "a")
    with db.session() as s:
        s.add(ModelVersion(id="v1-base", kind="policy", method="base", path="/m", is_current=True))
    at = open_app()
    shown = metrics(at)
    assert (shown["Labeled today"], shown["Agreement"], shown["Pairs waiting"]) == ("5", "50%", "0")
    agreement = next(m for m in at.metric if m.label == "Agreement")
    assert "on 2 pairs two or more people judged" in agreement.help
    assert "v1-base has not been measured yet" in " ".join(c.value for c in at.caption)


def test_the_first_page_view_starts_generating_when_few_pairs_wait(workspace, monkeypatch):
    """The server asks for pairs at its first page view, once per workspace, unless turned off."""
    import sys
    import types

    import training
    from streamlit.testing.v1 import AppTest

    calls = []
    fake = types.ModuleType("training.generate")
    fake.ensure_pairs_waiting = lambda min_waiting=20, waiting=None: calls.append(min_waiting) or 3
    monkeypatch.setitem(sys.modules, "training.generate", fake)
    monkeypatch.setattr(training, "generate", fake, raising=False)
    app = str(Path(__file__).resolve().parent.parent / "app.py")
    AppTest.from_file(app, default_timeout=30).run()
    assert calls == []  # PREFLOOP_AUTOGENERATE=0 (the test default) keeps it off
    monkeypatch.setenv("PREFLOOP_AUTOGENERATE", "1")
    AppTest.from_file(app, default_timeout=30).run()
    AppTest.from_file(app, default_timeout=30).run()
    assert calls == [20]  # once per server and workspace
