"""`python -m training dpo`: a DPO round (Rafailov et al. 2023) on the labeled pairs.

TRL's `DPOTrainer` trains a fresh LoRA adapter on the current policy (`load_policy()`, every
earlier adapter merged in). `ref_model=None` with a peft model makes the reference the same
network with the adapter disabled, so there is no second copy of the model in memory. Per step
it reports loss, implicit-reward accuracy and margin and the chosen/rejected log-probs; at the
end it evaluates on the held-out prompts and saves the adapter (with the tokenizer) as a new
policy version whose parent is the starting version and whose lineage is the exact judgments used.

Heavy imports (torch, trl, peft) happen inside the functions, so a settings error is answered
before they load. The round is declared in `training/registry.py`.
"""
from __future__ import annotations

import dataclasses
import random
import tempfile
import time
from typing import Any

from training import distributed, preferences, registry, runner, versions
from training.dpo_config import DPORoundConfig

MIN_PAIRS = preferences.MIN_PAIRS
LOGGED = {  # TRL's log key -> our metric name (the curves on the Train page)
    "loss": "loss", "rewards/accuracies": "accuracy", "rewards/margins": "margin",
    "rewards/chosen": "reward_chosen", "rewards/rejected": "reward_rejected",
    "logps/chosen": "logp_chosen", "logps/rejected": "logp_rejected", "grad_norm": "grad_norm",
}


def plan_sentence(config: DPORoundConfig | None = None, here: str | None = None) -> str | None:
    """What a round with these settings (default: the defaults) will do on the labels there are now,
    with a time from the pace of the last DPO round; given what this machine trains on (`here`, as
    `versions.trained_on()` says it: the Train page asks a child process, so it never loads torch),
    the last one trained on the same device and precision, else the last, saying where it trained.
    None when there are too few pairs."""
    settings = "these settings" if config else "the defaults"  # the Train page's form is read only when submitted
    config = config or DPORoundConfig()
    _, rows, train, heldout = preferences.planned_split(config)
    if len(rows) < MIN_PAIRS:
        return None
    plan = config.plan(len(train))
    sentence = (f"With {settings}: {plan['pairs']} training pairs ({len(heldout)} held out), "
                f"{plan['epochs']:g} epochs, {plan['steps']} steps")
    hint = iterative_hint(config, rows)
    paced = [v for v in versions.list_versions("policy") if v.method == "dpo" and (v.metrics or {}).get("pairs_per_second")]
    if not paced:
        return sentence + "; the time is known after a first round." + hint
    # a round trained on another device or precision keeps another pace
    last = next((v for v in reversed(paced) if here and v.metrics.get("trained_on") == here), paced[-1])
    minutes = plan["pairs"] * plan["epochs"] / last.metrics["pairs_per_second"] / 60
    there = last.metrics.get("trained_on") or "a machine it did not record"
    elsewhere = f", trained on {there}; this round trains on {here}" if here and there != here else ""
    return sentence + f", about {max(1, round(minutes))} minutes at the pace of {last.id}{elsewhere}." + hint


def iterative_hint(config: DPORoundConfig, rows: list[dict]) -> str:
    """A sentence when the current policy was trained and at least MIN_PAIRS labeled pairs are its own
    answers, but the round would train on all the labels: iterative DPO's settings, else ""."""
    current = versions.current_policy_id()
    row = versions.get_version(current) if current else None
    if config.on_policy or row is None or row.method == "base":
        return ""
    own = len(preferences.on_policy_rows(rows))
    if own < MIN_PAIRS or own == len(rows):
        return ""
    return (f" {own} of the labeled pairs are {current}'s own answers: with pairs on-policy and reference parent "
            f"(Advanced) the round learns from those alone, held to {current}, as iterative DPO does (in prefloop's "
            "learning benchmark three such rounds did at least as well as one round on all the labels, each in less time).")


def to_dataset(rows: list[dict], tokenizer, max_prompt_length: int):
    """TRL's conversational preference columns, prompts trimmed to `max_prompt_length` tokens."""
    from datasets import Dataset

    def count(messages):
        return len(tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True, return_dict=False))

    return Dataset.from_list([
        {"prompt": preferences.trim_prompt(r["prompt"], count, max_prompt_length),
         "chosen": r["chosen"], "rejected": r["rejected"]} for r in rows])


def batched_by_length(rows: list[dict], batch_size: int, seed: int) -> list[dict]:
    """The rows in batches of similar length, the batches in random order: a batch is padded to
    its longest pair, so mixing lengths computes on padding (as transformers' group_by_length,
    which TRL's DPO dataset does not take)."""
    def length(row: dict) -> int:  # characters of the prompt and the longer response
        prompt = sum(len(m["content"]) for m in row["prompt"])
        return prompt + max(len(row["chosen"][-1]["content"]), len(row["rejected"][-1]["content"]))

    ordered = sorted(rows, key=length)
    batches = [ordered[i:i + batch_size] for i in range(0, len(ordered), batch_size)]
    random.Random(seed).shuffle(batches)
    return [row for batch in batches for row in batch]


