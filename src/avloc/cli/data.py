"""``avloc data``: make benchmark data (``make``) or prepare manifests (``prepare``).

``avloc data make NAME ...`` runs a registered generator (e.g. DigitScenes);
``avloc data prepare FORMAT ...`` writes a validated manifest from a dataset
laid out as published (Flickr-SoundNet, VGG-SS, MUSIC, AVE/AVSOL, VGG-Sound, a folder);
``avloc data extract ...`` optionally pre-extracts a clip manifest's frames and audio.
Each action lives in its own module: ``avloc.cli.data_make``, ``avloc.cli.data_prepare``, ``avloc.cli.data_extract``.
"""

from __future__ import annotations

import importlib
from typing import Any

ACTIONS: dict[str, str] = {
    "make": "avloc.cli.data_make",
    "prepare": "avloc.cli.data_prepare",
    "extract": "avloc.cli.data_extract",
}


def add_parser(sub: Any, name: str) -> None:
    p = sub.add_parser(name, help="generate benchmark data or prepare manifests")
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True
    for action, module in ACTIONS.items():
        importlib.import_module(module).add_parser(actions, action)
