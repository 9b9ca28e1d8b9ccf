"""Data: pairs and judgments with filters, import, export, the annotator statistics, and the pair
audit."""
from __future__ import annotations

import tempfile
from pathlib import Path

import streamlit as st

from labeling import queue, reasons, settings, stats
from pages.widgets import guidelines_editor, is_admin, require_router

TABLE_ROWS = 2_000  # rows drawn in the table; statistics always use every judgment
EXPORT_FORMATS = {"JSONL": ("jsonl", "application/jsonl"), "Parquet": ("parquet", "application/octet-stream")}


def render_table() -> None:
    values = stats.filter_values()
    cols = st.columns(3)
    source = cols[0].selectbox("Source", ["All", *values["source"]])
    # an annotator sees only their own judgments, so nobody is swayed by others' before judging a pair
    mine = [] if is_admin() else [st.session_state.get("annotator", "")]
    annotator = cols[1].selectbox("Annotator", mine or ["All", *values["annotator"]])
    outcome = cols[2].selectbox("Outcome", ["All", *stats.VERDICTS, "skip"])
    chosen = {k: (None if v == "All" else v) for k, v in (("source", source), ("annotator", annotator),
                                                          ("outcome", outcome))}
    frame = stats.judgments_frame(**chosen, limit=TABLE_ROWS + 1)
    shown = frame.head(TABLE_ROWS)
    st.caption(f"{len(shown)} rows" + (f" (the newest {TABLE_ROWS}; narrow the filters to see others)"
                                       if len(frame) > TABLE_ROWS else ""))
    st.dataframe(shown, hide_index=True, column_config={"judged_at": st.column_config.DatetimeColumn("judged at")})


def render_import() -> None:
    from labeling import importers, planning, store  # the same importer as `python -m labeling import`

    with st.form("import", clear_on_submit=True):
        upload = st.file_uploader("Preference data or prompts (JSONL, JSON, CSV, Parquet, TXT, .gz)")
        cols = st.columns(2)
        fmt = cols[0].selectbox("Format", (*importers.FORMATS, "messages"),
                                help="messages: written answers for the SFT round, each row's `messages` ending "
                                     "with the assistant's answer (TRL's conversational format)")
        source = cols[1].text_input("Source name (optional)", placeholder="defaults to the file name")
        if not st.form_submit_button("Import") or upload is None:
            return
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / Path(upload.name).name  # keep the name: format and source come from it
        path.write_bytes(upload.getvalue())
        try:
            if fmt == "messages":
                from labeling import demonstrations

                result = demonstrations.import_messages(path, source.strip() or None)
                st.success(f"{upload.name}: {result['demonstrations']} demonstrations imported (source "
                           f"'{result['source']}'), {result['already_stored']} already stored.")
                return
            result = store.import_file(path, fmt=fmt, source=source.strip() or None)
        except (importers.InputError, planning.ReaderError) as error:  # one sentence; the import wrote nothing
            st.error(str(error).replace(str(path), upload.name))
            return
    dropped = sum(result["dropped"].values())
    st.success(f"{upload.name}: imported {result['imported']} ({result['format']}, source '{result['source']}'), "
               f"{result['duplicates']} already stored, {dropped} dropped {result['dropped']}.")


def render_export() -> None:
    from labeling import export  # TRL-ready prompt/chosen/rejected rows, as `python -m labeling export`

    cols = st.columns([1, 2])
    label = cols[0].radio("Export format", list(EXPORT_FORMATS), horizontal=True)
    fmt, mime = EXPORT_FORMATS[label]
    leave_out = cols[1].multiselect("Leave out the pairs the audit flags", export.AUDIT_CHECKS, key="export-exclude",
                                    help="See the Pair audit tab for what each check finds.")
    if cols[1].button("Prepare export"):
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / f"prefloop-preferences.{fmt}"
            try:
                result = export.export(path, fmt, exclude=tuple(leave_out))
            except export.ExportError as error:
                st.error(str(error).replace(str(path), path.name))
                return
            st.session_state["export"] = (path.name, path.read_bytes(), mime, result)
    if "export" in st.session_state:
        name, data, mime, result = st.session_state["export"]
        st.download_button(f"Download {name}", data=data, file_name=name, mime=mime)
        st.caption(f"{result['exported']} preference rows; left out: {result['excluded']}")
    render_demonstrations_export()


