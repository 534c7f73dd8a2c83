"""Vision models (the models layer, torch): COCO-80 object detectors and multi-person pose.

The models are listed in :data:`avloc.registry.VISION`, which imports a model's module only when it is
asked for (importing ``avloc.vision`` loads no model code). Every module has ``create(device="cpu", **config) -> Detector`` returning the network with its
converted weights (``avloc/zoo/vision``, see its ``LICENSE-<name>.txt``) in eval mode; ``detect(images)``
runs the whole pipeline (:class:`avloc.vision.detector.Detector`).

* ``nanodet`` -- NanoDet-g, 416 px, COCO-80 (:mod:`avloc.vision.nanodet`);
* ``centernet`` -- CenterNet on MobileNetV3, 512 px, COCO-80 (:mod:`avloc.vision.centernet`; weights
  not shipped, see its module doc);
* ``movenet`` -- MoveNet multi-pose lightning, 17 keypoints, up to 6 people (:mod:`avloc.vision.movenet`;
  weights not shipped, converted by ``tools/convert_human_models.py``).
"""

from __future__ import annotations

from typing import Any

from avloc.registry import VISION


def list_vision_models() -> list[str]:
    """The registered vision model names (from the registry's table: nothing is imported)."""
    return VISION.names()


def create_vision_model(name: str, **config: Any) -> Any:
    """The model ``name`` with its weights, in eval mode; ``config``: ``device`` and the model's config fields."""
    return VISION.create(name, **config)
