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
not part of a config (`--job-id`, `--max-steps`, `--max-pairs`) come back as `extras`; a YAML file
may hold `max_steps` / `max_pairs` too, so the Train page can pass them through one config file.
"""
from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

EXTRAS = {  # name -> (type, help)
    "job_id": (int, "Id of the background job this run reports to (set by the Train page)."),
    "max_steps": (int, "Stop after this many optimizer steps (a quick try)."),
    "max_pairs": (int, "Use at most this many labeled pairs."),
}


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
    ok = isinstance(value, field.type) and not (field.type is not bool and isinstance(value, bool))
    if field.type is float and isinstance(value, int) and not isinstance(value, bool):
        value, ok = float(value), True
    if not ok:
        raise ConfigError(f"{where}: field '{field.name}' must be {field.type.__name__}, got {value!r}.")
    if field.choices and value not in field.choices:
        raise ConfigError(f"{where}: field '{field.name}' must be one of {', '.join(map(str, field.choices))}; "
                          f"got {value!r}.")
    for rule, bound in field.bounds:
        if not {"min": value >= bound, "max": value <= bound, "above": value > bound, "below": value < bound}[rule]:
            raise ConfigError(f"{where}: field '{field.name}' must be {BOUND_WORDS[rule]} {bound:g}; got {value!r}.")
    return value


def _checked(config: Any, where: str) -> Any:
    """`config` if its fields go together, else ConfigError with the config's own sentence."""
    problem = config.problem() if hasattr(config, "problem") else None
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


def build_parser(config_class: type, prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=(config_class.__doc__ or "").strip().split("\n")[0])
    parser.add_argument("--config", help="YAML file of field: value; flags given here override it.")
    names = {f.name for f in form_fields(config_class)}
    for name, (kind, text) in EXTRAS.items():
        if name in names:  # the config has its own field of that name (PPOConfig.max_steps)
            continue
        parser.add_argument("--" + name.replace("_", "-"), type=kind, help=text)
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
    own = {name for name in EXTRAS if name not in {f.name for f in form_fields(config_class)}}
    if args["config"]:
        values = read_yaml(args["config"])
        for name in own:
            if name in values:
                field = FormField(name, EXTRAS[name][0], None, EXTRAS[name][1], None, True)
                extras[name] = coerce(field, values.pop(name), args["config"])
    config = config_from_dict(config_class, values, where=str(args["config"] or "config"), check=False)
    flags = {f.name: args[f.name] for f in form_fields(config_class) if args[f.name] is not None}
    where = "command line" if flags or not args["config"] else str(args["config"])
    config = _checked(_override(config_class, config, flags), where)
    for name in EXTRAS:
        value = args.get(name) if name in own else getattr(config, name)
        if value is not None:
            extras[name] = value
    extras["config_path"] = args["config"]
    return config, extras


def _override(config_class: type, config: Any, flags: dict[str, Any]) -> Any:
    fields = {f.name: f for f in form_fields(config_class)}
    return dataclasses.replace(config, **{k: coerce(fields[k], v, "command line") for k, v in flags.items()})
