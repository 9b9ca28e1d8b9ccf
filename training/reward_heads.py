"""A reward model with a frozen backbone: features of (prompt, response) read once from a language
model, and an ensemble of linear Bradley-Terry heads fitted on them in seconds.

Why: fine-tuning even a small encoder on a few hundred pairs costs many minutes on a CPU and, on
conversations it never saw, ranked answers worse than their length did (issue 20). A frozen
backbone reads each response once; the heads are a convex problem, so the strength of their
regularisation can be chosen by cross-validation on the user's own pairs, and an ensemble of
heads on bootstrap resamples of the pairs costs nothing more. Their spread is the reward model's
uncertainty (Lakshminarayanan et al. 2017; Coste et al. 2024, "Reward model ensembles help
mitigate overoptimization").

Features of one response (`features`), from the backbone's hidden states:
    [mean over the response's tokens at each of the layers (fractions of the depth; by default
     `LAYERS`: the embeddings, the middle and the last; the reward round's `layers` setting),
     the last token at the last layer]                    Shape: ((len(layers) + 1) · hidden,)
and its length ℓ = log(1 + characters). `layer_means` keeps every layer's mean, so
`bench/reward.py` can compare other choices of layers from one reading.

Length (`LENGTHS`), the reward's relation to how long an answer is:
  * "remove" and "keep" (length disentangled, in the spirit of ODIN, Chen et al. 2024): every
    feature is residualised on a cubic in ℓ over the training responses, x' = x − B(ℓ) β, so the
    content head θ cannot read length through them, and a length head a·u (u the standardised ℓ,
    not regularised) is fitted jointly and absorbs whatever length preference the labels hold.
    "remove" drops the length head when scoring (the reward ignores length); "keep" keeps it (the
    reward weighs length exactly as the labels did, and content on top);
  * "free": the features as they are (length is whatever the features carry).

Bradley-Terry (Bradley & Terry 1952; Ouyang et al. 2022, eq. 1): each head θ minimises the
weighted −log σ(θ·(z_chosen − z_rejected)) + λ/2 ‖θ‖², z the standardised features; λ is picked by
grouped K-fold cross-validation over conversations. numpy and torch only; the backbone is loaded
by the caller.
"""
from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from training import metrics, preferences
from training.reward_config import DEFAULT_LAYERS, LAYER_SETS

LENGTHS = ("remove", "keep", "free")
L2_GRID = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0, 1000.0)  # λ per pair-average loss, on standardised features
HEADS_FILE = "heads.npz"
# The hidden states whose response mean is a feature, as fractions of the depth. The embeddings (0)
# carry which words an answer uses: on the learning bench's pairs labeled by ten tastes they lifted
# the heads' held-out accuracy on nine (plain 0.62 -> 0.68, commas 0.61 -> 0.82; bench/taste_layers.py),
# and on hh and OASST they changed nothing measurable (0.650 and 0.659 against 0.646 and 0.657;
# README, "A reward model worth trusting?").
# The reward round's `layers` setting picks another set (RewardRoundConfig).
LAYERS = LAYER_SETS[DEFAULT_LAYERS]
LAYERS_BEFORE = LAYER_SETS["hidden"]  # what heads saved before 2026-12-07 read (their file names no layers)


def response_length(texts: Sequence[str]) -> np.ndarray:
    """ℓ = log(1 + characters) per text, the length the length head reads (`metrics.log_length`). Shape: (n,)."""
    return metrics.log_length(texts)


# ---------------------------------------------------------------- features


def features(model, tokenizer, prompts: list[list[dict]], responses: list[str], max_length: int,
             batch_size: int = 8, layers: Sequence[float] = LAYERS) -> np.ndarray:
    """The features of each (prompt, response). Shape: (n, (len(layers) + 1) · hidden)."""
    means = layer_means(model, tokenizer, prompts, responses, max_length, batch_size, layers)
    return means.reshape(len(means), -1) if len(means) else np.zeros((0, 0))


