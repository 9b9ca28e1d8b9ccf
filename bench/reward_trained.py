"""The reward models of bench/reward.py that train: a reward round's fine-tuned model (MiniLM in
full, or LoRA on the policy's base model with a scalar head) and DPO's implicit reward
(β·log π/π_base of a DPO round's policy), each scored on pairs it never saw. Minutes to hours on a
CPU, where the frozen options of bench/reward.py cost seconds once the answers are read."""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from bench.reward_scoring import accuracy, texts
from training.config_fields import config_from_dict
from training.dpo_config import DPORoundConfig
from training.reward_config import RewardRoundConfig

FINETUNE_SOURCES = ("hh", "oasst", "both")
FINETUNE_FIXED = ("backbone", "method", "backbone_path")  # what --finetune-set may not change


def finetune_spec(text: str) -> tuple[str, str, int | None]:
    """`--finetune BACKBONE:SOURCE[:PAIRS]` read as (backbone, source, pairs or None); ValueError,
    in one sentence, for anything else."""
    parts = text.split(":")
    if len(parts) not in (2, 3) or parts[0] not in ("minilm", "policy") or parts[1] not in FINETUNE_SOURCES \
            or (len(parts) == 3 and not (parts[2].isdigit() and int(parts[2]) > 0)):
        raise ValueError(f"--finetune {text!r}: write BACKBONE:SOURCE[:PAIRS], BACKBONE minilm or policy, SOURCE "
                         f"{', '.join(FINETUNE_SOURCES)}, PAIRS a positive number (e.g. policy:hh:400).")
    return parts[0], parts[1], int(parts[2]) if len(parts) == 3 else None


def run_finetune(rows: list[dict], hh_train: np.ndarray, hh_heldout: np.ndarray, oasst: np.ndarray,
                 folds: np.ndarray, home: Path, backbone: str = "minilm", source: str = "both",
                 pairs: int | None = None, max_steps: int | None = None, settings: dict | None = None) -> dict:
    """A reward round with method fine-tune and its defaults: MiniLM trained in full, or LoRA on the
    policy's base model with a scalar head (TRL RewardTrainer). Trained on `source` (hh: the hh
    training split; oasst: the OASST trees outside fold 0; both: the two), on its first `pairs`
    pairs; scored on what it never saw: trained on hh, hh held out and every OASST pair (hh →
    OASST); on OASST, OASST fold 0 and hh held out (OASST → hh); on both, OASST fold 0 and hh held out.
    `settings`: other fields of the reward round than its defaults (`--finetune-set`)."""
    from training import jobs, metrics, preferences, reward

    config = config_from_dict(RewardRoundConfig, {**(settings or {}), "backbone": backbone, "method": "fine-tune"},
                              where="--finetune-set")
    fold0 = oasst & (folds == 0)
    train_mask = {"hh": hh_train, "oasst": oasst & (folds != 0), "both": hh_train | (oasst & (folds != 0))}[source]
    scored = {"hh": {"hh": hh_heldout, "hh_to_oasst": oasst},
              "oasst": {"oasst_fold0": fold0, "oasst_to_hh": hh_heldout},
              "both": {"oasst_fold0": fold0, "hh": hh_heldout}}[source]
    train_rows = [r for r, m in zip(rows, train_mask) if m][:pairs]
    data = preferences.PreferenceData(train_rows, [], [], False)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=home) as out:
        model, tokenizer, _, trained = reward.train(config, data, jobs.Reporter(None), out, max_steps)
    seconds = time.perf_counter() - started
    scorer = reward.make_scorer(model, tokenizer, config.max_length, batch_size=16)  # scores in eval mode
    result = {"option": f"{backbone} fine-tuned ({'LoRA r' + str(config.lora_r) + ' + scalar head' if backbone == 'policy' else 'in full'}, "
                        f"TRL RewardTrainer, lr {config.lr:g}, {config.epochs:g} epochs), trained on {len(train_rows)} "
                        f"{source} pairs", "backbone": backbone, "source": source, "pairs": len(train_rows),
              "settings": settings or {}, "steps": trained["steps"], "train_loss": round(trained["train_loss"], 4),
              "train_s": round(seconds, 1)}
    for name, mask in scored.items():
        chosen_rows = [r for r, m in zip(rows, mask) if m]
        prompts = [r["prompt"] for r in chosen_rows]
        answers = [texts(chosen_rows, side) for side in ("chosen", "rejected")]
        rewards = [scorer(prompts, side).numpy() for side in answers]
        won = metrics.pair_outcomes(*rewards)
        result[name] = {**accuracy(won, [r["conversation"] for r in chosen_rows]),
                        "length_r": round(metrics.length_correlation(np.concatenate(rewards), answers[0] + answers[1]), 3),
                        "longer_wins": round(float(metrics.longer_wins(*answers).mean()), 3)}
    result["total_s"] = round(time.perf_counter() - started, 1)
    return result


