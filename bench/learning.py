"""Does the loop learn? A scripted annotator with a known taste labels pairs through the app's own
queue, rounds run through the same entry points as the Train button with their defaults, and the
taste is measured on held-out prompts before and after.

    python bench/learning.py [--taste concise --taste plain | --taste package.module:function]
                             [--labels 128] [--rounds 3] [--arms dpo,iterative,ppo] [--quick]

For each taste, in fresh workspaces that share one converted base model:
  * dpo: the app's generator samples pairs from the base for `--labels` training prompts, the
    annotator judges each through `queue.next_pair` / `queue.submit_judgment` (a tie when the
    taste scores both sides the same), then one DPO round with the defaults;
  * ppo: on those same labels, a reward round and a PPO round from the base, with the defaults;
  * iterative: `--rounds` rounds on the same total budget, each generating its pairs from the
    policy the previous round made (on-policy), labeling them, and running a DPO round on all
    labels so far;
  * rewrites: the dpo arm's pairs again, but when both answers score at or below the base's median the
    annotator presses Both bad and writes the answer it wanted (bench/tastes.py `rewrite`: the
    better answer edited toward the taste), as the Label page stores it; then an SFT round on the
    rewrites and a DPO round on the pairs plus the rewrites' pairs, as a user would press them;
  * autopilot: the dpo arm's labels again, a reward round on them, then `python -m training
    autopilot`'s rounds (best-against-worst pairs the reward model picks from the policy's own
    answers; DPO with the base as reference); between rounds the annotator answers the audit pairs
    the autopilot sent to its queue, so the labels a version cost include the audits.
Every version answers the same held-out prompts with the same seeds (K samples each, temperature
1). Reported per version: the taste's mean, its win rate against the base and against the
previous round (paired sample by sample, ties half, 95% interval from a bootstrap over prompts),
the exact KL to the base, mean length, the base model's log-prob per token of the answers
(fluency) and the share of empty or looping answers; for the reward model, its held-out accuracy
against the taste's own preference. Last line: JSON.

`--sweep "learning_rate=5e-5,5e-4 epochs=1,3"` adds DPO variants trained on the dpo arm's labels.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.learning_measure import Measure, report, reward_accuracy_against_taste, summarise  # noqa: E402
from bench.tastes import load_taste, rewrite  # noqa: E402

ANNOTATOR = "scripted"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--taste", action="append", help="built-in taste (concise, plain, structured) or package.module:function; "
                                                    "repeat for several (default: concise and plain)")
    p.add_argument("--labels", type=int, default=128, help="judgments each arm may spend")
    p.add_argument("--rounds", type=int, default=3, help="rounds of the iterative arm")
    p.add_argument("--arms", default="dpo,iterative,ppo", help="any of dpo, kto, iterative, ppo, rewrites, autopilot (comma-separated)")
    p.add_argument("--heldout", type=int, default=24, help="held-out prompts the versions answer")
    p.add_argument("--samples", type=int, default=4, help="answers per held-out prompt and version")
    p.add_argument("--max-new-tokens", type=int, default=96, help="longest answer, when labeling and measuring")
    p.add_argument("--model", help="base model folder (default: the converted SmolLM2)")
    p.add_argument("--home", help="folder for the workspaces (default: a temporary one)")
    p.add_argument("--sweep", default="", help='DPO variants on the dpo arm\'s labels: "field=v1,v2 field=v1,..."')
    p.add_argument("--set", action="append", default=[], metavar="ROUND.FIELD=VALUE",
                   help="override a round default for every arm, e.g. dpo.learning_rate=1e-4")
    p.add_argument("--plot", help="write a PNG of taste win rate against labels spent")
    p.add_argument("--from", dest="logs", nargs="+", metavar="LOG",
                   help="with --plot: draw from these runs' printed lines instead of running")
    p.add_argument("--quick", action="store_true", help="tiny model, 48 labels, 2 rounds: proves the plumbing")
    p.add_argument("--engine", default="auto", choices=("auto", "ctranslate2", "transformers"),
                   help="what samples the pairs the annotator labels (the app's generator setting)")
    p.add_argument("--length-bias", type=float, default=0.0, metavar="P",
                   help="share of the annotator's votes that pick the longer answer whatever the taste (0.7: issue 18)")
    p.add_argument("--length-ratio", type=float, default=0.0, metavar="R",
                   help="the generator's length matching (the Data page's setting): resample pairs whose longer answer "
                        "has more than R times the shorter's tokens")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


# ---------------------------------------------------------------- workspaces and prompts


def use_workspace(root: Path, name: str) -> Path:
    """Point prefloop at a fresh workspace (its own SQLite database) under `root`."""
    home = root / name
    os.environ["PREFLOOP_HOME"] = str(home)
    os.environ.pop("PREFLOOP_DB", None)
    from labeling import store
    from training import versions

    store.ensure_builtin_prompts()
    store.add_prompts(extra_prompts(), "bench")
    versions.ensure_base_version()
    return home


def extra_prompts() -> list[str]:
    """OpenAssistant's root prompts (English, not synthetic) when ../shared/data is there: more
    held-out prompts than the ~17 the built-in list gives."""
    path = ROOT.parent / "shared" / "data" / "oasst-en-trees-70.jsonl"
    if not path.is_file():
        return []
    prompts = []
    for line in path.read_text(encoding="utf-8").splitlines():
        root = json.loads(line)["prompt"]
        if not root.get("synthetic") and len(root["text"]) < 600:
            prompts.append(root["text"])
    return prompts


# ---------------------------------------------------------------- the annotator


def label_waiting(taste, length_bias: float = 0.0, seed: int = 0, bad_at: float | None = None) -> dict[str, int]:
    """Judge every waiting pair as the Label page would store it: the better side by the taste,
    a tie when it scores both the same; with `length_bias` p, a share p of the votes picks the
    longer answer (in words) whatever the taste says, as a person who favours long answers would.
    With `bad_at`, a pair whose two answers both score at or below it is Both bad, and the annotator
    writes the answer it wanted (`rewrite` of the better one) when it can make one."""
    import random

    from labeling import demonstrations, queue

    rng = random.Random(seed)
    counts = {"judged": 0, "ties": 0, "both_bad": 0, "rewrites": 0}
    while (view := queue.next_pair(ANNOTATOR)) is not None:
        left, right = taste(view.left_text), taste(view.right_text)
        by_length = rng.random() < length_bias  # drawn for every pair, so arms with and without Both bad agree
        if bad_at is not None and max(left, right) <= bad_at:
            queue.submit_judgment(ANNOTATOR, view.pair_id, "both_bad", view.left, seconds=0.0)
            counts["judged"] += 1
            counts["both_bad"] += 1
            if better := rewrite(taste, view.left_text if left >= right else view.right_text):
                try:
                    demonstrations.add_rewrite(ANNOTATOR, view.pair_id, better)
                except demonstrations.DemonstrationError:  # e.g. a plugged-in taste's rewrite too long to store
                    continue
                counts["rewrites"] += 1
            continue
        if by_length:
            left, right = len(view.left_text.split()), len(view.right_text.split())
        choice = "left" if left > right else "right" if right > left else "tie"
        queue.submit_judgment(ANNOTATOR, view.pair_id, queue.stored_outcome(choice, view.left), view.left, seconds=0.0)
        counts["judged"] += 1
        counts["ties"] += choice == "tie"
    return counts


def generate_and_label(taste, prompts: int, max_new_tokens: int, seed: int, engine: str = "auto",
                       length_bias: float = 0.0, length_ratio: float = 0.0,
                       bad_at: float | None = None) -> dict[str, int]:
    """The app's generator answers `prompts` training prompts twice with the current policy (pairs
    matched in length when `length_ratio` is set); all is labeled."""
    from training.generate import GenerateConfig, run

    run(GenerateConfig(prompts=prompts, max_new_tokens=max_new_tokens, seed=seed, engine=engine,
                       length_ratio=length_ratio))
    return label_waiting(taste, length_bias, seed, bad_at)


# ---------------------------------------------------------------- arms


def round_config(kind: str, args, **fields):
    """The round's default config, with --set overrides and `fields`."""
    from training import registry
    from training.config_fields import config_from_dict

    cls = registry.get(kind).config_class()  # any round of the registry: dpo, kto, sft, ppo, reward
    values = {}
    for item in args.set:
        target, _, value = item.partition("=")
        round_kind, _, field = target.partition(".")
        if round_kind == kind:
            values[field] = value
    return config_from_dict(cls, {**values, **fields}, where="--set / --sweep")


