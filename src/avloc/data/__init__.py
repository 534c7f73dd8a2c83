"""Data: annotation formats, manifests, manifest datasets, prepare steps and generated benchmarks (DigitScenes).

Importing this package imports nothing else, so the torch-free parts (:mod:`avloc.data.annotations`,
:mod:`avloc.data.manifest`) stay light. The datasets register themselves in
:data:`avloc.registry.DATASETS` when their module is imported (:func:`avloc.data.datasets.load_datasets`).
"""
