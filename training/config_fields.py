"""One mapping from a round's config dataclass to the command line, a YAML file and the Train form.

Every field of a round's config (`DPORoundConfig`, `RewardRoundConfig`, `PPOConfig`) carries
`metadata={"help": ...}` and optionally `"choices"`, bounds (`"min"`/`"max"` inclusive,
`"above"`/`"below"` exclusive) and `"basic": True` for the few settings people change (the form
shows those first and folds the rest under "Advanced"). A config may define `problem()`, the sentence saying why its
fields do not go together (or None). From that one definition:

    config_from_args(DPORoundConfig, ["--config", "dpo.yaml", "--beta", "0.2", "--max-steps", "5"])
        -> (DPORoundConfig(beta=0.2, ...), {"job_id": None, "max_steps": 5, "max_pairs": None, ...})
    form_fields(DPORoundConfig) -> [FormField(name="beta", type=float, default=0.1, help=..., choices=None), ...]

YAML values are read first and command-line flags override them. The round-wide options that are
not part of a config (`--job-id` and the `RoundLimits`, `--max-steps` / `--max-pairs`) come back as
`extras`; a YAML file may hold `max_steps` / `max_pairs` too, so the Train page can pass them through
one config file.

`settings_problem(config)` checks a config however it was built (form, YAML, flags or code): every
field against its metadata, then the config's own `problem()`. It is the one check of a round's
settings; the registry asks it before any round runs.
"""
from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A config file or flag prefloop cannot use; the message is one sentence for the user."""


@dataclass(frozen=True)
class FormField:
    name: str
    type: type  # int, float, str or bool
    default: Any
    help: str
    choices: tuple[Any, ...] | None
    optional: bool  # None is an allowed value
    bounds: tuple[tuple[str, float], ...] = ()  # ("min" | "max" | "above" | "below", bound)
    basic: bool = False  # one of the few settings people change: shown first, the rest under "Advanced"


BOUND_WORDS = {"min": "at least", "max": "at most", "above": "greater than", "below": "less than"}


@dataclass
class RoundLimits:
    """Caps for a quick try of any round, beside its own settings: `--max-steps` / `--max-pairs` on the
    command line, "Quick run" on the Train page. A config that carries one as its own field
    (PPOConfig.max_steps) makes it with `limit_field`, so type, bounds and help are these."""

    max_steps: int | None = field(default=None, metadata={"min": 0,
        "help": "Stop after this many training steps, for a quick try (empty or 0: the round's own count)."})
    max_pairs: int | None = field(default=None, metadata={"min": 0,
        "help": "Use at most this many labeled pairs (PPO: training prompts; empty or 0: all)."})


def limit_field(name: str, help: str | None = None) -> Any:
    """A config's own field for the round-wide limit `name`: RoundLimits' default, bounds and help
    (`help` when the config means it a little differently, as a sweep does)."""
    limit = next(f for f in dataclasses.fields(RoundLimits) if f.name == name)
    return field(default=None, metadata={**limit.metadata, **({"help": help} if help else {})})


def _base_type(annotation: Any) -> tuple[type, bool]:
    """(int, True) for `int | None`, (float, False) for `float`."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        real = [a for a in args if a is not type(None)]
        if len(real) != 1:
            raise TypeError(f"config fields must have one type (optionally | None), got {annotation}")
        return real[0], True
    return annotation, False


