"""Typed configs as JSON: one home for reading, validating, merging and saving the dataclass
configs of every stage. Torch-free, so planning and level 2 can read presets without it.

A value of the wrong type (``"epochs": "3"``, ``1.5`` for an int, ``null`` for a number, an
unknown key) is refused when the config is loaded, with one line naming the file, the key, the
expected type and the value, long before any stage starts.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import types
import typing
import warnings
from pathlib import Path
from typing import Any, Sequence, TypeVar

from kzlib.errors import UsageError
from kzlib.io import write_json_atomic

C = TypeVar("C")

# keys renamed in ways an alias cannot carry (their meaning changed): the error says what to write
RENAMED = {"page_height": "page_size (with \"page_side\": \"height\" for the old meaning)",
           "test_height": "test_size (with \"page_side\": \"height\" for the old meaning)",
           "pseudo_max_second": "pseudo_max_second_score"}


class ConfigError(UsageError):
    """A config value that does not fit its field; ``detail`` is the key path and the problem."""

    def __init__(self, detail: str, source: str | None = None):
        self.detail, self.source = detail, source
        super().__init__(f"{source}: {detail}" if source else detail)


def _type_name(tp) -> str:
    if tp is type(None):
        return "null"
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _coerce(value: Any, tp, key: str):
    """``value`` checked against the annotation ``tp`` (lists become tuples, ints floats)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    bad = ConfigError(f"{key}: expected {_type_name(tp)}, got {json.dumps(value, default=str)}"
                      f" ({type(value).__name__})")
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        for option in args:
            try:
                return _coerce(value, option, key)
            except ConfigError:
                continue
        raise bad
    if tp is type(None):
        if value is None:
            return None
        raise bad
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise bad
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise bad
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
        raise bad
    if tp is str:
        if isinstance(value, str):
            return value
        raise bad
    if tp is dict or origin is dict:
        if isinstance(value, dict):
            return value
        raise bad
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise bad
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{key}: expected {len(args)} values, got {json.dumps(list(value))}")
        return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    return value


def config_from_dict(cls: type[C], values: dict[str, Any], source: str | None = None, prefix: str = "") -> C:
    """Build a config dataclass from plain values: unknown keys and wrongly typed values are a
    ``ConfigError`` naming ``source`` (a file) and the key; the dataclass's own checks
    (``__post_init__``) run last and are reported the same way."""
    if not isinstance(values, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a JSON object, got {type(values).__name__}",
                          source)
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    for old, new in getattr(cls, "ALIASES", {}).items():
        if old in values and new not in values:
            warnings.warn(f"{source or cls.__name__}: {prefix}{old} is now called {new}", DeprecationWarning, stacklevel=2)
            values = {(new if k == old else k): v for k, v in values.items()}
    unknown = sorted(set(values) - fields)
    if unknown:
        hints_renamed = [f"{k} is now {RENAMED[k]}" for k in unknown if k in RENAMED]
        raise ConfigError(f"unknown key(s) {', '.join(prefix + k for k in unknown)} "
                          + (f"({'; '.join(hints_renamed)})" if hints_renamed else f"(known: {', '.join(sorted(fields))})"),
                          source)
    clean = {}
    for k, v in values.items():
        try:
            clean[k] = _coerce(v, hints[k], prefix + k)
        except ConfigError as e:
            raise ConfigError(e.detail, source) from None
    try:
        return cls(**clean)
    except ConfigError as e:
        raise ConfigError(e.detail if e.source is None else str(e), source) from None
    except ValueError as e:
        raise ConfigError(f"{prefix}{e}" if prefix else str(e), source) from None


def read_json(path: str | Path) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError("no such config file", str(path)) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"unreadable config ({e})", str(path)) from None


def load_config(cls: type[C], path: str | Path) -> C:
    return config_from_dict(cls, read_json(path), str(path))


def config_dict(cfg: Any) -> dict:
    """The config as JSON-ready values (tuples as lists)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def save_config(cfg: Any, path: str | Path) -> None:
    write_json_atomic(dataclasses.asdict(cfg), path)


def check_positive(cfg: Any, *names: str, allow_zero: bool = False) -> None:
    """Range checks shared by the configs' ``__post_init__``."""
    for name in names:
        v = getattr(cfg, name)
        if v < 0 or (v == 0 and not allow_zero):
            raise ConfigError(f"{name}: must be {'>= 0' if allow_zero else '> 0'}, got {v}")