def run_dpo(args, config=None) -> dict:
    from training import dpo, jobs

    started = time.perf_counter()
    summary = dpo.run_round(config or round_config("dpo", args), jobs.Reporter(None))
    return {**summary, "seconds": round(time.perf_counter() - started, 1)}


def arm_dpo(args, taste, root: Path, measure_base) -> dict:
    """One DPO round on `--labels` pairs from the base; then reward + PPO on the same labels; then sweeps."""
    from training import jobs, kto, ppo, reward, versions

    use_workspace(root, "dpo")
    measure = Measure(args, taste)
    measure.rows["base"] = measure_base
    labels = generate_and_label(taste, args.labels, args.max_new_tokens, args.seed, args.engine, args.length_bias,
                                args.length_ratio)
    out = {"labels": labels}
    arms = args.arms.split(",")
    if "dpo" in arms:
        summary = run_dpo(args)
        out["dpo"] = report("dpo", {**summarise(measure("dpo", summary["version"]), measure_base, None),
                      "train_seconds": summary["seconds"], "steps": summary["steps"],
                      "heldout_accuracy": summary.get("heldout_accuracy"), "labels": labels["judged"]})
    if "kto" in arms:  # the same labels taken apart into desirable and undesirable answers
        versions.set_current("v1-base")
        t0 = time.perf_counter()
        summary = kto.run_round(round_config("kto", args, make_current=False), jobs.Reporter(None))
        out["kto"] = report("kto", {**summarise(measure("kto", summary["version"]), measure_base, None),
                      "train_seconds": round(time.perf_counter() - t0, 1), "steps": summary["steps"],
                      "labels": labels["judged"]})
    if "ppo" in arms:
        versions.set_current("v1-base")
        t0 = time.perf_counter()
        rm = reward.run_round(round_config("reward", args), jobs.Reporter(None))
        summary = ppo.run_round(round_config("ppo", args, reward_version=rm["version"]), jobs.Reporter(None))
        out["ppo"] = report("ppo", {**summarise(measure("ppo", summary["version"]), measure_base, None),
                      "reward_model": reward_accuracy_against_taste(rm["version"], measure),
                      "train_seconds": round(time.perf_counter() - t0, 1), "labels": labels["judged"]})
    for variant in sweep_variants(args.sweep):
        versions.set_current("v1-base")
        summary = run_dpo(args, round_config("dpo", args, make_current=False, **variant))
        key = "sweep " + " ".join(f"{k}={v}" for k, v in variant.items())
        out[key] = report(key, {**summarise(measure(key, summary["version"]), measure_base, None),
                                "train_seconds": summary["seconds"], "steps": summary["steps"]})
    return out


