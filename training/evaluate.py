"""Measure each policy version: mean reward and KL from the base model, on held-out prompts.

For a version v, K responses per prompt are sampled from π_v at temperature 1 (no top-p: the KL
estimate needs samples from π_v itself), with the same prompts and seeds for every version. Then

    KL(π_v ‖ π_base) ≈ mean over samples y of Σ_t KL(π_v(· | x, y_<t) ‖ π_base(· | x, y_<t))

is the per-sequence estimate (Stiennon et al. 2020 plot reward against it): the exact KL over the
whole vocabulary at each sampled position, which is never negative (the sampled-token estimate
Σ_t log π_v(y_t) − log π_base(y_t) drew short rounds at KL −0.04). It and the reward are reported
with standard errors clustered by prompt (K samples of one prompt are not K independent draws),
and the same sum divided by the token count is the per-token value. Reward is the
chosen reward version's mean score. Points are stored (`labeling.eval_points`) and drawn as a PNG.
"""
from __future__ import annotations

from dataclasses import asdict

import torch

from labeling import eval_points, prompts as stored_prompts
from labeling.paired import clustered_mean_se
from training import jobs, runner, sampling
from training.losses import exact_kl, token_logprobs
from training.rollout import position_ids
from training.evaluate_config import EvaluateConfig
from training.preferences import NotReady


def sequence_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                      response_mask: torch.Tensor) -> torch.Tensor:
    """Sum of log π(y_t | ·) over the response tokens of each row.

    Shape: input_ids, attention_mask, response_mask (B, T); returns (B,).
    """
    # the head reads only the positions that predict a response token, from the batch's first one on
    # (a long prompt's logits, (B, T, V) in fp32, would cost memory and work for nothing)
    columns = response_mask[:, 1:].any(0).nonzero()
    first = int(columns[0]) + 1 if len(columns) else input_ids.shape[1]  # none: one position, no targets
    # positions count real tokens only, as in generation, so left padding does not shift them
    logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids(attention_mask),
                   logits_to_keep=input_ids.shape[1] - first + 1).logits[:, :-1]  # (B, T-first, V)
    logps = token_logprobs(logits.float(), input_ids[:, first:])  # (B, T-first)
    return (logps * response_mask[:, first:]).sum(-1)


@torch.no_grad()
def response_logprob_sums(model, ids: list[list[int]], starts: list[int], pad_id: int | None,
                          batch_size: int = 8) -> torch.Tensor:
    """Σ log π(y_t | ·) over the tokens of each row of `ids` from `starts` on (the response), read in
    batches of like length, right-padded, on the model's device; the sums come back in CPU memory,
    in the rows' order. Shape: (n,)."""
    from training import device

    on = next(model.parameters()).device
    out = torch.zeros(len(ids))
    for chunk in device.length_batches(ids, batch_size):
        width = max(len(ids[k]) for k in chunk)
        input_ids = torch.full((len(chunk), width), pad_id or 0)  # (b, T); padding is masked, any id will do
        attention, response = torch.zeros_like(input_ids), torch.zeros_like(input_ids)
        for row, k in enumerate(chunk):
            input_ids[row, :len(ids[k])] = torch.tensor(ids[k])
            attention[row, :len(ids[k])] = 1
            response[row, starts[k]:len(ids[k])] = 1
        sums = sequence_logprobs(model, input_ids.to(on), attention.to(on), response.to(on))
        out[chunk] = device.to_host(sums.float())
    return out


@torch.no_grad()
def sample(model, tokenizer, prompts: list[list[dict]], samples: int, max_new_tokens: int, seed: int):
    """K samples per prompt at temperature 1. Returns (input_ids, attention_mask, response_mask, texts, R):
    the responses fill the last R columns of each tensor. Rows are ordered prompt-major: row i*K + k
    is sample k of prompt i."""
    query_ids, query_mask = sampling.encode_chats(tokenizer, [p for p in prompts for _ in range(samples)])
    response, kept = sampling.sample(model, tokenizer, query_ids, query_mask, max_new_tokens=max_new_tokens,
                                     seed=seed)  # (B, R) each: tokens up to and including the first stop token
    input_ids = torch.cat([query_ids, response], dim=1)
    response_mask = torch.cat([torch.zeros_like(query_ids), kept], dim=1)
    attention_mask = torch.cat([query_mask, kept], dim=1)
    return input_ids, attention_mask, response_mask, sampling.decode(tokenizer, response, kept), response.shape[1]


def heldout_prompts(n: int) -> list[tuple[int, list[dict]]]:
    """The first `n` held-out prompts by id (train prompts fill in when too few are held out)."""
    return stored_prompts.heldout_prompts(n)


class EvaluationError(NotReady):
    """Evaluation cannot run; the message is one sentence for the user."""


def response_logits(model, input_ids, attention_mask, response_width: int) -> torch.Tensor:
    """Logits of the states before each of the last `response_width` tokens (the responses).

    Shape: input_ids, attention_mask (B, T) -> (B, R, V) with R = response_width.
    """
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids(attention_mask),
                logits_to_keep=response_width + 1)
    return out.logits[:, :-1]


