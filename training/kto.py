"""The KTO round: the labeled pairs taken apart into single answers, the chosen ones desirable and
the rejected ones undesirable, and the answers people rated good or bad one at a time
(labeling/ratings.py), all in TRL's unpaired preference format (`labeling.export.unpaired_rows`),
trained with TRL's KTOTrainer and a LoRA adapter on the current policy, the two kinds' weights
balanced from their counts unless set.

    python -m training kto [--beta 0.1] [--learning-rate 5e-4] [--max-steps N] [--job-id N]
"""
from __future__ import annotations

from typing import Any

from training import distributed, preferences, registry, runner
from training.kto_config import KTORoundConfig

MIN_EXAMPLES = 2 * preferences.MIN_PAIRS
LOGGED = {"loss": "loss", "rewards/chosen": "reward_desirable", "rewards/rejected": "reward_undesirable",
          "kl": "kl", "grad_norm": "grad_norm"}


def ready(config: Any = None) -> str | None:
    """Why a KTO round cannot run now (too few answers marked good or bad), or None."""
    from labeling import ratings

    have = 2 * preferences.count_pairs() + sum(ratings.counts()[v] for v in ("up", "down"))
    if have < MIN_EXAMPLES:
        return (f"KTO needs at least {MIN_EXAMPLES} answers marked good or bad (each labeled pair gives two, each "
                f"thumb one); you have {have}. Label pairs, or rate answers one at a time on the Label page.")
    return None


def balanced_weights(desirable: int, undesirable: int) -> tuple[float, float]:
    """(desirable_weight, undesirable_weight) with desirable_weight × desirable = undesirable_weight ×
    undesirable, the smaller weight 1."""
    if desirable >= undesirable:
        return 1.0, desirable / max(undesirable, 1)
    return undesirable / max(desirable, 1), 1.0


def trl_config(config: KTORoundConfig, output_dir: str, max_steps: int | None, weights: tuple[float, float]):
    from trl import KTOConfig

    from training import device

    return KTOConfig(
        output_dir=output_dir, beta=config.beta, learning_rate=config.learning_rate, num_train_epochs=config.epochs,
        max_steps=max_steps or -1, per_device_train_batch_size=distributed.per_process(config.batch_size),
        max_length=config.max_length,
        desirable_weight=weights[0], undesirable_weight=weights[1], seed=config.seed, logging_steps=1,
        save_strategy="no", report_to=[], disable_tqdm=True, dataloader_num_workers=0, **device.trainer_precision())


def run_round(config: KTORoundConfig, reporter, max_steps: int | None = None,
              max_pairs: int | None = None) -> dict[str, Any]:
    """Labeled pairs → unpaired examples → policy → train → save version. Returns {"version": id, **metrics}."""
    from datasets import Dataset
    from trl import KTOTrainer

    from labeling import ratings
    from labeling.export import unpaired_rows
    from training import lora

    if problem := ready(config):
        raise preferences.NotReady(problem)
    reporter.start(None)
    data = preferences.preference_data("KTO", max_pairs, config.heldout_fraction, config.seed, min_pairs=0)
    thumbs = [t for t in ratings.rating_rows() if t["split"] != "heldout"]  # held-out prompts stay unseen
    examples = unpaired_rows(data.train, thumbs)
    desirable = sum(e["label"] for e in examples)
    weights = balanced_weights(desirable, len(examples) - desirable)
    if config.desirable_weight:
        weights = (config.desirable_weight, 1.0)
    def make_trainer(model, tokenizer, output_dir):
        return KTOTrainer(model=model, args=trl_config(config, output_dir, max_steps, weights),
                          train_dataset=Dataset.from_list(examples), processing_class=tokenizer,
                          peft_config=lora.lora_config(model, config.lora_r, config.lora_alpha),
                          callbacks=[runner.progress_callback(reporter, LOGGED)])

    metrics = {"examples": len(examples), "from_thumbs": len(examples) - len(unpaired_rows(data.train)),
               "desirable": desirable, "desirable_weight": weights[0], "undesirable_weight": weights[1],
               "fallback_split": data.fallback_split, **data.origin}
    return runner.lora_policy_round("kto", config, make_trainer, data.judgment_ids, metrics)


def main(argv: list[str]) -> int:
    """`python -m training kto [--config FILE.yaml] [--job-id N] [--max-steps N] [--max-pairs N] [--<field> V]`."""
    return registry.main("kto", argv)