def render_demonstrations_export() -> None:
    """The answers people wrote (and imported demonstrations), as TRL messages JSON lines."""
    from labeling import demonstrations

    have = demonstrations.count()
    if not have:
        st.caption("No written answers yet: after Both bad, the Label page offers to write the answer wanted.")
        return
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "prefloop-demonstrations.jsonl"
        demonstrations.export_messages(path)
        st.download_button(f"Download {have} written answers (messages JSONL, for SFT)", data=path.read_bytes(),
                           file_name=path.name, mime="application/jsonl")


def render_stats() -> None:
    frame = stats.judgments_frame(include_unjudged=False)
    if frame.empty:
        st.info("No judgments yet: statistics appear once pairs are labeled.")
        return
    left, right = st.columns(2)
    left.markdown("**Judgments per annotator**")
    left.dataframe(stats.judgments_per_annotator(frame), hide_index=True)
    right.markdown("**Outcome shares** of people's judgments (imported labels, which always name response a, "
                   "left out)")
    right.dataframe(stats.outcome_shares(stats.by_people(frame)), hide_index=True,
                    column_config={"share": st.column_config.NumberColumn(format="percent")})
    st.markdown("**Position bias**: share of decisive judgments won by the response shown on the left "
                "(0.5 = no bias; 95 % Wilson interval)")
    st.dataframe(stats.position_bias(frame), hide_index=True)
    st.markdown("**Length bias**: share of decisive judgments, of pairs whose answers differ in length (words), "
                "won by the longer answer, beside chance (0.5; 95 % Wilson interval)")
    st.dataframe(stats.length_bias(frame), hide_index=True)
    render_reasons(frame)
    agreement = stats.agreement(frame)
    st.markdown(f"**Agreement** on {agreement['pairs']} pairs with two or more judgments")
    if agreement["pairs"]:
        cols = st.columns(3)
        cols[0].metric("Percent agreement", f"{agreement['percent_agreement']:.1%}")
        cols[1].metric("Unanimous pairs", f"{agreement['unanimous']:.1%}")
        cols[2].metric("Fleiss' kappa", f"{agreement['fleiss_kappa']:.3f}")
    else:
        st.caption("Set the overlap to 2 or more under Settings so several annotators judge the same pairs.")


