"""The DPO round on a tiny model: parameters move, loss is finite, a version with lineage is written
and becomes current, a real background job runs end to end; SmolLM2 on real pairs when present."""
import json
import math

import pytest

from tests.preference_fixtures import import_pairs, on_the_cpu_in_fp32, snapshot_trainable
from training import dpo, jobs, preferences, registry, versions
from training.dpo_config import DPORoundConfig


def _exported_judgment_ids():
    from labeling.export import preference_rows

    return sorted(preference_rows().judgment_ids)


def test_dpo_round_trains_every_lora_parameter_and_writes_a_current_version(tiny, tmp_path, monkeypatch):
    import torch

    import_pairs(tmp_path, 12)
    before = {}
    snapshot_trainable(monkeypatch, before)
    config = DPORoundConfig(learning_rate=1e-2, batch_size=2, seed=0)
    summary = dpo.run_round(config, jobs.Reporter(None), max_steps=3)

    model = before.pop("__model__")
    after = dict(model.named_parameters())
    assert before and all("lora_" in name for name in before)
    unchanged = [n for n, p in before.items() if torch.equal(p, after[n].detach())]
    assert unchanged == []
    assert math.isfinite(summary["train_loss"]) and summary["steps"] == 3
    assert 0.0 <= summary["heldout_accuracy"] <= 1.0 and summary["heldout_pairs"] >= 1

    row = versions.get_version(summary["version"])
    assert (row.kind, row.method, row.parent_id) == ("policy", "dpo", "v1-base")
    assert row.judgment_ids == _exported_judgment_ids() and len(row.judgment_ids) == 12
    assert row.config["beta"] == 0.1 and row.metrics["steps"] == 3
    assert versions.current_policy_id() == summary["version"]
    from pathlib import Path

    assert (Path(row.path) / "adapter_model.safetensors").is_file()
    assert (Path(row.path) / "tokenizer_config.json").is_file()


def test_max_pairs_below_the_minimum_says_so_not_that_pairs_are_missing(tiny, tmp_path, capsys):
    import_pairs(tmp_path, 12)
    assert dpo.main(["--max-pairs", "4"]) == 1
    assert ("max_pairs = 4 is below the DPO round's minimum of 8 labeled pairs (you have 12); raise it"
            in capsys.readouterr().err)
    assert versions.list_versions() == []


def test_the_plan_times_a_round_by_the_last_one_trained_on_the_same_device_and_precision(workspace, tmp_path, monkeypatch):
    def dpo_version(pace: float, dtype: str) -> str:
        monkeypatch.setenv("PREFLOOP_DTYPE", dtype)
        return versions.create_version("policy", "dpo", None, {}, [], {"pairs_per_second": pace},
                                       lambda folder: (folder / "adapter.txt").write_text("a"))

    on_the_cpu_in_fp32(monkeypatch)
    import_pairs(tmp_path, 40)
    assert dpo.plan_sentence().endswith("; the time is known after a first round.")
    plan = DPORoundConfig().plan(len(preferences.planned_split(DPORoundConfig())[2]))
    minutes = lambda pace: max(1, round(plan["pairs"] * plan["epochs"] / pace / 60))  # noqa: E731

    first = dpo_version(0.1, "bf16")  # the only pace there is: used, and said to be another precision's
    assert dpo.plan_sentence(here="cpu fp32").endswith(f", about {minutes(0.1)} minutes at the pace of {first}, "
                                                       "trained on cpu bf16; this round trains on cpu fp32.")
    second = dpo_version(0.05, "fp32")
    third = dpo_version(0.2, "bf16")  # newer, but another precision than this round's
    assert dpo.plan_sentence(here="cpu fp32").endswith(f", about {minutes(0.05)} minutes at the pace of {second}.")
    # until the Train page's child process says what this machine trains on: the last round's pace, as it was
    assert dpo.plan_sentence().endswith(f", about {minutes(0.2)} minutes at the pace of {third}.")
    assert versions.trained_on() == "cpu bf16"  # what dpo_version left set, as a version records it


