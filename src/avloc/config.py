"""Typed configuration helpers.

Configs are (nested) dataclasses. They round-trip through plain JSON-able
dicts, which is how they are stored inside checkpoints and run directories;
unknown keys raise instead of being ignored. ``apply_overrides`` takes
command-line style ``a.b=value`` strings.
"""

from __future__ import annotations

import dataclasses
import json
import math
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


#: integers a config may hold: what a 64-bit signed integer (torch, NumPy) represents
INT_RANGE = (-(2**63), 2**63 - 1)
#: top-level keys of a config file that name something instead of holding a section (``avloc train --config``)
NAME_KEYS = ("method_name",)


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _kind(value: Any) -> str:
    """How a JSON value is called in messages."""
    names = {dict: "a section (mapping)", list: "a list", tuple: "a list", str: "a string", bool: "true/false",
             type(None): "null", int: "an integer", float: "a number"}
    return names.get(type(value), f"a {type(value).__name__}")


def _show(value: Any) -> str:
    """``value`` for a one-line message (long values shortened)."""
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:57]}..."


def _refuse(where: str, wanted: str, value: Any) -> ConfigError:
    return ConfigError(f"{where}: expected {wanted}, got {_kind(value)} ({_show(value)})")


def _coerce(tp: Any, value: Any, where: str) -> Any:
    """``value`` (plain JSON data) checked against the type annotation ``tp`` (and converted: lists -> tuples).

    The rules: ``bool`` is not an integer, a list is not a section or a string, numbers are finite and
    integers fit in 64 bits; a type avloc configs do not use raises ``TypeError`` (a bug in the config class).
    """
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        return _coerce_union(tp, value, where)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise _refuse(where, f"a section (mapping) for {tp.__name__}", value)
        return config_from_dict(tp, value, where)
    if origin in (tuple, list, dict):
        return _coerce_container(tp, value, where)
    if origin is typing.Literal:
        args = typing.get_args(tp)
        if not any(type(value) is type(a) and value == a for a in args):
            raise ConfigError(f"{where}: {_show(value)} is not one of {list(args)}")
        return value
    if tp in _SCALARS:
        return _SCALARS[tp](value, where)
    raise TypeError(f"{where}: config field type {tp!r} is not supported by avloc.config")


def _coerce_union(tp: Any, value: Any, where: str) -> Any:
    args = typing.get_args(tp)
    if value is None:
        if type(None) in args:
            return None
        raise _refuse(where, " or ".join(_wanted(a) for a in args), value)
    errors = []
    for a in args:
        if a is type(None):
            continue
        try:
            return _coerce(a, value, where)
        except ConfigError as e:
            errors.append(e)
    if len(errors) == 1:
        raise errors[0]
    raise _refuse(where, " or ".join(_wanted(a) for a in args), value)


def _wanted(tp: Any) -> str:
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp):
        return "a section (mapping)"
    origin = typing.get_origin(tp) or tp
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string", tuple: "a list", list: "a list",
            dict: "a section (mapping)"}.get(origin, str(tp))


