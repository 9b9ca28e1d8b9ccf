"""Label: the prompt and two responses side by side, five buttons with keyboard shortcuts, and
optional reason tags under them.

The pair on screen is kept in st.session_state until it is judged, so typing a comment shows
the same pair. Buttons are keyed by pair and carry the pair they were drawn for: the late half of
a double click names a pair that is no longer on screen and is ignored, never taken as a judgment
of the next pair; and `submit_judgment` is an upsert (one row per pair and annotator), so a
reload that submits again updates instead of adding.
"""
from __future__ import annotations

import time

import streamlit as st

from labeling import demonstrations, queue, ratings, reasons, settings, suggestions
from pages.widgets import (VOTE_BUTTONS, VOTE_KEYS_CAPTION, guidelines_editor, is_admin, plain_text_toggle,
                           render_conversation, render_sides, require_router, show_text, vote_buttons)

LABELS = {choice: label for label, choice, _ in VOTE_BUTTONS}
UNDO_SHORTCUT = "U"
GENERATION_CHECK_SECONDS = 30.0


def overlap() -> int:
    """How many annotators judge each pair (> 1 measures agreement): set by an admin on the Data
    page, PREFLOOP_OVERLAP until then, else 1."""
    try:
        return settings.overlap()
    except settings.SettingError as error:
        st.error(str(error))
        st.stop()


def current_pair(name: str) -> queue.PairView | None:
    # the pair on screen belongs to the annotator it was drawn for: after "Switch annotator" or a
    # sign-out on a shared machine, the next person gets their own next pair, not the last one's
    pair_id = st.session_state.get("pair_id") if st.session_state.get("pair_owner") == name else None
    try:
        view = queue.pair_view(pair_id, name) if pair_id else queue.next_pair(name, overlap())
    except queue.QueueError:  # the pair on screen was deleted meanwhile: move on to the next one
        view = queue.next_pair(name, overlap())
    if view is not None and view.pair_id != pair_id:
        st.session_state["pair_id"], st.session_state["shown_at"] = view.pair_id, time.monotonic()
        st.session_state["pair_owner"] = name
    return view


def submit(name: str, view: queue.PairView, choice: str) -> None:
    """Button callback: store the judgment, then let the rerun fetch the next pair."""
    if view.pair_id != st.session_state.get("pair_id"):
        return  # the late half of a double click: this pair is already stored (and the upsert would hold anyway)
    seconds = time.monotonic() - st.session_state.get("shown_at", time.monotonic())
    comment = st.session_state.get(f"comment-{view.pair_id}")
    tags = st.session_state.get(f"reasons-{view.pair_id}")
    outcome = queue.stored_outcome(choice, view.left)
    try:
        queue.submit_judgment(name, view.pair_id, outcome, view.left, seconds=seconds, comment=comment, reasons=tags)
    except queue.QueueError as error:  # e.g. the pair was deleted meanwhile; nothing was stored
        st.session_state["last_message"] = str(error)
    else:
        st.session_state["last_message"] = f"Saved: {LABELS[choice]}."
        st.session_state["just_judged"] = (view.pair_id, view.left)  # its suggestions show after the vote
        # both bad: offer to write the answer wanted (until the next vote)
        st.session_state["rewrite_for"] = (view.pair_id, view.left_text, view.right_text) if choice == "both_bad" else None
    st.session_state["pair_id"] = None


def save_rewrite(name: str, pair_id: int, key: str) -> None:
    try:
        demonstrations.add_rewrite(name, pair_id, st.session_state.get(key, ""))
    except (demonstrations.DemonstrationError, queue.QueueError) as error:
        st.session_state["rewrite_error"] = str(error)
        return
    st.session_state["rewrite_for"] = None
    st.session_state["last_message"] = "Rewrite saved: the SFT round learns from it, and DPO prefers it to both answers."


