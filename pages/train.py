"""Train: pick a round (reward model, DPO, PPO), fill its form, press Train, watch it run; the
latest reward model's card; the versions table with lineage, make-current and export.

The rounds, their forms, readiness sentences and curves come from the round registry
(`training/registry.py`), the form from the round's config dataclass (the same one the CLI reads);
the round runs as a background job, so its progress survives reloads. Nothing heavy is imported here.
"""
from __future__ import annotations

import dataclasses
import os
import threading
from pathlib import Path

import pandas as pd
import streamlit as st

from pages.widgets import admin_only, config_form, is_admin, job_panel, require_router, start
from training import distributed, env, jobs, preferences, registry, reward_report, versions
from training.config_fields import RoundLimits, form_fields


def quick_limits(chosen: registry.Round) -> dict[str, int]:
    """The round-wide caps its registry entry offers (RoundLimits), for a quick try; 0 = none."""
    offered = [f for f in form_fields(RoundLimits) if f.name in chosen.quick_limits]
    if not offered:
        return {}
    with st.expander("Quick run (optional limits)"):
        values = {f.name: column.number_input(f"{f.name.replace('_', ' ')} (0 = all)", min_value=0, value=0, step=1,
                                              help=f.help, key=f"{chosen.name}-{f.name.replace('_', '-')}")
                  for column, f in zip(st.columns(len(offered)), offered)}
    return {name: int(value) for name, value in values.items() if value}


@st.cache_resource(ttl=300, show_spinner=False)
def machine() -> dict:
    """The device, dtype, free memory and a DPO round's rough peak (training/env.py), asked of a child
    process in a thread at most every five minutes; empty until it answers (a few seconds: the child
    loads torch), so the page never waits for it."""
    answer: dict = {}
    threading.Thread(target=lambda: answer.update(env.report_in_child()), daemon=True).start()
    return answer


def machine_section(chosen: registry.Round) -> None:
    info = dict(machine())
    st.caption(env.sentence(info) if info else "Checking the device and memory…")
    if accelerate_config := os.environ.get(distributed.ACCELERATE_CONFIG_ENV):
        st.caption(f"Starts under `accelerate launch --config_file {accelerate_config}` (PREFLOOP_ACCELERATE_CONFIG)."
                   if chosen.distributed else "PPO runs in one process, without accelerate launch.")
    if chosen.produces == "policy" and env.may_not_fit(info):
        st.warning("This round may not fit in the memory free now: close other programs, or lower max_length "
                   "or the batch size under Advanced.")


def last_job_id(kind: str) -> int | None:
    """This session's job of that kind, else the newest one in the workspace (after a reload)."""
    if st.session_state.get(f"job-{kind}"):
        return st.session_state[f"job-{kind}"]
    return next((j.id for j in jobs.list_jobs() if j.kind == kind), None)


def round_section() -> None:
    by_label = {r.label: r for r in registry.ROUNDS.values()}
    chosen = by_label[st.radio("Round", list(by_label), horizontal=True, key="round")]
    with preferences.one_export():  # the three reads share one export of the labels
        reason = chosen.problem()  # the round's defaults: can it run at all now?
        plan = None if reason else chosen.plan_sentence(machine().get("trained_on"))  # None until the child answers
        caution = None if reason else chosen.caution_sentence()
    if reason:
        st.warning(reason)
    if not admin_only("start training rounds"):
        return
    if plan:
        st.caption(plan)
    if caution:
        st.warning(caution)
    limits = quick_limits(chosen)
    config = config_form(chosen.config_class(), key=f"form-{chosen.name}", submit_label="Train")
    if config is not None:
        reason = chosen.problem(config)  # the same check the CLI makes, on the settings typed
        if reason:
            st.error(reason)
        else:
            start(chosen.name, {**dataclasses.asdict(config), **limits})
    machine_section(chosen)
    job_id = last_job_id(chosen.name)
    if job_id:
        st.subheader("Progress")
        job_panel(job_id, curves=chosen.curves)


def autopilot_section() -> None:
    """Rounds of on-policy DPO on pairs the reward model picks, audited by people (training/autopilot.py)."""
    from training.autopilot import AutopilotConfig

    with st.expander("Autopilot: DPO rounds on the reward model's best-against-worst pairs, audited by people"):
        st.caption("Each round the policy answers training prompts several times, the reward model's best and worst "
                   "answer of each make a pair (a share goes to people's queue as an audit), and a DPO round trains "
                   "on them with your labels. It stops when people disagree with the audited pairs or the held-out "
                   "win rate against the base stops rising. Every automatic pair is marked in the lineage.")
        if not is_admin():
            st.caption("Only admins start the autopilot.")
            return
        if versions.latest_reward_id() is None:
            st.caption("Train a reward model first: it judges the answers.")
            return
        config = config_form(AutopilotConfig, "autopilot-form", "Start autopilot", hidden=("reward_version",))
        if config is not None:
            start("autopilot", dataclasses.asdict(config))
        if job_id := last_job_id("autopilot"):
            job_panel(job_id, curves=("win_rate",))


