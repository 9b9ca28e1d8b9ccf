"""prefloop's app: the one router (`streamlit run app.py`), the home view and who is labeling.

Streamlit runs this file on every rerun of every page: it sets the annotator (kept in
st.session_state and in the URL as ?annotator=NAME, so a reload or a shared link keeps it), draws
the sidebar and runs the page picked in the navigation.
"""
from __future__ import annotations

import time
from pathlib import Path

import streamlit as st

from labeling import access, queue, settings, stats, store, workspace
from pages.widgets import is_admin
from training import loop

ROOT = Path(__file__).resolve().parent
# Pages other rounds add (train, evaluate, compare) appear once their file exists; no placeholders.
PAGE_FILES = [
    ("pages/label.py", "Label", ":material/thumbs_up_down:"),
    ("pages/data.py", "Data", ":material/table:"),
    ("pages/train.py", "Train", ":material/model_training:"),
    ("pages/evaluate.py", "Evaluate", ":material/monitoring:"),
    ("pages/compare.py", "Compare", ":material/compare:"),
]
PAGE_PATHS = {title: path for path, title, _ in PAGE_FILES}


@st.cache_resource
def load_builtin_prompts() -> int:
    """Once per server: the built-in prompts, so a new workspace has something to generate for."""
    return store.ensure_builtin_prompts()


@st.cache_resource
def generate_at_start(home: str) -> int | None:
    """Once per server and workspace, on its first page view: start generating pairs when few wait,
    so whoever opens the Label page next finds pairs instead of an empty queue (the Label page keeps
    them coming afterwards)."""
    from training import generate  # lazy: the generator's module is only needed when pairs are short

    try:
        return generate.ensure_pairs_waiting()
    except RuntimeError:  # e.g. jobs.JobError: a training round holds the machine; the Label page says so
        return None


def sign_in() -> None:
    """The sign-in form, shown instead of every page while sign-in is on and nobody is signed in."""
    st.title("prefloop")
    if message := st.session_state.pop("sign-in-message", None):
        st.info(message)
    with st.form("sign-in"):
        name = st.text_input("Name", key="sign-in-name")
        password = st.text_input("Password", type="password", key="sign-in-password")
        if st.form_submit_button("Sign in", type="primary"):
            try:  # the address slows down guessing per client as well as per name
                user = access.sign_in(name, password, address=st.context.ip_address)
            except access.AccessError as error:
                st.error(str(error))
                return
            if user is None:
                st.error("Wrong name or password.")
                return
            st.session_state["user"], st.session_state["annotator"] = user, user.name
            st.session_state["signed-in-at"] = time.time()
            st.query_params["annotator"] = user.name
            st.rerun()


def signed_in() -> bool:
    """Whether this browser session holds a sign-in that has not expired (PREFLOOP_SESSION_HOURS)."""
    if "user" not in st.session_state:
        return False
    try:
        expired = access.session_expired(st.session_state.get("signed-in-at"))
    except access.AccessError as error:  # a bad PREFLOOP_SESSION_HOURS: nobody stays signed in
        st.session_state["sign-in-message"], expired = str(error), True
    else:
        if expired:
            st.session_state["sign-in-message"] = "Your session has expired; sign in again."
    if expired:
        forget_session()
    return not expired


def forget_session() -> None:
    for key in ("user", "annotator", "signed-in-at", "pair_id", "shown_at", "arena-shown-at"):
        st.session_state.pop(key, None)


def current_annotator() -> str | None:
    """The annotator of this browser tab: session first, then the URL; the two kept in step.
    With sign-in on, only the signed-in name counts."""
    if access.enabled():
        user = st.session_state.get("user")
        return user.name if user else None
    name = st.session_state.get("annotator") or st.query_params.get("annotator")
    if name:
        try:
            name = queue.check_annotator_name(name)
        except queue.QueueError:
            name = None
    if name:
        st.session_state["annotator"] = name
        if st.query_params.get("annotator") != name:
            st.query_params["annotator"] = name
    return name


def pick_annotator(where=st) -> None:
    """The first-visit form: pick a known name or type a new one."""
    known = queue.annotator_names()
    with where.form("pick-annotator"):
        st.markdown("**Who is labeling?** Your name is stored with each judgment.")
        picked = st.selectbox("Pick your name", ["", *known], key="picked-name") if known else ""
        typed = st.text_input("or type a new name", key="typed-name", placeholder="e.g. ana")
        if st.form_submit_button("Start labeling", type="primary"):
            try:
                name = queue.check_annotator_name(typed or picked)
            except queue.QueueError as error:
                st.error(str(error))
                return
            st.session_state["annotator"] = name
            st.query_params["annotator"] = name
            st.rerun()


