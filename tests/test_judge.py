"""The AI judge: position swap, storage apart from people's judgments, the agreement gate, AI
labels only on pairs nobody judged, an endpoint client against a local stub server, and a local
judge on a tiny model."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from labeling import agreement, queue, suggestions
from labeling.export import preference_rows
from tests.test_queue import judgments, seed_pairs
from training import judge as judges
from training import preferences
from training.judge import JudgeConfig, Verdict


def judged_snapshot():
    """Every stored judgment, as the queue tests read them."""
    return judgments()


class FakeJudge:
    """A deterministic judge: the shorter answer wins; `biased` always says the first shown."""

    def __init__(self, name="fake", biased=False):
        self.name, self.biased, self.calls = name, biased, 0

    def verdict(self, rubric, messages, first, second):
        self.calls += 1
        if self.biased:
            return Verdict("first", 0.9, "first is better")
        if len(first) == len(second):
            return Verdict("tie", 0.5, "alike")
        return Verdict("first" if len(first) < len(second) else "second", None, "shorter")


def pairs_with_short_answers(n: int) -> list[int]:
    """n pairs whose response a is the shorter one on even pairs, b on odd ones."""
    return seed_pairs([(f"Q{i}?", "Short." if i % 2 == 0 else "A much longer answer here.",
                        "A much longer answer here." if i % 2 == 0 else "Short.") for i in range(n)])


def test_a_verdict_that_flips_with_the_side_is_a_tie():
    outcome, p, reason = judges.both_ways(FakeJudge(biased=True), "r", [], "x", "yy")
    assert outcome == "tie" and reason == judges.FLIPPED and p == pytest.approx(0.5)
    assert judges.both_ways(FakeJudge(), "r", [], "x", "yy")[0] == "a"
    assert judges.both_ways(FakeJudge(), "r", [], "yy", "x")[0] == "b"


def test_verdicts_are_stored_as_suggestions_and_the_run_resumes(workspace):
    ids = pairs_with_short_answers(6)
    fake = FakeJudge()
    summary = judges.run(JudgeConfig(limit=4), judge=fake)
    assert summary["judged"] == 4 and fake.calls == 8  # each pair twice, sides swapped
    assert judges.run(JudgeConfig(), judge=fake)["judged"] == 2  # the rest only
    assert [s["outcome"] for s in suggestions.for_pair(ids[0])] == ["a"]
    assert [s["outcome"] for s in suggestions.for_pair(ids[1])] == ["b"]
    assert judged_snapshot() == []  # no judgment was written
    assert suggestions.judges() == [{"judge": "fake", "rubric": 1, "pairs": 6, "errors": 0}]


def test_a_new_rubric_version_is_judged_again_and_an_unchanged_one_is_not(workspace):
    pairs_with_short_answers(2)
    assert suggestions.save_rubric(suggestions.rubric()[1]) == 1
    judges.run(JudgeConfig(), judge=FakeJudge())
    assert suggestions.save_rubric("Prefer the shorter answer.") == 2
    assert judges.run(JudgeConfig(), judge=FakeJudge())["rubric"] == 2
    assert {(j["rubric"], j["pairs"]) for j in suggestions.judges()} == {(1, 2), (2, 2)}
    with pytest.raises(suggestions.SuggestionError, match="empty"):
        suggestions.save_rubric("  ")


def label(pair_ids, annotator, outcome_of):
    for pair_id in pair_ids:
        queue.submit_judgment(annotator, pair_id, outcome_of(pair_id), "a")


def test_the_gate_opens_only_when_the_judge_agrees_with_people(workspace):
    ids = pairs_with_short_answers(30)
    judges.run(JudgeConfig(), judge=FakeJudge())
    shorter = {i: "a" if k % 2 == 0 else "b" for k, i in enumerate(ids)}
    label(ids[:8], "ana", shorter.get)
    gate = agreement.gate("fake", 1)
    assert not gate["open"] and "at least 10" in gate["why"]
    label(ids[8:20], "ana", shorter.get)
    gate = agreement.gate("fake", 1)
    assert gate["open"] and gate["kappa"] == pytest.approx(1.0) and gate["threshold"] == 0.6
    low, high = agreement.judge_agreement("fake", 1)["kappa_ci"]
    assert low <= 1.0 <= high + 1e-9
    assert not agreement.gate("fake", 1, threshold=1.01)["open"]

    # people who disagree with the judge close it
    label(ids[:20], "bo", lambda i: "b" if shorter[i] == "a" else "a")
    label(ids[:20], "ana", lambda i: "b" if shorter[i] == "a" else "a")
    assert not agreement.gate("fake", 1)["open"]


def test_ai_labels_decide_only_pairs_nobody_judged_and_never_touch_a_judgment(workspace):
    ids = pairs_with_short_answers(30)
    judges.run(JudgeConfig(), judge=FakeJudge())
    shorter = {i: "a" if k % 2 == 0 else "b" for k, i in enumerate(ids)}
    label(ids[:12], "ana", shorter.get)
    queue.submit_judgment("ana", ids[12], "skip", "a")  # a skip is a person's look: no AI label there
    before = judged_snapshot()
    assert preferences.count_pairs() == 12  # AI labels are off
    suggestions.set_ai_labels("fake", 1)
    rows = preferences.training_rows().rows
    assert len(rows) == 12 + 17
    assert {r["pair_id"] for r in rows if r["origin"] == "ai"} == set(ids[13:])
    assert all(r["chosen"][0]["content"] == "Short." for r in rows)
    data = preferences.preference_data("DPO", None, 0.2, 0)
    assert data.origin["pairs_from_people"] == 12 and data.origin["pairs_from_ai"] == 17
    assert len(data.origin["ai_label_ids"]) == 17 and data.origin["ai_judge"] == "fake"
    assert judged_snapshot() == before
    assert len(preference_rows().rows) == 12  # an export without `ai` is people's only

    with pytest.raises(suggestions.SuggestionError, match="outside"):
        suggestions.set_ai_labels("fake", 1, threshold=1.01)
    suggestions.set_ai_labels("fake", 2)  # a rubric the judge never read: the gate stays shut, people only
    assert agreement.ai_labels_in_use() is None and preferences.count_pairs() == 12
    suggestions.set_ai_labels(None)
    assert suggestions.ai_label_setting() is None


def test_kappa_matches_hand_computation():
    # 4 items: agree a, agree b, a/b, b/b -> p_o = 3/4; marginals x (a .5, b .5), y (a .25, b .75)
    # p_e = .5*.25 + .5*.75 = .5 -> κ = (.75 - .5) / .5 = .5
    assert agreement.cohen_kappa(["a", "b", "a", "b"], ["a", "b", "b", "b"]) == pytest.approx(0.5)
    assert agreement.measure([])["pairs"] == 0


# ---------------------------------------------------------------- an endpoint


class StubServer:
    """An OpenAI-compatible /chat/completions on 127.0.0.1 answering from a script of replies:
    (status, body) or "sleep" (answers after the client gave up)."""

    def __init__(self, replies):
        self.replies, self.requests = list(replies), []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                stub.requests.append((self.headers.get("Authorization"), json.loads(self.rfile.read(int(self.headers["Content-Length"])))))
                reply = stub.replies.pop(0) if stub.replies else (200, {"winner": "A", "reason": "default"})
                if reply == "sleep":
                    threading.Event().wait(0.6)
                    reply = (200, {"winner": "A", "reason": "late"})
                status, body = reply
                content = body if isinstance(body, str) else json.dumps(body)
                data = json.dumps({"choices": [{"message": {"content": content}}]}).encode() if status == 200 else b"{}"
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/v1"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stub():
    servers = []

    def start(replies):
        servers.append(StubServer(replies))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def endpoint(url, **fields):
    return judges.make_judge(JudgeConfig(url=url, endpoint_model="judge-x", backoff=0, timeout=0.3, **fields))


def test_endpoint_verdicts_retries_and_recorded_errors(workspace, stub, monkeypatch):
    monkeypatch.setenv(judges.KEY_ENV, "sk-test")
    ids = pairs_with_short_answers(3)
    server = stub([
        (200, 'Sure: {"winner": "A", "reason": "a is shorter"}'), (200, {"winner": "B", "reason": "b"}),  # pair 1: a
        (500, None), (200, {"winner": "B", "reason": "b"}), "sleep", (200, 'not json'),  # pair 2 first ask: retried
        (200, {"winner": "A", "reason": "a"}),  # pair 2 second ask -> b shown first won: b
        (200, {"winner": "maybe"}), (200, {"winner": "maybe"}), (200, {"winner": "maybe"}), (200, {"winner": "maybe"}),
    ])
    summary = judges.run(JudgeConfig(), judge=endpoint(server.url))
    assert [s["outcome"] for s in suggestions.for_pair(ids[0])] == ["a"]
    assert suggestions.for_pair(ids[0])[0]["reason"] == "a is shorter"
    assert [s["outcome"] for s in suggestions.for_pair(ids[1])] == ["b"]
    assert suggestions.for_pair(ids[2]) == [] and summary["error"] == 1  # four nonsense answers: recorded
    assert suggestions.judges()[0]["errors"] == 1
    assert server.requests[0][0] == "Bearer sk-test" and server.requests[0][1]["model"] == "judge-x"
    assert "sk-test" not in json.dumps(suggestions.judges())
    # the next run tries the failed pair again, and only it
    server.replies = [(200, {"winner": "B", "reason": "b"}), (200, {"winner": "A", "reason": "a"})]
    assert judges.run(JudgeConfig(), judge=endpoint(server.url))["judged"] == 1
    assert [s["outcome"] for s in suggestions.for_pair(ids[2])] == ["b"]


def test_a_wrong_key_is_not_retried_and_a_bad_url_is_one_sentence(workspace, stub):
    pairs_with_short_answers(1)
    server = stub([(401, None)] * 4)
    assert judges.run(JudgeConfig(), judge=endpoint(server.url))["error"] == 1
    assert len(server.requests) == 1
    with pytest.raises(judges.JudgeError, match="not an http"):
        endpoint("ftp://example")
    assert judges.main(["--url", "localhost:1"]) == 1


# ---------------------------------------------------------------- a local model


def test_a_local_judge_on_a_tiny_model(workspace, tmp_path, monkeypatch):
    from tests.preference_fixtures import use_tiny_policy

    use_tiny_policy(tmp_path, monkeypatch)
    ids = pairs_with_short_answers(2)
    assert judges.main(["--limit", "2"]) == 0
    for pair_id in ids:
        (s,) = suggestions.for_pair(pair_id)
        assert s["name"].startswith("local:tiny-policy-") and 0.0 <= s["probability"] <= 1.0 and s["outcome"] in ("a", "b", "tie")
    assert judged_snapshot() == []


def test_the_bootstrap_interval_covers_the_estimate_and_people_cannot_lower_the_bar_below_the_floor(workspace):
    rng = __import__("random").Random(0)
    items = [(i // 2, rng.choice("ab"), rng.choice("ab")) for i in range(200)]
    m = agreement.measure(items)
    assert m["kappa_ci"][0] <= m["kappa"] <= m["kappa_ci"][1] and m["accuracy_ci"][0] <= m["accuracy"] <= m["accuracy_ci"][1]
    assert agreement.cohen_kappa([x for _, x, _ in items], [y for _, _, y in items]) == pytest.approx(m["kappa"])
    # people who agree with each other at chance (κ ≈ 0) on 12 pairs set the bar to the floor, not to 0
    ids = pairs_with_short_answers(12)
    for k, pair_id in enumerate(ids):
        queue.submit_judgment("ana", pair_id, "a", "a")
        queue.submit_judgment("bo", pair_id, "a" if k % 2 else "b", "a")
    assert agreement.gate("nobody", 1)["threshold"] == agreement.FLOOR


def test_urls_that_would_leak_the_key_are_refused_and_answers_parse_around_extra_text():
    for bad, why in (("http://example.com/v1", "plain http"), ("https://u:p@example.com/v1", "user, password"),
                     ("https://example.com/v1?key=x", "query"), ("localhost:8000", "not an http")):
        with pytest.raises(judges.JudgeError, match=why):
            judges.check_url(bad)
    assert judges.check_url("http://127.0.0.1:8000/v1") and judges.check_url("https://api.example.com/v1")
    v = judges.parse_answer('Thinking {not json} then {"winner": "B", "reason": "r"} and {"x": 1}')
    assert v.winner == "second" and v.reason == "r"
    with pytest.raises(ValueError):
        judges.parse_answer("{}")


def test_a_reward_card_keeps_the_ai_labels_its_round_held_out_after_ai_labels_are_turned_off(workspace):
    from types import SimpleNamespace

    from training import reward_eval

    ids = pairs_with_short_answers(30)
    judges.run(JudgeConfig(), judge=FakeJudge())
    shorter = {i: "a" if k % 2 == 0 else "b" for k, i in enumerate(ids)}
    label(ids[:12], "ana", shorter.get)
    suggestions.set_ai_labels("fake", 1)
    data = preferences.preference_data("reward", None, 0.3, 0)
    held_out = sorted(r["pair_id"] for r in data.heldout)
    assert {r["origin"] for r in data.heldout} == {"human", "ai"}
    # the round's record, as reward.run_round stores it in the version's metrics
    row = SimpleNamespace(metrics={"heldout_pair_ids": held_out, **data.origin})
    assert sorted(r["pair_id"] for r in reward_eval.heldout_rows(row)) == held_out
    suggestions.set_ai_labels(None)  # an admin turns AI labels off: later rounds use people's only
    assert preferences.count_pairs() == 12
    assert sorted(r["pair_id"] for r in reward_eval.heldout_rows(row)) == held_out