def audit_section() -> None:
    """What every round is about to learn from, checked, and the checks whose pairs it leaves out."""
    from labeling import audit, export, settings

    with st.expander("What the rounds learn from: the pair audit"):
        st.caption("Pairs whose chosen answer is only longer, near-identical answers, votes that disagree, and "
                   "votes by an annotator who picks the left or the longer answer more than chance allows.")
        if st.button("Audit the pairs", key="train-audit"):
            st.session_state["train-audit-result"] = export.pair_audit()
        if (result := st.session_state.get("train-audit-result")) is not None:
            counts = result.counts()
            for column, check in zip(st.columns(len(audit.CHECKS)), audit.CHECKS):
                column.metric(check.replace("_", " "), f"{counts[check]} of {result.pairs}")
        saved = settings.training_exclusions()
        chosen = st.multiselect("Leave these out of every round", export.AUDIT_CHECKS, default=list(saved),
                                format_func=lambda c: c.replace("_", " "), key="train-exclude",
                                disabled=not is_admin())
        if tuple(chosen) != saved and st.button("Save", key="train-exclude-save"):
            settings.set_training_exclusions(chosen)
            st.success("Rounds now leave out the pairs flagged: " + (", ".join(chosen) or "none") + ".")
            st.rerun()
        st.caption(f"Rounds leave out: {', '.join(saved) or 'nothing'}; each version records how many pairs that was.")


def reward_card_section() -> None:
    """The latest reward model's card: how far to trust it, on pairs it never trained on."""
    card = reward_report.card()
    if card is None:
        return
    st.subheader(f"Reward card: {card['version']}")
    if "missing" in card:
        st.caption(card["missing"])
        return
    st.dataframe(pd.DataFrame(card["rows"]), hide_index=True)
    st.caption("Preference accuracy on pairs it never trained on (ties count half) with a 95 % interval that "
               "resamples conversations, beside baselines on the same pairs; ECE: calibration of "
               "σ(r_chosen − r_rejected); length r: correlation of its rewards with the responses' length. "
               f"Measured {card['evaluated_at']}.")
    (st.success if card["beats_longer_wins"] else st.warning)(card["verdict"])


def versions_frame() -> pd.DataFrame:
    rows = []
    for v in versions.list_versions():
        metrics = v.metrics or {}
        rows.append({
            "version": v.id, "kind": v.kind, "method": v.method, "current": v.is_current,
            "lineage": " → ".join(x.id for x in versions.lineage(v.id)), "judgments": len(v.judgment_ids or []),
            "held-out accuracy": metrics.get("heldout_accuracy"), "trained on": metrics.get("trained_on"),
            "created": v.created_at.strftime("%Y-%m-%d %H:%M"),
        })
    return pd.DataFrame(rows)


def versions_section() -> None:
    st.subheader("Versions")
    frame = versions_frame()
    if frame.empty:
        st.caption("No versions yet: the base model is registered by the first round.")
        return
    st.dataframe(frame, hide_index=True)
    policies = list(frame[frame.kind == "policy"].version)
    if not policies or not admin_only("change the current version or export models"):
        return
    cols = st.columns(2)
    with cols[0].form("make-current"):
        chosen = st.selectbox("Policy version", policies, key="current-choice")
        if st.form_submit_button("Make current"):
            versions.set_current(chosen)
            st.success(f"{chosen} is now the current policy; generation uses it.")
            st.rerun()
    with cols[1].form("export"):
        chosen = st.selectbox("Policy version", policies, key="export-choice")
        folder = st.text_input("Export to folder", placeholder="/path/to/new/folder", key="export-folder")
        if st.form_submit_button("Export merged model"):
            export(chosen, folder.strip())
    if job_id := st.session_state.get("job-export"):
        with cols[1]:
            job_panel(job_id)  # done: its result names the folder that AutoModelForCausalLM.from_pretrained loads


def export(version_id: str, folder: str) -> None:
    """Start the export as a background job (loading and merging a model would hold up the page)."""
    if folder:  # the worker runs in the checkout: a relative path or ~ means what it means here
        folder = str(Path(folder).expanduser().resolve())
    problem = versions.export_problem(version_id, folder)
    if problem:
        st.error(problem)
        return
    start("export", {"version": version_id, "folder": folder})


require_router()
st.title("Train")
st.caption("Labeled pairs → a reward model, DPO and PPO rounds, each a new model version.")
round_section()
autopilot_section()
audit_section()
reward_card_section()
versions_section()
