"""The generator on a tiny model: batched sampling, pairs stored with their settings, the CLI's
last JSON line, and the background job that keeps pairs waiting."""
from __future__ import annotations

import datetime as dt

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from sqlalchemy import func, select

from labeling import db, store
from labeling.models import Job, Pair, Response, utcnow
from training import engine, generate, jobs
from training import model as models

ROOT = Path(__file__).resolve().parent.parent
PROMPTS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "Hi"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Write a short poem about the sea."}],
    [{"role": "user", "content": "How do I sort a list in Python? Explain photosynthesis simply, too."}],
    [{"role": "user", "content": "Give me three tips for sleeping better."}],
]


def test_module_does_not_import_torch():
    """The app imports this module for its buttons; torch must load only in the worker."""
    code = "import sys, training.generate; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0


def test_new_token_counts_stop_at_the_first_eos():
    new = torch.tensor([[5, 2, 0, 0], [5, 6, 7, 8], [2, 0, 0, 0], [4, 9, 3, 2]])
    assert generate.new_token_counts(new, [2]) == [2, 4, 1, 4]
    assert generate.new_token_counts(new, [2, 9]) == [2, 4, 1, 2]


def test_generate_pairs_batched_sides_differ(tiny):
    model, tokenizer = models.load_policy()
    batches = []
    pairs = generate.generate_pairs(model, tokenizer, PROMPTS, max_new_tokens=10, batch_size=4, seed=5,
                                    on_batch=lambda done, total: batches.append((done, total)))
    assert batches == [(1, 3), (2, 3), (3, 3)]  # 5 prompts, 2 per batch of 4 rows
    assert [s["prompt_index"] for _, _, s in pairs] == list(range(len(PROMPTS)))
    for a, b, settings in pairs:
        assert a != b
        assert settings["temperature"] == 0.8 and settings["top_p"] == 0.95 and settings["max_new_tokens"] == 10
        assert 1 <= settings["tokens_a"] <= 10 and 1 <= settings["tokens_b"] <= 10
        assert settings["eos_a"] or settings["tokens_a"] == 10  # stopped at EOS or at the limit
        assert settings["eos_b"] or settings["tokens_b"] == 10
    # the batch seed reproduces the samples; another seed gives others
    again = generate.generate_pairs(model, tokenizer, PROMPTS, max_new_tokens=10, batch_size=4, seed=5)
    assert [p[:2] for p in again] == [p[:2] for p in pairs]
    other = generate.generate_pairs(model, tokenizer, PROMPTS, max_new_tokens=10, batch_size=4, seed=6)
    assert [p[:2] for p in other] != [p[:2] for p in pairs]


def test_batched_rows_match_one_at_a_time_greedy(tiny):
    """Left padding changes nothing: near-greedy rows in a padded batch equal unpadded runs."""
    model, tokenizer = models.load_policy()
    texts = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in PROMPTS]
    batched = generate.sample_rows(model, tokenizer, texts, max_new_tokens=8, temperature=1e-6, top_p=1.0, seed=0)
    assert len(batched) == len(texts)
    single = [generate.sample_rows(model, tokenizer, [t], max_new_tokens=8, temperature=1e-6, top_p=1.0, seed=0)[0]
              for t in texts]
    assert batched == single


def test_identical_pairs_are_dropped(tiny):
    model, tokenizer = models.load_policy()
    # at a vanishing temperature both sides are the greedy answer: identical, re-sampled, dropped
    assert generate.generate_pairs(model, tokenizer, PROMPTS, max_new_tokens=6, temperature=1e-6, batch_size=4) == []