def sweep_variants(text: str) -> list[dict]:
    """ "learning_rate=5e-5,5e-4 epochs=1,3" -> the 4 combinations, values as written (checked by the config)."""
    axes = [(name, values.split(",")) for name, _, values in (part.partition("=") for part in text.split())]
    return [dict(zip([a for a, _ in axes], combo)) for combo in itertools.product(*[v for _, v in axes])] if axes else []


def arm_iterative(args, taste, root: Path, measure_base) -> dict:
    """`--rounds` on-policy DPO rounds on the same total budget."""
    from training.preferences import NotReady

    use_workspace(root, "iterative")
    measure = Measure(args, taste)
    measure.rows["base"] = measure_base
    out, previous, spent = {}, measure_base, 0
    for r in range(1, args.rounds + 1):
        budget = args.labels * r // args.rounds - spent
        labels = generate_and_label(taste, budget, args.max_new_tokens, args.seed + 100 * r, args.engine,
                                    args.length_bias, args.length_ratio)
        spent += budget
        try:
            summary = run_dpo(args)  # a fresh adapter on the current policy, all labels so far, reference = base
        except NotReady as exc:  # the taste tied too often: label more before the next round
            out[f"round {r}"] = {"labels": spent, "judged": labels, "skipped": str(exc)}
            continue
        rows = measure(f"round {r}", summary["version"])
        out[f"round {r}"] = report(f"iterative round {r}", {
            **summarise(rows, measure_base, previous), "labels": spent, "judged": labels,
            "train_seconds": summary["seconds"], "steps": summary["steps"]})
        previous = rows
    return out


