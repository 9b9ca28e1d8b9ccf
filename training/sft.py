"""The SFT round: the current policy learns to write the answers people wrote (labeling/
demonstrations.py: rewrites after "Both bad", and imported TRL messages datasets), with TRL's
SFTTrainer and a LoRA adapter, the loss on the answer's tokens only (prompt-completion rows).

    python -m training sft [--learning-rate 2e-4] [--epochs 3] [--max-steps N] [--job-id N]

The new version's lineage records the demonstrations it learned from.
"""
from __future__ import annotations

from typing import Any

from training import distributed, preferences, registry, runner
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
        max_steps=max_steps or -1, per_device_train_batch_size=distributed.per_process(config.batch_size),
        max_length=config.max_length,
        completion_only_loss=True, seed=config.seed, logging_steps=1,
        save_strategy="no", report_to=[], disable_tqdm=True, dataloader_num_workers=0, **device.trainer_precision())


def run_round(config: SFTRoundConfig, reporter, max_steps: int | None = None,
              max_pairs: int | None = None) -> dict[str, Any]:
    """Demonstrations → policy → train → save version. Returns {"version": id, **metrics}.
    `max_pairs` caps the demonstrations (the Train page's quick run)."""
    from datasets import Dataset
    from trl import SFTTrainer

    from training import lora

    if problem := ready(config):
        raise preferences.NotReady(problem)
    reporter.start(None)
    rows = training_demonstrations()[: max_pairs or None]
    dataset = Dataset.from_list([{"prompt": r["prompt"], "completion": r["completion"]} for r in rows])

    def make_trainer(model, tokenizer, output_dir):
        tokenizer.padding_side = "right"  # training pads on the right; the saved tokenizer goes back to left
        return SFTTrainer(model=model, args=trl_config(config, output_dir, max_steps), train_dataset=dataset,
                          processing_class=tokenizer, peft_config=lora.lora_config(model, config.lora_r, config.lora_alpha),
                          callbacks=[runner.progress_callback(reporter, LOGGED)])

    def token_accuracy(trainer) -> dict:
        last = [h for h in trainer.state.log_history if "mean_token_accuracy" in h]
        return {"token_accuracy": last[-1]["mean_token_accuracy"]} if last else {}

    metrics = {"demonstrations": len(rows), "demonstration_ids": [r["demonstration_id"] for r in rows],
               "demonstrations_from_people": sum(r["origin"] == "human" for r in rows)}
    return runner.lora_policy_round("sft", config, make_trainer, [], metrics, token_accuracy)


def main(argv: list[str]) -> int:
    """`python -m training sft [--config FILE.yaml] [--job-id N] [--max-steps N] [--max-pairs N] [--<field> V]`."""
    return registry.main("sft", argv)