def _last_json(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_command_stores_pairs_with_settings(tiny, capsys):
    store.add_prompts([p for p in PROMPTS], "test")
    assert generate.main(["--prompts", "4", "--max-new-tokens", "8", "--batch-size", "4", "--seed", "3"]) == 0
    result = _last_json(capsys)
    assert result["pairs"] == 4 and result["tokens_per_s"] > 0
    with db.session() as s:
        pairs = list(s.scalars(select(Pair)))
        assert len(pairs) == 4 and all(p.kind == "label" and p.source == "base" for p in pairs)
        for p in pairs:
            assert p.response_a.text != p.response_b.text and p.prompt.split == "train"
            assert p.response_a.model_version == "base"
            gen_a, gen_b = p.response_a.generation, p.response_b.generation
            assert (gen_a["side"], gen_b["side"]) == ("a", "b") and gen_a["seed"] == gen_b["seed"]
            assert gen_a["temperature"] == 0.8 and 1 <= gen_a["new_tokens"] <= 8
        first_prompts = {p.prompt_id for p in pairs}
    # the next run answers prompts that have no pairs yet
    assert generate.main(["--prompts", "4", "--max-new-tokens", "8", "--seed", "3"]) == 0
    assert _last_json(capsys)["pairs"] == 4
    with db.session() as s:
        second = set(s.scalars(select(Pair.prompt_id).where(Pair.prompt_id.not_in(first_prompts))))
        assert len(second) == 4
        assert s.scalar(select(func.count(Response.id))) == 16


def test_command_with_wrong_model_or_flag_says_so(workspace, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PREFLOOP_MODEL", str(tmp_path / "missing"))
    assert generate.main(["--prompts", "2"]) == 1  # the user's to fix, as for every round
    assert "PREFLOOP_MODEL=" in capsys.readouterr().err
    assert generate.main(["--prompts", "many"]) == 2
    assert "field 'prompts' must be int" in capsys.readouterr().err
    with db.session() as s:
        assert s.scalar(select(func.count(Pair.id))) == 0


def test_ensure_pairs_waiting_runs_a_real_job(tiny):
    with db.session() as s:  # a heavy job under way (this very process): nothing is started
        busy = Job(kind="dpo", status="running", pid=os.getpid(), heartbeat_at=utcnow())
        s.add(busy)
    assert generate.ensure_pairs_waiting(min_waiting=5) is None
    with db.session() as s:
        s.get(Job, busy.id).status = "done"

    job_id = generate.ensure_pairs_waiting(min_waiting=5)
    assert job_id is not None
    job = jobs.wait(job_id, timeout=300)
    assert job.status == "done", open(job.log_path).read()[-2000:]
    assert job.config["prompts"] == 32 and job.result["pairs"] >= 5
    last = open(job.log_path).read().strip().splitlines()[-1]
    assert json.loads(last) == job.result  # the printed summary is the job's result, as for every round
    with db.session() as s:
        assert s.scalar(select(func.count(Pair.id))) == job.result["pairs"]
    assert generate.ensure_pairs_waiting(min_waiting=5) is None  # enough pairs waiting now


def test_failed_generation_is_not_restarted_at_once(tiny):
    with db.session() as s:
        s.add(Job(kind="generate", status="failed", finished_at=utcnow(), error="boom"))
    assert generate.ensure_pairs_waiting() is None


def test_each_failure_in_a_row_doubles_the_wait_before_the_next_try(workspace):
    """A model that stays broken under an open Label page: 5, 10, 20 ... minutes, at most 2 hours."""
    def add(status, minutes_ago):
        with db.session() as s:
            s.add(Job(kind="generate", status=status, finished_at=utcnow() - dt.timedelta(minutes=minutes_ago),
                      error="boom" if status == "failed" else None))

    assert generate.retry_wait() == dt.timedelta(minutes=5)  # no job yet
    add("done", 60)
    waits = []
    for _ in range(7):
        add("failed", 7)
        waits.append(generate.retry_wait().total_seconds() / 60)
    assert waits == [5, 10, 20, 40, 80, 120, 120]
    assert generate.recent_failure() == "boom"  # 7 minutes after the 7th failure in a row: still waiting
    add("done", 1)
    add("failed", 7)
    assert generate.retry_wait() == dt.timedelta(minutes=5) and generate.recent_failure() is None  # a success resets it


def test_first_chunk_is_small_so_the_first_pairs_arrive_early(tiny):
    store.add_prompts([f"Question number {i}?" for i in range(12)], "test")
    steps = []

    class Recorder(jobs.Reporter):
        def step(self, step, metrics=None):
            steps.append((step, metrics["pairs"]))

    result = generate.run(generate.GenerateConfig(prompts=12, max_new_tokens=4, batch_size=20, seed=1), Recorder(None))
    # 2 prompts first, then 4, then the other 6 (an identical pair may rarely be dropped)
    assert len(steps) == 3 and 1 <= steps[0][1] <= generate.FIRST_CHUNK_PROMPTS == 2
    assert result["pairs"] >= 10 and result["prompts"] == 12


def test_chunks_double_up_to_a_batch():
    assert [len(c) for c in generate.ramp(list(range(40)), largest=16)] == [2, 4, 8, 16, 10]
    assert [len(c) for c in generate.ramp(list(range(5)), largest=1)] == [1, 1, 1, 1, 1]
    assert sum(generate.ramp(list(range(7)), largest=4), []) == list(range(7))


def test_a_job_stops_once_enough_pairs_wait(tiny):
    store.add_prompts([f"Question number {i}?" for i in range(12)], "test")
    config = generate.GenerateConfig(prompts=12, max_new_tokens=4, batch_size=20, seed=1, until_waiting=3)
    result = generate.run(config, jobs.Reporter(None))
    assert 3 <= result["pairs"] <= 6  # 2 pairs, then 4 more: enough; the other 6 prompts wait for later


def test_the_buffer_grows_with_the_labeling_rate(workspace, monkeypatch):
    from labeling import queue
    from tests.test_queue import seed_pairs

    assert generate.buffer_target(0) == generate.LOW_WATER == 20
    assert generate.buffer_target(10) == 30  # one person at 6 s a pair: three minutes ahead
    ids = seed_pairs(60)
    for pair_id in ids[:50]:  # 50 judgments just now: 10 a minute over the last five minutes
        queue.submit_judgment("ana", pair_id, "skip" if pair_id % 7 == 0 else "a", "a")
    assert queue.judgments_per_minute() == 10
    started = []
    monkeypatch.setattr(generate, "start_generation",
                        lambda prompts, until_waiting: started.append((prompts, until_waiting)) or 1)
    assert generate.ensure_pairs_waiting(waiting=25) == 1  # 25 < 30: fill up to 60 for her
    everyone = queue.pairs_waiting()  # the 10 nobody judged and the ones she skipped
    assert everyone >= 10 and started == [(35, everyone + 35)]  # the job stops once 35 more wait
    assert generate.ensure_pairs_waiting(waiting=30) is None


LONG_JOB = {"prompts": 160, "max_new_tokens": 400, "batch_size": 2, "seed": 1}  # minutes on the tiny model


def wait_until(check, timeout: float = 60.0):
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(0.2)
    raise AssertionError(f"not within {timeout} s")


def test_the_generator_stops_when_the_server_that_started_it_stops(tiny):
    """No orphans: a stand-in server starts generation the way the app does, then dies (kill -9)."""
    import signal

    store.add_prompts([f"Question number {i}?" for i in range(160)], "test")
    server = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from training import jobs; "
         f"print(jobs.start_job('generate', {LONG_JOB!r}, stop_with_server=True), flush=True); time.sleep(600)"],
        cwd=ROOT, stdout=subprocess.PIPE, text=True)
    job_id = int(server.stdout.readline())
    job = wait_until(lambda: (j := jobs.get_job(job_id)).status == "running" and j.step and j)
    assert jobs.pid_alive(job.pid)
    server.send_signal(signal.SIGKILL)
    server.wait()
    wait_until(lambda: not jobs.pid_alive(job.pid), timeout=30)
    job = jobs.get_job(job_id)
    assert job.status == "cancelled" and job.error == jobs.SERVER_STOPPED


