"""The arms of bench/learning.py: fresh workspaces, the scripted annotator that labels through the
app's own queue, and each arm's rounds run through the same entry points as the Train button."""
from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import os
import random
import re
import statistics
import time
from pathlib import Path

from bench.learning_measure import (Measure, accuracy_against_taste, agreement_difference, implicit_reward_accuracy,
                                    paired, report, reward_accuracy_against_taste, reward_scores, summarise)
from bench.tastes import rewrite

ROOT = Path(__file__).resolve().parent.parent
ANNOTATOR = "scripted"
PPO_SETTINGS = ("ppo.", "reward.")  # a sweep variant naming only these is a PPO round (on a reward model of its own)
PRECISIONS = ("precision", "dpo.precision", "ppo.precision")  # sweep keys: the round in another PREFLOOP_DTYPE


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
    from labeling import demonstrations, queue

    rng = random.Random(seed)
    # longer_won of length_differs: decided votes between answers of different word counts that the
    # longer one won (the annotator's length habit, which the Data page reports per person)
    counts = {"judged": 0, "ties": 0, "both_bad": 0, "rewrites": 0, "length_differs": 0, "longer_won": 0}
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
        words_left, words_right = len(view.left_text.split()), len(view.right_text.split())
        if by_length:
            left, right = words_left, words_right
        choice = "left" if left > right else "right" if right > left else "tie"
        if choice != "tie" and words_left != words_right:
            counts["length_differs"] += 1
            counts["longer_won"] += (choice == "left") == (words_left > words_right)
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


def round_config(kind: str, args, config_class=None, defaults: dict | None = None, **fields):
    """The round's config: `defaults` (else the class's own), then --set KIND.FIELD=V, then `fields`.
    The class is the registry's round of that kind unless given (the autopilot is no round)."""
    from training import registry
    from training.config_fields import config_from_dict

    cls = config_class or registry.get(kind).config_class()  # a round of the registry: dpo, kto, sft, ppo, reward
    values = dict(defaults or {})
    for item in args.set:
        target, _, value = item.partition("=")
        round_kind, _, field = target.partition(".")
        if round_kind == kind:
            values[field] = value
    return config_from_dict(cls, {**values, **fields}, where="--set / --sweep")


def run_dpo(args, config=None, max_pairs: int | None = None) -> dict:
    from training import dpo, jobs

    started = time.perf_counter()
    summary = dpo.run_round(config or round_config("dpo", args), jobs.Reporter(None), max_pairs=max_pairs)
    return {**summary, "seconds": round(time.perf_counter() - started, 1)}


def arm_names(text: str) -> list[str]:
    """The arms `--arms` names, "dpo, kto" as "dpo,kto"; none for an empty text."""
    return [a.strip() for a in text.split(",") if a.strip()]


def arm_dpo(args, taste, root: Path, measure_base, measured: dict | None = None) -> dict:
    """One DPO round on `--labels` pairs from the base; then reward + PPO on the same labels; then sweeps.
    `measured`, when given, receives the single round's answers ({"dpo": rows})."""
    from training import jobs, kto, ppo, versions

    use_workspace(root, "dpo")
    measure = Measure(args, taste)
    measure.rows["base"] = measure_base
    labels = generate_and_label(taste, args.labels, args.max_new_tokens, args.seed, args.engine, args.length_bias,
                                args.length_ratio)
    out = {"labels": labels}
    arms = arm_names(args.arms)
    if "dpo" in arms:
        config = round_config("dpo", args)
        summary = run_dpo(args, config)
        out["dpo"] = report("dpo", {**summarise(measure("dpo", summary["version"]), measure_base, None),
                      "train_seconds": summary["seconds"], "steps": summary["steps"], "pairs": summary.get("pairs"),
                      "heldout_accuracy": summary.get("heldout_accuracy"), "labels": labels["judged"],
                      "implicit_reward": implicit_reward_accuracy(summary["version"], config.beta, measure)})
        if measured is not None:
            measured["dpo"] = measure.rows["dpo"]
    if "kto" in arms:  # the same labels taken apart into desirable and undesirable answers
        versions.set_current("v1-base")
        t0 = time.perf_counter()
        summary = kto.run_round(round_config("kto", args, make_current=False), jobs.Reporter(None))
        out["kto"] = report("kto", {**summarise(measure("kto", summary["version"]), measure_base, None),
                      "train_seconds": round(time.perf_counter() - t0, 1), "steps": summary["steps"],
                      "labels": labels["judged"]})
    variants = sweep_variants(args.sweep)
    reward_models, rm = RewardModels(measure), None  # one reward model per choice of reward settings
    if "ppo" in arms or any(sweep_round(v) == "ppo" for v in variants):
        versions.set_current("v1-base")
        rm = reward_models.get(round_config("reward", args))
        out["reward_model"] = rm
    if "ppo" in arms:
        t0 = time.perf_counter()
        summary = ppo.run_round(round_config("ppo", args, reward_version=rm["version"]), jobs.Reporter(None))
        out["ppo"] = report("ppo", {**summarise(measure("ppo", summary["version"]), measure_base, None),
                      "reward_model": rm, "train_seconds": round(rm["train_seconds"] + time.perf_counter() - t0, 1),
                      "labels": labels["judged"]})
    for variant in variants:
        key = "sweep " + " ".join(f"{k}={v}" for k, v in variant.items())
        out[key] = report(key, run_variant(args, key, variant, measure, reward_models, rm) | {"labels": labels["judged"]})
    return out