def sidebar(name: str | None) -> None:
    with st.sidebar:
        if name:
            st.markdown(f"Labeling as **{name}**")
            if st.button("Sign out" if access.enabled() else "Switch annotator", key="switch-annotator"):
                forget_session()
                st.query_params.pop("annotator", None)
                st.rerun()


def home() -> None:
    """The loop's dashboard: the next step as one button, the workspace at a glance, what the current
    version improved, the jobs under way, and the button that starts a generation job."""
    st.title("prefloop")
    st.caption("The loop: label pairs → train a reward model → run a DPO round → measure it → compare it with "
               "its parent. The button below is the first step the loop lacks.")
    if not current_annotator():
        pick_annotator()
    state = loop.loop_state(can_train=is_admin())
    next_step_button(state)
    summary = queue.workspace_summary(workspace_overlap())
    dashboard_metrics(summary, state)
    current_version(summary.current_model)
    st.subheader("Running jobs")
    if summary.running_jobs:
        st.dataframe(summary.running_jobs, hide_index=True)
    else:
        st.caption("No job is running.")
    generate_form()


def next_step_button(state: loop.LoopState) -> None:
    label, page = loop.next_step(state)
    if st.button(label, type="primary", icon=":material/arrow_forward:", key="next-step"):
        name = st.session_state.get("annotator")  # switch_page clears the URL's parameters otherwise
        st.switch_page(ROOT / PAGE_PATHS[page], query_params={"annotator": name} if name else None)


def workspace_overlap() -> int:
    try:
        return settings.overlap()
    except settings.SettingError as error:  # a bad PREFLOOP_OVERLAP: said once here, counted as 1
        st.warning(str(error))
        return 1


def dashboard_metrics(summary: queue.WorkspaceSummary, state: loop.LoopState) -> None:
    agreement = stats.overlap_agreement()
    top, bottom = st.columns(4), st.columns(4)
    top[0].metric("Pairs waiting", summary.pairs_waiting)
    top[1].metric("Labeled today", summary.judgments_today,
                  help="People's judgments since midnight UTC, skips left out.")
    top[2].metric("Labeled pairs", state.labeled_pairs,
                  help="Pairs a round trains on: decided by their judgments (ties, both-bad and skips left out).")
    if agreement["pairs"]:
        top[3].metric("Agreement", f"{agreement['percent_agreement']:.0%}",
                      help=f"Percent agreement on {agreement['pairs']} pairs two or more people judged; "
                           f"Fleiss' κ {agreement['fleiss_kappa']:.2f}.")
    else:
        top[3].metric("Agreement", "–", help="No pair has two people's judgments yet: an admin sets the overlap to "
                                             "2 or more under Data → Settings.")
    bottom[0].metric("Judgments", summary.judgments, help=f"By people, skips left out; imported datasets brought "
                                                          f"{summary.imported_labels} labels besides.")
    bottom[1].metric("Annotators", summary.annotators)
    bottom[2].metric("Prompts", summary.prompts)
    bottom[3].metric("Current model", summary.current_model or "base")


def current_version(version_id: str | None) -> None:
    """What the current policy version improved over its parent (from its stored evaluation points)."""
    found = loop.improvement(version_id)
    {True: st.success, False: st.info, None: st.caption}[found["better"]](found["sentence"])
    for sentence in found["warnings"]:
        st.warning(sentence)


def generate_form() -> None:
    with st.form("generate"):
        prompts = st.number_input("Prompts to generate pairs for", min_value=1, max_value=10_000, value=32)
        if st.form_submit_button("Generate pairs"):
            from training import generate  # lazy: the generator's module is only needed on click

            try:
                job_id = generate.start_generation(int(prompts))
            except RuntimeError as error:  # e.g. jobs.JobError: another heavy job is running
                st.error(str(error))
            else:
                st.success(f"Generation job #{job_id} started; pairs appear on the Label page as they are made.")


def main() -> None:
    st.set_page_config(page_title="prefloop", page_icon=":material/thumbs_up_down:", layout="wide")
    st.session_state["prefloop-routed"] = True  # pages check it (pages/widgets.require_router)
    load_builtin_prompts()
    if settings.autogenerate():
        generate_at_start(str(workspace.home()))
    if access.enabled() and not signed_in():
        st.navigation([st.Page(sign_in, title="Sign in", default=True)], position="hidden").run()
        return
    name = current_annotator()
    pages = [st.Page(home, title="Home", icon=":material/home:", default=True)]
    pages += [st.Page(ROOT / path, title=title, icon=icon) for path, title, icon in PAGE_FILES if (ROOT / path).exists()]
    page = st.navigation(pages)
    sidebar(name)
    if page.title == "Label" and not name:
        st.title("Label")
        pick_annotator()
        return
    page.run()


main()
