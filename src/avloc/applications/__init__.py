"""Applications: tools built on the models and the engine (layer order in docs/architecture.md).

* :mod:`avloc.applications.runner`: the one runner of collections (a job per input kind: decode, infer,
  commit; resume, isolation of failures, the run record, sequential or Ray via
  :mod:`avloc.applications.ray_runner`); :mod:`avloc.applications.models`: the model a job loads and the digest
  of its content;
* :mod:`avloc.applications.pseudo_boxes`: boxes of sounding objects from a classification model
  ("Less can be more", Sec. 5.2) and the semi-supervised training set made of them;
* :mod:`avloc.applications.pseudo_box_run`: ``avloc pseudo-boxes``, that procedure over a manifest as a job
  of the runner;
* :mod:`avloc.applications.realworld`: scores an ``avloc localize`` configuration on a real-footage set.

The video tool (:mod:`avloc.inference`; its collections: :mod:`avloc.inference.collection`) and the report (:mod:`avloc.report`) sit in the same layer.
"""
