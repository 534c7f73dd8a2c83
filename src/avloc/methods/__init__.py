"""Localization methods: one self-contained module per method behind one contract.

See :mod:`avloc.methods.base` for the contract. Importing this package
registers every method in :data:`avloc.registry.METHODS`; a new method adds
its module to ``_METHOD_MODULES`` and nothing else changes.
"""

from __future__ import annotations

import importlib
from typing import Any

from avloc.config import config_from_dict
from avloc.methods.base import LocalizationMethod, MethodConfig
from avloc.registry import METHODS

# modules that register methods (imported for their side effect)
_METHOD_MODULES: list[str] = [
    "avloc.methods.lvs",
    "avloc.methods.avsync_prior",
    "avloc.methods.attention10k",
    "avloc.methods.avenet",
    "avloc.methods.ezvsl",
    "avloc.methods.priors",
    "avloc.methods.synchrony",
    "avloc.methods.proposal_mil",
    "avloc.methods.twostage",
    "avloc.methods.classif",
    "avloc.methods.dnm",
    "avloc.methods.dnm_baselines",
    "avloc.methods.avsemantic.method",
]


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


__all__ = ["LocalizationMethod", "MethodConfig", "create_method", "list_methods", "register_method"]

# imported last: method modules use register_method defined above
for _m in _METHOD_MODULES:
    importlib.import_module(_m)