def layer_index(fraction: float, depth: int) -> int:
    """The hidden state at `fraction` of the depth (0 the embeddings, 1 the last layer); half of an
    odd depth rounds up, as `hidden_states[len(hidden_states) // 2]` does."""
    return int(fraction * depth + 0.5)


def pick(means: np.ndarray, layers: Sequence[float] = LAYERS) -> np.ndarray:
    """The features from every layer's means (`layer_means` with `layers=None`): the response mean
    at each fraction of the depth in `layers`, then the last token at the last layer.
    Shape: (n, depth + 2, hidden) -> (n, (len(layers) + 1) · hidden)."""
    if not len(means):
        return np.zeros((0, 0))
    depth = means.shape[1] - 2
    rows = [layer_index(f, depth) for f in layers] + [depth + 1]
    return means[:, rows].reshape(len(means), -1)


FEATURES = "response after the kept prompt"  # stored with a reward version: what its heads were fitted on


def layer_means(model, tokenizer, prompts: list[list[dict]], responses: list[str], max_length: int,
                batch_size: int = 8, layers: Sequence[float] | None = None) -> np.ndarray:
    """Mean over the response's tokens of the hidden states at `layers` (fractions of the depth;
    None: every one, the embeddings first), then the last token at the last layer, each (prompt,
    response) encoded as the fine-tuned reward model reads it (`reward.encode`: prompt kept,
    response cut at its end). Shape: (n, len(layers) + 1, hidden), or (n, depth + 2, hidden).

    The response's tokens are those after the prompt as `reward.encode_parts` kept it (before
    2026-12-07 the prompt encoded whole marked the start, so the mean of a response to a long
    conversation took in the part of the prompt that was kept, about 127 tokens for 16 % of hh's)."""
    import torch

    from training import device
    from training.reward import encode_parts

    encoded = [encode_parts(tokenizer, p, r, max_length) for p, r in zip(prompts, responses)]
    ids, starts = [i for i, _ in encoded], [start for _, start in encoded]
    out = [None] * len(ids)
    model.eval()
    with torch.no_grad(), device.autocast():
        for chunk in device.length_batches(ids, batch_size):
            batch = device.place(tokenizer.pad({"input_ids": [ids[k] for k in chunk]}, return_tensors="pt"))
            hidden = model(**batch, output_hidden_states=True).hidden_states  # depth + 1 × (b, T, h)
            depth = len(hidden) - 1
            rows = range(depth + 1) if layers is None else [layer_index(f, depth) for f in layers]
            mask = batch["attention_mask"].bool()  # (b, T), right-padded
            positions = torch.arange(mask.shape[1], device=mask.device)[None, :]  # (1, T)
            start = torch.tensor([min(starts[k], len(ids[k]) - 1) for k in chunk], device=mask.device)[:, None]
            response = (mask & (positions >= start)).float()  # (b, T)
            weights = response / response.sum(1, keepdim=True)  # each response's tokens sum to 1
            last = mask.sum(1) - 1  # (b,)
            means = [torch.einsum("bt,bth->bh", weights, hidden[i].float()) for i in rows]  # one layer at a time
            final = hidden[-1][torch.arange(len(chunk)), last].float()  # (b, h)
            pooled = torch.stack(means + [final], dim=1)  # (b, rows + 1, h)
            for k, row in zip(chunk, device.to_host(pooled).numpy()):
                out[k] = row
    return np.stack(out) if out else np.zeros((0, 0, 0))


# ---------------------------------------------------------------- the heads


