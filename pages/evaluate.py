"""Evaluate: the measured reward-vs-KL chart of every policy version, a β sweep, training curves."""
from __future__ import annotations

import pandas as pd
import streamlit as st

from pages.widgets import admin_only, config_form, job_panel, require_router, start
from training import points, verdict, versions
from training.evaluate_config import EvaluateConfig
from training.sweep import SweepConfig

TOOLTIP = ["version", "method", "beta", "parent", "reward", "reward_se", "kl", "kl_se", "kl_per_token",
           "samples", "mean_tokens", "reward_version", "in_sample", "measured_at"]


def chart(rows: list[dict]):
    """Points with ±1 SE bars on both axes; a dashed frontier through each sweep's points."""
    import altair as alt

    frame = pd.DataFrame(rows)
    frame = frame.assign(r_lo=frame.reward - frame.reward_se, r_hi=frame.reward + frame.reward_se,
                         k_lo=frame.kl - frame.kl_se, k_hi=frame.kl + frame.kl_se)
    base = alt.Chart(frame)
    x = alt.X("kl:Q", title="KL(π ‖ π_base) per sequence (nats)")
    y = alt.Y("reward:Q", title="mean reward", scale=alt.Scale(zero=False))
    dots = base.mark_circle(size=90).encode(x=x, y=y, color=alt.Color("method:N"), tooltip=TOOLTIP)
    ybars = base.mark_rule().encode(x="kl:Q", y="r_lo:Q", y2="r_hi:Q", color="method:N")
    xbars = base.mark_rule().encode(y="reward:Q", x="k_lo:Q", x2="k_hi:Q", color="method:N")
    labels = base.mark_text(dx=8, dy=-8, align="left").encode(x="kl:Q", y="reward:Q", text="version:N")
    layers = [ybars, xbars, dots, labels]
    # from the rows, not the frame: pandas turns a missing sweep into NaN, which is truthy
    sweep_rows = [p for p in rows if p.get("sweep")]
    base_rows = [p for p in rows if p["method"] == "base"]
    for sweep in sorted({p["sweep"] for p in sweep_rows}):
        line = pd.DataFrame(points.frontier(base_rows + [p for p in sweep_rows if p["sweep"] == sweep]))
        layers.append(alt.Chart(line).mark_line(strokeDash=[6, 4], color="green").encode(x="kl:Q", y="reward:Q"))
    return alt.layer(*layers).properties(height=420)


def show_points() -> None:
    rows = points.latest_points()
    if not rows:
        st.info("No measured points yet. Train a reward model and a policy round, then press Measure.")
        return
    frame = pd.DataFrame(rows)
    scorers = sorted({r["reward_version"] for r in rows})
    if len(scorers) > 1:
        st.warning(f"These points were scored by different reward models ({', '.join(scorers)}); "
                   "rewards are only comparable within one. Measure again to score all with the latest.")
    if borrowed := max(r["train_prompts"] or 0 for r in rows):
        st.warning(f"Some points were measured on up to {borrowed} training prompts as well, because fewer prompts "
                   "are held out than the measurement asked for; measure fewer prompts for a held-out-only figure.")
    if in_sample := [r["version"] for r in rows if r.get("in_sample")]:
        st.warning(f"{', '.join(in_sample)} trained against the reward model that scores it here, so its reward is "
                   "in-sample and flatters it: judge it by KL, the arena and a reward model trained on other labels.")
    st.altair_chart(chart(rows), width="stretch")
    st.dataframe(frame, hide_index=True)
    png = points.plot_reward_vs_kl(rows, points.plot_path())
    left, right = st.columns(2)
    left.download_button("Download PNG", png.read_bytes(), file_name="reward_vs_kl.png", mime="image/png")
    right.download_button("Download CSV", frame.to_csv(index=False), file_name="reward_vs_kl.csv", mime="text/csv")


def verdict_rows(report: dict) -> list[dict]:
    rows = []
    for label, c in report["comparisons"].items():
        human = c["human"]
        rows.append({"against": f"{label} ({c['version']})",
                     "reward-model win rate": f"{c['win_rate']:.2f} [{c['low']:.2f}, {c['high']:.2f}]",
                     "length-controlled win rate": f"{c['lc_win_rate']:.2f} [{c['lc_low']:.2f}, {c['lc_high']:.2f}]",
                     "length change": f"{c['length_change']:+.0%}",
                     "people's win rate": f"{human['win_rate']:.2f} [{human['low']:.2f}, {human['high']:.2f}] "
                                          f"({human['votes']} votes)" if human else "no arena votes"})
    return rows