class RewardModels:
    """The reward rounds of an arm's PPO rounds on its labels, one per choice of reward settings,
    each checked against the taste on the held-out base answers."""

    def __init__(self, measure: Measure):
        self.measure, self.trained, self.scores = measure, {}, {}

    def get(self, config) -> dict:
        """{"version", "train_seconds" (the reward round alone), "accuracy_vs_taste", ...} of `config`'s reward model."""
        from training import jobs, reward

        key = json.dumps(dataclasses.asdict(config), sort_keys=True)
        if key not in self.trained:
            t0 = time.perf_counter()
            version = reward.run_round(config, jobs.Reporter(None))["version"]
            seconds = round(time.perf_counter() - t0, 1)
            self.scores[version] = reward_scores(version, self.measure)  # scored once: accuracy and comparisons
            self.trained[key] = {**accuracy_against_taste(self.scores[version], self.measure.rows["base"]),
                                 "version": version, "train_seconds": seconds}
        return self.trained[key]

    def difference(self, version: str, other: str) -> dict:
        """`agreement_difference` of two of these reward models on the same held-out pairs."""
        return agreement_difference(self.scores[version], self.scores[other], self.measure.rows["base"])


def run_variant(args, key: str, variant: dict, measure: Measure, reward_models: RewardModels, rm: dict | None) -> dict:
    """One sweep variant from the base on the arm's labels: a DPO round, or a PPO round on the arm's reward
    model `rm` or, with reward.FIELD settings, on one of its own (then also compared with the ppo arm,
    paired, and its reward model with the arm's on the same held-out pairs). A precision trains the
    variant's policy round in that PREFLOOP_DTYPE (any reward model of its own in the bench's); one
    that changes nothing else is paired with the arm's round."""
    from training import jobs, ppo, versions

    versions.set_current("v1-base")
    measure_base, extra, previous = measure.rows["base"], {}, None
    kind, dtype = sweep_round(variant), variant_precision(variant)
    if set(variant) <= set(PRECISIONS):  # the arm's own round on the same labels in another precision
        previous = measure.rows.get(kind)
    if kind == "ppo":
        reward_id, reward_seconds = rm["version"], 0.0
        if (reward_config := variant_reward_config(args, variant)) is not None:  # a reward model of its own
            own = reward_models.get(reward_config)  # in the bench's precision, as the arm's
            reward_id, reward_seconds, previous = own["version"], own["train_seconds"], measure.rows.get("ppo")
            extra["reward_model"] = {**own, "vs_arm": reward_models.difference(reward_id, rm["version"])}
        t0 = time.perf_counter()
        config, _ = variant_config(args, variant, reward_version=reward_id)
        with precision(dtype):
            summary = ppo.run_round(config, jobs.Reporter(None))
        summary.update(seconds=round(reward_seconds + time.perf_counter() - t0, 1), steps=config.total_steps)
    else:
        with precision(dtype):
            summary = run_dpo(args, *variant_config(args, variant))
    figures = summarise(measure(key, summary["version"]), measure_base, previous)
    if "vs_previous" in figures:  # paired with the arm, which differs only in the reward settings or the precision
        figures[f"vs_{kind}_arm"] = figures.pop("vs_previous")
    return {**figures, **extra, "train_seconds": summary["seconds"], "steps": summary["steps"],
            "pairs": summary.get("pairs")}