def render_settings() -> None:
    """The workspace's labeling settings, for admins: annotators per pair, and the guidelines."""
    try:
        current, problem = settings.overlap(), None
    except settings.SettingError as error:  # a bad PREFLOOP_OVERLAP: say so, and offer to save a good value
        current, problem = 1, str(error)
    if problem:
        st.error(problem)
    with st.form("overlap-form"):
        overlap = st.number_input("Annotators per pair (overlap)", min_value=1, max_value=settings.MAX_OVERLAP,
                                  value=current, step=1, key="overlap",
                                  help="2 or more: several people judge each pair, and Statistics reports their "
                                       "agreement; each pair then takes that many judgments.")
        if st.form_submit_button("Save overlap"):
            settings.set_overlap(int(overlap))
            st.success(f"Each pair now waits for {int(overlap)} annotator(s) before it leaves the queue.")
    st.caption("Until an admin saves it here, the overlap is PREFLOOP_OVERLAP (1 when unset).")
    names = {"oldest": "Oldest pair first", "uncertain": "Pairs the reward model is least sure of first",
             "current": "The current policy's pairs first"}
    st.radio("Queue order", settings.QUEUE_ORDERS, index=settings.QUEUE_ORDERS.index(settings.queue_order()),
             format_func=names.get, key="queue-order",
             on_change=lambda: settings.set_queue_order(st.session_state["queue-order"]),  # only when a person picks
             help=f"Least sure first: the pairs whose reward-model probability is nearest 0.5, except "
                  f"{queue.RANDOM_SHARE:.0%} of draws at random, so the labels stay a fair sample. The "
                  f"latest reward model scores pairs as they are generated and when it is trained. The current "
                  f"policy's pairs first: the pairs whose two answers it sampled, before older policies' backlog, "
                  f"for DPO rounds on on-policy pairs.")
    st.caption(f"The queue serves: {names[settings.queue_order()].lower()}.")
    with st.form("length-form"):
        ratio = st.number_input("Match answer lengths (0 = off)", min_value=0.0, max_value=settings.MAX_LENGTH_RATIO,
                                value=settings.pair_length_ratio(), step=0.1, key="length-ratio",
                                help="Above 1, e.g. 1.5: the generator samples a pair again (up to 3 times, keeping the "
                                     "closest) while its longer answer has more than that many times the shorter's "
                                     "tokens, so people judge content rather than length. Costs generation time.")
        if st.form_submit_button("Save length matching"):
            try:
                settings.set_pair_length_ratio(ratio)
                st.success("New pairs are matched in length." if ratio else "New pairs are taken as sampled.")
            except settings.SettingError as error:
                st.error(str(error))
    st.markdown("**Labeling guidelines**, shown on the Label page")
    guidelines_editor("data-guidelines")


def render_reasons(frame) -> None:
    st.markdown("**Reasons**: how many of each annotator's verdicts carry each reason tag")
    st.dataframe(stats.reason_counts(frame), hide_index=True)
    with st.form("reason-tags"):
        text = st.text_area("Reason tags of your own, one per line (offered on the Label page after the five "
                            "built in)", value="\n".join(reasons.extra_reasons()))
        if st.form_submit_button("Save reason tags"):
            try:
                saved = reasons.save_extra_reasons(text.splitlines())
            except reasons.ReasonError as error:
                st.error(str(error))
            else:
                st.success(f"The Label page offers {len(reasons.BUILTIN_REASONS) + len(saved)} reason tags.")


def render_audit() -> None:
    """What a round would learn from, checked; computed on request (it reads every pair's text)."""
    from labeling import audit, export

    st.caption("The decided pairs a round trains on, checked for answers that are only longer (≥ 1.5× the words "
               "and most of the other's words), near-identical answers (difflib ratio ≥ 0.9 over words), votes "
               "that disagree, and votes by an annotator who picks the left or the longer answer more than chance "
               "allows (Wilson 95 % interval without 0.5). Leave any of them out in the export's options.")
    if st.button("Audit the pairs"):
        st.session_state["audit"] = export.pair_audit()
    result = st.session_state.get("audit")
    if result is None:
        return
    counts = result.counts()
    for column, check in zip(st.columns(len(audit.CHECKS)), audit.CHECKS):
        column.metric(check.replace("_", " "), f"{counts[check]} of {result.pairs}")
    if not result.skewed.empty:
        st.dataframe(result.skewed, hide_index=True)
    for check in audit.CHECKS:
        if counts[check]:
            with st.expander(f"{check.replace('_', ' ')}: {counts[check]} pairs (up to 20 shown)"):
                flagged = result.flags[result.flags["check"] == check]
                st.dataframe(flagged.drop(columns="check").head(20), hide_index=True)


def main() -> None:
    st.title("Data")
    names = (["Pairs and judgments", "Import / export", "Statistics", "Pair audit", "AI judge", "Settings"]
             if is_admin() else ["My judgments"])
    table, load, statistics, pairs, judge, workspace = (*st.tabs(names), None, None, None, None, None)[:6]
    with table:
        render_table()
    if not is_admin():
        return
    with load:
        render_import()
        st.divider()
        render_export()
    with statistics:
        render_stats()
    with pairs:
        render_audit()
    with judge:
        from pages import ai_judge

        ai_judge.render()
    with workspace:
        render_settings()


require_router()
main()