def arm_rewrites(args, taste, root: Path, measure_base) -> dict:
    """The dpo arm's pairs (same prompts and seed), labeled with Both bad → rewrite at or below the base's
    median taste; an SFT round on the rewrites, then a DPO round on the pairs and the rewrites'
    pairs (reference: the base), each measured."""
    import statistics

    from training import jobs, sft
    from training.preferences import NotReady

    use_workspace(root, "rewrites")
    measure = Measure(args, taste)
    measure.rows["base"] = measure_base
    labels = generate_and_label(taste, args.labels, args.max_new_tokens, args.seed, args.engine, args.length_bias,
                                args.length_ratio, bad_at=statistics.median(measure_base["taste"]))
    out, previous = {"labels": labels}, None
    try:
        t0 = time.perf_counter()
        summary = sft.run_round(round_config("sft", args), jobs.Reporter(None))
    except NotReady as exc:  # fewer rewrites than an SFT round needs: DPO learns from the pairs alone
        out["sft"] = report("rewrites sft", {"skipped": str(exc), "labels": labels})
    else:
        previous = measure("rewrites sft", summary["version"])
        out["sft"] = report("rewrites sft", {
            **summarise(previous, measure_base, None), "labels": labels, "demonstrations": summary["demonstrations"],
            "train_seconds": round(time.perf_counter() - t0, 1), "steps": summary["steps"]})
    summary = run_dpo(args)
    out["sft+dpo"] = report("rewrites sft+dpo", {
        **summarise(measure("rewrites sft+dpo", summary["version"]), measure_base, previous), "labels": labels,
        "pairs_from_rewrites": summary.get("pairs_from_rewrites"), "train_seconds": summary["seconds"],
        "steps": summary["steps"]})
    return out


def arm_autopilot(args, taste, root: Path, measure_base) -> dict:
    """The dpo arm's labels, a reward round on them, then the autopilot's `--rounds` rounds with its
    defaults (--set autopilot.FIELD=V); the annotator answers the audit pairs between rounds."""
    from training import autopilot, jobs, reward
    from training.config_fields import config_from_dict

    class Auditor(jobs.Reporter):
        """The autopilot reports each round's win rate when it ends: the annotator then judges the
        audit pairs waiting, as a person would between rounds."""

        def __init__(self):
            super().__init__(None, quiet=True)
            self.audits: list[int] = []  # votes on each round's audit pairs

        def step(self, step, metrics=None):
            super().step(step, metrics)
            if "win_rate" in (metrics or {}):
                self.audits.append(label_waiting(taste, args.length_bias, args.seed + step)["judged"])

    use_workspace(root, "autopilot")
    measure = Measure(args, taste)
    measure.rows["base"] = measure_base
    labels = generate_and_label(taste, args.labels, args.max_new_tokens, args.seed, args.engine, args.length_bias,
                                args.length_ratio)
    t0 = time.perf_counter()
    rm = reward.run_round(round_config("reward", args), jobs.Reporter(None))
    values = {"rounds": args.rounds, "max_new_tokens": args.max_new_tokens, "reward_version": rm["version"],
              "seed": args.seed}
    for item in args.set:
        target, _, value = item.partition("=")
        if target.startswith("autopilot."):
            values[target[len("autopilot."):]] = value
    auditor = Auditor()
    result = autopilot.run(config_from_dict(autopilot.AutopilotConfig, values, where="--set"), auditor)
    seconds = round(time.perf_counter() - t0, 1)
    out = {"labels": labels, "stopped": result["stopped"], "train_seconds": seconds}
    previous, spent = measure_base, labels["judged"]
    for r, (summary, audits) in enumerate(zip(result["rounds"], auditor.audits), start=1):
        rows = measure(f"autopilot round {r}", summary["version"])
        out[f"round {r}"] = report(f"autopilot round {r}", {
            **summarise(rows, measure_base, previous), "labels": spent, "automatic_pairs": summary["automatic_pairs"],
            "audited": summary["audited"], "audits_judged": audits, "reward_win_rate": summary["win_rate"],
            "steps": summary["steps"]})
        previous, spent = rows, spent + audits  # a round's audits are judged after it: the next round's cost
    out["reward_model"] = reward_accuracy_against_taste(rm["version"], measure)
    return out