@dataclasses.dataclass
class Heads:
    """An ensemble of linear reward heads on standardised, optionally length-residualised features.

    reward_e(x, ℓ) = θ_e · z (+ a_e · u with length "keep"),  z = ((x − B(ℓ) β) − μ) / σ,
    B(ℓ) = [1, u, u², u³] with u the standardised ℓ; β = 0 with length "free".
    Shapes: theta (heads, d), length_weight (heads,), mean/scale (d,), beta (4, d)."""

    theta: np.ndarray
    mean: np.ndarray
    scale: np.ndarray
    beta: np.ndarray
    length: str
    length_mean: float = 0.0
    length_scale: float = 1.0
    l2: float = 0.0
    length_weight: np.ndarray | None = None
    layers: tuple[float, ...] = LAYERS  # the hidden states its features read (`features`)

    def standardise(self, x: np.ndarray, ell: np.ndarray) -> np.ndarray:
        """z of each response. Shape: x (n, d), ell (n,) -> (n, d)."""
        return (x - self.basis(ell) @ self.beta - self.mean) / self.scale

    def basis(self, ell: np.ndarray) -> np.ndarray:
        """B(ℓ) = [1, u, u², u³], u = (ℓ − mean) / scale. Shape: (n,) -> (n, 4)."""
        u = (np.asarray(ell, dtype=float) - self.length_mean) / self.length_scale
        return np.stack([np.ones_like(u), u, u * u, u * u * u], axis=1)

    def rewards(self, x: np.ndarray, ell: np.ndarray) -> np.ndarray:
        """Every head's reward of each response. Shape: (heads, n)."""
        content = self.theta @ self.standardise(x, ell).T
        if self.length != "keep":
            return content
        return content + self.length_weight[:, None] * self.basis(ell)[None, :, 1]

    def save(self, folder: Path) -> None:
        np.savez(Path(folder) / HEADS_FILE, theta=self.theta, mean=self.mean, scale=self.scale, beta=self.beta,
                 length=np.array(self.length), stats=np.array([self.length_mean, self.length_scale, self.l2]),
                 length_weight=self.length_weight, layers=np.array(self.layers, dtype=float))

    @classmethod
    def load(cls, folder: Path) -> "Heads":
        f = np.load(Path(folder) / HEADS_FILE)
        length_mean, length_scale, l2 = (float(v) for v in f["stats"])
        layers = tuple(float(v) for v in f["layers"]) if "layers" in f else LAYERS_BEFORE
        return cls(f["theta"], f["mean"], f["scale"], f["beta"], str(f["length"]), length_mean, length_scale, l2,
                   f["length_weight"], layers)


def spread(rewards: np.ndarray) -> np.ndarray:
    """The ensemble's disagreement per response: the standard deviation of the heads' rewards
    (0 for identical heads). Shape: (heads, n) -> (n,)."""
    return rewards.std(axis=0)