def form_fields(config_class: type) -> list[FormField]:
    """The fields of a config dataclass, in order, as the Train form and the CLI see them."""
    hints = typing.get_type_hints(config_class)
    out = []
    for f in dataclasses.fields(config_class):
        kind, optional = _base_type(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        choices = f.metadata.get("choices")
        if callable(choices):  # read when the form is built: the sweep's rounds come from the registry
            choices = choices()
        bounds = tuple((rule, f.metadata[rule]) for rule in BOUND_WORDS if rule in f.metadata)
        out.append(FormField(f.name, kind, default, f.metadata.get("help", ""),
                             tuple(choices) if choices else None, optional, bounds, bool(f.metadata.get("basic"))))
    return out


def coerce(field: FormField, value: Any, where: str) -> Any:
    """`value` as the field's type, or ConfigError naming `where` and the field."""
    if field.optional and (value is None or isinstance(value, str) and not value.strip()):
        return None  # an empty box of the form, or an empty flag
    if isinstance(value, str) and field.type is not str:
        text = value.strip().lower()
        if field.optional and text in ("none", "null"):  # an empty box was handled above
            return None
        try:
            value = {"true": True, "false": False}[text] if field.type is bool else field.type(text)
        except (KeyError, ValueError):
            raise ConfigError(f"{where}: field '{field.name}' must be {field.type.__name__}, got {value!r}.") from None
    if field.type is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    problem = value_problem(field, value)
    if problem:
        raise ConfigError(f"{where}: {problem}")
    return value


def value_problem(field: FormField, value: Any) -> str | None:
    """Why `value` cannot be the field's value (its type, choices or bounds), as one sentence, or None."""
    if value is None and field.optional:
        return None
    is_bool = isinstance(value, bool)
    ok = isinstance(value, field.type) or field.type is float and isinstance(value, int)
    if not ok or is_bool and field.type is not bool:
        return f"field '{field.name}' must be {field.type.__name__}, got {value!r}."
    if field.choices and value not in field.choices:
        return f"field '{field.name}' must be one of {', '.join(map(str, field.choices))}; got {value!r}."
    for rule, bound in field.bounds:
        if not {"min": value >= bound, "max": value <= bound, "above": value > bound, "below": value < bound}[rule]:
            return f"field '{field.name}' must be {BOUND_WORDS[rule]} {bound:g}; got {value!r}."
    return None


def settings_problem(config: Any) -> str | None:
    """The first setting of `config` out of its field's type, choices or bounds, else the config's
    own `problem()` (fields that do not go together), as one sentence; None when it can run."""
    for f in form_fields(type(config)):
        problem = value_problem(f, getattr(config, f.name))
        if problem:
            return problem
    return config.problem() if hasattr(config, "problem") else None


def _checked(config: Any, where: str) -> Any:
    """`config` if its settings can run, else ConfigError with the sentence saying why not."""
    problem = settings_problem(config)
    if problem:
        raise ConfigError(f"{where}: {problem}")
    return config


def config_from_dict(config_class: type, values: dict[str, Any], where: str = "config", check: bool = True) -> Any:
    """Build the dataclass from a dict of field values (from YAML or the form), checking each
    (and, with `check`, that they go together)."""
    fields = {f.name: f for f in form_fields(config_class)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown field '{unknown[0]}'; the fields are {', '.join(fields)}.")
    config = config_class(**{name: coerce(fields[name], v, where) for name, v in values.items()})
    return _checked(config, where) if check else config


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file; pass an existing YAML file to --config.") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}{line}: not valid YAML ({getattr(exc, 'problem', exc)}).") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the config must be a mapping of field: value, got {type(data).__name__}.")
    return data


JOB_ID = FormField("job_id", int, None, "Id of the background job this run reports to (set by the Train page).",
                   None, True)
LIMITS = tuple(f.name for f in dataclasses.fields(RoundLimits))  # ("max_steps", "max_pairs")
EXTRAS = ("job_id", *LIMITS)  # the keys of `extras`


def extra_fields(config_class: type) -> list[FormField]:
    """The options a round takes beside its config: --job-id and the RoundLimits the config does not
    carry as fields of its own (PPOConfig has its own max_steps)."""
    own = {f.name for f in form_fields(config_class)}
    return [f for f in [JOB_ID, *form_fields(RoundLimits)] if f.name not in own]


def build_parser(config_class: type, prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=(config_class.__doc__ or "").strip().split("\n")[0])
    parser.add_argument("--config", help="YAML file of field: value; flags given here override it.")
    for f in extra_fields(config_class):  # parsed as text and checked by `coerce`, as the fields below
        parser.add_argument("--" + f.name.replace("_", "-"), dest=f.name, default=None,
                            metavar=f.type.__name__.upper(), help=f.help)
    for f in form_fields(config_class):
        flag = "--" + f.name.replace("_", "-")
        if f.type is bool:
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None,
                                help=f"{f.help} (default: {f.default})")
        else:  # parsed as text here and checked by `coerce`, so CLI and YAML errors read alike
            parser.add_argument(flag, dest=f.name, default=None, metavar=f.type.__name__.upper(),
                                help=f"{f.help} (default: {f.default})")
    return parser


def config_from_args(config_class: type, argv: list[str], prog: str = "python -m training") -> tuple[Any, dict]:
    """(config, extras) from `--config FILE.yaml` and flags; flags win over the file."""
    args = vars(build_parser(config_class, prog).parse_args(argv))
    values: dict[str, Any] = {}
    extras: dict[str, Any] = {name: None for name in EXTRAS}
    separate = extra_fields(config_class)
    if args["config"]:
        values = read_yaml(args["config"])
        for f in separate:
            if f.name in values:
                extras[f.name] = coerce(f, values.pop(f.name), args["config"])
    config = config_from_dict(config_class, values, where=str(args["config"] or "config"), check=False)
    flags = {f.name: args[f.name] for f in form_fields(config_class) if args[f.name] is not None}
    where = "command line" if flags or not args["config"] else str(args["config"])
    config = _checked(_override(config_class, config, flags), where)
    for f in separate:
        if args[f.name] is not None:
            extras[f.name] = coerce(f, args[f.name], "command line")
    for name in set(EXTRAS) - {f.name for f in separate}:  # a limit the config carries itself
        if getattr(config, name) is not None:
            extras[name] = getattr(config, name)
    extras["config_path"] = args["config"]
    return config, extras


def _override(config_class: type, config: Any, flags: dict[str, Any]) -> Any:
    fields = {f.name: f for f in form_fields(config_class)}
    return dataclasses.replace(config, **{k: coerce(fields[k], v, "command line") for k, v in flags.items()})