def render_rewrite(name: str) -> None:
    """After "Both bad": a box for the answer the person wanted, empty or started from either side."""
    pair_id, left_text, right_text = st.session_state["rewrite_for"]
    key = f"rewrite-text-{pair_id}"
    with st.container(border=True):
        st.markdown("**Both answers were bad. Write the one you wanted?** (optional) It teaches the model directly "
                    "(the SFT round), and DPO learns to prefer it to both.")
        cols = st.columns(3)
        if cols[0].button("Start from A", key=f"rewrite-from-a-{pair_id}"):
            st.session_state[key] = left_text
        if cols[1].button("Start from B", key=f"rewrite-from-b-{pair_id}"):
            st.session_state[key] = right_text
        if cols[2].button("No rewrite", key=f"rewrite-no-{pair_id}"):
            st.session_state["rewrite_for"] = None
            st.rerun()
        st.text_area("Your answer", key=key, height=180)
        if error := st.session_state.pop("rewrite_error", None):
            st.error(error)
        st.button("Save rewrite", key=f"rewrite-save-{pair_id}", type="primary", on_click=save_rewrite,
                  args=(name, pair_id, key))


def undo(name: str) -> None:
    st.session_state["rewrite_for"] = None  # the box belonged to the vote being undone
    pair_id = queue.undo_last(name)
    if pair_id:  # the pair is back on screen: its time counts from now
        st.session_state["pair_id"], st.session_state["pair_owner"] = pair_id, name
        st.session_state["shown_at"] = time.monotonic()
    st.session_state["last_message"] = "Undone; the pair is back." if pair_id else "Nothing to undo."


def suggestion_line(s: dict, left: str) -> str:
    """One machine's opinion in the screen's terms (A is the left side)."""
    who = "The reward model" if s["source"] == "reward" else "The AI judge"
    side = {left: "A", "tie": None}.get(s["outcome"], "B")
    line = f"{who} ({s['name']}) " + (f"preferred **{side}**" if side else "saw no winner")
    if s["probability"] is not None:
        line += f", P(A better) = {s['probability'] if left == 'a' else 1 - s['probability']:.2f}"
    if not (s.get("reason") and s["source"] == "ai"):
        return line + "."
    note = f" (its Answer A was this screen's {'A' if left == 'a' else 'B'})" if s["name"].startswith("endpoint:") else ""
    return line + f": {s['reason']}{note}"


def render_suggestions(pair_id: int, left: str, title: str) -> None:
    """What the reward model and the AI judge said about a pair; the person's vote is the one that counts."""
    found = suggestions.for_pair(pair_id)
    if found:
        st.info(f"**{title}**\n\n" + "\n\n".join(suggestion_line(s, left) for s in found), icon=":material/smart_toy:")


def render_pair(name: str, view: queue.PairView) -> None:
    if suggestions.show_before_vote():  # an admin's choice (Data → AI judge); off, they come after the vote
        render_suggestions(view.pair_id, view.left, "Machines' opinions of this pair (your vote is the one that counts)")
    plain_text_toggle()
    render_conversation(view.messages)
    render_sides(view.left_text, view.right_text)
    st.text_input("Comment (optional)", key=f"comment-{view.pair_id}")
    buttons = vote_buttons(str(view.pair_id), submit, (name, view))
    buttons[-1].button("Undo last", key="undo", shortcut=UNDO_SHORTCUT, on_click=undo, args=(name,), width="stretch")
    # optional, and under the buttons: the keys still vote at once; picked tags go with the vote
    st.pills("Why? (optional)", reasons.reason_tags(), selection_mode="multi", key=f"reasons-{view.pair_id}")
    st.caption(f"{VOTE_KEYS_CAPTION} · **U** Undo last")


def keep_pairs_coming(waiting: int) -> None:
    """At most every 30 seconds, ask the generator for more pairs if this annotator's queue is
    shorter than a few minutes of labeling at the recent rate (pairs they skipped count for
    others, not for them)."""
    last = st.session_state.get("generation_checked_at", 0.0)
    if time.monotonic() - last < GENERATION_CHECK_SECONDS:
        return
    if not settings.autogenerate():
        return
    st.session_state["generation_checked_at"] = time.monotonic()
    from training import generate  # lazy: the app's other pages never need it

    try:
        job_id = generate.ensure_pairs_waiting(waiting=waiting)
    except RuntimeError as error:  # e.g. jobs.JobError: a training round holds the machine
        st.caption(f"No new pairs are being generated: {error}")
        return
    if job_id is not None:
        st.toast(f"Generating more pairs (job #{job_id}).")


def render_progress(name: str) -> None:
    mine = queue.progress(name, overlap())
    cols = st.columns(3)
    cols[0].metric("Mine today", mine.today)
    cols[1].metric("Mine in total", mine.total)
    cols[2].metric("Pairs waiting", mine.waiting)
    keep_pairs_coming(mine.waiting)


