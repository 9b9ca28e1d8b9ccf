"""Model versions (atomic writes, current policy, rollback, merged export) and the config-to-CLI mapping."""
import json

import pytest

from tests.preference_fixtures import on_the_cpu_in_fp32, use_tiny_policy
from training import config_fields, versions
from training.dpo_config import DPORoundConfig
from training.reward_config import RewardRoundConfig


def _write_text(folder):
    (folder / "weights.txt").write_text("w")


def test_create_version_renames_complete_folder_and_records_lineage(workspace):
    first = versions.create_version("reward", "reward", None, {"a": 1}, [3, 1, 2], {"acc": 0.7}, _write_text)
    second = versions.create_version("reward", "reward", first, None, [4], None, _write_text)
    assert (first, second) == ("v1-reward", "v2-reward")
    row = versions.get_version(second)
    assert row.parent_id == first and row.judgment_ids == [4]
    assert versions.get_version(first).judgment_ids == [1, 2, 3]
    assert (workspace / "versions" / first / "weights.txt").read_text() == "w"
    assert versions.latest_reward_id() == second
    assert [p.name for p in (workspace / "versions").iterdir() if p.name.startswith(".tmp")] == []


def test_a_trained_version_records_the_device_and_precision_it_was_made_in(workspace, monkeypatch):
    on_the_cpu_in_fp32(monkeypatch)
    first = versions.create_version("reward", "reward", None, {}, [1], {"acc": 0.7}, _write_text)
    monkeypatch.setenv("PREFLOOP_DTYPE", "bf16")
    second = versions.create_version("reward", "reward", first, {}, [1], None, _write_text)
    base = versions.create_version("policy", "base", None, None, [], None, _write_text)
    assert versions.get_version(first).metrics == {"acc": 0.7, "trained_on": "cpu fp32"}
    assert versions.get_version(second).metrics == {"trained_on": "cpu bf16"}
    assert versions.get_version(base).metrics is None  # nothing trained it


def test_failed_write_leaves_no_folder_and_no_row(workspace):
    def broken(folder):
        (folder / "half.bin").write_bytes(b"x" * 10)
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        versions.create_version("reward", "reward", None, None, [], None, broken)
    assert list((workspace / "versions").iterdir()) == []
    assert versions.list_versions() == []


def test_wrong_kind_and_unknown_parent_are_refused(workspace):
    with pytest.raises(versions.VersionError, match="must be of kind 'policy'"):
        versions.create_version("reward", "dpo", None, None, [], None, _write_text)
    with pytest.raises(versions.VersionError, match="parent version 'v9-dpo' does not exist"):
        versions.create_version("policy", "dpo", "v9-dpo", None, [], None, _write_text)
    assert versions.list_versions() == []


def _lora_version(parent_id, seed=1):
    """A real LoRA adapter on the tiny policy with non-zero weights, stored as a dpo version."""
    import torch
    from peft import LoraConfig, get_peft_model

    from training.model import load_policy

    model, tokenizer = load_policy(parent_id)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    torch.manual_seed(seed)
    for name, p in peft_model.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.5)

    def write(folder):
        peft_model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)

    return versions.create_version("policy", "dpo", parent_id, {}, [1, 2], {}, write), peft_model


def test_base_current_rollback_and_merged_export(workspace, tmp_path, monkeypatch):
    import torch
    from transformers import AutoModelForCausalLM

    use_tiny_policy(tmp_path, monkeypatch)
    base = versions.ensure_base_version()
    assert versions.ensure_base_version() == base == "v1-base"
    assert versions.current_policy_id() == base
    child, peft_model = _lora_version(base)
    versions.set_current(child)
    assert versions.current_policy_id() == child
    assert [v.id for v in versions.lineage(child)] == [base, child]

    out = versions.export_merged(child, tmp_path / "export")
    exported = AutoModelForCausalLM.from_pretrained(out)
    ids = torch.tensor([[1, 5, 9, 12, 2]])
    with torch.no_grad():
        expected = peft_model(input_ids=ids).logits
        got = exported(input_ids=ids).logits
        base_logits = AutoModelForCausalLM.from_pretrained(versions.get_version(base).path)(input_ids=ids).logits
    assert torch.allclose(got, expected, atol=1e-4)
    assert not torch.allclose(got, base_logits, atol=1e-3)  # the adapter really is in the export

    versions.set_current(base)  # rollback
    assert versions.current_policy_id() == base
    assert [v.is_current for v in versions.list_versions("policy")] == [True, False]
    with pytest.raises(versions.VersionError, match="not empty"):
        versions.export_merged(child, out)


