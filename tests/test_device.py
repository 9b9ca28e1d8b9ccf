"""The device seam: PREFLOOP_DEVICE / PREFLOOP_DTYPE resolution and refusals (CUDA and MPS faked
by monkeypatching torch), what the trainers are told, that every model and batch goes through it
(a grep over the code, and bf16 rounds on the CPU), and `python -m training env`."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from training import device

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def machine(monkeypatch):
    """Fake what torch sees: `machine(cuda=True, bf16=False, mps=False)`."""
    monkeypatch.delenv("PREFLOOP_DEVICE", raising=False)
    monkeypatch.delenv("PREFLOOP_DTYPE", raising=False)
    monkeypatch.delenv("PREFLOOP_QUANT", raising=False)

    def fake(cuda: bool = False, bf16: bool = True, mps: bool = False):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
        monkeypatch.setattr(device, "_mps_available", lambda: mps)

    return fake


@pytest.mark.parametrize("cuda, mps, expected", [(True, True, "cuda"), (False, True, "mps"), (False, False, "cpu")])
def test_auto_takes_cuda_then_mps_then_the_cpu(machine, cuda, mps, expected):
    machine(cuda=cuda, mps=mps)
    assert device.device() == torch.device(expected)


@pytest.mark.parametrize("cuda, bf16, mps, expected", [
    (True, True, False, torch.bfloat16), (True, False, False, torch.float16),
    (False, True, True, torch.float32), (False, True, False, torch.float32)])
def test_auto_dtype_is_bf16_on_cuda_with_bf16_fp16_on_older_cards_fp32_elsewhere(machine, cuda, bf16, mps, expected):
    machine(cuda=cuda, bf16=bf16, mps=mps)
    assert device.dtype() == expected


def test_explicit_values_are_honoured(machine, monkeypatch):
    machine(cuda=True)
    monkeypatch.setenv("PREFLOOP_DEVICE", "cpu")
    monkeypatch.setenv("PREFLOOP_DTYPE", "bf16")  # allowed on a CPU, to halve a model's memory
    assert (device.device(), device.dtype()) == (torch.device("cpu"), torch.bfloat16)
    monkeypatch.setenv("PREFLOOP_DEVICE", "CUDA")
    monkeypatch.setenv("PREFLOOP_DTYPE", "fp32")
    assert (device.device(), device.dtype()) == (torch.device("cuda"), torch.float32)
    monkeypatch.setenv("PREFLOOP_DTYPE", "fp16")
    assert device.dtype() == torch.float16


@pytest.mark.parametrize("env, seen, sentence", [
    ({"PREFLOOP_DEVICE": "cuda"}, {}, "PREFLOOP_DEVICE=cuda but torch"),
    ({"PREFLOOP_DEVICE": "mps"}, {}, "PREFLOOP_DEVICE=mps but torch sees no Apple MPS device; unset PREFLOOP_DEVICE"),
    ({"PREFLOOP_DEVICE": "cuda:1"}, {"cuda": True}, "PREFLOOP_DEVICE=cuda:1 is not one of auto, cpu, cuda, mps"),
    ({"PREFLOOP_DTYPE": "fp16"}, {}, "PREFLOOP_DTYPE=fp16 needs a GPU (CUDA or MPS), and the device is the CPU"),
    ({"PREFLOOP_DTYPE": "bf16"}, {"cuda": True, "bf16": False}, "PREFLOOP_DTYPE=bf16 is not supported on this cuda"),
    ({"PREFLOOP_DTYPE": "half"}, {}, "PREFLOOP_DTYPE=half is not one of auto, fp32, bf16, fp16"),
])
def test_what_the_machine_lacks_is_refused_with_one_sentence_naming_the_variable(machine, monkeypatch, env, seen,
                                                                                 sentence):
    machine(**seen)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(device.DeviceError) as err:
        device.dtype(device.device())
    message = str(err.value)
    assert sentence in message and message.count(". ") == 0 and message.endswith(".")


def test_trainers_get_their_precision_and_device_from_the_seam(machine, monkeypatch, tmp_path):
    from training import dpo
    from training.dpo_config import DPORoundConfig

    machine(cuda=True, bf16=False)
    assert device.trainer_precision() == {"bf16": False, "fp16": True, "use_cpu": False}
    machine(cuda=False)
    assert device.trainer_precision() == {"bf16": False, "fp16": False, "use_cpu": True}
    monkeypatch.setenv("PREFLOOP_DTYPE", "bf16")
    args = dpo.trl_config(DPORoundConfig(), str(tmp_path), 1, 1.0)
    assert (args.bf16, args.fp16, args.use_cpu) == (True, False, True)
    assert device.weights_dtype(trained_in_full=True) == torch.float32 and device.weights_dtype() == torch.bfloat16


def test_place_moves_models_tensors_and_batches_to_the_device(monkeypatch):
    from transformers import BatchEncoding

    monkeypatch.setattr(device, "device", lambda: torch.device("meta"))
    ids = torch.tensor([[1, 2]])
    batch = device.place({"input_ids": ids, "n": 3})
    assert batch["input_ids"].device.type == "meta" and batch["input_ids"].dtype == torch.long and batch["n"] == 3
    pair = device.place((ids, ids.float()))
    assert isinstance(pair, tuple) and all(t.device.type == "meta" for t in pair)
    assert device.place(BatchEncoding({"input_ids": ids}))["input_ids"].device.type == "meta"
    layer = device.place(torch.nn.Linear(2, 2), torch.bfloat16)
    assert layer.weight.device.type == "meta" and layer.weight.dtype == torch.bfloat16
    assert device.to_host(torch.ones(2, requires_grad=True)).device.type == "cpu"


HARD_CODED = re.compile(r"""bf16\s*=\s*False|fp16\s*=\s*False|\.cpu\(\)|\.cuda\(|\.to\(\s*["'](cpu|cuda|mps)"""
                        r"""|device\s*=\s*["'](cpu|cuda|mps)|torch\.device\(\s*["']""")


def test_no_module_outside_the_seam_names_a_device_or_a_precision():
    """Only training/device.py decides: no `.cpu()`, `.cuda()`, `.to("cpu")`, `device="cuda"` or
    `bf16=False` anywhere else in the app, the training code or the benchmarks."""
    tops = ("training", "labeling", "pages", "bench")
    files = [ROOT / "app.py", *[p for top in tops for p in (ROOT / top).rglob("*.py")]]
    found = [f"{path.relative_to(ROOT)}:{n}: {line.strip()}" for path in files if path.name != "device.py"
             for n, line in enumerate(path.read_text().splitlines(), 1) if HARD_CODED.search(line)]
    assert len(files) > 30 and found == []
    assert HARD_CODED.search('x.to("cpu")') and HARD_CODED.search("DPOConfig(bf16=False)")


def test_a_bf16_policy_samples_and_its_reward_model_scores_into_fp32_on_the_host(workspace, tmp_path, monkeypatch):
    """PREFLOOP_DTYPE=bf16 on the CPU: the nearest this machine has to a GPU run. Policies load in
    bf16; a reward model fresh from training (fp32 head on a bf16 base) scores under autocast and
    hands back fp32 scores in CPU memory."""
    from tests.preference_fixtures import use_tiny_policy
    from training import reward, sampling
    from training.model import load_policy
    from training.reward_config import RewardRoundConfig

    use_tiny_policy(tmp_path, monkeypatch)
    monkeypatch.setenv("PREFLOOP_DTYPE", "bf16")
    model, tokenizer = load_policy("base")
    assert model.dtype == torch.bfloat16
    ids, mask = sampling.encode_chats(tokenizer, [[{"role": "user", "content": "Hi"}]])
    response, kept = sampling.sample(model, tokenizer, ids, mask, max_new_tokens=4, seed=0)
    assert response.shape[0] == 1 and kept.sum() >= 1
    scorer_model, scorer_tokenizer, _ = reward.load_backbone(RewardRoundConfig(backbone="policy", method="fine-tune"))
    trainable = {p.dtype for p in scorer_model.parameters() if p.requires_grad}
    frozen = {p.dtype for p in scorer_model.parameters() if not p.requires_grad}
    assert trainable == {torch.float32} and frozen == {torch.bfloat16}
    scores = reward.make_scorer(scorer_model, scorer_tokenizer, 32)([[{"role": "user", "content": "Hi"}]] * 2,
                                                                    ["Hello.", "No."])
    assert scores.dtype == torch.float32 and scores.device.type == "cpu" and scores.shape == (2,)


def test_a_dpo_round_runs_in_bf16_on_the_cpu(workspace, tmp_path, monkeypatch):
    import math

    from tests.preference_fixtures import import_pairs, snapshot_trainable, use_tiny_policy
    from training import dpo, jobs, versions
    from training.dpo_config import DPORoundConfig

    monkeypatch.setenv("PREFLOOP_THREADS", "1")
    use_tiny_policy(tmp_path, monkeypatch)
    monkeypatch.setenv("PREFLOOP_DTYPE", "bf16")
    import_pairs(tmp_path, 10)
    seen = {}
    snapshot_trainable(monkeypatch, seen)
    summary = dpo.run_round(DPORoundConfig(batch_size=2, max_length=64, max_prompt_length=32), jobs.Reporter(None),
                            max_steps=1)
    assert math.isfinite(summary["train_loss"]) and versions.get_version(summary["version"]).kind == "policy"
    model = seen.pop("__model__")
    assert {p.dtype for p in model.parameters() if not p.requires_grad} == {torch.bfloat16}
    assert {t.dtype for t in seen.values()} == {torch.float32}  # the adapter keeps fp32 weights


def test_env_prints_device_memory_and_a_dpo_estimate_as_json_last(workspace, tmp_path, monkeypatch, capsys):
    from tests.preference_fixtures import use_tiny_policy
    from training import env
    from training.__main__ import main

    folder = use_tiny_policy(tmp_path, monkeypatch)
    monkeypatch.delenv("PREFLOOP_DEVICE", raising=False)
    monkeypatch.delenv("PREFLOOP_DTYPE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(device, "_mps_available", lambda: False)
    assert main(["env"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    info = json.loads(lines[-1])
    from safetensors.torch import load_file

    parameters = sum(t.numel() for t in load_file(str(folder / "model.safetensors")).values())
    assert (info["device"], info["dtype"], info["torch"]) == ("cpu", "fp32", torch.__version__)
    assert info["parameters"] == parameters and info["dpo_peak_bytes"] == parameters * 4 * env.DPO_MEMORY_FACTOR
    assert 0 < info["free_bytes"] <= info["total_bytes"]
    assert lines[0] == f"device: cpu (fp32), torch {torch.__version__}"
    monkeypatch.setenv("PREFLOOP_DEVICE", "cuda")
    assert main(["env"]) == 2
    assert "PREFLOOP_DEVICE=cuda but torch" in capsys.readouterr().err


def test_env_never_converts_the_default_model_to_estimate(workspace, monkeypatch, capsys):
    from training import env
    from training.model import converted_model_dir

    monkeypatch.delenv("PREFLOOP_MODEL", raising=False)
    info = env.report()
    assert info["parameters"] is None and "converted on first use" in info["base_model_error"]
    assert not converted_model_dir().exists()


def test_length_batches_hold_every_index_once_in_batches_of_like_length():
    sequences = [[1] * n for n in (5, 1, 4, 2, 3, 0, 6)]
    batches = device.length_batches(sequences, 3)
    assert batches == [[5, 1, 3], [4, 2, 0], [6]]  # shortest first: lengths 0 1 2 | 3 4 5 | 6
    assert device.length_batches([], 3) == []
