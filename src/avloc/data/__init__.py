"""Data: raw-source loaders, manifests, manifest datasets and generated benchmarks (DigitScenes).

Importing this package registers the datasets it defines in
:data:`avloc.registry.DATASETS`.
"""

import avloc.data.clips  # registers "digitscenes-clips"
import avloc.data.constructions  # registers "realclips-constructions"
import avloc.data.digitscenes  # noqa: F401  (registers "digitscenes")
