"""HTML of the report: the index, one page per video, the SVG timeline (no I/O here).

Every string that comes from a file (names, paths, class labels, errors) goes
through :func:`esc` into HTML, through :func:`url` into ``href``/``src``, and
through :func:`json_block` into the ``<script type="application/json">`` blocks
that carry the data the page scripts read (no ``fetch()``: Chromium blocks it
on ``file://``). The scripts (``assets/report.js``) write such strings with
``textContent`` only. Nothing is loaded from the network.
"""

from __future__ import annotations

import html
import json
import math
import os
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

from avloc.report.collect import Collection, Timeline, VideoEntry

#: geometry of the timeline SVG, in viewBox units
SVG_WIDTH = 960
SVG_LABEL_WIDTH = 170  # the lane names, left of the plot
SVG_RIGHT_PAD = 12
CONF_LANE_HEIGHT = 64
CLASS_LANE_HEIGHT = 18
AXIS_HEIGHT = 22
#: a heard-class cell's opacity is its score, but never fainter than this (a heard class stays visible)
MIN_CELL_OPACITY = 0.08


def esc(s: object) -> str:
    """Text for HTML content and quoted attribute values."""
    return html.escape(str(s), quote=True)


def url(relpath: str) -> str:
    """A relative path (``/``-separated) as a URL: each segment percent-encoded (``#``, ``?``, ``%``, spaces...)."""
    return "/".join(quote(os.fsencode(part), safe="") for part in relpath.split("/"))  # fsencode: non-UTF-8 names too


def json_block(element_id: str, data: Any) -> str:
    """A ``<script type="application/json">`` block that no string inside ``data`` can close or break."""
    text = json.dumps(data, allow_nan=False, separators=(",", ":"))  # ASCII: lone surrogates stay escapes
    text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return f'<script type="application/json" id="{esc(element_id)}">{text}</script>'


def _fmt_pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.0%}"


def _fmt_seconds(x: float | None) -> str:
    if x is None:
        return "n/a"
    m, s = divmod(x, 60.0)
    return f"{int(m)}:{s:04.1f}"


def page(title: str, body: str, assets: str) -> str:
    """A whole document; ``assets`` is the relative URL of the assets folder."""
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        '<link rel="icon" href="data:,">\n'  # no favicon request (a 404 in the console)
        f"<title>{esc(title)}</title>\n"
        f'<link rel="stylesheet" href="{assets}/report.css">\n'
        f"</head>\n<body>\n{body}\n"
        f'<script src="{assets}/report.js"></script>\n'
        "</body>\n</html>\n"
    )


# -- the index ------------------------------------------------------------------------------------


def _heard_text(e: VideoEntry) -> str:
    return ", ".join(f"{h.label} ({h.fraction:.0%})" for h in e.heard)


def index_row(e: VideoEntry, page_url: str | None, thumb_url: str | None) -> str:
    """One ``<tr>`` of the index; ``data-*`` attributes carry the sort keys."""
    name = esc(e.stem)
    link = f'<a href="{page_url}">{name}</a>' if page_url else name
    thumb = f'<img class="thumb" src="{thumb_url}" alt="" loading="lazy">' if thumb_url else ""
    errors = "".join(f"<li>{esc(m)}</li>" for m in e.errors)
    keys = {
        "name": e.stem,
        "status": e.status,
        "duration": "" if e.duration is None else f"{e.duration:.3f}",
        "onscreen": "" if e.onscreen_fraction is None else f"{e.onscreen_fraction:.4f}",
        "heard": str(len(e.heard)),
    }
    attrs = " ".join(f'data-{k}="{esc(v)}"' for k, v in keys.items())
    return (
        f'<tr class="video status-{esc(e.status)}" {attrs}>'
        f'<td class="c-thumb">{thumb}</td>'
        f'<td class="c-name">{link}<div class="input">{esc(e.input or "")}</div></td>'
        f'<td class="c-status"><span class="badge">{esc(e.status)}</span></td>'
        f'<td class="c-num">{_fmt_seconds(e.duration)}</td>'
        f'<td class="c-num">{_fmt_pct(e.onscreen_fraction)}</td>'
        f'<td class="c-heard">{esc(_heard_text(e)) or "&mdash;"}</td>'
        f'<td class="c-model">{esc(e.model or "")}</td>'
        f'<td class="c-errors">{f"<ul>{errors}</ul>" if errors else ""}</td>'
        "</tr>"
    )


