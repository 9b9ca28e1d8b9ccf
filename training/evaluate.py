"""Measure each policy version: mean reward and KL from the base model, on held-out prompts.

For a version v, K responses per prompt are sampled from π_v at temperature 1 (no top-p: the KL
estimate needs samples from π_v itself), with the same prompts and seeds for every version. Then

    KL(π_v ‖ π_base) ≈ mean over samples of Σ_t [log π_v(y_t | x, y_<t) − log π_base(y_t | x, y_<t)]

is the per-sequence estimate (Stiennon et al. 2020 plot reward against it), reported with its
standard error, and the same sum divided by the token count is the per-token value. Reward is the
chosen reward version's mean score. Points are stored (`EvalPoint`) and drawn as a PNG.
"""
from __future__ import annotations

import math
from dataclasses import asdict

import torch
from sqlalchemy import select

from labeling import db
from labeling.models import EvalPoint, Prompt
from training import jobs
from training.losses import token_logprobs
from training.rollout import eos_ids, position_ids, response_mask_from_ids
from training.evaluate_config import EvaluateConfig
from training.rounds import NotReady


def sequence_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                      response_mask: torch.Tensor) -> torch.Tensor:
    """Sum of log π(y_t | ·) over the response tokens of each row.

    Shape: input_ids, attention_mask, response_mask (B, T); returns (B,).
    """
    # positions count real tokens only, as in generation, so left padding does not shift them
    logits = model(input_ids=input_ids, attention_mask=attention_mask,
                   position_ids=position_ids(attention_mask)).logits[:, :-1]  # (B, T-1, V)
    targets = input_ids[:, 1:]  # (B, T-1)
    logps = token_logprobs(logits.float(), targets)  # (B, T-1)
    return (logps * response_mask[:, 1:]).sum(-1)


@torch.no_grad()
def sample(model, tokenizer, prompts: list[list[dict]], samples: int, max_new_tokens: int, seed: int):
    """K samples per prompt at temperature 1. Returns (input_ids, attention_mask, response_mask, texts),
    rows ordered prompt-major: row i*K + k is sample k of prompt i."""
    tokenizer.padding_side = "left"
    texts = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in prompts]
    enc = tokenizer([t for t in texts for _ in range(samples)], return_tensors="pt", padding=True,
                    add_special_tokens=False)
    stop = eos_ids(model, tokenizer)  # every token that ends a response (a model may have several)
    torch.manual_seed(seed)
    out = model.generate(**enc, do_sample=True, temperature=1.0, top_p=1.0, top_k=0, eos_token_id=stop,
                         max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id)
    P = enc["input_ids"].shape[1]
    response = out[:, P:]  # (B, R)
    # keep tokens up to and including the first stop token; everything after is padding
    kept = response_mask_from_ids(response, stop)  # (B, R)
    after_eos = kept == 0
    response_mask = torch.cat([torch.zeros_like(enc["input_ids"]), kept], dim=1)
    attention_mask = torch.cat([enc["attention_mask"], kept], dim=1)
    decoded = tokenizer.batch_decode(response.masked_fill(after_eos, tokenizer.pad_token_id), skip_special_tokens=True)
    return out, attention_mask, response_mask, [d.strip() for d in decoded]


def _mean_se(xs: list[float]) -> tuple[float, float]:
    n = len(xs)
    mean = sum(xs) / n
    var = sum((x - mean) ** 2 for x in xs) / (n - 1) if n > 1 else 0.0
    return mean, math.sqrt(var / n)


def heldout_prompts(n: int) -> list[tuple[int, list[dict]]]:
    """The first `n` held-out prompts by id (train prompts fill in when too few are held out)."""
    with db.session() as s:
        rows = list(s.execute(select(Prompt.id, Prompt.messages).where(Prompt.split == "heldout")
                              .order_by(Prompt.id).limit(n)))
        if len(rows) < n:
            rows += list(s.execute(select(Prompt.id, Prompt.messages).where(Prompt.split == "train")
                                   .order_by(Prompt.id).limit(n - len(rows))))
    return [(r[0], r[1]) for r in rows]


class EvaluationError(NotReady):
    """Evaluation cannot run; the message is one sentence for the user."""