# ---------------------------------------------------------------- the whole run


def prepare_model(args, root: Path) -> None:
    """One base model folder for every workspace (PREFLOOP_MODEL)."""
    if args.quick and not args.model:
        args.model = str(tiny_peaked_policy(root / "tiny-model"))
    if not args.model:
        from training.model import convert_default_model

        os.environ["PREFLOOP_HOME"] = str(root / "convert")
        args.model = str(convert_default_model())
    os.environ["PREFLOOP_MODEL"] = args.model


def tiny_peaked_policy(folder: Path) -> Path:
    """The tests' 2-layer model with its (tied) embeddings scaled up: a random 16-wide model's logits
    stay within ±0.3, so no adapter could make any answer likelier (as in tests/test_ppo.py)."""
    import torch
    from transformers import AutoModelForCausalLM

    from tests.tiny_models import make_tiny_policy

    make_tiny_policy(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    with torch.no_grad():
        model.get_input_embeddings().weight.mul_(20)
    model.save_pretrained(folder, safe_serialization=True)
    return folder


def run_taste(args, name: str, root: Path) -> dict:
    taste = load_taste(name)
    root = root / re.sub(r"\W+", "-", name)
    use_workspace(root, "base")
    measure = Measure(args, taste)
    base = measure("base", "v1-base")
    result = {"base": report(f"base ({name})", summarise(base, base, None))}
    arms = args.arms.split(",")
    if {"dpo", "kto", "ppo"} & set(arms) or args.sweep:
        result.update(arm_dpo(args, taste, root, base))
    if "iterative" in arms:
        result["iterative"] = arm_iterative(args, taste, root, base)
    if "rewrites" in arms:
        result["rewrites"] = arm_rewrites(args, taste, root, base)
    if "autopilot" in arms:
        result["autopilot"] = arm_autopilot(args, taste, root, base)
    return result


def headline(result: dict) -> dict:
    """Per arm: win rate against the base with its interval (the figures the targets name)."""
    picked = {}
    for arm in ("dpo", "kto", "ppo"):
        if arm in result:
            picked[arm] = result[arm]["vs_base"]
    trained = [r for r in result.get("iterative", {}).values() if "vs_base" in r]
    if trained:
        picked["iterative"] = trained[-1]["vs_base"]
    if "vs_base" in result.get("rewrites", {}).get("sft+dpo", {}):
        picked["rewrites"] = result["rewrites"]["sft+dpo"]["vs_base"]
    rounds = [r for k, r in result.get("autopilot", {}).items() if k.startswith("round ")]
    if rounds:
        picked["autopilot"] = rounds[-1]["vs_base"]
    if "ppo" in result:
        picked["reward_accuracy_vs_taste"] = result["ppo"]["reward_model"]["accuracy_vs_taste"]
    return picked


def results_from_logs(paths: list[str]) -> dict:
    """{taste: result} from the lines earlier runs printed (one run may have measured some arms of
    a taste and another run the others)."""
    results: dict[str, dict] = {}
    taste = None
    for path in paths:
        for line in Path(path).read_text().splitlines():
            if not line.startswith('{"arm"'):
                continue
            row = json.loads(line)
            arm = row.pop("arm")
            if arm.startswith("base ("):
                taste = arm[len("base ("):-1]
                results.setdefault(taste, {})["base"] = row
            elif arm.startswith("iterative round "):
                results[taste].setdefault("iterative", {})[f"round {arm.split()[-1]}"] = row
            elif arm.startswith("autopilot round "):
                results[taste].setdefault("autopilot", {})[f"round {arm.split()[-1]}"] = row
            elif arm.startswith("rewrites "):
                results[taste].setdefault("rewrites", {})[arm[len("rewrites "):]] = row
            else:
                results[taste][arm] = row
    return results


def plot(results: dict, path: str) -> None:
    """Taste win rate against the base by labels spent, one panel per taste, one line per arm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 3.8), dpi=110, squeeze=False)
    for ax, (taste, result) in zip(axes[0], results.items()):
        def draw(xs, points, label, style):
            rates = [p["vs_base"]["win_rate"] for p in points]
            err = [[r - p["vs_base"]["low"] for r, p in zip(rates, points)],
                   [p["vs_base"]["high"] - r for r, p in zip(rates, points)]]
            ax.errorbar(xs, rates, yerr=err, fmt=style, capsize=3, label=label)
        if "iterative" in result:
            rounds = [r for r in result["iterative"].values() if "vs_base" in r]
            draw([0] + [p["labels"] for p in rounds], [result["base"] | {"vs_base": {"win_rate": .5, "low": .5, "high": .5}}]
                 + rounds, "iterative DPO", "-o")
        rounds = [r for k, r in result.get("autopilot", {}).items() if k.startswith("round ")]
        if rounds:
            draw([p["labels"] for p in rounds], rounds, "autopilot (labels: people's, audits included)", "-x")
        for arm, style in (("dpo", "s"), ("ppo", "^")):
            if arm in result:
                draw([result[arm]["labels"]], [result[arm]], f"one {arm.upper()} round", style)
        if "vs_base" in result.get("rewrites", {}).get("sft+dpo", {}):
            draw([result["rewrites"]["sft+dpo"]["labels"]["judged"]], [result["rewrites"]["sft+dpo"]],
                 "SFT on rewrites, then DPO", "v")
        for arm in (a for a in result if a.startswith("sweep ")):  # DPO variants on the dpo arm's labels
            draw([result.get("labels", {}).get("judged", 128)], [result[arm]], "DPO " + arm[len("sweep "):], "D")
        ax.axhline(0.5, color="gray", lw=0.8, ls="--")
        ax.set(title=f"taste: {taste}", xlabel="labels spent", ylabel="taste win rate vs base (95% CI)", ylim=(0, 1))
        ax.legend(fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.logs:
        plot(results_from_logs(args.logs), args.plot or "learning.png")
        return 0
    if args.quick:
        args.labels, args.rounds, args.heldout, args.samples = min(args.labels, 48), min(args.rounds, 2), 16, 4
        args.max_new_tokens = min(args.max_new_tokens, 16)
        args.set = ["ppo.steps=2", "reward.epochs=1"] + args.set
    tastes = args.taste or ["concise", "plain"]
    for name in tastes:
        load_taste(name)  # a wrong name fails before any work
    from training import jobs

    jobs.set_threads()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="prefloop-learning-") as tmp:
        root = Path(args.home or tmp)
        prepare_model(args, root)
        results = {}
        for name in tastes:
            results[name] = run_taste(args, name, root)
            print(json.dumps({name: results[name]}), flush=True)
    if args.plot:
        plot(results, args.plot)
    print(json.dumps({"tastes": {name: headline(r) for name, r in results.items()}, "labels": args.labels,
                      "rounds": args.rounds, "heldout_prompts": args.heldout, "samples": args.samples,
                      "total_s": round(time.perf_counter() - started, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
