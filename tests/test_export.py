"""Export: majority vote, what is left out, the three file formats, the round trip back through
import, and TRL's DPOTrainer / RewardTrainer taking the `hf` folder as it is."""
import json

import pytest
from sqlalchemy import select

from labeling import db, export, queue, store
from labeling.export import ExportError, majority
from labeling.models import Judgment, Pair
from tests.conftest import FIXTURES


@pytest.mark.parametrize("outcomes, expected", [
    (["a"], "a"), (["a", "a", "b"], "a"), (["a", "b"], None), (["a", "tie", "a"], "a"),
    (["tie", "tie", "b"], "tie"), (["skip", "b"], "b"), (["skip", "skip"], "skip"), ([], None),
    (["a", "b", "both_bad"], None), (["both_bad"], "both_bad"),
])
def test_majority(outcomes, expected):
    assert majority(outcomes) == expected


def judge(pair_id: int, **votes: str) -> dict[str, int]:
    """Store one judgment per annotator name -> outcome; return {name: judgment id}."""
    ids = {}
    with db.session() as s:
        for name, outcome in votes.items():
            annotator = queue.get_or_create_annotator(s, name)
            j = Judgment(pair_id=pair_id, annotator_id=annotator.id, outcome=outcome, left="a", seconds=2.0)
            s.add(j)
            s.flush()
            ids[name] = j.id
    return ids


@pytest.fixture
def judged(workspace):
    """Pairs 1-3 labeled "a" by the import, pairs 4-5 unlabeled (unlabeled.jsonl), then votes on top."""
    store.import_file(FIXTURES / "pairs.jsonl")  # pairs 1, 2, 3, each with an import vote "a"
    store.import_file(FIXTURES / "unlabeled.jsonl")  # pairs 4, 5, no votes
    store.import_file(FIXTURES / "prompts.jsonl")
    votes = {1: judge(1, ana="b", ben="b"), 2: judge(2, ana="b")}  # pair 1: b wins 2-1; pair 2: a-b level
    votes[4] = judge(4, ana="tie", ben="skip")
    votes[5] = judge(5, ana="skip")
    with db.session() as s:
        assert s.get(Pair, 1).judgment_count == 3 and s.get(Pair, 4).judgment_count == 1
        import_votes = dict(s.execute(select(Judgment.pair_id, Judgment.id).where(Judgment.outcome == "a")).all())
    return votes, import_votes


def test_preference_rows_majority_and_exclusions(judged):
    votes, import_votes = judged
    result = export.preference_rows()
    assert [r["pair_id"] for r in result.rows] == [1, 3]
    flipped, kept = result.rows
    assert flipped["chosen"] == [{"role": "assistant", "content": "France has no capital."}]
    assert flipped["rejected"] == [{"role": "assistant", "content": "The capital of France is Paris."}]
    assert flipped["prompt"] == [{"role": "user", "content": "What is the capital of France?"}]
    assert kept["chosen"][0]["content"] == "2 + 2 = 4." and kept["rejected"][0]["content"] == "2 + 2 = 5."
    assert set(flipped) == {"prompt", "chosen", "rejected", "pair_id", "prompt_id", "split", "reasons", "origin"}
    assert flipped["reasons"] == [] and kept["reasons"] == []  # nobody said why
    assert flipped["split"] in ("train", "heldout")
    assert result.excluded == {"tie": 1, "both_bad": 0, "skip": 1, "unresolved": 1}
    assert result.judgment_ids == sorted([votes[1]["ana"], votes[1]["ben"], import_votes[3]])


def test_kinds_filter_arena_pairs(judged):
    with db.session() as s:
        s.get(Pair, 3).kind = "arena"
    assert [r["pair_id"] for r in export.preference_rows(kinds=("label",)).rows] == [1]
    assert [r["pair_id"] for r in export.preference_rows(kinds=("arena",)).rows] == [3]


def test_both_bad_is_left_out(judged):
    judge(3, ana="both_bad", ben="both_bad")
    assert export.preference_rows().excluded["both_bad"] == 1


def test_jsonl_round_trip_through_import(workspace, tmp_path, monkeypatch):
    store.import_file(FIXTURES / "pairs_conversational.jsonl")
    store.import_file(FIXTURES / "pairs.jsonl")
    out = tmp_path / "out.jsonl"
    assert export.export(out, "jsonl") == {"exported": 5, "excluded": dict.fromkeys(export.EXCLUDED_KINDS, 0)}
    original = [(r["prompt"], r["chosen"], r["rejected"]) for r in map(json.loads, open(out, encoding="utf-8"))]
    monkeypatch.setenv("PREFLOOP_HOME", str(tmp_path / "second"))
    assert store.import_file(out)["imported"] == 5
    back = [(r["prompt"], r["chosen"], r["rejected"]) for r in export.preference_rows().rows]
    assert back == original