def run_implicit(rows: list[dict], hh_train: np.ndarray, hh_heldout: np.ndarray, oasst: np.ndarray, n: int,
                 max_length: int, max_steps: int | None, home: Path) -> dict:
    """DPO's implicit reward as a reward model: a DPO round (the defaults) on the first `n` hh training
    pairs, then every held-out response scored by β·log π/π_base, read as the reward round reads it
    (`reward.encode`: the prompt kept, the response's end cut at `max_length` tokens)."""
    from training import dpo, jobs, metrics, preferences, versions
    from training import model as models

    config = DPORoundConfig()
    train_rows = [r for r, m in zip(rows, hh_train) if m][:n]
    model, tokenizer = models.load_policy(versions.ensure_base_version())
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=home) as out:
        policy, trained = dpo.train(model, tokenizer, preferences.PreferenceData(train_rows, [], [], False), config,
                                    jobs.Reporter(None), out, max_steps)
    train_seconds = time.perf_counter() - started
    policy.eval()
    result = {"option": f"DPO implicit reward (β {config.beta:g}), trained on {len(train_rows)} hh pairs",
              "steps": trained["steps"], "train_s": round(train_seconds, 1)}
    for name, mask in (("hh", hh_heldout), ("hh_to_oasst", oasst)):
        scored = [r for r, m in zip(rows, mask) if m]
        answers = {side: texts(scored, side) for side in ("chosen", "rejected")}
        sides = {side: implicit_rewards(policy, tokenizer, [r["prompt"] for r in scored], answers[side],
                                        max_length, config.beta) for side in ("chosen", "rejected")}
        conversations = [r["conversation"] for r in scored]
        for scoring, k in (("sum", 0), ("per_token", 1)):
            won = metrics.pair_outcomes(sides["chosen"][k], sides["rejected"][k])
            rewards = np.concatenate([sides[s][k] for s in ("chosen", "rejected")])
            result[f"{name}_{scoring}"] = {**accuracy(won, conversations),
                                           "length_r": round(metrics.length_correlation(rewards, answers["chosen"] + answers["rejected"]), 3)}
    result["total_s"] = round(time.perf_counter() - started, 1)
    return result


def implicit_rewards(policy, tokenizer, prompts: list[list[dict]], responses: list[str], max_length: int, beta: float,
                     batch_size: int = 8) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(β·log π/π_ref summed over each response's tokens, the same per token, the token count), where
    π is `policy` (a peft model) and π_ref the same network with its adapter off. Shape: (n,) each."""
    from training.evaluate import response_logprob_sums
    from training.reward import encode_parts

    encoded = [encode_parts(tokenizer, p, r, max_length) for p, r in zip(prompts, responses)]
    ids, starts = [i for i, _ in encoded], [start for _, start in encoded]
    tuned = response_logprob_sums(policy, ids, starts, tokenizer.pad_token_id, batch_size).numpy()
    with policy.disable_adapter():
        reference = response_logprob_sums(policy, ids, starts, tokenizer.pad_token_id, batch_size).numpy()
    total = beta * (tuned - reference)
    count = np.array([len(i) - start for i, start in zip(ids, starts)], dtype=float)
    return total, total / np.maximum(count, 1), count