@torch.no_grad()
def measure(policy, base, tokenizer, prompts: list[list[dict]], scorer, config: EvaluateConfig) -> dict:
    """Sample from `policy`, score with `scorer`, and estimate KL(policy ‖ base) with standard errors."""
    ids, attn, rmask, texts = sample(policy, tokenizer, prompts, config.samples, config.max_new_tokens, config.seed)
    kls, ntoks = [], []
    for lo in range(0, ids.shape[0], config.batch_size):
        batch = ids[lo:lo + config.batch_size], attn[lo:lo + config.batch_size], rmask[lo:lo + config.batch_size]
        kls += (sequence_logprobs(policy, *batch) - sequence_logprobs(base, *batch)).tolist()
        ntoks += batch[2].sum(-1).tolist()
    repeated = [p for p in prompts for _ in range(config.samples)]
    scores = scorer(repeated, texts).float().tolist()
    reward, reward_se = _mean_se(scores)
    kl, kl_se = _mean_se(kls)
    return {"reward": reward, "reward_se": reward_se, "kl": kl, "kl_se": kl_se,
            "kl_per_token": sum(kls) / max(sum(ntoks), 1), "samples": len(texts),
            "mean_tokens": sum(ntoks) / len(ntoks), "example": texts[0] if texts else ""}


def evaluate(config: EvaluateConfig, reporter: jobs.Reporter | None = None) -> dict:
    """Measure every requested policy version against the base; store and plot the points."""
    from training import model as models, points, reward, versions

    base_id = versions.ensure_base_version()
    named = [v.strip() for v in config.versions.split(",") if v.strip()]
    version_ids = named or [v.id for v in versions.list_versions("policy")]
    reward_id = config.reward_version or versions.latest_reward_id()
    if reward_id is None:
        raise EvaluationError("Evaluation needs a reward model to score responses: train one first "
                              "(python -m training reward, or Reward on the Train page).")
    prompts = heldout_prompts(config.prompts)
    if not prompts:
        raise EvaluationError("There are no prompts to evaluate on: import prompts or pairs first.")
    with db.session() as s:  # heldout_prompts fills in with training prompts when too few are held out
        train_prompts = len(prompts) - len(set(s.scalars(select(Prompt.id).where(
            Prompt.id.in_([i for i, _ in prompts]), Prompt.split == "heldout"))))
    scorer = reward.load_scorer(reward_id)
    base, tokenizer = models.load_policy(base_id)
    base.eval()
    reporter = reporter or jobs.Reporter(None)
    reporter.start(len(version_ids))
    stored, skipped = [], []
    for step, version_id in enumerate(version_ids, 1):
        try:
            policy = base if version_id == base_id else models.load_policy(version_id)[0].eval()
        except models.ModelPathError:
            if named:  # asked for by name: the user hears why it cannot be measured
                raise
            skipped.append(version_id)  # "all versions": one whose folder is gone does not stop the others
            continue
        m = measure(policy, base, tokenizer, [p for _, p in prompts], scorer, config)
        details = {"prompt_ids": [i for i, _ in prompts], "train_prompts": train_prompts, "config": asdict(config),
                   "samples": m["samples"], "mean_tokens": m["mean_tokens"], "example": m["example"]}
        with db.session() as s:
            s.add(EvalPoint(version_id=version_id, reward_version_id=reward_id, reward=m["reward"],
                            reward_se=m["reward_se"], kl=m["kl"], kl_se=m["kl_se"],
                            kl_per_token=m["kl_per_token"], details=details))
        stored.append({"version": version_id, **{k: m[k] for k in ("reward", "reward_se", "kl", "kl_se", "kl_per_token")}})
        reporter.step(step, {"reward": m["reward"], "kl": m["kl"]})
    plot = points.plot_reward_vs_kl(points.latest_points(reward_id), points.plot_path())
    return {"points": stored, "plot": str(plot), "reward_version": reward_id, "train_prompts": train_prompts,
            "skipped": skipped}


def main(argv: list[str]) -> int:
    """`python -m training evaluate [--versions A,B] [--prompts N] [--samples K] [--job-id N]`."""
    from training import rounds

    def run(config, reporter, **_):
        return evaluate(config, reporter)

    return rounds.run_main(argv, EvaluateConfig, run, "python -m training evaluate")
