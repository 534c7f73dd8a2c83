"""Shared encoders (visual and audio) behind one contract, see :mod:`avloc.encoders.base`.

:data:`avloc.registry.ENCODERS` lists where each encoder lives; its module is imported when the
encoder is asked for (:func:`create_encoder`), so importing this package loads no encoder.
"""

from __future__ import annotations

from typing import Any

from avloc.config import check_kwargs
from avloc.encoders.base import AudioEncoder, FeatureInfo, VisualEncoder, freeze
from avloc.registry import ENCODERS

__all__ = ["AudioEncoder", "FeatureInfo", "VisualEncoder", "create_encoder", "freeze", "list_encoders"]


def create_encoder(name: str, **kwargs: Any) -> VisualEncoder | AudioEncoder:
    """Build the encoder registered as ``name``; unknown names raise listing the valid ones.

    ``kwargs`` (a method config's ``*_encoder_kwargs``) are checked against the factory's signature like
    config fields (:func:`avloc.config.check_kwargs`: unknown names listed, types, finite numbers).
    """
    factory = ENCODERS.get(name)
    enc = factory(**check_kwargs(factory, kwargs, f"encoder {name!r}"))
    if not isinstance(enc, VisualEncoder | AudioEncoder):
        raise TypeError(f"encoder factory {name!r} returned {type(enc).__name__}, not a VisualEncoder or AudioEncoder")
    return enc


def list_encoders() -> list[str]:
    """Sorted names of the registered encoders."""
    return ENCODERS.names()
