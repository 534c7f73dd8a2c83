"""Vision models (the models layer, torch): COCO-80 object detectors and multi-person pose.

One lazy registry: :data:`VISION_MODULES` maps a name to the module that implements it, which is
imported only when :func:`create_vision_model` asks for it (importing ``avloc.vision`` loads no model
code). Every module has ``create(device="cpu", **config) -> Detector`` returning the network with its
converted weights (``avloc/zoo/vision``, see its ``LICENSE-<name>.txt``) in eval mode; ``detect(images)``
runs the whole pipeline (:class:`avloc.vision.detector.Detector`).

* ``nanodet`` -- NanoDet-g, 416 px, COCO-80 (:mod:`avloc.vision.nanodet`);
* ``centernet`` -- CenterNet on MobileNetV3, 512 px, COCO-80 (:mod:`avloc.vision.centernet`; weights
  not shipped, see its module doc);
* ``movenet`` -- MoveNet multi-pose lightning, 17 keypoints, up to 6 people (:mod:`avloc.vision.movenet`).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from avloc.registry import RegistryError

if TYPE_CHECKING:
    from avloc.vision.detector import Detector

#: name -> module implementing it (imported on demand)
VISION_MODULES: dict[str, str] = {
    "nanodet": "avloc.vision.nanodet",
    "centernet": "avloc.vision.centernet",
    "movenet": "avloc.vision.movenet",
}


def list_vision_models() -> list[str]:
    """The registered vision model names."""
    return sorted(VISION_MODULES)


def create_vision_model(name: str, **config: Any) -> Detector:
    """The model ``name`` with its weights, in eval mode; ``config``: ``device`` and the model's config fields."""
    if name not in VISION_MODULES:
        raise RegistryError(f"unknown vision model {name!r}; valid names: {', '.join(list_vision_models())}")
    module = importlib.import_module(VISION_MODULES[name])
    model: Detector = module.create(**config)
    return model
