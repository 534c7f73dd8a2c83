"""Data: raw-source loaders, manifests, manifest datasets and generated benchmarks (DigitScenes).

The datasets are listed in :data:`avloc.registry.DATASETS`, which imports a
dataset's module when it is asked for; importing this package imports nothing.
"""