def validates(epoch: int, epochs: int, every: int) -> bool:
    """Whether a training of ``epochs`` epochs scores its held-out pages after epoch ``epoch``
    (0-based): every ``every`` epochs and after the last; never when ``every`` is 0 (the held-out
    pages are then scored only by the stage that predicts them, and the last epoch is the result)."""
    return every > 0 and ((epoch + 1) % every == 0 or epoch + 1 == epochs)


def validations(epochs: int, every: int) -> int:
    """How many times a training of ``epochs`` epochs validates (``validates``)."""
    return sum(validates(k, epochs, every) for k in range(epochs))


def check_choices(cfg: Any, **choices: Sequence[str]) -> None:
    """Each named field holds one of its allowed values."""
    for name, allowed in choices.items():
        v = getattr(cfg, name)
        if v not in allowed:
            raise ConfigError(f"{name}: {v!r} is not {', '.join(allowed[:-1])} or {allowed[-1]}")


def check_resnet_size(cfg: Any, channels: str, blocks: str) -> None:
    """A ResNet resized by ``channels`` (the four stages' widths) and ``blocks`` (blocks per stage): four positive numbers each, or none (the architecture as named),
    and no pretrained file (ImageNet weights exist only for the named sizes)."""
    for name in (channels, blocks):
        v = tuple(getattr(cfg, name))
        if v and (len(v) != 4 or min(v) < 1):
            raise ConfigError(f"{name}: needs four positive numbers, one per ResNet stage (or none), got {list(v)}")
    if (getattr(cfg, channels) or getattr(cfg, blocks)) and cfg.pretrained:
        raise ConfigError(f"{channels}/{blocks}: a ResNet of another size has no pretrained weights; "
                          f"set pretrained to \"\" (random initialisation) or leave {channels} and {blocks} empty")


def resnet_size_args(channels: Sequence[int], blocks: Sequence[int]) -> dict:
    """timm ResNet arguments for a resized network (``check_resnet_size``): the stages' widths and
    blocks per stage (the stem stays as the architecture has it: 64 channels for a plain ResNet);
    empty for the architecture as named."""
    args: dict = {}
    if channels:
        args["channels"] = tuple(int(c) for c in channels)
    if blocks:
        args["layers"] = tuple(int(b) for b in blocks)
    return args


def check_zoom_range(zoom_range: tuple[float, ...]) -> None:
    """``zoom_range`` is empty (scale_aug applies) or (lo, hi) with 0 < lo <= hi."""
    if zoom_range and (len(zoom_range) != 2 or not 0 < zoom_range[0] <= zoom_range[1]):
        raise ConfigError(f"zoom_range: needs two magnifications 0 < lo <= hi (or none), got {list(zoom_range)}")


# ---------------------------------------------------------------------------------- CLI

def parse_bool(text: str) -> bool:
    t = text.strip().lower()
    if t in ("1", "true", "yes", "on"):
        return True
    if t in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def add_config_flags(parser, cls) -> None:
    """One ``--field-name`` flag per config field (default None: not given), typed from the
    field's annotation; tuples take several values."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp, default = hints[f.name], f.default
        if default is dataclasses.MISSING:
            continue
        flag = "--" + f.name.replace("_", "-")
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if tp is bool:
            parser.add_argument(flag, type=parse_bool, default=None, metavar="BOOL", help=f"(default {default})")
        elif typing.get_origin(tp) is tuple:
            kind = args[0] if args else str
            parser.add_argument(flag, type=kind, nargs="+", default=None,
                                help=f"(default {' '.join(map(str, default))})")
        elif tp in (int, float, str):
            parser.add_argument(flag, type=tp, default=None, help=f"(default {default})")
        elif args and args[0] in (int, float, str):
            parser.add_argument(flag, type=args[0], default=None, help=f"(default {default})")
    for old, new in getattr(cls, "ALIASES", {}).items():  # deprecated names, read for one release
        kind = hints[new] if hints[new] in (int, float, str) else str
        parser.add_argument("--" + old.replace("_", "-"), dest=new, type=kind, default=None, help=argparse.SUPPRESS)


def given_flags(cls, args) -> dict[str, Any]:
    """The config fields given on the command line (flags whose value is not None)."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if getattr(args, f.name, None) is not None}


def config_from_args(cls: type[C], args, config_file: str | Path | None = None) -> C:
    """Defaults, then the JSON file, then the flags that were given."""
    values = read_json(config_file) if config_file else {}
    if config_file and not isinstance(values, dict):
        raise ConfigError("expected a JSON object", str(config_file))
    return config_from_dict(cls, {**values, **given_flags(cls, args)}, str(config_file) if config_file else "flags")
