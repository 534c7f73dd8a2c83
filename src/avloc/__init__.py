"""avloc: audio-visual sound source localization.

``avloc.localize(video, model=..., fps=...)`` and ``avloc.load_results(dir)`` (:mod:`avloc.api`) are
imported on first use, so ``import avloc`` stays light.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["__version__", "load_results", "localize"]


def __getattr__(name: str) -> Any:
    if name in ("localize", "load_results", "Result"):
        from avloc import api

        return getattr(api, name)
    raise AttributeError(f"module 'avloc' has no attribute {name!r}")
