"""Localization methods: one self-contained module per method behind one contract.

See :mod:`avloc.methods.base` for the contract. Importing this package imports
no method: :data:`avloc.registry.METHODS` lists where each method lives and
imports its module when the method is asked for (:func:`create_method`,
``METHODS.get``). A new method adds its module and name to that table and
decorates its class with :func:`register_method`; nothing else changes.
"""

from __future__ import annotations

from typing import Any

from avloc.config import config_from_dict
from avloc.methods.base import LocalizationMethod, MethodConfig
from avloc.registry import METHODS


def method_module(name: str) -> str:
    """The module that defines registered method ``name`` (nothing is imported)."""
    return METHODS.module_of(name)


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
    """Sorted names of the registered methods (no method module is imported)."""
    return METHODS.names()


__all__ = ["LocalizationMethod", "MethodConfig", "create_method", "list_methods", "method_module", "register_method"]
