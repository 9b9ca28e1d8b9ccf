"""Rewrites and demonstrations: stored per person and pair, two DPO pairs per rewrite with their
lineage, TRL messages import (bad rows refused whole) and export, the SFT round on a tiny model
from the registry's CLI, and the Label page's rewrite box after "Both bad"."""
from __future__ import annotations

import json

import pytest

from labeling import demonstrations, queue
from labeling.readers import InputError
from tests.preference_fixtures import tiny_single_thread
from tests.test_queue import seed_pairs
from training import preferences, registry, versions


def test_a_rewrite_is_stored_once_per_person_and_makes_two_preference_rows(workspace):
    ids = seed_pairs([("Is the sea salty?", "No.", "Maybe."), ("Q2?", "x", "y")])
    first = demonstrations.add_rewrite("ana", ids[0], "  Yes: about 3.5 % of sea water is salt.  ")
    assert demonstrations.add_rewrite("ana", ids[0], "Yes, it is salty.") == first  # edited, not added
    demonstrations.add_rewrite("bo", ids[0], "Yes.")
    with pytest.raises(demonstrations.DemonstrationError, match="empty"):
        demonstrations.add_rewrite("ana", ids[1], " \n ")
    with pytest.raises(demonstrations.DemonstrationError, match="does not exist"):
        demonstrations.add_rewrite("ana", 999, "text")
    rows = demonstrations.rewrite_rows()
    assert len(rows) == 4 and {r["origin"] for r in rows} == {"rewrite"}
    assert {(r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in rows if r["demonstration_id"] == first} \
        == {("Yes, it is salty.", "No."), ("Yes, it is salty.", "Maybe.")}
    sft = demonstrations.sft_rows()
    assert [r["completion"][0]["content"] for r in sft] == ["Yes, it is salty.", "Yes."]
    assert sft[0]["prompt"] == [{"role": "user", "content": "Is the sea salty?"}]


def test_rounds_train_on_rewrites_beside_labels_and_record_them(workspace):
    ids = seed_pairs(8)
    for pair_id in ids[:6]:
        queue.submit_judgment("ana", pair_id, "a", "a")
    queue.submit_judgment("ana", ids[6], "both_bad", "a")
    demo = demonstrations.add_rewrite("ana", ids[6], "A good answer.")
    assert preferences.count_pairs() == 8
    data = preferences.preference_data("DPO", None, 0.2, 0)
    assert (data.origin["pairs_from_people"], data.origin["pairs_from_rewrites"]) == (6, 2)
    assert data.origin["demonstration_ids"] == [demo]


def test_messages_import_and_export_round_trip(workspace, tmp_path):
    good = tmp_path / "demos.jsonl"
    rows = [{"messages": [{"role": "user", "content": f"Q{i}?"}, {"role": "assistant", "content": f"A{i}."}]}
            for i in range(3)]
    good.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert demonstrations.import_messages(good)["demonstrations"] == 3
    assert demonstrations.import_messages(good)["already_stored"] == 3
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(rows[0]) + "\n" + json.dumps({"messages": [{"role": "user", "content": "Q?"}]}) + "\n")
    with pytest.raises(InputError, match="line 2, field 'messages': the conversation must end"):
        demonstrations.import_messages(bad)
    assert demonstrations.count() == 3  # nothing of the bad file
    out = tmp_path / "out.jsonl"
    assert demonstrations.export_messages(out)["exported"] == 3
    assert [json.loads(line)["messages"] for line in out.read_text().splitlines()] == [r["messages"] for r in rows]


def test_cli_imports_messages_and_says_what_is_wrong(workspace, tmp_path, capsys):
    from labeling.__main__ import main

    path = tmp_path / "demos.jsonl"
    path.write_text(json.dumps({"messages": [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "A."}]}) + "\n")
    assert main(["import", str(path), "--format", "messages"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["demonstrations"] == 1
    assert main(["export-demonstrations", str(tmp_path / "nowhere" / "x.jsonl")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_the_sft_round_trains_an_adapter_from_the_registry_cli(workspace, tmp_path, monkeypatch):
    import torch

    tiny_single_thread(workspace, tmp_path, monkeypatch)
    ids = seed_pairs([(f"Tell me about tea ({i}).", f"bad {i}", f"worse {i}") for i in range(5)])
    assert registry.get("sft").problem().startswith("SFT needs at least 4 written answers; you have 0.")
    for pair_id in ids:
        demonstrations.add_rewrite("ana", pair_id, "Tea is a drink made from leaves.")
    assert registry.get("sft").problem() is None
    from training.__main__ import main
    from training.model import load_policy

    before = load_policy("base")[0]
    assert main(["sft", "--max-steps", "3", "--learning-rate", "1e-2"]) == 0
    (row,) = [v for v in versions.list_versions("policy") if v.method == "sft"]
    assert versions.current_policy_id() == row.id and row.parent_id is not None
    assert len(row.metrics["demonstration_ids"]) == 5 and row.metrics["steps"] == 3
    after = load_policy(row.id)[0]
    changed = [n for (n, p), (_, q) in zip(before.named_parameters(), after.named_parameters()) if not torch.equal(p, q)]
    assert changed, "the SFT adapter changed no weight of the merged policy"


def test_deleting_a_messages_import_takes_its_demonstrations_and_prompts(workspace, tmp_path):
    from labeling import imports

    path = tmp_path / "demos.jsonl"
    path.write_text(json.dumps({"messages": [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "A."}]}) + "\n")
    demonstrations.import_messages(path, "demos")
    assert imports.delete_import("demos")["prompts"] == 1 and demonstrations.count() == 0


def test_an_unchanged_bad_answer_is_not_a_rewrite_and_an_empty_user_turn_is_one_sentence(workspace, tmp_path):
    (pair_id,) = seed_pairs([("Q?", "Bad one.", "Worse one.")])
    with pytest.raises(demonstrations.DemonstrationError, match="unchanged"):
        demonstrations.add_rewrite("ana", pair_id, " Bad one. ")
    path = tmp_path / "demos.jsonl"
    path.write_text(json.dumps({"messages": [{"role": "user", "content": " "}, {"role": "assistant", "content": "A."}]}) + "\n")
    with pytest.raises(InputError, match="line 1, field 'messages'"):
        demonstrations.import_messages(path)


def test_a_messages_import_whose_prompts_already_existed_can_still_be_deleted(workspace, tmp_path):
    from labeling import imports
    from labeling.store import add_prompts

    add_prompts(["Q?"], "earlier")
    path = tmp_path / "demos.jsonl"
    path.write_text(json.dumps({"messages": [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "A."}]}) + "\n")
    demonstrations.import_messages(path, "demos")
    assert imports.delete_import("demos")["demonstrations"] == 1 and demonstrations.count() == 0
