"""Does the loop learn? A scripted annotator with a known taste labels pairs through the app's own
queue, rounds run through the same entry points as the Train button with their defaults, and the
taste is measured on held-out prompts before and after.

    python bench/learning.py [--taste concise --taste plain | --taste package.module:function]
                             [--labels 128] [--rounds 3] [--arms dpo,iterative,ppo] [--quick]

For each taste, in fresh workspaces that share one converted base model:
  * dpo: the app's generator samples pairs from the base for `--labels` training prompts, the
    annotator judges each through `queue.next_pair` / `queue.submit_judgment` (a tie when the
    taste scores both sides the same), then one DPO round with the defaults; its implicit reward
    (β·log π/π_base) is checked against the taste as a reward model is;
  * ppo: on those same labels, a reward round and a PPO round from the base, with the defaults;
  * iterative: `--rounds` rounds on the same total budget, each generating its pairs from the
    policy the previous round made (on-policy), labeling them, and running a DPO round on that
    round's labels alone, held to the policy it starts from (`pairs: on-policy`, `reference: parent`,
    the Train page's Advanced settings; `--set dpo.pairs=all --set dpo.reference=base` trains each
    round on all labels so far, held to the base, as the arm did until 2026-12-08);
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
previous round (paired sample by sample, ties half, 95% interval from a bootstrap over prompts; the
iterative arm's last round also against the dpo arm's single round, `vs_dpo_arm`, when both ran),
the exact KL to the base, mean length, the base model's log-prob per token of the answers
(fluency) and the share of empty or looping answers; for the reward model, its held-out accuracy
against the taste's own preference. Last line: JSON.

`--sweep "learning_rate=5e-5,5e-4 epochs=1,3"` adds variants trained on the dpo arm's labels (the grid), DPO's;
groups split by ";" run one after the other ("beta=0.03,0.3; lora_r=4,64; max_pairs=32,64": each
variant changes one thing), and `max_pairs=N` trains on the first N pairs. Settings named
`ppo.FIELD` ("ppo.steps=40; ppo.beta=0.01") make PPO variants instead, from the base on the reward
model the ppo arm trains on the same labels (trained once, for the arm and every variant). Settings
named `reward.FIELD` ("reward.layers=hidden", with any `ppo.FIELD` beside them) train a reward model of
their own on the same labels first (once per choice), then PPO on it; such a variant is also compared
with the ppo arm, paired (`vs_ppo_arm`), and its reward model with the arm's on the same held-out pairs
(`vs_arm`). The arm's reward model is trained for any PPO variant, with or without the ppo arm.
`precision=bf16` (DPO) and `ppo.precision=bf16` (PPO) train the arm's round again on the same labels
with PREFLOOP_DTYPE=bf16, paired with the arm (`vs_dpo_arm`, `vs_ppo_arm`); every version is measured
in the bench's own precision.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.learning_arms import (arm_autopilot, arm_dpo, arm_iterative, arm_names, arm_rewrites, check_precision,  # noqa: E402
                                 sweep_round, sweep_variants, use_workspace, variant_config, variant_reward_config)
from bench.learning_measure import Measure, report, summarise  # noqa: E402
from bench.tastes import load_taste  # noqa: E402


ARMS = ("dpo", "kto", "iterative", "ppo", "rewrites", "autopilot")


def check_arms(text: str, sweep: str = "") -> None:
    """ValueError, in one sentence, for an arm the bench does not have (a typo would run nothing),
    or for no arm and no sweep (nothing but the base would be measured)."""
    named = arm_names(text)
    unknown = [a for a in named if a not in ARMS]
    if unknown:
        raise ValueError(f"--arms: {', '.join(map(repr, unknown))} {'is no arm' if len(unknown) == 1 else 'are no arms'}; "
                         f"the arms are {', '.join(ARMS)}.")
    if not named and not sweep.strip():
        raise ValueError("--arms is empty and there is no --sweep: name an arm or give variants to sweep.")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--taste", action="append", help="built-in taste (concise, plain, structured) or package.module:function; "
                                                    "repeat for several (default: concise and plain)")
    p.add_argument("--labels", type=int, default=128, help="judgments each arm may spend")
    p.add_argument("--rounds", type=int, default=3, help="rounds of the iterative arm")
    p.add_argument("--arms", default="dpo,iterative,ppo", help=f"any of {', '.join(ARMS)} (comma-separated); "
                                                               "empty (--arms '') with --sweep: the sweep's variants alone")
    p.add_argument("--heldout", type=int, default=24, help="held-out prompts the versions answer")
    p.add_argument("--samples", type=int, default=4, help="answers per held-out prompt and version")
    p.add_argument("--max-new-tokens", type=int, default=96, help="longest answer, when labeling and measuring")
    p.add_argument("--model", help="base model folder (default: the converted SmolLM2)")
    p.add_argument("--home", help="folder for the workspaces (default: a temporary one)")
    p.add_argument("--sweep", default="", help='variants on the dpo arm\'s labels: "field=v1,v2 field=v1,..." (a grid) of DPO; '
                                               'groups split by ";" one after the other; max_pairs=N: the first N pairs; '
                                               'ppo.FIELD=...: PPO variants on the ppo arm\'s reward model; reward.FIELD=...: a reward '
                                               'model of its own on the same labels, then PPO on it; precision=bf16, ppo.precision=bf16: '
                                               'the arm\'s round in that PREFLOOP_DTYPE')
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
    arms, measured = arm_names(args.arms), {}
    if {"dpo", "kto", "ppo"} & set(arms) or args.sweep:
        result.update(arm_dpo(args, taste, root, base, measured))
    if "iterative" in arms:  # its last round paired with the single round too, when that ran
        result["iterative"] = arm_iterative(args, taste, root, base, measured.get("dpo"))
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
    if "implicit_reward" in result.get("dpo", {}):
        picked["implicit_reward_accuracy_vs_taste"] = result["dpo"]["implicit_reward"]["per_token"]["accuracy_vs_taste"]
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
        sweeps = [a for a in result if a.startswith("sweep ")]  # DPO and PPO variants on the dpo arm's labels
        # the pairs of a round on all the labels: the dpo arm's, else the most any variant had
        every = result.get("dpo", {}).get("pairs") or max((result[a].get("pairs") or 0 for a in sweeps), default=0)
        for k, arm in enumerate(sweeps, 1):  # one on fewer pairs (max_pairs) spent that share of the labels
            judged = result[arm].get("labels") or result.get("dpo", {}).get("labels", 128)
            share = min(1, result[arm]["pairs"] / every) if "max_pairs=" in arm and result[arm].get("pairs") and every else 1
            beside = 1.5 * k if share == 1 else 0  # variants on every label side by side, not on top of each other
            draw([round(judged * share) + beside], [result[arm]], variant_label(arm), "D")
        ax.axhline(0.5, color="gray", lw=0.8, ls="--")
        ax.set(title=f"taste: {taste}", xlabel="labels spent", ylabel="taste win rate vs base (95% CI)", ylim=(0, 1))
        ax.legend(fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)


def variant_label(arm: str) -> str:
    """The plot's name of a sweep variant's line: "sweep ppo.beta=0.01" -> "PPO beta=0.01"."""
    name = arm.removeprefix("sweep ")
    if sweep_round(dict(part.partition("=")[::2] for part in name.split())) == "ppo":
        return "PPO " + name.replace("ppo.", "")
    return "DPO " + name


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
    from training.device import DeviceError

    try:
        for name in tastes:
            load_taste(name)  # a wrong name fails before any work
        for variant in sweep_variants(args.sweep):  # and so does a sweep that cannot be read
            variant_config(args, variant)  # or names a field its round does not have
            variant_reward_config(args, variant)
            check_precision(variant)  # or a precision this machine cannot train in
        check_arms(args.arms, args.sweep)  # or an arm it does not have
    except (ValueError, DeviceError) as error:  # a ConfigError is a ValueError
        print(error, file=sys.stderr)
        return 2
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