def prompt_budget(config: DPORoundConfig) -> int:
    """Tokens a prompt may keep: max_prompt_length, but at most half of max_length. TRL cuts a pair
    at max_length from the end, so a prompt as long as max_length would leave no response to compare."""
    return min(config.max_prompt_length, config.max_length // 2)


def lora_config(config: DPORoundConfig, model):
    """The new adapter: every linear layer of `model`'s architecture but its LM head (training/lora.py)."""
    from training import lora

    return lora.lora_config(model, config.lora_r, config.lora_alpha)


def trl_config(config: DPORoundConfig, output_dir: str, max_steps: int | None, epochs: float):
    """TRL's DPOConfig: the device's precision (training/device.py), no saving, a log line per step."""
    from trl import DPOConfig

    from training import device

    # across processes TRL caches the reference log-probs in each one's own temporary folder, where
    # the others cannot read them: a distributed round computes them as it goes
    distributed_run = distributed.world_size() > 1  # (a "yes" is refused by config.problem() there)
    precompute = {"yes": True, "no": False,
                  "auto": (epochs > 1 or bool(config.length_alpha)) and not distributed_run}[config.precompute_ref_log_probs]
    return DPOConfig(
        output_dir=output_dir, beta=config.beta, loss_type=[config.loss_type], label_smoothing=config.label_smoothing,
        ld_alpha=config.ld_alpha,
        learning_rate=config.learning_rate, num_train_epochs=epochs, max_steps=max_steps or -1,
        per_device_train_batch_size=distributed.per_process(config.batch_size),
        per_device_eval_batch_size=distributed.per_process(config.batch_size),
        max_length=config.max_length, precompute_ref_log_probs=precompute, seed=config.seed,
        logging_steps=1, save_strategy="no", report_to=[], **device.trainer_precision(),
        gradient_checkpointing=config.gradient_checkpointing,
        train_sampling_strategy="sequential",  # the order batched_by_length chose
        disable_tqdm=True, dataloader_num_workers=0,
    )


# TRL scores tokens through the LM head in chunks of 32,768 positions, so on a CPU batch (a few
# thousand positions) the whole (positions × 49,152-word vocabulary) logits, their softmax and
# their gradient are live at once. With 1,024 positions per chunk a 16-pair SmolLM2 round peaked at
# 4.0 GB instead of 5.7 GB (bench/dpo.py); it took 147 s against 188 s, on a machine whose measured
# matmul rate also rose between the two runs, so "no slower" is all that is claimed.
LOGPROB_CHUNK_POSITIONS = 1024


def small_logprob_chunks() -> None:
    """Score at most LOGPROB_CHUNK_POSITIONS positions per chunk of TRL's fused LM head.

    A private TRL constant, set because nothing public reaches it: in TRL 1.16 neither DPOConfig
    nor `add_fused_lm_head` (which DPOTrainer calls in its constructor) takes a chunk size, and
    owning the fused head would mean copying TRL's autograd kernel. tests/test_dpo.py checks the
    constant is still there, so a TRL upgrade that drops it fails a test instead of silently
    costing 1.7 GB more on SmolLM2."""
    import trl.trainer.utils as trl_utils

    if hasattr(trl_utils, "_CHUNKED_LOGPROB_CHUNK_SIZE"):  # other TRL versions may lack it
        trl_utils._CHUNKED_LOGPROB_CHUNK_SIZE = min(trl_utils._CHUNKED_LOGPROB_CHUNK_SIZE, LOGPROB_CHUNK_POSITIONS)


def trainer_class(length_alpha: float | None):
    """TRL's DPOTrainer, or with a length term (R-DPO) when `length_alpha` is set."""
    from trl import DPOTrainer

    if not length_alpha:
        return DPOTrainer

    class LengthRegularisedDPOTrainer(DPOTrainer):
        """R-DPO through TRL's public hook: the reference log-probs, computed once before training,
        are lowered by (α/β) per response token, so β·(chosen − rejected log-ratio) gains
        α·(chosen tokens − rejected tokens): a length difference explains part of each preference,
        and the policy learns less "longer" from it. Only losses of that difference take it as
        such (DPORoundConfig.problem). `length_term` off: the plain reference (for evaluation)."""

        length_term = True

        def compute_ref_log_probs(self, model, inputs):
            chosen, rejected = super().compute_ref_log_probs(model, inputs)
            if not self.length_term:
                return chosen, rejected
            tokens_chosen, tokens_rejected = inputs["completion_mask"].sum(dim=1).chunk(2, dim=0)
            shift = length_alpha / self.beta
            return chosen - shift * tokens_chosen.to(chosen.dtype), rejected - shift * tokens_rejected.to(rejected.dtype)

    return LengthRegularisedDPOTrainer


def train(model, tokenizer, data: preferences.PreferenceData, config: DPORoundConfig, reporter,
          output_dir: str, max_steps: int | None = None, reference=None) -> tuple[Any, dict[str, float]]:
    """Train a LoRA adapter with DPO; return (the peft model, metrics incl. held-out ones).
    `reference` None: the reference is `model` itself with the adapter off."""
    small_logprob_chunks()

    prompt_tokens = prompt_budget(config)
    train_set = to_dataset(batched_by_length(data.train, config.batch_size, config.seed), tokenizer, prompt_tokens)
    heldout_set = to_dataset(data.heldout, tokenizer, prompt_tokens) if data.heldout else None
    epochs = config.epochs_for(len(data.train))
    args = trl_config(config, output_dir, max_steps, epochs)
    if config.length_alpha and not args.precompute_ref_log_probs:  # config.problem() refuses it first in a round
        raise ValueError("length_alpha needs the reference log-probs computed once before training.")
    trainer = trainer_class(config.length_alpha)(
        model=model, ref_model=reference, args=args, train_dataset=train_set, processing_class=tokenizer,
        peft_config=lora_config(config, model), callbacks=[runner.progress_callback(reporter, LOGGED)],
    )
    started = time.perf_counter()
    output = trainer.train()
    seconds = time.perf_counter() - started
    metrics = {"train_loss": output.training_loss, "train_seconds": seconds, "steps": trainer.state.global_step,
               "pairs": len(data.train), "epochs": epochs}
    # pairs actually seen (a --max-steps run stops early), per second of training
    metrics["pairs_per_second"] = min(trainer.state.global_step * config.batch_size,
                                      len(data.train) * epochs) / seconds
    last = [h for h in trainer.state.log_history if "rewards/accuracies" in h]
    if last:
        metrics["train_accuracy"] = last[-1]["rewards/accuracies"]
        metrics["tokens"] = int(last[-1].get("num_tokens", 0))  # prompt + responses seen in training
    if heldout_set is not None:  # scored after training, so an R-DPO round can leave its length term out
        trainer.length_term = False  # held-out accuracy: the implicit reward alone, as for plain DPO
        ev = trainer.evaluate(heldout_set)
        metrics.update({"heldout_pairs": len(data.heldout), "heldout_loss": ev["eval_loss"],
                        "heldout_accuracy": ev["eval_rewards/accuracies"], "heldout_margin": ev["eval_rewards/margins"]})
    return trainer.model, metrics


def run_round(config: DPORoundConfig, reporter, max_steps: int | None = None,
              max_pairs: int | None = None) -> dict[str, Any]:
    """Data → policy → train → save version → metrics. Returns {"version": id, **metrics}."""
    from training.model import load_policy

    if problem := config.problem():  # a config built in code (the CLI and the form check it as they read it)
        raise preferences.NotReady(problem)
    reporter.start(None)
    data = preferences.preference_data("DPO", max_pairs, config.heldout_fraction, config.seed, MIN_PAIRS, config.auto_pairs,
                                       on_policy=config.on_policy)
    base_id = versions.ensure_base_version()
    parent_id = versions.current_policy_id()
    model, tokenizer = load_policy(parent_id, quantize=True)
    # the parent with the new adapter off is the reference unless it is to be the base and differs from it
    reference = load_policy(base_id, quantize=True)[0] if config.reference == "base" and parent_id != base_id else None
    with tempfile.TemporaryDirectory(prefix="dpo-", dir=versions.versions_root().parent) as output_dir:
        peft_model, metrics = train(model, tokenizer, data, config, reporter, output_dir, max_steps, reference)
    metrics["fallback_split"] = data.fallback_split
    metrics.update(data.origin)

    def write(folder):
        peft_model.save_pretrained(folder, safe_serialization=True)
        tokenizer.save_pretrained(folder)

    version_id = versions.create_version(
        "policy", "dpo", parent_id, dataclasses.asdict(config), data.judgment_ids, metrics, write,
        make_current=config.make_current)
    # current: whether the new version is now the current policy (not when make_current is off, or
    # when someone made another version current while this round ran)
    return {"version": version_id, "parent": parent_id, "current": versions.current_policy_id() == version_id,
            **metrics}


def main(argv: list[str]) -> int:
    """`python -m training dpo [--config FILE.yaml] [--job-id N] [--max-steps N] [--max-pairs N] [--<field> V]`."""
    return registry.main("dpo", argv)