def show_verdict() -> None:
    """The newest (or a chosen) version against its parent and the base, and the Goodhart meter."""
    names = [v for v in points.trained_versions() if not v.endswith("-base")]
    if not names:
        return
    st.subheader("Did the round help?")
    labels = versions.version_labels()  # names: newest first
    version = st.selectbox("Version", names, format_func=lambda v: labels.get(v, v), key="verdict-version")
    report = verdict.round_report(version)
    if report.get("missing"):
        st.info(report["missing"])
    if "kl" in report:
        st.caption(f"{version} ({report['method']}, from {report['parent']}): KL to the base {report['kl']:.3g} ± "
                   f"{report['kl_se']:.2g} nats per answer; win rates are paired answer by answer on the same "
                   "held-out prompts and seeds (ties half), 95% intervals resampling prompts. The length-controlled "
                   "win rate is the win rate at equal length (a logistic regression of each answer's win on the "
                   "length difference, as AlpacaEval 2): near 0.5 when length alone made the raw one.")
    if report["comparisons"]:
        st.dataframe(pd.DataFrame(verdict_rows(report)), hide_index=True)
    for sentence in report["warnings"]:
        st.warning(sentence)
    parent = report["comparisons"].get("parent")
    if parent and not report["warnings"]:
        if parent["low"] > 0.5:
            st.success(f"By the reward model, {version} beats {parent['version']}: the lower end of its interval is "
                       f"{parent['low']:.2f}, above a coin flip.")
        else:
            st.info(f"By the reward model, {version} is not measurably better than {parent['version']} "
                    f"(its interval reaches {parent['low']:.2f}).")


def show_curves() -> None:
    names = points.trained_versions()  # every policy version, measured or not, newest first
    if not names:
        return
    labels = versions.version_labels()
    version = st.selectbox("Training curves of version", names, format_func=lambda v: labels.get(v, v),
                           key="curves-version")
    rows = points.training_curves(version)
    if rows:
        frame = pd.DataFrame(rows).set_index("step")
        st.line_chart(frame[[c for c in frame.columns if frame[c].notna().any()]])
    else:
        st.caption(f"{version} has no recorded training curves of its own (the base model, a version a β sweep "
                   "made, or one trained outside the app).")


def measure_form() -> None:
    """Versions and the scoring reward model picked from lists (newest first), the rest from EvaluateConfig."""
    labels, rewards = versions.version_labels(), versions.version_labels("reward")
    picked = st.multiselect("Versions to measure", list(labels)[::-1], format_func=labels.get,
                            placeholder="every policy version", key="evaluate-versions")
    scorer = st.selectbox("Reward model that scores", ["", *list(rewards)[::-1]], key="evaluate-reward",
                          format_func=lambda v: rewards.get(v, "the newest reward model"))
    config = config_form(EvaluateConfig, "evaluate-form", "Measure", hidden=("versions", "reward_version"))
    if config is not None:  # the job reads them as the CLI's --versions A,B and --reward-version
        start("evaluate", {**config.__dict__, "versions": ",".join(picked), "reward_version": scorer or None})


def main() -> None:
    st.title("Evaluate")
    st.caption("Each point is measured: K samples per held-out prompt from the version, scored by the reward "
               "model, and KL = mean over those samples of Σ_t KL(π_v ‖ π_base) at each position (exact over the "
               "vocabulary, never negative); ± is one standard error clustered by prompt.")
    show_points()
    show_verdict()
    measure, sweep = st.columns(2)
    with measure:
        st.subheader("Measure versions")
        measure_form()
    with sweep:
        st.subheader("β sweep")
        if admin_only("run a β sweep (it trains one version per β)"):
            config = config_form(SweepConfig, "sweep-form", "Run sweep")
            if config is not None:
                start("sweep", config.__dict__)
    for kind in ("evaluate", "sweep"):
        if job_id := st.session_state.get(f"job-{kind}"):
            job_panel(job_id, curves=("reward", "kl", "loss"))
    st.subheader("Training curves")
    show_curves()


require_router()
main()
