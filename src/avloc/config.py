"""Typed configuration helpers.

Configs are (nested) dataclasses. They round-trip through plain JSON-able
dicts, which is how they are stored inside checkpoints and run directories;
unknown keys raise instead of being ignored. ``apply_overrides`` takes
command-line style ``a.b=value`` strings.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from avloc.errors import ConfigError

C = TypeVar("C")


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """Plain-dict form of a dataclass config (tuples become lists)."""
    if not dataclasses.is_dataclass(cfg) or isinstance(cfg, type):
        raise ConfigError(f"expected a dataclass instance, got {type(cfg).__name__}")
    return _plain(dataclasses.asdict(cfg))


def _plain(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(a, value, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{where}: {value!r} does not fit {tp}")
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping for {tp.__name__}, got {value!r}")
        return config_from_dict(tp, value, where)
    if origin in (tuple,):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, where) for v in value)
        if args and len(args) != len(value):
            raise ConfigError(f"{where}: expected {len(args)} values, got {len(value)}")
        return tuple(_coerce(a, v, where) for a, v in zip(args, value, strict=False)) if args else tuple(value)
    if origin in (list,):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_coerce(args[0], v, where) for v in value] if args else list(value)
    if origin in (dict,):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def config_from_dict(cls: type[C], data: dict[str, Any], where: str = "") -> C:
    """Build dataclass ``cls`` from a plain dict; unknown keys raise."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where or cls.__name__}: expected a mapping, got {type(data).__name__}")
    hints = _field_types(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{where or cls.__name__}: unknown keys {unknown}; valid keys: {sorted(names)}")
    kwargs = {k: _coerce(hints[k], v, f"{where}.{k}" if where else k) for k, v in data.items()}
    return cls(**kwargs)


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text  # bare strings: `encoder=resnet18`


def apply_overrides(cfg: C, overrides: list[str]) -> C:
    """Return a copy of ``cfg`` with ``key.sub=value`` overrides applied.

    Values are parsed as JSON when possible (``lr=1e-4``, ``sizes=[1,2]``,
    ``flag=true``), otherwise taken as strings.
    """
    data = config_to_dict(cfg)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value (e.g. optim.lr=1e-4)")
        key, text = item.split("=", 1)
        node = data
        parts = key.strip().split(".")
        for p in parts[:-1]:
            if not isinstance(node.get(p), dict):
                raise ConfigError(f"override {item!r}: {p!r} is not a config section")
            node = node[p]
        if parts[-1] not in node:
            raise ConfigError(f"override {item!r}: unknown key {parts[-1]!r}; valid keys: {sorted(node)}")
        node[parts[-1]] = _parse_value(text)
    return config_from_dict(type(cfg), data)


#: the named configs shipped with avloc (``avloc train --config NAME``): ``avloc/configs/NAME.json``
CONFIGS_DIR = Path(__file__).resolve().parent / "configs"


def list_configs() -> list[str]:
    """Names of the shipped configs (``avloc/configs/*.json``), each usable as ``--config NAME``."""
    return sorted(p.stem for p in CONFIGS_DIR.glob("*.json"))


def resolve_config(name_or_path: str | Path) -> Path:
    """A config file: an existing path, else a shipped config's name (:func:`list_configs`)."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    named = CONFIGS_DIR / f"{name_or_path}.json"
    if p.suffix == "" and p.name == str(name_or_path) and named.is_file():
        return named
    raise ConfigError(f"config file not found: {p} (and no shipped config of that name; named configs: {list_configs()})")


def read_config_file(name_or_path: str | Path, sections: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Read a JSON (or ``.toml``) config file, or a shipped config by name, as a plain dict.

    ``sections``: the top-level keys allowed (others raise). The one place config files are parsed.
    """
    p = resolve_config(name_or_path)
    text = p.read_text()
    if p.suffix == ".toml":
        import tomllib

        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{p}: not valid TOML ({e})") from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{p}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping at the top level, got {type(data).__name__}")
    data.pop("description", None)  # named configs say what they are (and, recipes, what they chose)
    data.pop("notes", None)
    if sections is not None:
        unknown = sorted(set(data) - set(sections))
        if unknown:
            raise ConfigError(f"{p}: unknown sections {unknown}; valid: {', '.join(sections)}")
    return data


def load_config_file(cls: type[C], path: str | Path) -> C:
    """Read a JSON config file (TOML accepted too; or a shipped config's name) into ``cls``."""
    return config_from_dict(cls, read_config_file(path))
