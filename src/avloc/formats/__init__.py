"""File formats avloc writes and reads, each with one owner: a typed record, one writer, one reader.

The bottom layer: no torch, no model code. ``avloc.formats.localize`` owns ``NAME.avloc.json`` (the per-frame
record of ``avloc localize``), its output suffixes and schema; the API, the collection runner, the report and the
benchmarks all read it through :func:`avloc.formats.localize.read_document`.
"""