def index_page(coll: Collection, rows: Sequence[str], folder_label: str) -> str:
    """The index: run summary, filter box, sortable table of ``rows`` (from :func:`index_row`)."""
    counts = ", ".join(f"{n} {s}" for s, n in coll.counts().items())
    run = coll.run
    run_lines = []
    if run is not None:
        run_lines.append(f"{esc(run.tool.get('name', ''))} {esc(run.tool.get('version', ''))}, "
                         f"started {esc(run.started)}, "
                         + (f"finished {esc(run.finished)}" if run.finished else "<strong>not finished</strong> (running or killed)"))
    else:
        run_lines.append("no run.json: statuses inferred from the files")
    run_errors = "".join(f'<p class="run-error">{esc(m)}</p>' for m in coll.errors)
    columns = [("", None), ("video", "name"), ("status", "status"), ("duration", "duration"),
               ("on-screen", "onscreen"), ("heard classes", "heard"), ("model", None), ("errors", None)]
    head = "".join(
        f'<th data-key="{k}" data-type="{"text" if k in ("name", "status") else "number"}" tabindex="0" '
        f'aria-sort="none">{esc(label)}</th>' if k else f"<th>{esc(label)}</th>"
        for label, k in columns
    )
    body = (
        f"<header><h1>avloc report</h1><p class=\"folder\">{esc(folder_label)}</p>"
        f"<p>{len(coll.entries)} video(s): {esc(counts)}</p>"
        + "".join(f"<p>{line}</p>" for line in run_lines) + run_errors + "</header>\n"
        '<main>\n<div class="controls"><label>filter <input type="search" id="filter" '
        'placeholder="name, status, class, error" autocomplete="off"></label> '
        '<span id="shown"></span></div>\n'
        f'<table id="videos"><thead><tr>{head}</tr></thead>\n<tbody>\n'
        + "\n".join(rows)
        + "\n</tbody></table>\n</main>"
    )
    return body


# -- the timeline ---------------------------------------------------------------------------------


def _nice_step(duration: float, ticks: int = 8) -> float:
    raw = max(duration, 1e-6) / ticks
    mag = 10 ** math.floor(math.log10(raw))
    return next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)


def timeline_svg(tl: Timeline) -> str:
    """The timeline: a confidence lane (silent frames shaded), one lane per heard class, a time axis, a cursor.

    x is proportional to time over ``[0, tl.duration]``; the ``data-*`` attributes
    tell the page script where the plot lies (clicks seek the video there).
    """
    x0 = SVG_LABEL_WIDTH
    pw = SVG_WIDTH - SVG_LABEL_WIDTH - SVG_RIGHT_PAD
    d = tl.duration if tl.duration > 0 else 1.0

    def x(t: float) -> float:
        return x0 + min(max(t / d, 0.0), 1.0) * pw

    dx = pw * tl.step / d
    h_conf = CONF_LANE_HEIGHT
    y_classes = h_conf + 6
    height = y_classes + CLASS_LANE_HEIGHT * len(tl.classes) + AXIS_HEIGHT
    parts: list[str] = [
        f'<rect class="lane-bg" x="{x0}" y="0" width="{pw}" height="{h_conf}"/>',
        f'<text class="lane-label" x="{x0 - 8}" y="{h_conf / 2 + 4:.1f}" text-anchor="end">{esc(tl.confidence_label)}</text>',
        f'<line class="half" x1="{x0}" x2="{x0 + pw}" y1="{h_conf / 2}" y2="{h_conf / 2}"/>',
    ]
    for t, quiet in zip(tl.times, tl.silent):
        if quiet:
            parts.append(f'<rect class="silent" x="{x(t):.2f}" y="0" width="{dx:.2f}" height="{h_conf}"/>')
    # the confidence as a step line; a gap where it is null
    runs: list[list[str]] = [[]]
    for t, c in zip(tl.times, tl.confidence):
        if c is None:
            runs.append([])
            continue
        y = h_conf - 2 - float(c) * (h_conf - 4)
        runs[-1] += [f"{x(t):.2f},{y:.2f}", f"{x(t) + dx:.2f},{y:.2f}"]
    for r in runs:
        if r:
            parts.append(f'<polyline class="conf" points="{" ".join(r)}"/>')
    for i, (label, scores) in enumerate(tl.classes.items()):
        y = y_classes + i * CLASS_LANE_HEIGHT
        parts.append(f'<rect class="lane-bg" x="{x0}" y="{y}" width="{pw}" height="{CLASS_LANE_HEIGHT - 3}"/>')
        parts.append(f'<text class="lane-label" x="{x0 - 8}" y="{y + CLASS_LANE_HEIGHT - 7}" text-anchor="end">'
                     f"<title>{esc(label)}</title>{esc(label if len(label) <= 24 else label[:23] + '…')}</text>")
        for t, score in zip(tl.times, scores):
            if score > 0:
                parts.append(f'<rect class="cls" x="{x(t):.2f}" y="{y}" width="{dx:.2f}" '
                             f'height="{CLASS_LANE_HEIGHT - 3}" fill-opacity="{min(max(score, MIN_CELL_OPACITY), 1.0):.3f}"/>')
    y_axis = height - AXIS_HEIGHT
    step = _nice_step(d)
    k = 0
    while k * step <= d + 1e-9:
        t = k * step
        parts.append(f'<line class="tick" x1="{x(t):.2f}" x2="{x(t):.2f}" y1="{y_axis}" y2="{y_axis + 5}"/>'
                     f'<text class="tick-label" x="{x(t):.2f}" y="{y_axis + 17}" text-anchor="middle">{t:g} s</text>')
        k += 1
    parts.append(f'<line id="cursor" x1="{x0}" x2="{x0}" y1="0" y2="{y_axis}"/>')
    # on top of everything: the surface that takes the clicks
    parts.append(f'<rect id="timeline-hit" x="{x0}" y="0" width="{pw}" height="{y_axis}" fill="transparent"/>')
    return (
        f'<svg id="timeline" viewBox="0 0 {SVG_WIDTH} {height}" width="100%" role="img" '
        f'aria-label="timeline: {esc(tl.confidence_label)} and heard classes over time; click to seek" '
        f'data-x0="{x0}" data-width="{pw}" data-duration="{d:.6f}" xmlns="http://www.w3.org/2000/svg">'
        + "".join(parts) + "</svg>"
    )