def test_parquet_and_hf_hold_the_same_rows(judged, tmp_path):
    import datasets
    import pyarrow.parquet as pq

    rows = export.preference_rows().rows
    assert export.export(tmp_path / "out.parquet", "parquet")["exported"] == 2
    assert pq.read_table(tmp_path / "out.parquet").to_pylist() == rows
    assert export.export(tmp_path / "hf", "hf")["exported"] == 2
    assert export.export(tmp_path / "hf", "hf")["exported"] == 2  # overwriting its own folder is fine
    assert datasets.load_from_disk(str(tmp_path / "hf")).to_list() == rows


def test_export_errors(workspace, tmp_path):
    with pytest.raises(ExportError, match="nothing to export"):
        export.export(tmp_path / "empty.jsonl")
    store.import_file(FIXTURES / "pairs.jsonl")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(ExportError, match="not a dataset written by prefloop"):
        export.export(tmp_path / "busy", "hf")
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"
    with pytest.raises(ExportError, match="unknown export format 'csv'"):
        export.export(tmp_path / "x.csv", "csv")
    with pytest.raises(ExportError, match="does not exist"):
        export.export(tmp_path / "no" / "x.jsonl")


def test_trl_dpo_and_reward_trainers_take_the_hf_export(workspace, tmp_path):
    """The `hf` folder goes into TRL 1.16 unchanged: one DPO step and one reward-model step on a
    2-layer model, with finite losses."""
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForSequenceClassification
    from trl import DPOConfig, DPOTrainer, RewardConfig, RewardTrainer

    from tests.tiny_models import make_tiny_policy, make_tokenizer

    torch.set_num_threads(1)
    store.import_file(FIXTURES / "pairs_conversational.jsonl")
    store.import_file(FIXTURES / "pairs.jsonl")
    export.export(tmp_path / "hf", "hf")
    data = datasets.load_from_disk(str(tmp_path / "hf"))
    policy_dir = make_tiny_policy(tmp_path / "policy")
    common = dict(max_steps=1, per_device_train_batch_size=2, report_to="none", save_strategy="no",
                  use_cpu=True, logging_steps=1, max_length=128)

    dpo = DPOTrainer(model=AutoModelForCausalLM.from_pretrained(policy_dir), train_dataset=data,
                     args=DPOConfig(output_dir=str(tmp_path / "dpo"), **common),
                     processing_class=make_tokenizer())
    dpo_loss = dpo.train().training_loss
    assert torch.isfinite(torch.tensor(dpo_loss))

    tok = make_tokenizer()
    reward_model = LlamaForSequenceClassification(LlamaConfig(
        vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, num_labels=1, pad_token_id=tok.pad_token_id))
    rm = RewardTrainer(model=reward_model, train_dataset=data, processing_class=tok,
                       args=RewardConfig(output_dir=str(tmp_path / "rm"), **common))
    rm_loss = rm.train().training_loss
    assert torch.isfinite(torch.tensor(rm_loss))


def test_reasons_of_the_deciding_votes_travel_with_the_pair_and_back(judged, tmp_path, monkeypatch):
    # pair 1: ana and ben outvote the import's "a" and cleo's tie; their tags (each once) go with
    # the row, cleo's do not. Pair 3: ana agrees with the import, so she decides it too.
    queue.submit_judgment("ana", 1, "b", "a", reasons=["more correct", "safer"])
    queue.submit_judgment("ben", 1, "b", "b", reasons=["more correct", "less rambling"])
    queue.submit_judgment("cleo", 1, "tie", "a", reasons=["better format"])
    queue.submit_judgment("ana", 3, "a", "b", reasons=["more concise"])
    rows = {r["pair_id"]: r["reasons"] for r in export.preference_rows().rows}
    assert rows == {1: ["more correct", "safer", "less rambling"], 3: ["more concise"]}
    for fmt, name in (("jsonl", "out.jsonl"), ("parquet", "out.parquet")):
        assert export.export(tmp_path / name, fmt)["exported"] == 2
    for name in ("out.jsonl", "out.parquet"):
        monkeypatch.setenv("PREFLOOP_HOME", str(tmp_path / f"second-{name}"))
        assert store.import_file(tmp_path / name)["imported"] == 2
        back = {r["chosen"][0]["content"]: r["reasons"] for r in export.preference_rows().rows}
        assert back == {"France has no capital.": ["more correct", "safer", "less rambling"],
                        "2 + 2 = 4.": ["more concise"]}
        with db.session() as s:  # stored on the imported label, as a person's tags are on their vote
            assert sorted(map(len, s.scalars(select(Judgment.reasons)))) == [1, 3]
