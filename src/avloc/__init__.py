"""avloc: audio-visual sound source localization."""

__version__ = "0.1.0"
