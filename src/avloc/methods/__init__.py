"""Localization methods: one self-contained module per method behind one contract.

See :mod:`avloc.methods.base` for the contract. Importing this package
registers every method in :data:`avloc.registry.METHODS`; a new method adds
its module and names to ``METHOD_MODULES`` and nothing else changes.
"""

from __future__ import annotations

import importlib
from typing import Any

from avloc.config import config_from_dict
from avloc.methods.base import LocalizationMethod, MethodConfig
from avloc.registry import METHODS, RegistryError

#: where each registered method lives: module -> the names it registers (checked at import, so the
#: registry says where a method is even when its file is named after the paper rather than the method)
METHOD_MODULES: dict[str, tuple[str, ...]] = {
    "avloc.methods.lvs": ("lvs",),
    "avloc.methods.avsync_prior": ("avsync-objectness",),
    "avloc.methods.attention10k": ("attention10k",),
    "avloc.methods.avenet": ("ots",),
    "avloc.methods.ezvsl": ("ezvsl",),
    "avloc.methods.priors": ("random", "centre", "objectness"),
    "avloc.methods.synchrony": ("synchrony",),
    "avloc.methods.proposal_mil": ("proposal",),
    "avloc.methods.twostage": ("twostage",),
    "avloc.methods.classif": ("classif",),
    "avloc.methods.dnm": ("dnm",),
    "avloc.methods.dnm_baselines": ("dnm-cam", "dnm-tian"),
    "avloc.methods.avsemantic.method": ("avsemantic",),
}


def method_module(name: str) -> str:
    """The module that defines registered method ``name``."""
    for module, names in METHOD_MODULES.items():
        if name in names:
            return module
    raise RegistryError(f"unknown method {name!r}; valid: {sorted(n for ns in METHOD_MODULES.values() for n in ns)}")


def register_method(name: str) -> Any:
    """Class decorator: register a :class:`LocalizationMethod` subclass under ``name``."""

    def deco(cls: type[LocalizationMethod]) -> type[LocalizationMethod]:
        cls.name = name
        return METHODS.register(name)(cls)  # type: ignore[no-any-return]

    return deco


def create_method(name: str, config: MethodConfig | dict[str, Any] | None = None) -> LocalizationMethod:
    """Build method ``name`` from a config (dataclass or plain dict; default config when ``None``)."""
    cls = METHODS.get(name)
    if config is None:
        cfg = cls.config_class()
    elif isinstance(config, dict):
        cfg = config_from_dict(cls.config_class, config)
    else:
        cfg = config
    return cls(cfg)  # type: ignore[no-any-return]


def list_methods() -> list[str]:
    return METHODS.names()


__all__ = ["METHOD_MODULES", "LocalizationMethod", "MethodConfig", "create_method", "list_methods", "method_module", "register_method"]

# imported last: method modules use register_method defined above
for _m in METHOD_MODULES:
    importlib.import_module(_m)
for _name in METHODS.names():
    _where = METHODS.get(_name).__module__
    if _name not in METHOD_MODULES.get(_where, ()):
        raise RegistryError(f"method {_name!r} is registered by {_where}: list it in avloc.methods.METHOD_MODULES")
