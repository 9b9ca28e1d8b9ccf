"""Pieces several pages draw: a form built from a round's config dataclass, and a job's live
progress panel. Not a page itself (app.py lists the pages it routes to)."""
from __future__ import annotations

from typing import Any

import streamlit as st

from labeling import access, queue
from training import jobs, versions
from training.config_fields import ConfigError, FormField, config_from_dict, form_fields


ROUTED = "prefloop-routed"


def require_router() -> None:
    """Send a page that runs without app.py's router to the router first.

    Until app.py has called st.navigation once, a Streamlit server treats `pages/` as an old-style
    pages folder, so the very first request for /data or /train after a start would run that page
    alone: no sign-in, no annotator. app.py marks every run it routes; an unmarked page run goes
    to app.py, which signs in and routes as usual.
    """
    if not st.session_state.get(ROUTED):
        st.switch_page("app.py")


def is_admin() -> bool:
    """Admins start training and change the current version; without sign-in everyone is one."""
    user = st.session_state.get("user")
    return not access.enabled() or bool(user and user.is_admin)


def admin_only(what: str) -> bool:
    """True for admins; otherwise a note saying `what` needs an admin."""
    if is_admin():
        return True
    st.info(f"Only admins can {what}; you are signed in as an annotator.")
    return False


def config_form(config_class: type, key: str, submit_label: str, hidden: tuple[str, ...] = ()) -> Any | None:
    """A form with one widget per field of `config_class` (defaults and help from the dataclass): the
    fields marked `"basic"` first, the others folded under "Advanced" (all in view when none is basic).
    Returns the config when submitted and valid, else None (an invalid value shows one sentence)."""
    fields = [f for f in form_fields(config_class) if f.name not in hidden]
    basic, advanced = [f for f in fields if f.basic], [f for f in fields if not f.basic]
    values: dict[str, Any] = {}
    with st.form(key):
        values.update((f.name, field_widget(f, key)) for f in basic)
        if advanced:
            with st.expander("Advanced") if basic else st.container():
                values.update((f.name, field_widget(f, key)) for f in advanced)
        submitted = st.form_submit_button(submit_label, type="primary")
    if not submitted:
        return None
    try:
        return config_from_dict(config_class, values, where="form")
    except ConfigError as error:
        st.error(str(error))
        return None


def field_widget(f: FormField, key: str) -> Any:
    """The widget of one config field, by its type; returns its value."""
    label, widget_key = f.name.replace("_", " "), f"{key}-{f.name}"
    if f.choices:
        return st.selectbox(label, f.choices, index=f.choices.index(f.default), help=f.help, key=widget_key)
    if f.type is bool:
        return st.checkbox(label, value=bool(f.default), help=f.help, key=widget_key)
    if f.type is int and not f.optional:
        return st.number_input(label, value=int(f.default), step=1, help=f.help, key=widget_key)
    if f.type is float and not f.optional:
        return st.number_input(label, value=float(f.default), format="%g", help=f.help, key=widget_key)
    default = "" if f.default is None else str(f.default)  # text, or an optional number typed as text ("" = None)
    return st.text_input(label, value=default, help=f.help, key=widget_key)


def guidelines_editor(key: str) -> None:
    """The labeling guidelines in a text box and a Save button (they are shared: admins only)."""
    edited = st.text_area("Guidelines (markdown)", value=queue.guidelines(), height=300, key=f"{key}-text")
    if st.button("Save guidelines", key=f"{key}-save"):
        try:
            queue.save_guidelines(edited)
        except queue.QueueError as error:
            st.error(str(error))
        else:
            st.success("Guidelines saved for everyone in this workspace.")


def start(kind: str, config: dict[str, Any]) -> int | None:
    """Start a background job and say so; one sentence when it cannot start."""
    try:
        job_id = jobs.start_job(kind, config)
    except jobs.JobError as error:
        st.error(str(error))
        return None
    st.session_state[f"job-{kind}"] = job_id
    st.success(f"Job #{job_id} ({kind}) started.")
    return job_id


