"""Compare: two versions' answers to the same held-out prompts side by side, with reward scores and
base-model log-probs; a blind arena voted with the Label page's buttons; win rates and ratings."""
from __future__ import annotations

import time

import pandas as pd
import streamlit as st

from labeling import arena, queue
from pages.widgets import (VOTE_KEYS_CAPTION, config_form, job_panel, plain_text_toggle, render_conversation, render_sides,
                           require_router, start, vote_buttons)
from training import versions
from training.arena_answers import ArenaConfig


def pick_versions() -> tuple[str, str] | None:
    rows = versions.list_versions("policy")
    ids = [v.id for v in rows]
    if len(ids) < 2:
        st.info("Compare needs two policy versions: run a DPO or PPO round on the Train page first.")
        return None
    current = versions.current_policy_id() or ids[0]
    base = next((v.id for v in rows if v.method == "base"), ids[-1])
    other = current if current != base else next(i for i in reversed(ids) if i != base)  # the newest besides
    labels = {v.id: versions.describe(v) for v in rows}
    left, right = st.columns(2)
    a = left.selectbox("Version A", ids, index=ids.index(base), format_func=labels.get, key="compare-a")
    b = right.selectbox("Version B", ids, index=ids.index(other), format_func=labels.get, key="compare-b")
    return a, b


def side_by_side(a: str, b: str) -> None:
    rows = arena.comparisons(a, b)
    if not rows:
        st.caption(f"No answers of {a} and {b} to the same prompts yet: press Generate answers below.")
        return
    st.dataframe(pd.DataFrame(rows)[["prompt_id", "reward_a", "reward_b", "base_logprob_a", "base_logprob_b"]]
                 .describe().loc[["count", "mean", "std"]], width="stretch")
    for row in rows:
        with st.expander(f"Prompt {row['prompt_id']}: {row['messages'][-1]['content'][:80]}"):
            render_conversation(row["messages"])
            render_sides(row["text_a"], row["text_b"], titles=(a, b))
            left, right = st.columns(2)
            for column, side in ((left, "a"), (right, "b")):
                reward, logp = row[f"reward_{side}"], row[f"base_logprob_{side}"]
                scored = f"reward {reward:.3f}" if reward is not None else "no reward score"
                # an answer stored earlier by label generation (the same text) carries no arena scores
                scored_logp = (f"log-prob under base {logp:.1f} over {row[f'tokens_{side}']} tokens"
                               if logp is not None else "not scored under the base model")
                column.caption(f"{scored} · {scored_logp}")


def vote(name: str, view: queue.PairView, choice: str) -> None:
    seconds = time.monotonic() - st.session_state.get("arena-shown-at", time.monotonic())
    queue.submit_judgment(name, view.pair_id, queue.stored_outcome(choice, view.left), view.left, seconds=seconds)
    st.session_state["arena-shown-at"] = time.monotonic()


def blind_arena() -> None:
    name = st.session_state.get("annotator")
    if not name:
        st.warning("Pick your name on the Home page to vote.")
        return
    view = queue.next_pair(name, kind="arena")
    if view is None:
        st.info("No arena pairs wait for your vote. Generate answers of two versions above.")
        return
    st.session_state.setdefault("arena-shown-at", time.monotonic())
    render_conversation(view.messages)
    render_sides(view.left_text, view.right_text)  # names hidden; sides shuffled per annotator
    vote_buttons(f"arena-{view.pair_id}", vote, (name, view))
    st.caption(VOTE_KEYS_CAPTION)


def ratings() -> None:
    votes = arena.arena_votes()
    if not votes:
        st.caption("No arena votes yet.")
        return
    rated = arena.bootstrap_ratings(votes)
    st.markdown("**Bradley-Terry ratings** (Elo scale, 95 % bootstrap interval)")
    st.dataframe(pd.DataFrame([{"version": v, "rating": r, "low": lo, "high": hi} for v, (r, lo, hi) in rated.items()])
                 .sort_values("rating", ascending=False), hide_index=True)
    st.markdown("**Win rates** (decisive votes, 95 % Wilson interval)")
    st.dataframe(pd.DataFrame(arena.win_rates(votes)), hide_index=True)


def main() -> None:
    st.title("Compare")
    plain_text_toggle()
    picked = pick_versions()
    if picked:
        a, b = picked
        side_by_side(a, b)
        st.subheader("Generate answers")
        config = config_form(ArenaConfig, "arena-form", "Generate answers", hidden=("version_a", "version_b"))
        if config is not None:
            start("arena", {**config.__dict__, "version_a": a, "version_b": b})
        if job_id := st.session_state.get("job-arena"):
            job_panel(job_id)
    st.subheader("Blind arena")
    st.caption("Answers of two versions, names hidden and sides shuffled. Every vote is stored as a preference "
               "pair; the arena answers held-out prompts first, so most votes measure the next rounds rather than "
               "train them.")
    blind_arena()
    ratings()


require_router()
main()
