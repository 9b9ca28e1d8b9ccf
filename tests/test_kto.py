"""The KTO round on a tiny model: pairs become desirable and undesirable examples, the weights
balance, the adapter moves, a version with lineage is written; the registry drives the CLI."""
from __future__ import annotations

import math

import pytest

from tests.preference_fixtures import import_pairs, tiny_single_thread
from training import kto, registry, versions


def test_pairs_come_apart_into_single_answers_once_each():
    prompt = [{"role": "user", "content": "Q?"}]
    rows = [{"prompt": prompt, "chosen": [{"role": "assistant", "content": c}],
             "rejected": [{"role": "assistant", "content": r}]} for c, r in (("good", "bad"), ("good", "worse"))]
    from labeling.export import unpaired_rows

    examples = unpaired_rows(rows)
    assert [(e["completion"][0]["content"], e["label"]) for e in examples] == [("good", True), ("bad", False),
                                                                               ("worse", False)]
    assert kto.balanced_weights(1, 2) == (2.0, 1.0) and kto.balanced_weights(6, 3) == (1.0, 2.0)


def test_the_kto_round_trains_an_adapter_from_the_registry_cli(workspace, tmp_path, monkeypatch):
    import torch

    tiny_single_thread(workspace, tmp_path, monkeypatch)
    import_pairs(tmp_path, 12)
    assert registry.get("kto").problem() is None
    from training.__main__ import main
    from training.model import load_policy

    before = load_policy("base")[0]
    assert main(["kto", "--max-steps", "2", "--learning-rate", "1e-2"]) == 0
    (row,) = [v for v in versions.list_versions("policy") if v.method == "kto"]
    assert versions.current_policy_id() == row.id and len(row.judgment_ids) == 12
    assert row.metrics["steps"] == 2 and math.isfinite(row.metrics["train_loss"])
    assert row.metrics["desirable_weight"] == row.metrics["undesirable_weight"] == 1.0
    after = load_policy(row.id)[0]
    assert any(not torch.equal(p, q) for p, q in zip(before.parameters(), after.parameters()))


def test_the_unpaired_export_is_trls_kto_format(workspace, tmp_path, capsys):
    import json

    from labeling.__main__ import main

    import_pairs(tmp_path, 3)
    out = tmp_path / "kto.jsonl"
    assert main(["export", str(out), "--unpaired"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 6 and sorted(r["label"] for r in rows) == [False] * 3 + [True] * 3
    assert set(rows[0]) == {"prompt", "completion", "label"} and rows[0]["completion"][0]["role"] == "assistant"
    assert main(["export", str(tmp_path / "k.parquet"), "--format", "parquet", "--unpaired"]) == 2
    assert "pass --format jsonl" in capsys.readouterr().err


def test_thumbs_one_answer_at_a_time_feed_kto_and_the_unpaired_export(workspace, tmp_path):
    from labeling import ratings
    from labeling.export import export
    from tests.test_queue import seed_pairs

    ids = seed_pairs([(f"Q{i}?", f"good {i}", f"bad {i}") for i in range(4)])
    assert registry.get("kto").problem().startswith("KTO needs at least 16 answers marked good or bad")
    seen = []
    while (answer := ratings.next_answer("ana")) is not None:
        seen.append(answer.response_id)
        ratings.rate("ana", answer.response_id, "up" if answer.text.startswith("good") else "down")
    assert len(seen) == 8 and ratings.next_answer("bo") is None  # each answer rated once, by anyone
    assert ratings.counts() == {"up": 4, "down": 4, "skip": 0} and ratings.counts("bo")["up"] == 0
    ratings.rate("ana", seen[0], "down")  # a change of mind replaces the rating
    assert ratings.counts()["down"] == 5
    with pytest.raises(queue_error(), match="Unknown rating"):
        ratings.rate("ana", seen[0], "meh")
    rows = ratings.rating_rows()
    assert len(rows) == 8 and sum(r["label"] for r in rows) == 3
    out = tmp_path / "kto.jsonl"
    assert export(out, unpaired=True)["exported"] == 8  # no judged pair yet: the thumbs alone
    import_pairs(tmp_path, 4)
    assert registry.get("kto").problem() is None  # 4 pairs x 2 + 8 thumbs
    assert ids


def queue_error():
    from labeling.queue import QueueError

    return QueueError
