"""The SFT round: the current policy learns to write the answers people wrote (labeling/
demonstrations.py: rewrites after "Both bad", and imported TRL messages datasets), with TRL's
SFTTrainer and a LoRA adapter, the loss on the answer's tokens only (prompt-completion rows).

    python -m training sft [--learning-rate 2e-4] [--epochs 3] [--max-steps N] [--job-id N]

The new version's lineage records the demonstrations it learned from.
"""
from __future__ import annotations

import dataclasses
import tempfile
import time
from typing import Any

from training import rounds, versions
from training.sft_config import SFTRoundConfig

MIN_DEMONSTRATIONS = 4
LOGGED = {"loss": "loss", "mean_token_accuracy": "token_accuracy", "grad_norm": "grad_norm"}


def ready(config: Any = None) -> str | None:
    """Why an SFT round cannot run now, or None."""
    have = len(training_demonstrations())
    if have < MIN_DEMONSTRATIONS:
        return (f"SFT needs at least {MIN_DEMONSTRATIONS} written answers; you have {have}. Write one after "
                f"pressing Both bad on the Label page, or import a messages dataset on the Data page.")
    return None


def training_demonstrations() -> list[dict]:
    """The demonstrations an SFT round learns from: those on training prompts (held-out prompts stay
    unseen, for the Evaluate page)."""
    from labeling import demonstrations

    return [r for r in demonstrations.sft_rows() if r["split"] != "heldout"]


def trl_config(config: SFTRoundConfig, output_dir: str, max_steps: int | None):
    from trl import SFTConfig

    from training import device

    return SFTConfig(
        output_dir=output_dir, learning_rate=config.learning_rate, num_train_epochs=config.epochs,
        max_steps=max_steps or -1, per_device_train_batch_size=config.batch_size, max_length=config.max_length,
        completion_only_loss=True, seed=config.seed, logging_steps=1,
        save_strategy="no", report_to=[], disable_tqdm=True, dataloader_num_workers=0, **device.trainer_precision())


def run_round(config: SFTRoundConfig, reporter, max_steps: int | None = None,
              max_pairs: int | None = None) -> dict[str, Any]:
    """Demonstrations → policy → train → save version. Returns {"version": id, **metrics}.
    `max_pairs` caps the demonstrations (the Train page's quick run)."""
    from datasets import Dataset
    from trl import SFTTrainer

    from training import lora
    from training.model import load_policy

    if problem := ready(config):
        raise rounds.NotReady(problem)
    reporter.start(None)
    rows = training_demonstrations()[: max_pairs or None]
    base_id = versions.ensure_base_version()
    parent_id = versions.current_policy_id() or base_id
    model, tokenizer = load_policy(parent_id)
    tokenizer.padding_side = "right"  # training pads on the right; generation reloads the tokenizer
    dataset = Dataset.from_list([{"prompt": r["prompt"], "completion": r["completion"]} for r in rows])
    with tempfile.TemporaryDirectory(prefix="sft-", dir=versions.versions_root().parent) as output_dir:
        trainer = SFTTrainer(model=model, args=trl_config(config, output_dir, max_steps), train_dataset=dataset,
                             processing_class=tokenizer,
                             peft_config=lora.lora_config(model, config.lora_r, config.lora_alpha),
                             callbacks=[rounds.progress_callback(reporter, LOGGED)])
        started = time.perf_counter()
        output = trainer.train()
        seconds = time.perf_counter() - started
    peft_model = trainer.model
    metrics = {"train_loss": output.training_loss, "train_seconds": seconds, "steps": trainer.state.global_step,
               "demonstrations": len(rows), "demonstration_ids": [r["demonstration_id"] for r in rows],
               "demonstrations_from_people": sum(r["origin"] == "human" for r in rows)}
    last = [h for h in trainer.state.log_history if "mean_token_accuracy" in h]
    if last:
        metrics["token_accuracy"] = last[-1]["mean_token_accuracy"]

    def write(folder):
        peft_model.save_pretrained(folder, safe_serialization=True)
        tokenizer.padding_side = "left"
        tokenizer.save_pretrained(folder)

    version_id = versions.create_version("policy", "sft", parent_id, dataclasses.asdict(config), [], metrics, write,
                                         make_current=config.make_current)
    return {"version": version_id, "parent": parent_id, "current": versions.current_policy_id() == version_id,
            **{k: v for k, v in metrics.items() if k != "demonstration_ids"}}


def main(argv: list[str]) -> int:
    """`python -m training sft [--config FILE.yaml] [--job-id N] [--max-steps N] [--max-pairs N] [--<field> V]`."""
    from training import registry

    return registry.main("sft", argv)
