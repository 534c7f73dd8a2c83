"""``avloc report``: a static HTML site over the outputs of ``avloc localize`` (docs/report.md).

* :mod:`avloc.formats.runfile` — ``DIR/run.json``, the per-input record batch
  runs keep (``run_schema.json``): read, checked and written here;
* :mod:`avloc.report.collect` — what the pages show, from run.json and the
  files (index rows, timeline series), every JSON schema-checked;
* :mod:`avloc.report.html` — the pages and the SVG timeline, all strings escaped;
* :mod:`avloc.report.site` — writing the site atomically, and serving it.

The site needs no server and no network: it opens from ``file://``, its data
is embedded in the pages, and its script and stylesheet are our own files.
"""

from __future__ import annotations

from avloc.formats.runfile import RUN_FILE, RUN_STATUSES, RunInput, RunRecord, read_run, write_run
from avloc.report.collect import Collection, HeardClass, Timeline, VideoEntry, collect, heard_classes, timeline
from avloc.report.site import ReportResult, build_report, serve

__all__ = [
    "RUN_FILE",
    "RUN_STATUSES",
    "Collection",
    "HeardClass",
    "ReportResult",
    "RunInput",
    "RunRecord",
    "Timeline",
    "VideoEntry",
    "build_report",
    "collect",
    "heard_classes",
    "read_run",
    "serve",
    "timeline",
    "write_run",
]
