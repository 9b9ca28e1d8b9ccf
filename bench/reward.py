"""Which reward model ranks answers better than their length does, on conversations it never saw?

    python bench/reward.py [--max-hh 400] [--max-heldout 230] [--folds 5] [--backbones minilm policy]
                           [--layer-sets 0.5,1 0.25,0.5,0.75,1 ...] [--combine] [--margins 0.5,1,2]
                           [--curve 200,400,800]
                           [--finetune BACKBONE:SOURCE[:PAIRS] ...] [--finetune-set FIELD=VALUE ...]
                           [--finetune-only] [--no-finetune]
                           [--implicit N] [--home DIR] [--threads N]

Data: `../shared/data`, hh-rlhf harmless-base (split 80/20 by conversation) and the OpenAssistant
trees (split into `--folds` folds by tree). Every option is trained on the hh training split plus
the OASST trees of all other folds and scored on each held-out fold, so every OASST pair is
scored by a model that never saw its tree; hh is scored on its held-out conversations (by the
fold-0 model). "cross-source" trains on hh alone and scores every OASST pair.

Options, side by side in one run:
  * frozen backbone + an ensemble of 8 linear Bradley-Terry heads (training/reward_heads.py), for
    the MiniLM encoder and for the policy's base model (SmolLM2), with length "free", "remove"
    (length-disentangled) or "keep", each with and without source-balanced weights;
  * other choices of the hidden states the heads read (`--layer-sets`, fractions of the depth
    whose response mean is a feature; the default's is reward_heads.LAYERS), and both backbones'
    features side by side (`--combine`), each trained on its own source with the three lengths;
  * OASST's full rankings with margins (`--margins`): every pair of ranked siblings is already a
    pair; with a margin c·(gap − 1) a reply ranked g places above another must out-score it by
    more (hh pairs and neighbours: no margin), for each scale c, length free and keep, on its own
    source and on both balanced;
  * with `--curve`, instead of the options: the default option (length free and keep) fitted on
    fewer hh training pairs (random whole conversations, 3 draws each), scored on hh held out:
    how accuracy grows with labels, to say what more of them would buy;
  * fine-tuned reward models (the reward round's method fine-tune with its defaults, TRL
    RewardTrainer; bench/reward_trained.py), by default MiniLM trained in full (prefloop's reward
    round before this bench) on both sources, scored on hh held out and on OASST fold 0 alone,
    not every fold (it costs minutes per fold);
    `--finetune policy:hh:800` instead trains LoRA on the policy's base model with a scalar head
    on the first 800 hh training pairs and scores hh held out and every OASST pair (hh → OASST),
    `policy:oasst` on the OASST trees outside fold 0, scored on fold 0 and hh held out;
    `--finetune-set learning_rate=5e-4` changes a setting of the reward round for each of them;
  * with `--implicit N`, instead of the options (bench/reward_trained.py): DPO's implicit reward, β·log π/π_base of each
    response under a DPO round trained with the defaults on the first N hh training pairs (LoRA
    on the policy's base model, the base as reference), summed over the response and per token,
    scored on hh held out and on every OASST pair (hh → OASST).
Baselines on the same pairs: "longer wins" and "shorter wins". Reported per option: accuracy on
OASST held out by tree and on hh held out, each with a 95 % interval clustered by conversation,
the cross-source OASST accuracy, the reward–length correlation on held-out responses, the
ensemble's mean spread, and seconds. Every layer's response mean is cached in the home folder (keyed by the
backbone and the pairs), so a second run only refits the heads.

One JSON line per option, then the last line for the option with the best OASST held-out accuracy.
Targets (issue 20): OASST held out by tree ≥ 0.70 and above "longer wins"; hh held out ≥ 0.68;
reward–length correlation below 0.2 unless the labels themselves prefer length; under 20 minutes
on 2 cores.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.reward_scoring import accuracy, baselines, texts  # noqa: E402
from bench.reward_trained import FINETUNE_FIXED, finetune_spec, run_finetune, run_implicit  # noqa: E402
from training.config_fields import ConfigError, config_from_dict  # noqa: E402
from training.reward_config import RewardRoundConfig  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
HH, OASST = DATA / "hh-rlhf-harmless-base-test.jsonl.gz", DATA / "oasst-en-trees-70.jsonl"


def rows_of(path: Path, fmt: str, home: Path) -> list[dict]:
    """The file's labeled pairs as export rows, via a workspace of its own, each with its source
    and its conversation (the first message: one hh dialogue, one OASST tree)."""
    os.environ["PREFLOOP_HOME"] = str(home)
    from labeling.export import preference_rows
    from labeling.store import import_file

    import_file(path, fmt=fmt)
    # the fold key of bench/reward.py's published runs (sorted as these strings sort), kept as it was
    return [dict(r, source=fmt, conversation=json.dumps(r["prompt"][:1], sort_keys=True))
            for r in preference_rows().rows]


def fold_of(rows: list[dict], folds: int, seed: int = 0) -> np.ndarray:
    """A fold per row, whole conversations together. Shape: (rows,)."""
    keys = sorted({r["conversation"] for r in rows})
    order = np.random.default_rng(seed).permutation(len(keys))
    fold = {keys[k]: i % folds for i, k in enumerate(order)}
    return np.array([fold[r["conversation"]] for r in rows])


# ---------------------------------------------------------------- features, cached


def cached_features(name: str, rows: list[dict], home: Path, max_length: int,
                    layers=None) -> tuple[np.ndarray, np.ndarray]:
    """(chosen, rejected) features of `rows` under backbone `name`, from the hidden states `layers`
    (reward_heads.LAYERS when None). Shape: (rows, d) each."""
    from training import reward_heads

    chosen, rejected = cached_layer_means(name, rows, home, max_length)
    layers = reward_heads.LAYERS if layers is None else layers
    return reward_heads.pick(chosen, layers), reward_heads.pick(rejected, layers)


def cached_layer_means(name: str, rows: list[dict], home: Path, max_length: int) -> tuple[np.ndarray, np.ndarray]:
    """(chosen, rejected) `reward_heads.layer_means` of `rows` under backbone `name`, read once and
    kept in `home`. Shape: (rows, depth + 2, hidden) each."""
    from training import reward_heads

    # "response start": features from before encode_parts (a long prompt's kept part joined the response mean)
    key = hashlib.sha256(json.dumps([name, max_length, "response start"] + [[r["prompt"], r["chosen"], r["rejected"]] for r in rows],
                                    sort_keys=True).encode()).hexdigest()[:16]
    path = home / f"layer-means-{name}-{key}.npy"
    if path.is_file():
        both = np.load(path)
        return both[0], both[1]
    from training import reward

    model, tokenizer, _ = reward.load_backbone(RewardRoundConfig(backbone=name, method="heads"))  # frozen, no head
    prompts = [r["prompt"] for r in rows]
    started = time.perf_counter()
    chosen = reward_heads.layer_means(model, tokenizer, prompts, texts(rows, "chosen"), max_length)
    rejected = reward_heads.layer_means(model, tokenizer, prompts, texts(rows, "rejected"), max_length)
    print(json.dumps({"features": name, "responses": 2 * len(rows), "seconds": round(time.perf_counter() - started, 1)}),
          flush=True)
    np.save(path, np.stack([chosen, rejected]).astype(np.float32))
    return chosen, rejected


# ---------------------------------------------------------------- scoring


def rank_gaps(rows: list[dict]) -> np.ndarray:
    """How many places apart in its ranking each pair's two answers stood: 1 for neighbours (and
    for a lone pair, as every hh pair is), more for an OASST reply ranked above several siblings.
    Read from the pairs alone: among the pairs of one prompt (of one source), an answer ranked p-th
    of k is chosen over the k − p answers below it. At least 1: pairs the store dropped as repeats
    can make the count smaller. Shape: (rows,)."""
    keys = [(r.get("source"), json.dumps(r["prompt"], sort_keys=True)) for r in rows]
    wins: dict[tuple, int] = {}
    for key, r in zip(keys, rows):
        wins[key, r["chosen"][-1]["content"]] = wins.get((key, r["chosen"][-1]["content"]), 0) + 1
    gaps = [wins[key, r["chosen"][-1]["content"]] - wins.get((key, r["rejected"][-1]["content"]), 0)
            for key, r in zip(keys, rows)]
    return np.maximum(np.array(gaps, dtype=float), 1)


class Pool:
    """All pairs with their features, lengths, sources and conversations, indexable by a mask."""

    def __init__(self, rows: list[dict], chosen: np.ndarray, rejected: np.ndarray):
        from training import reward_heads

        self.rows, self.chosen, self.rejected = rows, chosen, rejected
        self.chosen_len = reward_heads.response_length(texts(rows, "chosen"))
        self.rejected_len = reward_heads.response_length(texts(rows, "rejected"))
        self.groups = [r["conversation"] for r in rows]
        self.sources = [r["source"] for r in rows]

    def fit(self, mask: np.ndarray, length: str, balanced: bool, seed: int = 0, margins: np.ndarray | None = None):
        """Heads on the pairs in `mask`; `margins`: every pair's Bradley-Terry margin (`reward_heads.bt_fit`)."""
        from training import reward_heads

        sources = [s for s, m in zip(self.sources, mask) if m]
        weights = reward_heads.source_weights(sources) if balanced else None
        return reward_heads.fit(self.chosen[mask], self.rejected[mask], self.chosen_len[mask],
                                self.rejected_len[mask], [g for g, m in zip(self.groups, mask) if m],
                                weights, length=length, seed=seed, margins=None if margins is None else margins[mask])

    def score(self, heads, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(outcome per pair, every response's mean reward, ensemble spread per response)."""
        from training import metrics, reward_heads

        chosen = heads.rewards(self.chosen[mask], self.chosen_len[mask])  # (heads, pairs)
        rejected = heads.rewards(self.rejected[mask], self.rejected_len[mask])
        won = metrics.pair_outcomes(chosen.mean(0), rejected.mean(0))
        both = np.concatenate([chosen, rejected], axis=1)
        return won, both.mean(0), reward_heads.spread(both)


def run_heads(pool: Pool, hh_train: np.ndarray, hh_heldout: np.ndarray, oasst: np.ndarray, folds: np.ndarray,
              length: str, balanced: bool, both: bool, margins: np.ndarray | None = None) -> dict:
    """One frozen-backbone option. OASST: K folds over trees, each scored by heads trained on the
    other trees (and on hh's training split when `both`); hh held out: scored by heads trained on
    hh's training split (and on OASST folds 1.. when `both`). Cross-source: trained on one source,
    scored on the other."""
    from training import metrics

    started = time.perf_counter()
    won_oasst, fold0 = np.zeros(len(pool.rows)), None
    rewards, lengths, spreads = [], [], []
    for k in sorted(set(folds[oasst])):
        test = oasst & (folds == k)
        heads = pool.fit((hh_train if both else np.zeros_like(oasst)) | (oasst & ~test), length, balanced, margins=margins)
        won, reward, spread = pool.score(heads, test)
        won_oasst[test] = won
        fold0 = won if k == 0 else fold0
        rewards.append(reward), spreads.append(spread)
        lengths.append(np.concatenate([pool.chosen_len[test], pool.rejected_len[test]]))
    hh_heads = pool.fit(hh_train | (oasst & (folds != 0) if both else hh_train), length, balanced, margins=margins)
    won_hh, reward_hh, spread_hh = pool.score(hh_heads, hh_heldout)
    won_to_oasst, _, _ = pool.score(pool.fit(hh_train, length, balanced, margins=margins), oasst)
    won_to_hh, _, _ = pool.score(pool.fit(oasst, length, balanced, margins=margins), hh_heldout)
    hh_lengths = np.concatenate([pool.chosen_len[hh_heldout], pool.rejected_len[hh_heldout]])
    conversations = np.array(pool.groups)
    return {"oasst": accuracy(won_oasst[oasst], list(conversations[oasst])),
            "oasst_fold0": round(float(fold0.mean()), 3),
            "hh": accuracy(won_hh, list(conversations[hh_heldout])),
            "cross_source": {"hh_to_oasst": accuracy(won_to_oasst, list(conversations[oasst])),
                             "oasst_to_hh": accuracy(won_to_hh, list(conversations[hh_heldout]))},
            "length_r": {"oasst": round(metrics.pearson(np.concatenate(rewards), np.concatenate(lengths)), 3),
                         "hh": round(metrics.pearson(reward_hh, hh_lengths), 3)},  # the lengths are log_length's: length_correlation
            "spread": {"oasst": round(float(np.concatenate(spreads).mean()), 3), "hh": round(float(spread_hh.mean()), 3)},
            "l2": hh_heads.l2, "fit_s": round(time.perf_counter() - started, 1)}


def learning_point(pool: Pool, hh_train: np.ndarray, hh_heldout: np.ndarray, n: int, length: str,
                   draws: int = 3) -> dict:
    """hh held-out accuracy of heads fitted on `n` training pairs (whole conversations drawn at
    random, `draws` times; all of them once when `n` covers the split): the mean over draws, and
    the first draw's accuracy with its interval."""
    conversations = np.array(pool.groups)
    keys = sorted(set(conversations[hh_train]))
    scores = []
    for seed in range(draws if n < hh_train.sum() else 1):
        mask, order = np.zeros_like(hh_train), np.random.default_rng(seed).permutation(len(keys))
        for k in order:
            if mask.sum() >= n:
                break
            mask |= hh_train & (conversations == keys[k])
        won, _, _ = pool.score(pool.fit(mask, length, balanced=False), hh_heldout)
        scores.append(accuracy(won, list(conversations[hh_heldout])))
    return {"mean_accuracy": round(float(np.mean([s["accuracy"] for s in scores])), 3), "first": scores[0]}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, checked: what cannot be used together or at all is refused in one sentence
    (SystemExit) before anything is read. Adds `specs` (the fine-tuned models), `settings`
    (`--finetune-set` as a dict) and `margin_scales`."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbones", nargs="+", default=["minilm", "policy"], choices=["minilm", "policy"])
    parser.add_argument("--max-hh", type=int, default=400, help="hh training pairs")
    parser.add_argument("--max-heldout", type=int, default=230, help="hh held-out pairs")
    parser.add_argument("--folds", type=int, default=5, help="folds of OASST trees")
    parser.add_argument("--max-length", type=int, default=256, help="tokens of prompt + response the backbone reads")
    parser.add_argument("--layer-sets", nargs="+", default=[],
                        help="other hidden states for the heads, each a comma-separated list of fractions of the depth "
                             "(0 the embeddings, 1 the last layer), e.g. 0.25,0.5,0.75,1")
    parser.add_argument("--combine", action="store_true", help="also both backbones' features side by side")
    parser.add_argument("--margins", help="also the heads fitted with a margin c·(rank gap − 1) per pair (OASST's "
                                          "rankings: answers further apart must differ more), one option per "
                                          "comma-separated c, e.g. 0.5,1,2")
    parser.add_argument("--curve", help="only the learning curve on hh: comma-separated numbers of training pairs")
    parser.add_argument("--implicit", type=int, metavar="N",
                        help="only DPO's implicit reward, from a DPO round on the first N hh training pairs")
    parser.add_argument("--implicit-steps", type=int, help="stop that DPO round after this many steps (a smoke run)")
    parser.add_argument("--no-finetune", dest="finetune", action="store_false",
                        help="skip the fine-tuned reward models (minutes each)")
    parser.add_argument("--finetune", dest="finetune_specs", action="append", metavar="BACKBONE:SOURCE[:PAIRS]",
                        help="a fine-tuned reward model to train and score, e.g. policy:hh:400 (LoRA on SmolLM2, the "
                             "first 400 hh training pairs); repeatable; default minilm:both")
    parser.add_argument("--finetune-steps", type=int, help="stop each fine-tuning after this many steps (a smoke run)")
    parser.add_argument("--finetune-set", action="append", default=[], metavar="FIELD=VALUE",
                        help="a reward-round setting other than its default for every fine-tuned model, e.g. "
                             "learning_rate=5e-4 (repeatable)")
    parser.add_argument("--finetune-only", action="store_true", help="only the fine-tuned models, no frozen options")
    parser.add_argument("--home", default=str(ROOT / "bench-workspace" / "reward"), help="workspace and feature cache")
    parser.add_argument("--threads", type=int, help="torch threads (default: PREFLOOP_THREADS or every core)")
    args = parser.parse_args(argv)
    try:
        args.specs = specs = [finetune_spec(t) for t in args.finetune_specs or ["minilm:both"]]
    except ValueError as error:
        sys.exit(str(error))
    if not args.finetune and (args.finetune_only or args.finetune_specs or args.finetune_set):
        sys.exit("--no-finetune turns off the fine-tuned models that --finetune, --finetune-only and --finetune-set ask for.")
    args.settings = settings = dict(item.partition("=")[::2] for item in args.finetune_set)
    if bad := [item for item in args.finetune_set if "=" not in item or item.partition("=")[0] in FINETUNE_FIXED]:
        sys.exit(f"--finetune-set {bad[0]!r}: write FIELD=VALUE for a field other than {', '.join(FINETUNE_FIXED)} "
                 f"(--finetune names the backbone).")
    if settings:
        for backbone, _, _ in specs:  # a misspelt field or value is refused before the minutes of reading
            try:
                config_from_dict(RewardRoundConfig, {**settings, "backbone": backbone, "method": "fine-tune"},
                                 where="--finetune-set")
            except ConfigError as error:
                sys.exit(str(error))
    if (args.curve or args.implicit) and (args.finetune_only or args.finetune_specs or args.margins):
        sys.exit("--curve and --implicit measure only themselves: run --finetune and --margins on their own.")
    if args.finetune_only and (args.combine or args.layer_sets or args.margins):
        sys.exit("--finetune-only leaves out the frozen options that --combine, --layer-sets and --margins ask for.")
    try:
        args.margin_scales = [float(c) for c in args.margins.split(",")] if args.margins else []
    except ValueError:
        args.margin_scales = [float("nan")]
    if not all(np.isfinite(c) and c > 0 for c in args.margin_scales):
        sys.exit(f"--margins takes comma-separated numbers above 0, not {args.margins!r}.")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if not (HH.is_file() and OASST.is_file()):
        sys.exit(f"{DATA} lacks the hh-rlhf or OASST file; the benchmark needs the shared data beside the checkout.")
    from training import jobs

    jobs.set_threads(args.threads)
    started = time.perf_counter()
    home = Path(args.home)
    home.mkdir(parents=True, exist_ok=True)
    oasst_rows = rows_of(OASST, "oasst", home / "oasst")
    hh_rows = rows_of(HH, "hh", home / "hh")  # the last workspace set stays: the models live in it
    hh_fold = fold_of(hh_rows, 5)
    hh_train_rows = [r for r, f in zip(hh_rows, hh_fold) if f != 0][: args.max_hh]
    hh_heldout_rows = [r for r, f in zip(hh_rows, hh_fold) if f == 0][: args.max_heldout]
    rows = hh_train_rows + hh_heldout_rows + oasst_rows
    n_train, n_heldout = len(hh_train_rows), len(hh_heldout_rows)
    hh_train, hh_heldout, oasst = (np.zeros(len(rows), bool) for _ in range(3))
    hh_train[:n_train], hh_heldout[n_train:n_train + n_heldout], oasst[n_train + n_heldout:] = True, True, True
    folds = np.full(len(rows), -1)
    folds[oasst] = fold_of(oasst_rows, args.folds)
    gaps = np.where(oasst, rank_gaps(rows), 1)  # hh pairs: no margin
    print(json.dumps({"pairs": {"hh_train": n_train, "hh_heldout": n_heldout, "oasst": int(oasst.sum()),
                                "oasst_trees": len({r["conversation"] for r in oasst_rows}),
                                "oasst_rank_gaps": {int(g): int((gaps[oasst] == g).sum()) for g in sorted(set(gaps[oasst]))}},
                      "baselines": {"oasst": baselines(oasst_rows), "hh": baselines(rows[n_train:n_train + n_heldout])}}),
          flush=True)
    if args.curve:
        for backbone in args.backbones:
            pool = Pool(rows, *cached_features(backbone, rows, home, args.max_length))
            for n in sorted({min(int(k), n_train) for k in args.curve.split(",")} | {n_train}):
                for length in ("free", "keep"):
                    print(json.dumps({"curve": backbone, "length": length, "hh_train": n,
                                      **learning_point(pool, hh_train, hh_heldout, n, length)}), flush=True)
        return
    if args.implicit:
        print(json.dumps(run_implicit(rows, hh_train, hh_heldout, oasst, args.implicit, args.max_length,
                                      args.implicit_steps, home)), flush=True)
        return
    results = []

    def option(pool: Pool, label: str, combos, margins: np.ndarray | None = None) -> None:
        for both, balanced, length in combos:
            name = (f"{label}, length {length}, "
                    + ("trained on both sources" + (" balanced" if balanced else "") if both else "trained on its own source"))
            results.append({"option": name, "both_sources": both,
                            **run_heads(pool, hh_train, hh_heldout, oasst, folds, length, balanced, both, margins)})
            print(json.dumps(results[-1]), flush=True)

    every = [(both, balanced, length) for both, balanced in ((False, False), (True, False), (True, True))
             for length in ("free", "remove", "keep")]
    own = [(False, False, length) for length in ("free", "remove", "keep")]
    layer_sets = [tuple(float(f) for f in spec.split(",")) for spec in args.layer_sets]
    with_margins = [(both, balanced, length) for both, balanced in ((False, False), (True, True)) for length in ("free", "keep")]
    for backbone in [] if args.finetune_only else args.backbones:
        pool = Pool(rows, *cached_features(backbone, rows, home, args.max_length))
        option(pool, f"{backbone} frozen + 8 heads", every)
        for scale in args.margin_scales:
            option(pool, f"{backbone} frozen + 8 heads, margin {scale:g}·(rank gap − 1)", with_margins, scale * (gaps - 1))
        for layers in layer_sets:
            option(Pool(rows, *cached_features(backbone, rows, home, args.max_length, layers)),
                   f"{backbone} frozen + 8 heads, layers {','.join(f'{f:g}' for f in layers)}", own)
    if args.combine and not args.finetune_only:
        parts = [cached_features(b, rows, home, args.max_length) for b in args.backbones]
        option(Pool(rows, np.concatenate([c for c, _ in parts], 1), np.concatenate([r for _, r in parts], 1)),
               " + ".join(args.backbones) + " frozen + 8 heads", own)
    tuned = []
    if args.finetune:
        for backbone, source, pairs in args.specs:
            tuned.append(run_finetune(rows, hh_train, hh_heldout, oasst, folds, home, backbone, source, pairs,
                                      args.finetune_steps, args.settings))
            print(json.dumps(tuned[-1]), flush=True)
    if not results:  # the fine-tuned models alone: the last line sums them up
        print(json.dumps({"finetuned": [{k: v for k, v in t.items() if k == "option" or isinstance(v, dict)} for t in tuned],
                          "total_s": round(time.perf_counter() - started)}))
        return
    best = max(results, key=lambda r: r["oasst"]["accuracy"])
    print(json.dumps({"best": best["option"], "oasst": best["oasst"], "hh": best["hh"],
                      "longer_wins_oasst": baselines(oasst_rows)["longer"], "total_s": round(time.perf_counter() - started)}))


if __name__ == "__main__":
    main()