def test_not_enough_pairs_is_one_sentence_and_writes_nothing(tiny, tmp_path, capsys):
    import_pairs(tmp_path, 3)
    sentence = "DPO needs at least 8 labeled pairs; you have 3. Label more pairs or import labels."
    assert registry.get("dpo").problem() == sentence  # what the Train page shows
    assert dpo.main(["--max-steps", "1"]) == 1
    assert capsys.readouterr().err.strip() == sentence  # and the CLI, from the same check
    assert versions.list_versions() == []


def test_split_by_conversation_keeps_prompts_and_trees_on_one_side():
    def row(i: int, p: int) -> dict:
        root = {"role": "user", "content": f"question {p // 10}"}  # prompts 10 and 11: one tree, two depths
        turns = [root] if p % 10 == 0 else [root, {"role": "assistant", "content": "a"}, {"role": "user", "content": "b"}]
        return {"prompt_id": p, "pair_id": i, "split": "train", "prompt": turns}

    rows = [row(i, p) for i, p in enumerate([10, 10, 11, 20, 30, 30, 31, 40, 50, 60, 70, 80, 81])]
    train, heldout, fallback = preferences.split_by_conversation(rows, 0.2, seed=0)
    assert fallback and len({preferences.conversation(r) for r in heldout}) == 2  # 20 % of 8 trees, rounded up
    assert not {r["prompt_id"] for r in train} & {r["prompt_id"] for r in heldout}
    assert not {r["prompt_id"] // 10 for r in train} & {r["prompt_id"] // 10 for r in heldout}
    assert len(train) + len(heldout) == len(rows)
    rows[0]["split"] = rows[1]["split"] = "heldout"  # the workspace's own split wins when both sides exist
    assert preferences.split_by_conversation(rows, 0.2)[1:] == ([rows[0], rows[1]], False)


def test_trim_prompt_drops_oldest_turns():
    messages = [{"role": "user", "content": "a" * 10}, {"role": "assistant", "content": "b" * 10},
                {"role": "user", "content": "c" * 5}]
    count = lambda ms: sum(len(m["content"]) for m in ms)  # noqa: E731
    assert preferences.trim_prompt(messages, count, 15) == messages[1:]
    assert preferences.trim_prompt(messages, count, 2) == messages[2:]  # the last turn always stays


def test_prompts_keep_at_most_half_of_max_length():
    # TRL cuts a pair at max_length from the end: a 256-token prompt in a 192-token pair would
    # leave both responses empty (a sweep at --max-length 192 did exactly this)
    assert dpo.prompt_budget(DPORoundConfig(max_length=192)) == 96
    assert dpo.prompt_budget(DPORoundConfig()) == 256  # the defaults: 512 and 256


def test_batches_hold_pairs_of_similar_length_in_a_seeded_random_order():
    rows = [{"prompt": [{"role": "user", "content": "q" * n}], "chosen": [{"role": "assistant", "content": "a" * n}],
             "rejected": [{"role": "assistant", "content": "b"}], "pair_id": n} for n in range(1, 13)]
    shuffled = rows[::-1]
    first = dpo.batched_by_length(shuffled, 4, seed=0)
    assert sorted(r["pair_id"] for r in first) == list(range(1, 13))
    batches = [[r["pair_id"] for r in first[i:i + 4]] for i in range(0, 12, 4)]
    assert sorted(batches) == [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12]]  # each padded to little
    assert first == dpo.batched_by_length(shuffled, 4, seed=0)
    orders = {tuple(b[0] for b in [[r["pair_id"] for r in dpo.batched_by_length(rows, 4, seed)[i:i + 4]]
                                   for i in range(0, 12, 4)]) for seed in range(20)}
    assert len(orders) > 1  # the batches come in random order, not shortest first