def test_a_round_finishing_after_a_rollback_leaves_the_rollback_alone(workspace, tmp_path, monkeypatch):
    use_tiny_policy(tmp_path, monkeypatch)
    base = versions.ensure_base_version()
    first = versions.create_version("policy", "dpo", base, None, [], None, _write_text, make_current=True)
    assert versions.current_policy_id() == first  # nobody changed the current policy meanwhile
    # a round starts from `first`; while it trains, an admin rolls back to the base
    versions.set_current(base)
    second = versions.create_version("policy", "dpo", first, None, [], None, _write_text, make_current=True)
    assert versions.current_policy_id() == base and versions.get_version(second) is not None
    assert versions.set_current(second, if_current=first) is False
    assert versions.set_current(second, if_current=base) is True and versions.current_policy_id() == second


def test_export_runs_as_a_background_job_and_the_folder_loads(workspace, tmp_path, monkeypatch):
    import torch
    from transformers import AutoModelForCausalLM

    from training import jobs

    monkeypatch.setenv("PREFLOOP_THREADS", "1")
    use_tiny_policy(tmp_path, monkeypatch)
    child, peft_model = _lora_version(versions.ensure_base_version())
    out = tmp_path / "merged"
    job = jobs.wait(jobs.start_job("export", {"version": child, "folder": str(out)}), timeout=300, poll=0.2)
    assert job.status == "done", open(job.log_path).read()[-2000:]
    assert job.result == {"exported": child, "path": str(out)}
    ids = torch.tensor([[1, 5, 9, 12, 2]])
    with torch.no_grad():
        assert torch.allclose(AutoModelForCausalLM.from_pretrained(out)(input_ids=ids).logits,
                              peft_model(input_ids=ids).logits, atol=1e-4)
    again = jobs.wait(jobs.start_job("export", {"version": child, "folder": str(out)}), timeout=300, poll=0.2)
    assert again.status == "failed" and "is not empty; choose a new folder" in again.error


def test_set_current_refuses_reward_and_unknown_ids(workspace):
    rid = versions.create_version("reward", "reward", None, None, [], None, _write_text)
    with pytest.raises(versions.VersionError, match="only a policy can be current"):
        versions.set_current(rid)
    with pytest.raises(versions.VersionError, match="no version 'v7-dpo'"):
        versions.set_current("v7-dpo")