def render_guidelines() -> None:
    with st.expander("Labeling guidelines"):
        if is_admin() and st.toggle("Edit guidelines", key="edit-guidelines"):  # shared by everyone: admins edit
            guidelines_editor("guidelines")
        else:
            st.markdown(queue.guidelines())


# (label, value, key, icon): Material icons, drawn the same everywhere (an emoji needs a font the machine may lack)
THUMBS = [("Good", "up", "1", ":material/thumb_up:"), ("Bad", "down", "2", ":material/thumb_down:"),
          ("Skip", "skip", "5", None)]


def rate(name: str, answer: ratings.AnswerView, value: str) -> None:
    """Button callback of the rate-one mode: store the thumb; the rerun brings the next answer."""
    if answer.response_id != st.session_state.get("answer_id"):
        return  # the late half of a double click
    seconds = time.monotonic() - st.session_state.get("answer_shown_at", time.monotonic())
    try:
        ratings.rate(name, answer.response_id, value, seconds=round(seconds, 3))
    except queue.QueueError as error:
        st.session_state["last_message"] = str(error)
        return
    st.session_state["answer_id"] = None
    st.session_state["last_message"] = {"up": "Saved: good.", "down": "Saved: bad.", "skip": "Skipped."}[value]


def render_rating(name: str) -> None:
    """One answer and a thumb: quicker than comparing when labeling alone; the KTO round learns from it."""
    answer = ratings.next_answer(name)
    if answer is None:
        st.info("No answer is waiting to be rated. New ones come with the pairs the generator makes.")
        return
    if answer.response_id != st.session_state.get("answer_id"):
        st.session_state["answer_id"], st.session_state["answer_shown_at"] = answer.response_id, time.monotonic()
    plain_text_toggle()
    render_conversation(answer.messages)
    st.markdown("#### The answer")
    show_text(answer.text, st.container(border=True))
    for column, (label, value, key, icon) in zip(st.columns(len(THUMBS)), THUMBS):
        column.button(label, key=f"thumb-{value}-{answer.response_id}", shortcut=key, on_click=rate, icon=icon,
                      args=(name, answer, value), width="stretch", type="primary" if value != "skip" else "secondary")
    mine = ratings.counts(name)
    rated = mine["up"] + mine["down"]
    st.caption(f"Keys: **1** Good · **2** Bad · **5** Skip — you rated {rated} answer{'' if rated == 1 else 's'}. "
               "Thumbs teach the KTO round.")


@st.fragment(run_every="5s")
def wait_for_pairs(name: str) -> None:
    """Shown when nothing waits: looks again every 5 s and brings the next pair as soon as it exists,
    asks for more pairs meanwhile, and says so when generating them failed."""
    if queue.next_pair(name, overlap()) is not None:
        st.rerun(scope="app")
    st.info("No pairs are waiting for you right now. New pairs appear here as soon as they are generated.")
    keep_pairs_coming(0)
    if settings.autogenerate():
        from training import generate  # lazy: the app's other pages never need it

        if error := generate.recent_failure():
            minutes = round(generate.retry_wait().total_seconds() / 60)
            why = f": {error.rstrip('.')}" if is_admin() else " (an admin sees why here)"  # errors may name server paths
            st.error(f"Generating pairs failed{why}. It is tried again {minutes} minutes after the failure.")


def main() -> None:
    st.title("Label")
    name = st.session_state.get("annotator")
    if not name:  # app.py asks for a name first; this only shows if the page runs without it
        st.warning("Pick your name on the Home page first.")
        return
    if message := st.session_state.pop("last_message", None):
        st.toast(message)
    if just_judged := st.session_state.pop("just_judged", None):
        render_suggestions(*just_judged, "On the pair you just judged")
    if st.session_state.get("rewrite_for"):
        render_rewrite(name)
    mode = st.segmented_control("Mode", ["Compare two", "Rate one"], default="Compare two", key="label-mode",
                                help="Rate one: one answer at a time, good or bad; quicker alone, and what the KTO "
                                     "round learns from. Compare two: the pairs every round learns from.")
    if mode == "Rate one":
        render_rating(name)
        render_guidelines()
        return
    view = current_pair(name)
    if view is None:
        wait_for_pairs(name)
        if st.button("Undo last", key="undo-empty", shortcut=UNDO_SHORTCUT):
            undo(name)
            st.rerun()
    else:
        render_pair(name, view)
    render_progress(name)
    render_guidelines()


require_router()
main()