# -- a video page ---------------------------------------------------------------------------------


def video_data(e: VideoEntry, tl: Timeline) -> dict[str, Any]:
    """What the page script needs: the analysed times and each frame's boxes."""
    return {"name": e.stem, "duration": tl.duration, "step": tl.step, "times": tl.times, "boxes": tl.boxes,
            "confidence": tl.confidence, "silent": tl.silent}


def video_page(e: VideoEntry, tl: Timeline, video_url: str | None, sheet_url: str | None, index_url: str) -> str:
    """The page of one video: overlay video, timeline, current boxes, heard classes, contact sheet, details."""
    assert e.doc is not None
    doc = e.doc
    player = (
        f'<video id="player" controls preload="metadata" src="{video_url}"></video>'
        '<p id="video-error" class="run-error" hidden></p>'
        if video_url else '<p class="note">no overlay video in this output (--no-overlay, or see the errors above)</p>'
    )
    heard = "".join(
        f"<tr><td>{esc(h.label)}</td><td class=\"c-num\">{h.frames}</td><td class=\"c-num\">{h.fraction:.0%}</td>"
        f"<td class=\"c-num\">{h.mean_score:.2f}</td><td class=\"c-num\">{h.max_score:.2f}</td></tr>" for h in e.heard
    )
    heard_html = (
        f'<table class="small"><thead><tr><th>class</th><th>frames</th><th>of all</th><th>mean score</th><th>best</th></tr></thead>'
        f"<tbody>{heard}</tbody></table>" if heard
        else '<p class="note">no heard classes in this output (only methods that ground heard sources, e.g. '
             "avsemantic, or --audio-tagger report them)</p>"
    )
    errors = "".join(f'<p class="run-error">{esc(m)}</p>' for m in e.errors)
    inp = doc.input
    details = [
        ("input", inp["path"]),
        ("size", f"{inp['width']}x{inp['height']}"),
        ("duration", _fmt_seconds(e.duration)),
        ("analysed", f"{e.frames} frames at {e.fps:g} fps"),
        ("model", f"{doc.model['name']} ({doc.model['method']})"),
        ("on-screen", _fmt_pct(e.onscreen_fraction)),
        ("status", e.status),
        ("created", doc.created),
    ]
    dl = "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in details)
    sheet = (f'<h2>contact sheet</h2><img class="sheet" src="{sheet_url}" alt="contact sheet of {esc(e.stem)}">'
             if sheet_url else "")
    return (
        f'<header><p><a href="{index_url}">&larr; all videos</a></p><h1>{esc(e.stem)}</h1>{errors}</header>\n'
        "<main>\n"
        f'<section class="player">{player}\n{timeline_svg(tl)}\n'
        '<p class="legend"><span class="key conf"></span> '
        f"{esc(tl.confidence_label)} <span class=\"key silent\"></span> silent "
        '<span class="key cls"></span> heard class (opacity: score) &middot; click the timeline to seek</p></section>\n'
        '<section class="side"><h2>boxes at <span id="current-time">0:00.0</span></h2>'
        '<table class="small" id="boxes"><thead><tr><th>#</th><th>x1</th><th>y1</th><th>x2</th><th>y2</th>'
        '<th>score</th><th>label</th></tr></thead><tbody></tbody></table>'
        '<p id="no-boxes" class="note" hidden>no box in this frame</p>'
        f"<h2>heard classes</h2>{heard_html}<h2>details</h2><dl>{dl}</dl></section>\n"
        f'<section class="sheet">{sheet}</section>\n'
        "</main>\n" + json_block("video-data", video_data(e, tl))
    )
