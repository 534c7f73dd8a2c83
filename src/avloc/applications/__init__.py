"""Applications: tools built on the models and the engine (layer order in docs/architecture.md).

* :mod:`avloc.applications.pseudo_boxes`: boxes of sounding objects from a classification model
  ("Less can be more", Sec. 5.2) and the semi-supervised training set made of them;
* :mod:`avloc.applications.pseudo_box_run`: ``avloc pseudo-boxes``, that procedure over a manifest
  (resumable, one bad entry never stops the others, Ray with ``workers``);
* :mod:`avloc.applications.realworld`: scores an ``avloc localize`` configuration on a real-footage set.

The video tool (:mod:`avloc.inference`) and the report (:mod:`avloc.report`) sit in the same layer.
"""