def variant_config(args, variant: dict, **fields) -> tuple:
    """(config, max_pairs) of a sweep variant's policy round: the defaults, --set, the variant's values,
    then `fields`; never made current. ConfigError, in one sentence, for a field the round does not have
    or a bad value."""
    kind = sweep_round(variant)
    if kind == "ppo":
        values = {k.removeprefix("ppo."): v for k, v in variant.items() if k.startswith("ppo.") and k not in PRECISIONS}
    else:
        values = {k.removeprefix("dpo."): v for k, v in variant.items() if k not in ("max_pairs", *PRECISIONS)}
    max_pairs = int(variant["max_pairs"]) if "max_pairs" in variant else None
    return round_config(kind, args, **{"make_current": False, **values, **fields}), max_pairs


def variant_reward_config(args, variant: dict):
    """The reward round a variant with reward.FIELD settings trains on the arm's labels before its PPO
    round (the defaults, --set, then the variant's values); None when it names none."""
    values = {k.removeprefix("reward."): v for k, v in variant.items() if k.startswith("reward.")}
    return round_config("reward", args, **values) if values else None


def sweep_round(variant: dict) -> str:
    """The policy round a sweep variant trains: ppo when its fields are named ppo.FIELD or reward.FIELD
    (a reward model of its own, then PPO on it), else dpo."""
    named = [k for k in variant if k not in ("precision", "dpo.precision")]  # precision alone: the DPO round's
    return "ppo" if named and all(k.startswith(PPO_SETTINGS) for k in named) else "dpo"


def variant_precision(variant: dict) -> str | None:
    """The PREFLOOP_DTYPE a variant's round trains in (precision, dpo.precision or ppo.precision), or None."""
    return next((variant[k] for k in PRECISIONS if k in variant), None)


def check_precision(variant: dict) -> None:
    """DeviceError, in one sentence, when this machine cannot train in the variant's precision (fp16 on
    a CPU, bf16 on an old card): said before any work, not after the arms' rounds."""
    from training import device

    with precision(variant_precision(variant)):
        device.dtype()


@contextlib.contextmanager
def precision(name: str | None):
    """PREFLOOP_DTYPE=`name` while a variant's round trains (None: unchanged); the version is then
    measured in the bench's own precision, as every other."""
    before = os.environ.get("PREFLOOP_DTYPE")
    if name:
        os.environ["PREFLOOP_DTYPE"] = name
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("PREFLOOP_DTYPE", None)
        else:
            os.environ["PREFLOOP_DTYPE"] = before


def sweep_variants(text: str) -> list[dict]:
    """ "learning_rate=5e-5,5e-4 epochs=1,3" -> the 4 combinations, values as written (checked by the
    config); groups split by ";" are swept one after the other, so "beta=0.03,0.3; lora_r=4,64" is 4
    variants, each changing one field. `max_pairs` (not a config field) trains on the first N pairs;
    `precision` (or `dpo.precision`) and `ppo.precision` (nor are they) train the DPO or PPO round in
    that PREFLOOP_DTYPE.
    A variant named twice runs once; ValueError, in one sentence, for a part that is no field=values."""
    from training.device import DTYPES
    from training.preferences import MIN_PAIRS

    variants = []
    for group in text.split(";"):
        group = re.sub(r"\s*([=,])\s*", r"\1", group)  # "beta = 0.03, 0.3" as "beta=0.03,0.3"
        axes = []
        for part in group.split():
            name, _, written = part.partition("=")
            values = written.split(",")
            if not name or "" in values:
                raise ValueError(f"--sweep: '{part}' is not field=value[,value...].")
            if name == "max_pairs" and not all(v.isdigit() and int(v) >= MIN_PAIRS for v in values):
                raise ValueError(f"--sweep: max_pairs takes whole numbers of at least {MIN_PAIRS}, got '{written}'.")
            if name in PRECISIONS and not set(values) <= set(DTYPES):
                raise ValueError(f"--sweep: {name} takes {', '.join(DTYPES)}, got '{written}'.")
            axes.append((name, values))
        if len({name.startswith(PPO_SETTINGS) for name, _ in axes}) > 1:
            raise ValueError(f"--sweep: '{group.strip()}' mixes PPO or reward settings (ppo.FIELD, reward.FIELD) with "
                             "DPO ones in one variant; split them with ';'.")
        if axes:
            variants += [dict(zip([a for a, _ in axes], combo)) for combo in itertools.product(*[v for _, v in axes])]
    return [v for k, v in enumerate(variants) if v not in variants[:k]]