def test_dpo_background_job_end_to_end(tiny, tmp_path):
    import_pairs(tmp_path, 10)
    job_id = jobs.start_job("dpo", {"learning_rate": 1e-2, "batch_size": 2, "max_steps": 2})
    seen = {jobs.get_job(job_id).status}
    import time

    deadline = time.monotonic() + 300
    while jobs.get_job(job_id).status in jobs.ACTIVE and time.monotonic() < deadline:
        seen.add(jobs.get_job(job_id).status)
        time.sleep(0.2)
    job = jobs.get_job(job_id)
    log = open(job.log_path).read()
    assert job.status == "done", log[-2000:]
    assert {"queued", "running"} <= seen | {"queued"} and "running" in seen
    assert (job.step, job.total_steps) == (2, 2)
    metrics = jobs.job_metrics(job_id)
    assert [m["step"] for m in metrics] == [1, 2]
    assert all(math.isfinite(m["loss"]) and "accuracy" in m and "logp_chosen" in m for m in metrics)
    last_line = json.loads(log.strip().splitlines()[-1])
    assert last_line["version"] == job.result["version"] == versions.current_policy_id()


@pytest.mark.slow
def test_dpo_on_smollm2_with_real_pairs(workspace, shared_data, model_cache_home, monkeypatch, capsys):
    from labeling.store import import_file
    from training.model import convert_default_model

    monkeypatch.setenv("PREFLOOP_MODEL", str(convert_default_model(out=model_cache_home / "models" / "base")))
    import_file(shared_data / "hh-rlhf-harmless-base-test.jsonl.gz", fmt="hh")
    assert dpo.main(["--max-pairs", "16", "--max-steps", "3", "--batch-size", "2", "--max-length", "256",
                     "--max-prompt-length", "128"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["steps"] == 3 and math.isfinite(summary["train_loss"])
    row = versions.get_version(summary["version"])
    assert row.parent_id == versions.ensure_base_version() and len(row.judgment_ids) == 16


def test_cancelled_dpo_job_stops_and_writes_no_version(tiny, workspace, tmp_path):
    import time

    import_pairs(tmp_path, 12)
    job_id = jobs.start_job("dpo", {"batch_size": 1, "epochs": 50.0})  # hundreds of steps: it must be stopped
    deadline = time.monotonic() + 240
    while jobs.get_job(job_id).step < 1 and time.monotonic() < deadline:
        assert jobs.get_job(job_id).status in jobs.ACTIVE, open(jobs.get_job(job_id).log_path).read()[-2000:]
        time.sleep(0.2)
    jobs.cancel(job_id)
    job = jobs.wait(job_id, timeout=120)
    assert job.status == "cancelled" and job.step < job.total_steps
    assert [v.method for v in versions.list_versions()] in ([], ["base"])
    assert not [p for p in (workspace / "versions").iterdir() if p.name.startswith(".tmp")]


def test_bad_config_fails_the_job_with_one_sentence(workspace, tmp_path, capsys):
    from labeling import db
    from labeling.models import Job

    with db.session() as s:
        job = Job(kind="dpo", status="queued")
        s.add(job)
        s.flush()
        job_id = job.id
    path = tmp_path / "dpo.yaml"
    path.write_text("beta: lots\n")
    assert dpo.main(["--config", str(path), "--job-id", str(job_id)]) == 2
    message = f"{path}: field 'beta' must be float, got 'lots'."
    assert capsys.readouterr().err.strip() == message
    job = jobs.get_job(job_id)
    assert (job.status, job.error) == ("failed", message)


def test_a_second_round_holds_its_kl_to_the_base_not_to_its_parent(tiny, tmp_path, monkeypatch):
    """Round 2 starts from round 1's policy; its reference is the base model (by default), so the KL
    the round controls is the KL the Evaluate page measures. With reference=parent it is the parent."""
    import torch

    from training.model import load_policy

    import_pairs(tmp_path, 12)
    first = dpo.run_round(DPORoundConfig(learning_rate=5e-2, batch_size=4), jobs.Reporter(None), max_steps=2)
    seen = []
    real_train = dpo.train

    def spy(model, tokenizer, data, config, reporter, output_dir, max_steps=None, reference=None):
        seen.append(reference)
        return real_train(model, tokenizer, data, config, reporter, output_dir, max_steps, reference)

    monkeypatch.setattr(dpo, "train", spy)
    dpo.run_round(DPORoundConfig(learning_rate=5e-2, batch_size=4), jobs.Reporter(None), max_steps=1)
    base = dict(load_policy("v1-base")[0].named_parameters())
    parent = dict(load_policy(first["version"])[0].named_parameters())
    reference = dict(seen[0].named_parameters())
    assert all(torch.equal(reference[n], base[n]) for n in base)
    assert not all(torch.equal(parent[n], base[n]) for n in base)  # round 1 moved: the test can tell them apart

    versions.set_current(first["version"])
    dpo.run_round(DPORoundConfig(learning_rate=5e-2, batch_size=4, reference="parent"), jobs.Reporter(None), max_steps=1)
    assert seen[1] is None  # the new round's own network with its adapter off: the parent


def test_default_epochs_follow_the_number_of_pairs():
    config = DPORoundConfig()  # batch 4
    assert config.plan(128) == {"pairs": 128, "epochs": 3.0, "steps": 96}
    assert config.plan(40) == {"pairs": 40, "epochs": 4.0, "steps": 40}  # at most 4 passes
    assert config.plan(5000)["epochs"] == 1.0  # at least 1
    assert DPORoundConfig(epochs=2).plan(128) == {"pairs": 128, "epochs": 2, "steps": 64}  # a set value wins


def test_trl_still_has_the_log_prob_chunk_size_dpo_lowers(monkeypatch):
    """dpo.small_logprob_chunks sets a private TRL constant (no public option reaches it); when a TRL
    upgrade renames it, the memory saving would vanish silently: this fails instead."""
    import trl.trainer.utils as trl_utils

    assert hasattr(trl_utils, "_CHUNKED_LOGPROB_CHUNK_SIZE")
    monkeypatch.setattr(trl_utils, "_CHUNKED_LOGPROB_CHUNK_SIZE", 32768)
    dpo.small_logprob_chunks()
    assert trl_utils._CHUNKED_LOGPROB_CHUNK_SIZE == dpo.LOGPROB_CHUNK_POSITIONS


def test_length_desensitised_dpo_reaches_trl_and_changes_the_loss(tiny, tmp_path):
    """LD-DPO (ld_alpha) counts the longer answer's extra tokens only in part: on pairs whose chosen
    answer is much longer, the gradient differs from plain DPO's, so the second step's loss does (the
    first is log 2 for both: the new adapter starts at zero)."""
    import_pairs(tmp_path, 12)  # "Sure, here is a short answer about ..." against "No."
    assert dpo.trl_config(DPORoundConfig(ld_alpha=0.5), str(tmp_path), 1, 1.0).ld_alpha == 0.5
    assert DPORoundConfig(ld_alpha=1.5).problem() is None and registry.get("dpo").problem(DPORoundConfig(ld_alpha=1.5))
    losses = {}
    for alpha in (None, 0.0):
        summary = dpo.run_round(DPORoundConfig(learning_rate=1e-2, batch_size=4, ld_alpha=alpha, make_current=False),
                                jobs.Reporter(None), max_steps=2)
        losses[alpha] = summary["train_loss"]
        assert versions.get_version(summary["version"]).config["ld_alpha"] == alpha
    assert losses[None] != pytest.approx(losses[0.0])


def test_length_regularised_dpo_learns_less_from_longer_winners_and_more_from_shorter(tiny, tmp_path, monkeypatch):
    """R-DPO (length_alpha): a pair won by the longer answer teaches less than in plain DPO, one won
    by the shorter answer teaches more: the first step's gradient, on pairs where the chosen answer
    is the long one, then on the same pairs with the sides swapped (the new adapter starts where
    plain DPO's loss is log 2 for every pair, so only the length term differs)."""
    from labeling.store import import_file
    from tests.preference_fixtures import preference_records

    assert "length_alpha" in DPORoundConfig(length_alpha=0.05, precompute_ref_log_probs="no").problem()
    assert "ipo loss" in DPORoundConfig(length_alpha=0.05, loss_type="ipo").problem()  # it divides the term away

    class Recorder(jobs.Reporter):
        def step(self, step, metrics=None):
            self.first = getattr(self, "first", None) or dict(metrics or {})

    def first_gradient(records: list[dict], alpha: float | None, name: str) -> float:
        monkeypatch.setenv("PREFLOOP_HOME", str(tmp_path / name))  # a workspace of its own
        path = tmp_path / f"{name}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
        import_file(path, fmt="pairs", source=name)
        recorder = Recorder(None)
        summary = dpo.run_round(DPORoundConfig(learning_rate=1e-2, batch_size=4, length_alpha=alpha, make_current=False,
                                               heldout_fraction=0.25), recorder, max_steps=1)
        held_out.append(summary["heldout_margin"])
        return recorder.first["grad_norm"]

    held_out: list[float] = []

    longer_wins = preference_records(12)  # "Sure, here is a short answer about ..." against "No."
    shorter_wins = [dict(r, chosen=r["rejected"], rejected=r["chosen"]) for r in longer_wins]
    plain, regularised = first_gradient(longer_wins, None, "long-1"), first_gradient(longer_wins, 0.05, "long-2")
    assert regularised < 0.8 * plain, (plain, regularised)
    plain, regularised = first_gradient(shorter_wins, None, "short-1"), first_gradient(shorter_wins, 0.05, "short-2")
    assert regularised > 1.1 * plain, (plain, regularised)
    assert dpo.trainer_class(None).__name__ == "DPOTrainer"
    # held out, the length term is left out: one step from a zero adapter leaves the margin near 0 both ways
    # (with the term, α × about 25 tokens would put it near ±1.25)
    assert all(abs(margin) < 0.2 for margin in held_out), held_out


def sampled_pairs(version: str, n: int, start: int = 0) -> list[int]:
    """n pairs whose two answers `version` sampled (as the generator stores them), each judged "a"."""
    from labeling import queue
    from tests.test_queue import sampled

    ids = sampled([(f"On-policy question {i}?", f"Answer {i}, the first.", f"Answer {i}, the second.")
                   for i in range(start, start + n)], (version, version))
    for pair_id in ids:
        queue.submit_judgment("ana", pair_id, "a", "a")
    return ids


def test_an_on_policy_round_trains_only_on_the_pairs_the_current_policy_sampled(tiny, tmp_path):
    from labeling import pairs

    import_pairs(tmp_path, 10)  # a user's file: no policy sampled these
    base = versions.ensure_base_version()
    config = DPORoundConfig(pairs="on-policy", learning_rate=1e-2, batch_size=2)
    assert registry.get("dpo").problem(config) == (
        f"DPO on on-policy pairs needs at least 8 labeled pairs that the current policy ({base}) sampled; 0 of your "
        "10 labeled pairs are. Label its pairs first (Data page: queue order \"the current policy's pairs first\"), or "
        "set pairs to all.")
    assert registry.get("dpo").problem() is None  # all pairs: ready

    on_policy = sampled_pairs("base", 4) + sampled_pairs(base, 5, start=4)  # "base": its name before v1 existed
    assert registry.get("dpo").problem(config) is None
    assert "own answers" not in registry.get("dpo").plan_sentence()  # the base's pairs: a first round, no iterative hint
    summary = dpo.run_round(config, jobs.Reporter(None), max_steps=1)
    row = versions.get_version(summary["version"])
    assert pairs.judged_pairs(set(row.judgment_ids)) == set(on_policy) and row.config["pairs"] == "on-policy"

    # the next round starts from the new version, which has sampled nothing yet
    assert versions.current_policy_id() == row.id
    assert f"that the current policy ({row.id}) sampled; 0 of your 19" in registry.get("dpo").problem(config)
    later = sampled_pairs(row.id, 8, start=9)
    # the plan of a round on all the labels names iterative DPO's settings; one already on-policy does not
    assert registry.get("dpo").plan_sentence().endswith(
        f" 8 of the labeled pairs are {row.id}'s own answers: with pairs on-policy and reference parent (Advanced) the "
        f"round learns from those alone, held to {row.id}, as iterative DPO does (in prefloop's learning benchmark three "
        "such rounds did at least as well as one round on all the labels, each in less time).")
    assert "own answers" not in dpo.plan_sentence(config)
    summary = dpo.run_round(config, jobs.Reporter(None), max_steps=1)
    assert pairs.judged_pairs(set(versions.get_version(summary["version"]).judgment_ids)) == set(later)
