"""The stored reward-vs-KL points, ready for a table, an interactive chart or a PNG. No torch here,
so the Evaluate page can read points without loading a model library."""
from __future__ import annotations

from pathlib import Path

from labeling import eval_points, model_versions, runs
from labeling.workspace import home
from training import registry


def plot_path() -> Path:
    return home() / "plots" / "reward_vs_kl.png"


def trained_versions() -> list[str]:
    """Ids of the policy versions, newest first."""
    return model_versions.policy_ids_newest_first()


def latest_points(reward_version: str | None = None) -> list[dict]:
    """The newest point of each policy version, with its method, β, parent and sweep for tooltips.

    With `reward_version` only points scored by that reward model are returned; otherwise the newest
    point per version whatever scored it (the `reward_version` column tells them apart)."""
    newest: dict[str, dict] = {}
    for point, version in eval_points.points_with_versions(reward_version):
        config = version.config or {}
        # PPO optimised this very reward model: its score here is in-sample, not a held-out measure
        optimised_against = (version.metrics or {}).get("reward_version") if version.method == "ppo" else None
        newest[point.version_id] = {
            "in_sample": optimised_against is not None and optimised_against == point.reward_version_id,
            "version": point.version_id, "method": version.method, "parent": version.parent_id,
            "beta": config.get("beta"), "sweep": config.get("sweep"),
            "reward": point.reward, "reward_se": point.reward_se or 0.0,
            "kl": point.kl, "kl_se": point.kl_se or 0.0, "kl_per_token": point.kl_per_token,
            "reward_version": point.reward_version_id, "samples": (point.details or {}).get("samples"),
            "mean_tokens": (point.details or {}).get("mean_tokens"),  # answer length, for the table
            "train_prompts": (point.details or {}).get("train_prompts", 0),  # not held out
            "measured_at": point.created_at.isoformat(timespec="seconds"),
        }
    return sorted(newest.values(), key=lambda p: p["kl"])


def frontier(points: list[dict]) -> list[dict]:
    """The upper-left Pareto frontier: points no other point beats on both higher reward and lower KL,
    in order of KL."""
    best, out = float("-inf"), []
    for p in sorted(points, key=lambda p: (p["kl"], -p["reward"])):
        if p["reward"] > best:
            out.append(p)
            best = p["reward"]
    return out


def method_colours() -> dict[str, str]:
    """The chart's colour of each method: black for the base model, then matplotlib's C0, C1, ... for
    the rounds that make policies, in registry order (DPO tab:blue, PPO tab:orange)."""
    return {"base": "black", **{name: f"C{i}" for i, name in enumerate(registry.names(produces="policy"))}}


def plot_reward_vs_kl(points: list[dict], path: Path) -> Path:
    """Draw the measured points with ±1 standard-error bars, the frontier through sweep points, and
    save a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    colours = method_colours()
    for p in points:
        ax.errorbar(p["kl"], p["reward"], xerr=p["kl_se"], yerr=p["reward_se"], fmt="o",
                    color=colours.get(p["method"], "tab:gray"), capsize=3)
        label = p["version"] + (f" β={p['beta']:g}" if p.get("beta") is not None else "")
        label += " (reward in-sample)" if p.get("in_sample") else ""
        ax.annotate(label, (p["kl"], p["reward"]), textcoords="offset points", xytext=(6, 4), fontsize=8)
    sweeps = {p["sweep"] for p in points if p.get("sweep")}
    base = [p for p in points if p["method"] == "base"]
    for sweep in sorted(sweeps):
        line = frontier(base + [p for p in points if p.get("sweep") == sweep])
        ax.plot([p["kl"] for p in line], [p["reward"] for p in line], "--", color="tab:green", alpha=0.7,
                label=f"frontier ({sweep})")
    ax.set_xlabel("KL(π ‖ π_base) per sequence, nats (measured)")
    ax.set_ylabel("mean reward (reward model score)")
    ax.set_title("Reward vs KL per model version")
    ax.grid(alpha=0.3)
    if sweeps:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def training_curves(version_id: str) -> list[dict]:
    """Per-step metrics of the job that trained `version_id` (empty when it was trained elsewhere)."""
    return runs.training_curves(version_id)


def newest_point(version_id: str, reward_version: str | None = None) -> dict | None:
    """The newest measured point of a version (optionally scored by one reward model), details included."""
    point = eval_points.newest_point(version_id, reward_version)
    if point is None:
        return None
    return {"version": version_id, "reward_version": point.reward_version_id, "reward": point.reward,
            "reward_se": point.reward_se or 0.0, "kl": point.kl, "kl_se": point.kl_se or 0.0,
            "details": dict(point.details or {})}