# Iterative DPO's two settings: each round learns the labels made on its own starting policy's answers
# and is held to that policy. Measured against all the labels so far with the base as reference
# (README, "Does it learn?"); --set dpo.pairs=all --set dpo.reference=base runs that instead.
ITERATIVE = {"pairs": "on-policy", "reference": "parent"}


def arm_iterative(args, taste, root: Path, measure_base, single: dict | None = None) -> dict:
    """`--rounds` on-policy DPO rounds (ITERATIVE, then --set) on the same total budget; the last is
    also paired with the dpo arm's single round (`vs_dpo_arm`) when its answers (`single`) are given:
    same prompts and seeds."""
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
            summary = run_dpo(args, round_config("dpo", args, defaults=ITERATIVE))  # a fresh adapter on the current policy
        except NotReady as exc:  # the taste tied too often: label more before the next round
            out[f"round {r}"] = {"labels": spent, "judged": labels, "skipped": str(exc)}
            continue
        rows = measure(f"round {r}", summary["version"])
        against_single = {"vs_dpo_arm": paired(rows, single)} if single is not None and r == args.rounds else {}
        out[f"round {r}"] = report(f"iterative round {r}", {
            **summarise(rows, measure_base, previous), **against_single, "labels": spent, "judged": labels,
            "train_seconds": summary["seconds"], "steps": summary["steps"]})
        previous = rows
    return out


def arm_rewrites(args, taste, root: Path, measure_base) -> dict:
    """The dpo arm's pairs (same prompts and seed), labeled with Both bad → rewrite at or below the base's
    median taste; an SFT round on the rewrites, then a DPO round on the pairs and the rewrites'
    pairs (reference: the base), each measured."""
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
    defaults (--set autopilot.FIELD=V); the annotator answers the audit pairs between rounds, and
    each round's version is measured as it ends (a run stopped early keeps the rounds it printed)."""
    from training import autopilot, jobs, reward, versions

    use_workspace(root, "autopilot")
    measure = Measure(args, taste)
    measure.rows["base"] = measure_base
    labels = generate_and_label(taste, args.labels, args.max_new_tokens, args.seed, args.engine, args.length_bias,
                                args.length_ratio)
    t0 = time.perf_counter()
    rm = reward.run_round(round_config("reward", args), jobs.Reporter(None))
    out = {"labels": labels, "reward_model": report("autopilot reward model", reward_accuracy_against_taste(
        rm["version"], measure))}

    class Auditor(jobs.Reporter):
        """The autopilot reports each round's win rate when it ends: the annotator then judges the
        audit pairs waiting, as a person would between rounds, and the new version is measured."""

        def __init__(self):
            super().__init__(None, quiet=True)
            self.previous, self.spent = measure_base, labels["judged"]

        def step(self, step, metrics=None):
            super().step(step, metrics)
            if "win_rate" not in (metrics or {}):
                return
            audits = label_waiting(taste, args.length_bias, args.seed + step)["judged"]
            rows = measure(f"autopilot round {step}", versions.current_policy_id())
            out[f"round {step}"] = report(f"autopilot round {step}", {
                **summarise(rows, measure_base, self.previous), "labels": self.spent,
                "automatic_pairs": int(metrics["automatic_pairs"]), "audits_judged": audits,
                "reward_win_rate": metrics["win_rate"], "seconds": round(time.perf_counter() - t0, 1)})
            self.previous, self.spent = rows, self.spent + audits  # a round's audits: the next round's cost

    config = round_config("autopilot", args, autopilot.AutopilotConfig, defaults={
        "rounds": args.rounds, "max_new_tokens": args.max_new_tokens, "reward_version": rm["version"], "seed": args.seed})
    result = autopilot.run(config, Auditor())
    for r, summary in enumerate(result["rounds"], start=1):
        out[f"round {r}"].update(audited=summary["audited"], steps=summary["steps"], version=summary["version"])
    out["stopped"] = result["stopped"]
    return out