@torch.no_grad()
def response_stats(policy, base, input_ids, attention_mask, response_mask, response_width: int) -> dict:
    """Per sampled row: the exact KL(policy ‖ base) summed over its response positions (never
    negative), log π_base of its tokens (fluency under the base model) and its token count.

    Shape: input_ids, attention_mask, response_mask (B, T), the responses in the last R columns -> each (B,).
    """
    mask = response_mask[:, -response_width:]  # (B, R)
    targets = input_ids[:, -response_width:]
    logits_policy = response_logits(policy, input_ids, attention_mask, response_width)  # (B, R, V)
    logits_base = response_logits(base, input_ids, attention_mask, response_width)
    kl = exact_kl(logits_policy, logits_base, mask)
    base_logp = (token_logprobs(logits_base.float(), targets) * mask).sum(-1)
    return {"kl": kl, "base_logp": base_logp, "tokens": mask.sum(-1)}


@torch.no_grad()
def sample_and_score(policy, base, tokenizer, prompts: list[list[dict]], samples: int, max_new_tokens: int,
                     seed: int, batch_size: int) -> dict[str, list]:
    """K samples per prompt from `policy` (same seed for every version) with their KL to `base`,
    base log-probs and token counts; "ended" says whether each answer ended with a stop token (one
    that did not was cut at `max_new_tokens`; one whose last allowed token was the stop token
    ended); "prompt" holds each row's prompt index (the cluster)."""
    ids, attn, rmask, texts, width = sample(policy, tokenizer, prompts, samples, max_new_tokens, seed)
    response, kept = ids[:, ids.shape[1] - width:], rmask[:, ids.shape[1] - width:]  # (B, R): the responses
    ended = sampling.ended(response, kept, sampling.stop_ids(policy, tokenizer))
    rows: dict[str, list] = {"kl": [], "base_logp": [], "tokens": [], "ended": ended.tolist()}
    for lo in range(0, ids.shape[0], batch_size):
        part = response_stats(policy, base, ids[lo:lo + batch_size], attn[lo:lo + batch_size],
                              rmask[lo:lo + batch_size], width)
        for key, values in part.items():
            rows[key] += values.tolist()
    rows["texts"] = texts
    rows["prompt"] = [i for i in range(len(prompts)) for _ in range(samples)]
    return rows


@torch.no_grad()
def measure(policy, base, tokenizer, prompts: list[list[dict]], scorer, config: EvaluateConfig) -> dict:
    """Sample from `policy`, score with `scorer`, and estimate KL(policy ‖ base), each with a
    standard error clustered by prompt (the samples of one prompt are not independent)."""
    rows = sample_and_score(policy, base, tokenizer, prompts, config.samples, config.max_new_tokens, config.seed,
                            config.batch_size)
    repeated = [p for p in prompts for _ in range(config.samples)]
    scores = scorer(repeated, rows["texts"]).float().tolist()
    reward, reward_se = clustered_mean_se(scores, rows["prompt"])
    kl, kl_se = clustered_mean_se(rows["kl"], rows["prompt"])
    ntoks = rows["tokens"]
    return {"reward": reward, "reward_se": reward_se, "kl": kl, "kl_se": kl_se,
            "kl_per_token": sum(rows["kl"]) / max(sum(ntoks), 1), "samples": len(rows["texts"]),
            "mean_tokens": sum(ntoks) / len(ntoks), "example": rows["texts"][0] if rows["texts"] else "",
            "base_logp_per_token": sum(rows["base_logp"]) / max(sum(ntoks), 1),
            # per sample, in row order (prompt-major), so two versions can be compared sample by sample
            "per_sample": {"score": scores, "tokens": [int(n) for n in ntoks], "prompt": rows["prompt"],
                           "kl": rows["kl"]}}


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
    # heldout_prompts fills in with training prompts when too few are held out
    train_prompts = len(prompts) - stored_prompts.count_heldout([i for i, _ in prompts])
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
                   "samples": m["samples"], "mean_tokens": m["mean_tokens"], "example": m["example"],
                   "base_logp_per_token": m["base_logp_per_token"], "per_sample": m["per_sample"]}
        eval_points.add_point(version_id, reward_id, m["reward"], m["reward_se"], m["kl"], m["kl_se"],
                              m["kl_per_token"], details)
        stored.append({"version": version_id, **{k: m[k] for k in ("reward", "reward_se", "kl", "kl_se", "kl_per_token")}})
        reporter.step(step, {"reward": m["reward"], "kl": m["kl"]})
    plot = points.plot_reward_vs_kl(points.latest_points(reward_id), points.plot_path())
    return {"points": stored, "plot": str(plot), "reward_version": reward_id, "train_prompts": train_prompts,
            "skipped": skipped}


def main(argv: list[str]) -> int:
    """`python -m training evaluate [--versions A,B] [--prompts N] [--samples K] [--job-id N]`."""
    def run(config, reporter, **_):
        return evaluate(config, reporter)

    return runner.run_main(argv, EvaluateConfig, run, "python -m training evaluate")
