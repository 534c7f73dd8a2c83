"""Writing the report site, and serving it (``avloc report DIR``; docs/report.md).

Layout of the site (default ``DIR/report``)::

    index.html            every video: thumbnail, status, duration, on-screen, heard classes, errors
    videos/SLUG.html      one page per video with a valid JSON
    thumbs/SLUG.jpg       a frame from the middle of the overlay video (else the contact sheet)
    assets/report.js      sorting, filter, timeline seeking, current boxes (no dependencies)
    assets/report.css

The overlay videos and contact sheets are not copied: pages link them
relatively (``../../NAME.avloc.mp4`` from ``DIR/report/videos/``), so the
report stays small and the site works from ``file://`` as long as it stays
where it was written relative to ``DIR`` (the overlay is H.264/AAC in MP4,
which Chromium, Firefox and Safari play). ``SLUG`` is the name reduced to
``[A-Za-z0-9._-]`` plus 8 hex digits of its SHA-1, so that any file name
(spaces, ``#``, ``<``, non-UTF-8 bytes) gives a safe, unique page name.

The site is written as one output of an :class:`avloc.io.outputs.OutputTransaction`
(a folder): built in a hidden temporary folder beside it, moved into place
whole, replacing a previous report only with ``force``; a second ``avloc
report`` on the same folder is refused while one runs.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from http.server import ThreadingHTTPServer
from importlib.resources import files
from pathlib import Path
from typing import Any

from avloc.errors import ConfigError, MediaError
from avloc.report.collect import Collection, VideoEntry, collect, timeline
from avloc.report.html import index_page, index_row, page, url, video_page

log = logging.getLogger(__name__)

#: threads decoding the index thumbnails (each holds one decoder; decoding and scaling release the GIL)
THUMB_THREADS = min(8, os.cpu_count() or 1)
#: long side of the index thumbnails (pixels)
THUMB_SIZE = 256
ASSETS = ("report.js", "report.css")
#: written into every site: ``--force`` replaces a folder only when it holds this (a site avloc wrote)
SITE_MARKER = ".avloc-report.json"
#: what a site held before the marker existed (reports of avloc 0.1 up to 2026-12-02)
_LEGACY_SITE = frozenset({"index.html", "videos", "thumbs", "assets"})


@dataclass
class ReportResult:
    """What :func:`build_report` wrote."""

    out: Path
    index: Path
    pages: int
    collection: Collection


def slug(stem: str) -> str:
    """A safe, unique file name for ``stem`` (module doc)."""
    raw = os.fsencode(stem)
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", raw.decode("ascii", "replace")).strip("._")[:60] or "video"
    return f"{base}-{hashlib.sha1(raw).hexdigest()[:8]}"


def _rel(target: Path, start: Path) -> str:
    """``target`` relative to the folder ``start``, as a URL (both made absolute first)."""
    return url(os.path.relpath(os.path.abspath(target), os.path.abspath(start)).replace(os.sep, "/"))


def thumbnail(e: VideoEntry) -> bytes | None:
    """JPEG of a frame from the middle of the overlay video, else the contact sheet scaled down; ``None`` if neither.

    Raises :class:`MediaError` when the file is there but cannot be decoded.
    """
    from PIL import Image

    img: Image.Image | None = None
    if e.video_path is not None:
        import av

        try:
            with av.open(str(e.video_path)) as c:
                if c.duration:
                    c.seek(c.duration // 2)  # container time base (microseconds); lands on the key frame before
                img = next((fr.to_image() for fr in c.decode(video=0)), None)
        except (av.FFmpegError, OSError, IndexError) as err:
            raise MediaError(f"{e.video_path.name}: cannot decode a frame for the thumbnail ({err})") from None
    elif e.sheet_path is not None:
        try:
            with Image.open(e.sheet_path) as im:
                img = im.convert("RGB")
        except OSError as err:
            raise MediaError(f"{e.sheet_path.name}: cannot read the contact sheet ({err})") from None
    if img is None:
        return None
    img.thumbnail((THUMB_SIZE, THUMB_SIZE))
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="JPEG", quality=82)
    return buf.getvalue()


def _thumbnails(entries: list[VideoEntry]) -> list[bytes | None]:
    """Every entry's :func:`thumbnail`, decoded in threads (PyAV and Pillow release the GIL), in ``entries``' order;
    a video that cannot be decoded gets ``None`` and the error in its entry."""
    from concurrent.futures import ThreadPoolExecutor

    def one(e: VideoEntry) -> bytes | MediaError | None:
        try:
            return thumbnail(e)
        except MediaError as err:
            return err

    with ThreadPoolExecutor(max_workers=max(1, min(THUMB_THREADS, len(entries)))) as pool:
        got = list(pool.map(one, entries))
    out: list[bytes | None] = []
    for e, g in zip(entries, got, strict=True):
        if isinstance(g, MediaError):
            e.errors.append(str(g))
            log.warning("%s", g)
            g = None
        out.append(g)
    return out


def write_site(coll: Collection, site: Path, final: Path, thumbnails: bool = True) -> int:
    """Write the site for ``coll`` into ``site`` (a new folder), with links valid once it is moved to ``final``.

    Returns the number of video pages.
    """
    from avloc import __version__

    for sub in ("videos", "thumbs", "assets"):
        (site / sub).mkdir(parents=True)
    marker = {"tool": "avloc report", "version": __version__, "folder": os.path.abspath(coll.folder)}
    (site / SITE_MARKER).write_text(json.dumps(marker, ensure_ascii=True) + "\n")
    for name in ASSETS:
        (site / "assets" / name).write_bytes(files("avloc.report").joinpath("assets", name).read_bytes())
    videos = final / "videos"
    rows: list[str] = []
    pages = 0
    entries = sorted(coll.entries, key=lambda e: e.stem)
    thumbs = _thumbnails(entries) if thumbnails else [None] * len(entries)
    for e, jpg in zip(entries, thumbs, strict=True):
        s = slug(e.stem)
        thumb_url = None
        if jpg is not None:
            (site / "thumbs" / f"{s}.jpg").write_bytes(jpg)
            thumb_url = f"thumbs/{s}.jpg"
        page_url = None
        if e.doc is not None:
            tl = timeline(e.doc)
            body = video_page(
                e, tl,
                video_url=_rel(e.video_path, videos) if e.video_path else None,
                sheet_url=_rel(e.sheet_path, videos) if e.sheet_path else None,
                index_url="../index.html",
            )
            _write_html(site / "videos" / f"{s}.html", page(f"{e.stem} - avloc report", body, "../assets"))
            page_url = f"videos/{s}.html"
            pages += 1
        rows.append(index_row(e, page_url, thumb_url))
    label = os.path.abspath(coll.folder)
    _write_html(site / "index.html", page(f"avloc report - {os.path.basename(label)}", index_page(coll, rows, label), "assets"))
    return pages


def _write_html(path: Path, text: str) -> None:
    # a name with non-UTF-8 bytes reaches the text as lone surrogates: shown as U+FFFD, never a crash
    path.write_text(text, encoding="utf-8", errors="replace")


def is_report_site(path: Path) -> bool:
    """Whether ``path`` is a report site avloc wrote: a real folder holding :data:`SITE_MARKER` (or, for sites
    written before the marker, exactly the site's own entries with its script)."""
    if path.is_symlink() or not path.is_dir():
        return False
    marker = path / SITE_MARKER
    if marker.is_file():
        try:
            return bool(json.loads(marker.read_text(encoding="utf-8")).get("tool") == "avloc report")
        except (OSError, ValueError, AttributeError):
            return False
    names = {p.name for p in path.iterdir()}
    return names <= _LEGACY_SITE and (path / "index.html").is_file() and (path / "assets" / "report.js").is_file()


def build_report(folder: str | Path, out: str | Path | None = None, force: bool = False, thumbnails: bool = True) -> ReportResult:
    """Write the report of the ``avloc localize`` outputs in ``folder`` to ``out`` (default ``folder/report``).

    Raises :class:`avloc.errors.DataError` when ``folder`` holds no outputs,
    :class:`avloc.errors.OutputExistsError` when ``out`` exists and ``force``
    is false or it is not a report site (:func:`is_report_site`: ``force`` never
    deletes another folder or file), :class:`ConfigError` when ``out`` would
    replace ``folder`` itself.
    """
    from avloc.io.outputs import OutputTransaction

    d = Path(folder)
    o = Path(out) if out is not None else d / "report"
    if d.exists() and (o.resolve() == d.resolve() or o.resolve() in d.resolve().parents):
        raise ConfigError(f"--out {o}: would replace the folder being reported on ({d}); choose another --out")
    tx = OutputTransaction(o.parent, o.name, {"site": ""}, ["site"], force=force, marker="site",
                           owned=lambda _kind, p: is_report_site(p))
    tx.check()  # before reading anything: a writable place, and no report there unless force
    coll = collect(d)
    with tx:
        pages = write_site(coll, tx.path("site"), o, thumbnails=thumbnails)
    log.info("wrote %s: %d video(s), %d page(s)", o, len(coll.entries), pages)
    return ReportResult(out=o, index=o / "index.html", pages=pages, collection=coll)


def _inside(path: str, folder: str) -> bool:
    """Whether the resolved ``path`` is ``folder`` or lies inside it (both already resolved)."""
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def served_files(res: ReportResult) -> frozenset[str]:
    """The files outside the site that its pages link: each video's overlay and contact sheet, resolved, and only
    those that resolve inside the reported folder (a link planted in it never lets the server read elsewhere)."""
    folder = os.path.realpath(res.collection.folder)
    media = (p for e in res.collection.entries for p in (e.video_path, e.sheet_path) if p is not None)
    return frozenset(r for r in (os.path.realpath(p) for p in media) if _inside(r, folder) and os.path.isfile(r))


def make_server(res: ReportResult, host: str = "127.0.0.1", port: int = 8000) -> tuple[ThreadingHTTPServer, str]:
    """An HTTP server for the report ``res``, and the URL of its index (not yet serving: call ``serve_forever``).

    It serves the site folder and, of everything else, only the media its pages link (:func:`served_files`):
    any other path, a folder listing, or a link inside the site that resolves outside it gets 404. URLs keep
    the files' layout below the deepest folder holding the site and the reported folder, so the pages'
    relative links resolve unchanged. ``port`` 0 picks a free port.
    """
    import functools
    from http.server import SimpleHTTPRequestHandler

    site = os.path.realpath(res.out)
    media = served_files(res)
    root = Path(os.path.commonpath([site, os.path.realpath(res.collection.folder)]))

    class SiteHandler(SimpleHTTPRequestHandler):
        def send_head(self) -> Any:
            target = os.path.realpath(self.translate_path(self.path))
            if not (_inside(target, site) or target in media):
                self.send_error(404, "Not part of this report")
                return None
            return super().send_head()

        def list_directory(self, path: str | os.PathLike[str]) -> None:
            self.send_error(404, "No listing")
            return None

        def log_message(self, format: str, *args: object) -> None:
            log.debug("%s - %s", self.address_string(), format % args)

    httpd = ThreadingHTTPServer((host, port), functools.partial(SiteHandler, directory=str(root)))
    return httpd, f"http://{host}:{httpd.server_address[1]}/{_rel(Path(site) / 'index.html', root)}"


def serve(res: ReportResult, host: str = "127.0.0.1", port: int = 8000,
          announce: Callable[[str], None] | None = None) -> None:
    """Serve the report ``res`` over HTTP (:func:`make_server`) until interrupted (Ctrl-C).

    ``announce`` is called with the index's URL once the server listens.
    """
    httpd, address = make_server(res, host, port)
    with httpd:
        log.info("serving %s", address)
        if announce is not None:
            announce(address)
        try:
            httpd.serve_forever()
        except KeyboardInterrupt:
            pass