def test_a_round_started_meanwhile_stops_the_generator_first(tiny):
    store.add_prompts([f"Question number {i}?" for i in range(160)], "test")
    generating = jobs.start_job("generate", LONG_JOB)
    job = wait_until(lambda: (j := jobs.get_job(generating)).status == "running" and j)
    round_id = jobs.start_job("evaluate", {"note": "a round"})  # any heavy kind but generation
    assert not jobs.pid_alive(job.pid)  # gone before the round's worker was spawned
    assert jobs.get_job(generating).status == "cancelled"
    jobs.wait(round_id, timeout=60)  # (this config is refused: the job fails at once)


def test_a_generator_started_again_meanwhile_is_stopped_too(tiny, monkeypatch):
    """A Label page may start generating while a round waits for the last generator to exit."""
    store.add_prompts([f"Question number {i}?" for i in range(160)], "test")
    stop = jobs._stop_background_jobs
    started = []

    def stop_while_a_page_starts_another(timeout=30.0):
        stop(timeout)
        if not started:
            started.append(jobs.start_job("generate", LONG_JOB))

    monkeypatch.setattr(jobs, "_stop_background_jobs", stop_while_a_page_starts_another)
    round_id = jobs.start_job("evaluate", {"note": "a round"})
    assert jobs.get_job(started[0]).status == "cancelled"
    assert not jobs.pid_alive(jobs.get_job(started[0]).pid)
    jobs.wait(round_id, timeout=60)