def bt_fit(difference: np.ndarray, weights: np.ndarray, l2: float, free: int = 0, steps: int = 200,
           margins: np.ndarray | None = None) -> np.ndarray:
    """θ minimising Σ_i w_i · softplus(m_i − θ·d_i) / Σ w + λ/2 ‖θ‖² (Bradley-Terry on differences
    d_i = z_chosen − z_rejected, with a margin m_i ≥ 0 that a clearer preference asks the rewards to
    exceed, as Llama 2's reward model does (Touvron et al. 2023, eq. 2); 0 when None; a strictly
    convex problem, solved by L-BFGS). The last `free` coordinates are barely regularised
    (λ = 1e-6): the length head. Shape: difference (pairs, d), weights/margins (pairs,) -> (d,)."""
    import torch

    d = torch.as_tensor(difference, dtype=torch.float64)
    w = torch.as_tensor(weights, dtype=torch.float64)
    m = torch.zeros(len(d), dtype=torch.float64) if margins is None else torch.as_tensor(margins, dtype=torch.float64)
    w = w / w.sum()
    theta = torch.zeros(d.shape[1], dtype=torch.float64, requires_grad=True)
    penalty = torch.full((d.shape[1],), float(l2), dtype=torch.float64)
    penalty[d.shape[1] - free:] = 1e-6
    optimizer = torch.optim.LBFGS([theta], lr=1, max_iter=steps, tolerance_grad=1e-9, tolerance_change=1e-12,
                                  history_size=20, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = (w * torch.nn.functional.softplus(m - d @ theta)).sum() + 0.5 * (penalty * theta * theta).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return theta.detach().numpy()


def fit(chosen: np.ndarray, rejected: np.ndarray, chosen_len: np.ndarray, rejected_len: np.ndarray,
        groups: Sequence[Any], weights: np.ndarray | None = None, heads: int = 8, length: str = "remove",
        l2: float | None = None, seed: int = 0, margins: np.ndarray | None = None) -> Heads:
    """Fit the ensemble on labeled pairs' features.

    Shapes: chosen/rejected (pairs, d) features, chosen_len/rejected_len (pairs,) ℓ, groups
    (pairs,) conversation keys (cross-validation never splits one), weights and margins (pairs,)
    or None (`bt_fit`). Head 0 fits all pairs; heads 1.. fit bootstrap resamples of the conversations."""
    if length not in LENGTHS:
        raise ValueError(f"length must be one of {', '.join(LENGTHS)}, not {length!r}")
    weights = np.ones(len(chosen)) if weights is None else np.asarray(weights, dtype=float)
    x = np.concatenate([chosen, rejected])  # every training response, Shape: (2·pairs, d)
    ell = np.concatenate([chosen_len, rejected_len])
    template = Heads(np.zeros((0, 0)), np.zeros(x.shape[1]), np.ones(x.shape[1]), np.zeros((4, x.shape[1])), length,
                     float(ell.mean()), float(ell.std() + 1e-6))
    if length != "free":  # least squares of each feature on B(ℓ): x − B(ℓ) β is uncorrelated with B(ℓ)
        template.beta = np.linalg.lstsq(template.basis(ell), x, rcond=None)[0]
    residual = x - template.basis(ell) @ template.beta
    template.mean, template.scale = residual.mean(0), residual.std(0) + 1e-6
    n = len(chosen)
    difference = template.standardise(chosen, chosen_len) - template.standardise(rejected, rejected_len)
    free = 0 if length == "free" else 1
    if free:  # the length head's input: u of the chosen minus u of the rejected
        u = template.basis(chosen_len)[:, 1] - template.basis(rejected_len)[:, 1]
        difference = np.concatenate([difference, u[:, None]], axis=1)
    margins = np.zeros(n) if margins is None else np.asarray(margins, dtype=float)
    l2 = choose_l2(difference, weights, groups, free, seed, margins=margins) if l2 is None else l2
    rng = np.random.default_rng(seed)
    keys = sorted(set(groups), key=str)
    index = {k: i for i, k in enumerate(keys)}
    member = np.array([index[g] for g in groups])
    thetas = []
    for head in range(heads):
        resample = np.ones(n) if head == 0 else np.bincount(rng.integers(0, len(keys), len(keys)),
                                                            minlength=len(keys))[member].astype(float)
        thetas.append(bt_fit(difference, weights * resample, l2, free, margins=margins) if resample.any()
                      else np.zeros(difference.shape[1]))
    thetas = np.stack(thetas)  # (heads, d + free)
    length_weight = thetas[:, -1] if free else np.zeros(heads)
    return dataclasses.replace(template, theta=thetas[:, :thetas.shape[1] - free], l2=l2, length_weight=length_weight)


def choose_l2(difference: np.ndarray, weights: np.ndarray, groups: Sequence[Any], free: int = 0, seed: int = 0,
              folds: int = 3, margins: np.ndarray | None = None) -> float:
    """λ of `L2_GRID` with the lowest held-out Bradley-Terry loss (with `margins`, as `bt_fit`) over
    `folds` folds of whole conversations (the largest λ when there are too few conversations to fold)."""
    keys = sorted(set(groups), key=str)
    if len(keys) < folds:
        return L2_GRID[-1]
    margins = np.zeros(len(difference)) if margins is None else np.asarray(margins, dtype=float)
    fold_of = {k: i % folds for i, k in enumerate(np.random.default_rng(seed).permutation(len(keys)))}
    position = {k: i for i, k in enumerate(keys)}
    fold = np.array([fold_of[position[g]] for g in groups])
    losses = []
    for l2 in L2_GRID:
        total = 0.0
        for f in range(folds):
            train, test = fold != f, fold == f
            theta = bt_fit(difference[train], weights[train], l2, free, margins=margins[train])
            margin = difference[test] @ theta - margins[test]
            total += float((weights[test] * np.logaddexp(0, -margin)).sum())
        losses.append(total)
    return L2_GRID[int(np.argmin(losses))]


def source_weights(sources: Sequence[str]) -> np.ndarray:
    """Weights that give every data source the same total weight, mean 1. Shape: (pairs,)."""
    names, counts = np.unique(np.asarray(sources), return_counts=True)
    per = {n: len(sources) / (len(names) * c) for n, c in zip(names, counts)}
    return np.array([per[s] for s in sources])


def describe(heads: Heads) -> dict[str, Any]:
    """What the card and the logs say about an ensemble."""
    return {"heads": int(heads.theta.shape[0]), "features": int(heads.theta.shape[1]), "length": heads.length,
            "l2": heads.l2, "length_weight": round(float(np.mean(heads.length_weight)), 3), "layers": list(heads.layers)}


# ---------------------------------------------------------------- the round's model


class HeadsModel:
    """A frozen backbone and its heads: what a reward round of method "heads" trains, saves and
    scores with. `rewards` gives every head's reward; the scorer their mean, less `penalty` times
    their spread (a conservative reward for PPO; Coste et al. 2024)."""

    def __init__(self, backbone, tokenizer, heads: Heads, max_length: int):
        self.backbone, self.tokenizer, self.heads, self.max_length = backbone, tokenizer, heads, max_length

    def rewards(self, prompts: list[list[dict]], responses: list[str], batch_size: int = 8) -> np.ndarray:
        """Shape: (heads, n)."""
        x = features(self.backbone, self.tokenizer, prompts, responses, self.max_length, batch_size, self.heads.layers)
        return self.heads.rewards(x, response_length(responses)) if len(responses) else np.zeros((len(self.heads.theta), 0))

    def scorer(self, batch_size: int = 8, penalty: float = 0.0):
        import torch

        def score(prompts: list[list[dict]], responses: list[str]) -> torch.Tensor:
            every = self.rewards(prompts, responses, batch_size)
            return torch.as_tensor(every.mean(0) - penalty * spread(every), dtype=torch.float32)  # (batch,)

        return score

    def untrained(self, seed: int = 0) -> "HeadsModel":
        """The same backbone and standardisation with random heads: the reward card's "untrained" row."""
        theta = np.random.default_rng(seed).normal(size=self.heads.theta.shape) / math.sqrt(self.heads.theta.shape[1])
        random_heads = dataclasses.replace(self.heads, theta=theta, length_weight=np.zeros(len(theta)))
        return HeadsModel(self.backbone, self.tokenizer, random_heads, self.max_length)

    def save_pretrained(self, folder: Path, **_) -> None:
        self.heads.save(folder)


def train(model, tokenizer, rows: list[dict], config, reporter) -> tuple[HeadsModel, dict[str, Any]]:
    """Read the labeled pairs' responses once with the frozen `model`, then fit the heads.
    `rows`: export rows (`labeling.export.preference_rows`); grouped by conversation (first
    message) for the choice of λ and the bootstrap."""
    started = time.perf_counter()
    prompts = [r["prompt"] for r in rows]
    chosen_text, rejected_text = [r["chosen"][-1]["content"] for r in rows], [r["rejected"][-1]["content"] for r in rows]
    layers = LAYER_SETS[config.layers]
    reporter.start(2)
    chosen = features(model, tokenizer, prompts, chosen_text, config.max_length, config.batch_size, layers)
    reporter.step(1, {})
    rejected = features(model, tokenizer, prompts, rejected_text, config.max_length, config.batch_size, layers)
    read = time.perf_counter() - started
    groups = [preferences.conversation(r) for r in rows]
    heads = dataclasses.replace(fit(chosen, rejected, response_length(chosen_text), response_length(rejected_text),
                                    groups, heads=config.heads, length=config.length, seed=config.seed), layers=layers)
    trained = HeadsModel(model, tokenizer, heads, config.max_length)
    accuracy = metrics.preference_accuracy(heads.rewards(chosen, response_length(chosen_text)).mean(0),
                                           heads.rewards(rejected, response_length(rejected_text)).mean(0))
    reporter.step(2, {"accuracy": accuracy})
    return trained, {"read_seconds": read, "fit_seconds": time.perf_counter() - started - read, **describe(heads)}
