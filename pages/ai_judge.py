"""The Data page's "AI judge" tab (admins): the rubric, a judge run, its agreement with people
beside people's agreement with each other, and the switch that lets its verdicts label the pairs
nobody judged, open only while the judge passes the gate (labeling/agreement.py)."""
from __future__ import annotations

import math

import streamlit as st

from labeling import agreement, suggestions
from pages.widgets import config_form, job_panel, start
from training.judge import JudgeConfig


def interval(m: dict, key: str) -> str:
    value, (low, high) = m[key], m[f"{key}_ci"]
    return "–" if math.isnan(value) else f"{value:.2f} [{low:.2f}, {high:.2f}]"


def render_rubric() -> None:
    version, text = suggestions.rubric()
    edited = st.text_area(f"Rubric the judge reads (version {version})", value=text, height=150, key="judge-rubric")
    if st.button("Save rubric", key="judge-rubric-save"):
        try:
            saved = suggestions.save_rubric(edited)
        except suggestions.SuggestionError as error:
            st.error(str(error))
        else:
            st.success(f"Rubric version {saved} saved; the judge's next run judges every pair under it."
                       if saved != version else "The rubric is unchanged.")


def render_run() -> None:
    st.caption("A local model (empty: the base model) or any OpenAI-compatible endpoint (its key comes from "
               "PREFLOOP_JUDGE_KEY on the server and is never stored). Each pair is judged twice with the sides "
               "swapped; a verdict that changes with the side is stored as a tie.")
    config = config_form(JudgeConfig, "judge-form", "Judge pairs")
    if config is not None:
        start("judge", config.__dict__)
    if job_id := st.session_state.get("job-judge"):
        job_panel(job_id, curves=("errors", "ties"))


def render_agreement() -> dict | None:
    """The table of judges against people; returns the judge row picked for AI labels, or None."""
    found = suggestions.judges()
    people = agreement.people_agreement()
    st.markdown(f"**People with each other**: κ {interval(people, 'kappa')}, agreement "
                f"{interval(people, 'accuracy')} on {people['pairs']} pairs two or more people judged.")
    if not found:
        st.info("No judge has run yet.")
        return None
    rows = []
    for j in found:
        m = agreement.judge_agreement(j["judge"], j["rubric"])
        rows.append({"judge": j["judge"], "rubric": j["rubric"], "pairs judged": j["pairs"], "errors": j["errors"],
                     "pairs people judged too": m["pairs"], "κ with people [95 % CI]": interval(m, "kappa"),
                     "agreement with people": interval(m, "accuracy")})
    st.dataframe(rows, hide_index=True)
    labels = [f"{j['judge']} · rubric {j['rubric']}" for j in found]
    picked = st.selectbox("Judge whose verdicts may label pairs", labels, key="judge-pick")
    return found[labels.index(picked)]


def _threshold(text: str) -> float | None:
    return float(text) if text.strip() else None


def _switch_ai_labels(judge: str, rubric: int, key: str, threshold_key: str) -> None:
    """on_change of the switch: the database changes only when a person flips it (never on a rerun)."""
    try:
        if st.session_state[key]:
            suggestions.set_ai_labels(judge, rubric, _threshold(st.session_state.get(threshold_key, "")))
        else:
            suggestions.set_ai_labels(None)
    except (ValueError, suggestions.SuggestionError) as error:
        st.session_state[key] = False
        st.session_state["judge-error"] = str(error) if isinstance(error, suggestions.SuggestionError) else (
            f"The κ threshold {st.session_state.get(threshold_key)!r} is not a number; type one such as 0.6, or leave it empty.")


def render_gate(picked: dict) -> None:
    setting = suggestions.ai_label_setting()
    on = setting is not None and (setting["judge"], setting["rubric"]) == (picked["judge"], picked["rubric"])
    suffix = f"{picked['judge']}-{picked['rubric']}"  # one switch per judge and rubric: picking another judge flips nothing
    threshold_key = f"judge-threshold-{suffix}"
    typed = st.text_input("κ the judge must reach (empty: people's own κ, at least 0.4, or 0.6 while unknown)",
                          value="" if not on or setting.get("threshold") is None else str(setting["threshold"]),
                          key=threshold_key)
    try:
        threshold = _threshold(typed)
    except ValueError:
        st.error(f"The κ threshold {typed!r} is not a number; type one such as 0.6, or leave it empty.")
        return
    gate = agreement.gate(picked["judge"], picked["rubric"], threshold)
    if gate["open"]:
        st.success(f"The gate is open: κ {gate['kappa']:.2f} ≥ {gate['threshold']:.2f} ({gate['threshold_from']}).")
    else:
        st.warning(gate["why"])
    st.toggle("Train on this judge's verdicts for pairs nobody judged", value=on, key=f"judge-use-{suffix}",
              on_change=_switch_ai_labels, args=(picked["judge"], picked["rubric"], f"judge-use-{suffix}", threshold_key),
              help="Only while the gate is open; a person's vote always counts instead, and every version "
                   "records how many of its pairs came from people and how many from the judge. Turn it off and "
                   "on again to apply a new threshold.")
    if error := st.session_state.pop("judge-error", None):
        st.error(error)
    if setting is not None and not on:
        st.caption(f"AI labels are on for {setting['judge']} (rubric {setting['rubric']}); pick it above to change that.")
    in_use = agreement.ai_labels_in_use()
    st.caption(f"Rounds now train on people's labels and {len(suggestions.ai_labels(in_use['judge'], in_use['rubric']))} "
               f"of the judge's." if in_use else "Rounds now train on people's labels only.")


def render() -> None:
    st.toggle("Show suggestions before the vote on the Label page", value=suggestions.show_before_vote(),
              key="judge-before", on_change=lambda: suggestions.set_show_before_vote(st.session_state["judge-before"]),
              help="Off (the default), an annotator sees the machines' opinions only after voting, so they cannot "
                   "anchor the vote.")
    render_rubric()
    render_run()
    st.divider()
    if picked := render_agreement():
        render_gate(picked)