def test_light_jobs_leave_the_generator_alone(tiny):
    store.add_prompts([f"Question number {i}?" for i in range(160)], "test")
    generating = jobs.start_job("generate", LONG_JOB)
    wait_until(lambda: jobs.get_job(generating).status == "running")
    jobs.wait(jobs.start_job("worker", {"note": "light"}), timeout=60)
    assert jobs.get_job(generating).status == "running"
    jobs.cancel(generating)


class LengthySampler(engine.Sampler):
    """A stand-in for the CTranslate2 sampler: side a answers 10 words; side b 40 words, until the
    seed of the second length retry, which makes it 12 words."""

    def __init__(self):
        self.seeds = []

    def __call__(self, texts, *, max_new_tokens, temperature, top_p, seed):
        self.seeds.append(seed)
        short_b = seed >= 2 * generate.LENGTH_SEED_OFFSET
        rows = []
        for k, _ in enumerate(texts):
            n = 10 if k % 2 == 0 else (12 if short_b else 40)
            rows.append((" ".join(f"w{seed}-{k}-{j}" for j in range(n)), n, True))
        return rows


def test_length_matching_resamples_far_pairs_and_keeps_the_closest():
    sampler = LengthySampler()
    prompts = [[{"role": "user", "content": f"Question {i}?"}] for i in range(3)]
    tokenizer = type("T", (), {"apply_chat_template": lambda self, p, **kw: p[0]["content"],
                               "__call__": lambda self, texts, **kw: {"input_ids": [[0] * len(t) for t in texts]}})()
    as_sampled = generate.generate_pairs(sampler, tokenizer, prompts, batch_size=8, seed=5)
    assert [generate.length_ratio_of(s) for _, _, s in as_sampled] == [4.0] * 3 and len(sampler.seeds) == 1
    matched = generate.generate_pairs(sampler, tokenizer, prompts, batch_size=8, seed=5, length_ratio=1.5)
    assert [generate.length_ratio_of(s) for _, _, s in matched] == [1.2] * 3  # 12 words against 10
    assert {(s["length_tries"], s["seed"], s["length_ratio"]) for _, _, s in matched} == {
        (2, 5 + 2 * generate.LENGTH_SEED_OFFSET, 1.5)}  # the seed that made the kept pair, for replay
    assert sampler.seeds[1:] == [5, 5 + generate.LENGTH_SEED_OFFSET, 5 + 2 * generate.LENGTH_SEED_OFFSET]
    a, b = generate.side_settings(matched[0][2])
    assert (a["length_tries"], b["length_ratio"]) == (2, 1.5)
    loose = generate.generate_pairs(sampler, tokenizer, prompts, batch_size=8, seed=5, length_ratio=5.0)
    assert all(s["length_tries"] == 0 for _, _, s in loose)  # within the ratio: taken as sampled


def test_the_apps_generator_matches_lengths_as_the_workspace_says(workspace, monkeypatch):
    from labeling import settings

    started = []
    monkeypatch.setattr(jobs, "start_job", lambda kind, config, **kw: started.append(config) or 7)
    generate.start_generation(prompts=4)
    settings.set_pair_length_ratio(1.5)
    generate.start_generation(prompts=4)
    assert [c["length_ratio"] for c in started] == [0.0, 1.5]
    with pytest.raises(settings.SettingError, match="0 \\(off\\) or above 1"):
        settings.set_pair_length_ratio(0.9)


def test_a_job_cancelled_while_queued_stops_before_loading_a_model(workspace, monkeypatch):
    from labeling import runs

    job_id = runs.queue_job("generate", {}, unless_active=())
    runs.cancel_job(job_id)
    monkeypatch.setattr(engine, "load_generator", lambda *a, **k: pytest.fail("loaded a model for a cancelled job"))
    with pytest.raises(jobs.Cancelled):
        generate.run(generate.GenerateConfig(prompts=2), jobs.Reporter(job_id))
    assert runs.get_job(job_id).status == "cancelled"


def test_a_length_ratio_of_one_or_less_is_refused_in_one_sentence():
    from training.config_fields import settings_problem

    assert "length_ratio must be 0 (off) or above 1" in settings_problem(generate.GenerateConfig(length_ratio=0.8))
    assert "at most 10, got 12" in settings_problem(generate.GenerateConfig(length_ratio=12))
    assert settings_problem(generate.GenerateConfig(length_ratio=1.3)) is None