@st.fragment(run_every=2)
def job_panel(job_id: int, curves: tuple[str, ...] = ()) -> None:
    """Progress bar with ETA, status, cancel, and the job's metric curves; refreshes every 2 s."""
    job = jobs.get_job(job_id)
    if job is None:
        return
    done = job.step / job.total_steps if job.total_steps else 0.0
    eta = jobs.eta_seconds(job)
    text = f"Job #{job.id} {job.kind}: {job.status}, step {job.step}" + (f" of {job.total_steps}" if job.total_steps else "")
    st.progress(min(done, 1.0), text=text + (f", about {eta:.0f} s left" if eta is not None and job.status == "running" else ""))
    if job.status in jobs.ACTIVE and st.button("Cancel", key=f"cancel-{job.id}"):
        jobs.cancel(job.id)
        st.rerun(scope="fragment")
    if job.status == "failed":
        st.error(job.error or "The job failed; see its log.")
    rows = jobs.job_metrics(job.id)
    shown = [c for c in curves if any(c in r for r in rows)]
    if shown:
        import pandas as pd

        st.line_chart(pd.DataFrame(rows).set_index("step")[shown])
    if job.status == "done" and job.result:
        st.json(job.result, expanded=False)
        made = job.result.get("version")
        if job.result.get("current") is False and (job.config or {}).get("make_current") \
                and versions.current_policy_id() != made:
            st.warning(f"{made} is not the current policy, because another version was made current while the "
                       f"round ran; make it current in the versions table if you want it.")


# (label, what it means on screen, keyboard shortcut): the Label page and the blind arena share them
VOTE_BUTTONS = [
    ("A is better", "left", "1"),
    ("B is better", "right", "2"),
    ("Tie", "tie", "3"),
    ("Both bad", "both_bad", "4"),
    ("Skip", "skip", "5"),
]
VOTE_KEYS_CAPTION = "Keys: **1** A is better · **2** B is better · **3** Tie · **4** Both bad · **5** Skip"


PLAIN_TEXT_KEY = "plain-text"  # the switch's widget key (one widget per page)
PLAIN_TEXT_ON = "plain-text-on"  # the choice, kept across pages and empty queues


def _remember_plain_text() -> None:
    st.session_state[PLAIN_TEXT_ON] = st.session_state[PLAIN_TEXT_KEY]


def plain_text_toggle() -> None:
    """The switch between Markdown and the exact characters (a single newline, `*args` or `$x$`
    look different as Markdown, so someone judging code or formatting may want the raw text)."""
    st.toggle("Exact text", value=bool(st.session_state.get(PLAIN_TEXT_ON)), key=PLAIN_TEXT_KEY,
              on_change=_remember_plain_text, help="Show the texts character for character instead of as Markdown.")


def show_text(text: str, where=st) -> None:
    # st.markdown escapes raw HTML (unsafe_allow_html stays False): markdown and code blocks render,
    # <script> or onerror= never run; st.code shows the characters as they are.
    if st.session_state.get(PLAIN_TEXT_ON):
        where.code(text, language=None, wrap_lines=True)
    else:
        where.markdown(text)


def render_conversation(messages: list[dict[str, str]]) -> None:
    for message in messages:
        with st.chat_message(message["role"]):
            show_text(message["content"])


def render_sides(left_text: str, right_text: str, titles: tuple[str, str] = ("Response A", "Response B")) -> None:
    """Two responses side by side (Streamlit stacks the columns on a narrow screen)."""
    for column, title, text in zip(st.columns(2), titles, (left_text, right_text)):
        with column:
            st.markdown(f"#### {title}")
            show_text(text, st.container(border=True))


def vote_buttons(key: str, on_vote, args: tuple = ()) -> list:
    """The five vote buttons with shortcuts; `on_vote(*args, choice)` runs on click. Returns the
    columns, one more than buttons, so a page can put its own button (Undo) in the last one."""
    columns = st.columns(len(VOTE_BUTTONS) + 1)
    for column, (label, choice, shortcut) in zip(columns, VOTE_BUTTONS):
        column.button(label, key=f"{choice}-{key}", shortcut=shortcut, on_click=on_vote, args=(*args, choice),
                      type="primary" if choice in ("left", "right") else "secondary", width="stretch")
    return columns