def test_versions_cli_prints_json(workspace, capsys, monkeypatch):
    on_the_cpu_in_fp32(monkeypatch)
    versions.create_version("reward", "reward", None, {"b": 2}, [5], {"acc": 0.5}, _write_text)
    versions.create_version("reward", "reward", "v1-reward", {"b": 3}, [5, 6], None, _write_text)
    assert versions.main([]) == 0
    out = capsys.readouterr().out
    assert out.endswith("\n") and out.count("\n") == 1  # one line of JSON, last
    rows = json.loads(out.splitlines()[-1])
    assert [(r["id"], r["kind"], r["parent_id"], r["judgments"], r["metrics"]) for r in rows] == [
        ("v1-reward", "reward", None, 1, {"acc": 0.5, "trained_on": "cpu fp32"}),
        ("v2-reward", "reward", "v1-reward", 2, {"trained_on": "cpu fp32"})]
    assert versions.main(["--set-current", "v1-reward"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and "only a policy can be current" in err


# ---------------------------------------------------------------- one config -> CLI, YAML and form


def test_form_fields_come_from_the_dataclass():
    fields = {f.name: f for f in config_fields.form_fields(DPORoundConfig)}
    assert fields["beta"].type is float and fields["beta"].default == 0.1 and "β" in fields["beta"].help
    assert "ipo" in fields["loss_type"].choices and fields["make_current"].type is bool
    reward = {f.name: f for f in config_fields.form_fields(RewardRoundConfig)}
    assert reward["learning_rate"].optional and reward["backbone"].choices == ("policy", "minilm", "encoder")


def test_yaml_then_flags_override(tmp_path):
    path = tmp_path / "dpo.yaml"
    path.write_text("beta: 0.3\nloss_type: ipo\nmax_steps: 4\nepochs: 2\n")
    config, extras = config_fields.config_from_args(DPORoundConfig, ["--config", str(path), "--beta", "0.5",
                                                                     "--no-make-current", "--max-pairs", "16",
                                                                     "--job-id", "3"])
    assert (config.beta, config.loss_type, config.epochs, config.make_current) == (0.5, "ipo", 2.0, False)
    assert (extras["max_steps"], extras["max_pairs"], extras["job_id"]) == (4, 16, 3)


@pytest.mark.parametrize("text, message", [
    ("betta: 1\n", "dpo.yaml: unknown field 'betta'"),
    ("beta: high\n", "dpo.yaml: field 'beta' must be float, got 'high'"),
    ("loss_type: magic\n", "dpo.yaml: field 'loss_type' must be one of sigmoid, ipo"),
    ("batch_size: 2.5\n", "dpo.yaml: field 'batch_size' must be int, got 2.5"),
    ("beta: [\n", "dpo.yaml line 2: not valid YAML"),
    ("beta: 0\n", "dpo.yaml: field 'beta' must be greater than 0; got 0.0."),
    ("batch_size: 0\n", "dpo.yaml: field 'batch_size' must be at least 1; got 0."),
    ("heldout_fraction: 1\n", "dpo.yaml: field 'heldout_fraction' must be less than 1; got 1.0."),
    ("loss_type: exo_pair\n", "dpo.yaml: The exo_pair loss needs label_smoothing above 0"),
])
def test_bad_yaml_names_file_and_field(tmp_path, text, message):
    path = tmp_path / "dpo.yaml"
    path.write_text(text)
    with pytest.raises(config_fields.ConfigError) as err:
        config_fields.config_from_args(DPORoundConfig, ["--config", str(path)])
    assert message in str(err.value) and str(err.value).count(".") >= 1


def test_settings_are_checked_together_after_the_flags():
    from training.evaluate_config import EvaluateConfig
    from training.ppo_config import PPOConfig

    config, _ = config_fields.config_from_args(DPORoundConfig, ["--loss-type", "exo_pair", "--label-smoothing", "0.1"])
    assert (config.loss_type, config.label_smoothing) == ("exo_pair", 0.1)
    with pytest.raises(config_fields.ConfigError,
                       match="command line: The exo_pair loss needs label_smoothing above 0"):
        config_fields.config_from_args(DPORoundConfig, ["--loss-type", "exo_pair"])
    with pytest.raises(config_fields.ConfigError, match="label_smoothing has no effect on the sigmoid loss"):
        config_fields.config_from_args(DPORoundConfig, ["--label-smoothing", "0.1"])
    with pytest.raises(config_fields.ConfigError, match="form: field 'samples' must be at least 1; got 0."):
        config_fields.config_from_dict(EvaluateConfig, {"samples": 0}, where="form")
    with pytest.raises(config_fields.ConfigError, match="form: field 'mini_batch_size' must be at least 1; got 0."):
        config_fields.config_from_dict(PPOConfig, {"mini_batch_size": 0}, where="form")
    assert config_fields.config_from_dict(DPORoundConfig, {"beta": 0.5}).beta == 0.5


def test_bad_flag_value_is_one_sentence():
    with pytest.raises(config_fields.ConfigError, match="command line: field 'lora_r' must be int, got 'big'"):
        config_fields.config_from_args(DPORoundConfig, ["--lora-r", "big"])