def _coerce_container(tp: Any, value: Any, where: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is dict:
        if not isinstance(value, dict):
            raise _refuse(where, "a section (mapping)", value)
        kt, vt = args or (Any, Any)
        return {_coerce(kt, k, f"{where} key"): _coerce(vt, v, f"{where}.{k}") for k, v in value.items()}
    if not isinstance(value, (list, tuple)):
        raise _refuse(where, "a list", value)
    if origin is list:
        return [_coerce(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)] if args else list(value)
    if len(args) == 2 and args[1] is Ellipsis:
        return tuple(_coerce(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
    if args and len(args) != len(value):
        raise ConfigError(f"{where}: expected a list of {len(args)} values, got {len(value)} ({_show(value)})")
    return tuple(_coerce(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value, strict=True))) \
        if args else tuple(value)


def _bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise _refuse(where, "true/false", value)
    return value


def _int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _refuse(where, "an integer", value)
    if not INT_RANGE[0] <= value <= INT_RANGE[1]:
        raise ConfigError(f"{where}: {_show(value)} does not fit in 64 bits")
    return value


def _float(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _refuse(where, "a number", value)
    try:
        out = float(value)
    except OverflowError:
        raise ConfigError(f"{where}: {_show(value)} is too large for a number") from None
    if not math.isfinite(out):
        raise ConfigError(f"{where}: expected a finite number, got {out}")
    return out


def _str(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise _refuse(where, "a string", value)
    return value


_SCALARS: dict[Any, Any] = {bool: _bool, int: _int, float: _float, str: _str}


def config_from_dict(cls: type[C], data: dict[str, Any], where: str = "") -> C:
    """Build dataclass ``cls`` from a plain dict: every value checked against its field's type, unknown keys named.

    Range checks are the class's own ``__post_init__`` (its :class:`ConfigError` gets ``where`` prefixed).
    """
    if not isinstance(data, dict):
        raise _refuse(where or cls.__name__, "a section (mapping)", data)
    hints = _field_types(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names, key=str)
    if unknown:
        raise ConfigError(f"{where or cls.__name__}: unknown keys {unknown}; valid keys: {sorted(names)}")
    kwargs = {k: _coerce(hints[k], v, f"{where}.{k}" if where else k) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except ConfigValueError as e:  # a range check of __post_init__: name the setting by its full path
        if not where:
            raise
        raise ConfigValueError(f"{where}.{e.field}", e.detail) from None
    except ConfigError as e:
        if not where:
            raise
        raise ConfigError(f"{where}: {e}") from None


def check_kwargs(fn: Any, kwargs: dict[str, Any], where: str) -> dict[str, Any]:
    """``kwargs`` for calling ``fn``, checked like config fields against its annotated signature.

    Unknown names raise listing the valid ones; each value is checked (and converted) by its annotation.
    """
    import inspect

    params = inspect.signature(fn).parameters
    hints = typing.get_type_hints(fn)
    unknown = sorted(set(kwargs) - set(params), key=str)
    if unknown:
        raise ConfigError(f"{where}: unknown arguments {unknown}; valid: {sorted(params)}")
    return {k: _coerce(hints.get(k, Any), v, f"{where}.{k}") for k, v in kwargs.items()}


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return text  # bare strings: `encoder=resnet18` (checked against the field's type like any value)


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

    The one place config files are parsed: UTF-8 text, strict JSON (``NaN`` / ``Infinity`` refused).
    ``sections``: a sectioned file (a recipe): the top-level keys allowed (others raise, naming the valid
    ones), each a section (a mapping) except :data:`NAME_KEYS` (names: non-empty strings).
    """
    p = resolve_config(name_or_path)
    data = _parse_config_text(p, p.read_bytes())
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping of sections at the top level, got {_kind(data)}")
    data.pop("description", None)  # named configs say what they are (and, recipes, what they chose)
    data.pop("notes", None)
    if sections is None:
        return data
    unknown = sorted(set(data) - set(sections))
    if unknown:
        raise ConfigError(f"{p}: unknown sections {unknown}; valid: {', '.join(sections)}")
    for key, value in data.items():
        if key in NAME_KEYS:
            if not isinstance(value, str) or not value:
                raise ConfigError(f"{p}: {key!r} must be a name (a non-empty string), got {_kind(value)} ({_show(value)})")
        elif not isinstance(value, dict):
            raise ConfigError(f"{p}: section {key!r} must be a mapping of settings, got {_kind(value)} ({_show(value)})")
    return data


def _parse_config_text(p: Path, raw: bytes) -> Any:
    """The file's content as plain data, or one :class:`ConfigError` line saying what the file is instead."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ConfigError(f"{p}: not a text (UTF-8 JSON or TOML) config file; is it a binary file given by mistake?") from None
    if p.suffix == ".toml":
        import tomllib

        try:
            data = tomllib.loads(text)
        except (tomllib.TOMLDecodeError, RecursionError) as e:
            raise ConfigError(f"{p}: not valid TOML ({_first_line(e)})") from None
        return data
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except RecursionError:
        raise ConfigError(f"{p}: not a config (nested too deeply to be one)") from None
    except ValueError as e:  # JSONDecodeError, NaN / Infinity, integers over Python's digit limit
        raise ConfigError(f"{p}: not valid JSON ({_first_line(e)})") from None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a valid setting: a config number must be finite")


def _first_line(e: BaseException) -> str:
    lines = str(e).splitlines()
    return lines[0] if lines else type(e).__name__


def load_config_file(cls: type[C], path: str | Path) -> C:
    """Read a JSON config file (TOML accepted too; or a shipped config's name) into ``cls``."""
    return config_from_dict(cls, read_config_file(path))


# ----------------------------------------------------------------------------- range checks for ``__post_init__``


class ConfigValueError(ConfigError):
    """A setting out of its range: ``field`` (its name in its config; :func:`config_from_dict` prefixes the
    path of the section) and ``detail`` (what is wrong)."""

    def __init__(self, field: str, detail: str) -> None:
        super().__init__(f"{field} {detail}")
        self.field, self.detail = field, detail


def check_range(field: str, value: float, low: float | None = None, high: float | None = None, *,
                low_open: bool = False) -> None:
    """Raise :class:`ConfigValueError` unless ``low <= value <= high`` (``low < value`` if ``low_open``; NaN fails).

    ``field`` names the setting in its config (``size``); a bound left ``None`` is not checked.
    """
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value == value
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value <= high
    if not ok:
        lo = "(-inf" if low is None else f"{'(' if low_open else '['}{low:g}"
        hi = "inf)" if high is None else f"{high:g}]"
        raise ConfigValueError(field, f"must lie in {lo}, {hi}, got {value!r}")


def check_positive(**values: float) -> None:
    """Each of ``values`` (setting name -> value) must be > 0."""
    for name, value in values.items():
        check_range(name, value, 0, low_open=True)
