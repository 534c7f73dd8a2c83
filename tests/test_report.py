"""``avloc report``: data extraction from a real ``avloc localize`` run, escaping, errors, and the site in Chromium.

One module-scoped run of ``avloc localize`` on small generated clips (a plain
name, a hostile name, and one clip through avsemantic so that per-frame
``sources`` are real) feeds every test. The ``browser`` tests open the report
in headless Chromium through Selenium and skip, with the reason, where
Chromium, chromedriver or selenium are absent (``.ci/run`` installs them).
"""

from __future__ import annotations

import copy
import html
import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest

from avloc.cli.main import main
from avloc.errors import DataError
from avloc.formats.localize import LocalizeDocument
from avloc.report import RunInput, RunRecord, build_report, collect, heard_classes, read_run, timeline, write_run
from avloc.report.html import json_block, timeline_svg, url
from clips import write_clip

#: a file name that would run script if a page pasted it into HTML unescaped, and breaks naive URLs (#, %, ?)
HOSTILE = "<img src=x onerror=alert(1)> \"q\" & 'x' #1 %41?"
ROOT = Path(__file__).resolve().parents[1]


def _clip(path: Path, seconds: float, seed: int) -> None:
    write_clip(path, seconds=seconds, fps=10, size=(160, 120), seed=seed)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``avloc localize`` outputs of three clips in one folder (module doc)."""
    d = tmp_path_factory.mktemp("report")
    _clip(d / "plain.mp4", 3.0, 0)
    _clip(d / f"{HOSTILE}.mp4", 2.0, 1)
    _clip(d / "heard.mp4", 2.0, 2)
    out = d / "out"
    base = ["localize", "--out", str(out), "--quiet"]
    assert main([*base, "--model", "avsync-objectness", str(d / "plain.mp4"), str(d / f"{HOSTILE}.mp4")]) == 0
    assert main([*base, "--model", "avsemantic", str(d / "heard.mp4")]) == 0  # real per-frame `sources`
    return out


def _typed(doc: dict[str, Any]) -> LocalizeDocument:
    return LocalizeDocument.from_dict(doc)


def _doc(run_dir: Path, stem: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((run_dir / f"{stem}.avloc.json").read_text())
    return doc


@pytest.fixture(scope="module")
def mixed_dir(run_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real outputs plus what a report must survive: bad JSONs and a set without its JSON."""
    d = tmp_path_factory.mktemp("mixed") / "out"
    shutil.copytree(run_dir, d)
    (d / "notjson.avloc.json").write_text("{ truncated")
    bad = _doc(run_dir, "plain")
    del bad["summary"]
    bad["frames"][0]["boxes"] = [{"x1": 1}]
    (d / "schema.avloc.json").write_text(json.dumps(bad))
    nan = re.sub(r'"onscreen_confidence": [0-9.]+', '"onscreen_confidence": NaN', (d / "plain.avloc.json").read_text(), count=1)
    assert "NaN" in nan
    (d / "nan.avloc.json").write_text(nan)
    shutil.copy(run_dir / "plain.sheet.png", d / "orphan.sheet.png")
    return d


# -- data extraction ------------------------------------------------------------------------------


def test_output_suffixes_match_the_pipeline() -> None:
    from avloc.inference.pipeline import OUTPUT_SUFFIXES
    from avloc.report.collect import OUTPUT_SUFFIXES as REPORT_SUFFIXES

    assert REPORT_SUFFIXES == OUTPUT_SUFFIXES  # the report keeps its own copy so it need not import torch


def test_index_rows_from_a_real_run(run_dir: Path) -> None:
    coll = collect(run_dir)
    # a collection run writes DIR/run.json (avloc.inference.batch), which the report reads without complaint
    assert coll.run is not None and coll.run.schema_version == "1.0" and not coll.errors
    by = {e.stem: e for e in coll.entries}
    assert set(by) == {"plain", "heard", HOSTILE}
    for stem, e in by.items():
        doc = _doc(run_dir, stem)
        assert e.status == "done" and not e.errors, (stem, e.errors)
        assert e.frames == doc["summary"]["analysed_frames"] == len(doc["frames"])
        assert e.onscreen_fraction == doc["summary"]["onscreen_fraction"]
        assert e.duration == pytest.approx(doc["input"]["duration"])
        assert e.video_path == run_dir / f"{stem}.avloc.mp4" and e.sheet_path == run_dir / f"{stem}.sheet.png"
        assert e.input == doc["input"]["path"]
    assert by["plain"].duration == pytest.approx(3.0, abs=0.1) and by["plain"].frames == 15
    assert by["plain"].model == "avsync-objectness" and by["plain"].heard == []  # no heard sources from this method
    assert by["heard"].model == "avsemantic" and by["heard"].heard  # avsemantic reports what it hears


def test_heard_classes_match_a_numpy_free_reference(run_dir: Path) -> None:
    doc = _doc(run_dir, "heard")
    frames = doc["frames"]
    assert any(f.get("sources") for f in frames)
    labels = {s["label"] for f in frames for s in f["sources"]}
    ref = []
    for lab in labels:
        scores = [max(s["score"] for s in f["sources"] if s["label"] == lab) for f in frames if any(s["label"] == lab for s in f["sources"])]
        ref.append((lab, len(scores), sum(scores) / len(frames), max(scores)))
    ref.sort(key=lambda r: (-r[2], -r[1], r[0]))
    got = heard_classes(_typed(doc), top=None)
    assert [(h.label, h.frames) for h in got] == [(r[0], r[1]) for r in ref]
    assert [h.mean_score for h in got] == pytest.approx([r[2] for r in ref])
    assert [h.max_score for h in got] == pytest.approx([r[3] for r in ref])
    assert [h.fraction for h in got] == pytest.approx([r[1] / len(frames) for r in ref])
    assert heard_classes(_typed(doc)) == got[:5]


def test_timeline_series(run_dir: Path) -> None:
    doc = _doc(run_dir, "heard")
    tl = timeline(_typed(doc))
    n = len(doc["frames"])
    assert tl.times == [f["time"] for f in doc["frames"]] and tl.step == pytest.approx(1 / doc["config"]["fps"])
    assert tl.duration == pytest.approx(doc["input"]["duration"])
    assert tl.confidence_label == "on-screen confidence"
    assert tl.confidence == [f["onscreen_confidence"] for f in doc["frames"]]
    assert tl.silent == [f["silent"] for f in doc["frames"]]
    assert list(tl.classes) == [h.label for h in heard_classes(_typed(doc))]
    for label, series in tl.classes.items():
        assert len(series) == n
        for f, v in zip(doc["frames"], series):
            heard = [s["score"] for s in f["sources"] if s["label"] == label]
            assert v == pytest.approx(max(heard) if heard else 0.0)
    assert [[b["x1"] for b in bs] for bs in tl.boxes] == [[b["x1"] for b in f["boxes"]] for f in doc["frames"]]


def test_timeline_without_onscreen_estimate_or_sources(run_dir: Path) -> None:
    doc = copy.deepcopy(_doc(run_dir, "plain"))
    for f in doc["frames"]:
        f["onscreen_confidence"] = f["onscreen"] = None  # as --visual-only writes it
    tl = timeline(_typed(doc))
    assert tl.confidence_label == "top box score" and tl.classes == {}
    assert tl.confidence == [f["boxes"][0]["score"] if f["boxes"] else None for f in doc["frames"]]
    # the --audio-tagger layout is read when there are no `sources`
    doc["frames"][0]["semantic"] = {"audioset": [{"label": "Dog", "score": 0.8}], "imagenet": [], "used": True}
    assert [(h.label, h.frames) for h in heard_classes(_typed(doc))] == [("Dog", 1)]


# -- errors and statuses --------------------------------------------------------------------------


def test_malformed_outputs_are_index_errors_not_crashes(mixed_dir: Path, tmp_path: Path) -> None:
    coll = collect(mixed_dir)
    by = {e.stem: e for e in coll.entries}
    assert by["plain"].status == "done"
    assert by["notjson"].status == "invalid" and "not valid JSON" in by["notjson"].errors[0]
    assert by["schema"].status == "invalid" and "$: 'summary' is a required property (and 4 more problem(s))" in by["schema"].errors[0]
    assert by["nan"].status == "invalid" and "NaN" in by["nan"].errors[0]
    assert by["orphan"].status == "incomplete" and "orphan.avloc.json missing" in by["orphan"].errors[0]
    res = build_report(mixed_dir, tmp_path / "site")
    index = res.index.read_text()
    for stem in ("notjson", "schema", "nan", "orphan"):
        assert html.escape(by[stem].errors[0]) in index
    assert res.pages == 3  # a page per valid JSON only


def test_run_json_gives_statuses_and_errors(run_dir: Path, tmp_path: Path) -> None:
    d = tmp_path / "out"
    shutil.copytree(run_dir, d)
    rec = RunRecord(
        tool={"name": "avloc localize", "version": "0.1.0"}, started="2025-01-01T00:00:00+00:00", finished=None,
        inputs=[
            RunInput("clips/plain.mp4", "done", outputs={"json": "plain.avloc.json"}, seconds=1.5),
            RunInput("clips/heard.mp4", "skipped"),
            RunInput("clips/broken.mp4", "failed", error="clips/broken.mp4: no audio track; pass --visual-only"),
            RunInput("clips/later.mp4", "pending"),
        ],
        command=["avloc", "localize", "clips", "--out", str(d)],
    )
    write_run(d, rec)
    assert read_run(d) == rec
    coll = collect(d)
    by = {e.stem: e for e in coll.entries}
    assert [by[s].status for s in ("plain", "heard", "broken", "later", HOSTILE)] == ["done", "skipped", "failed", "pending", "done"]
    assert by["broken"].errors == ["clips/broken.mp4: no audio track; pass --visual-only"] and by["broken"].input == "clips/broken.mp4"
    assert by["heard"].heard and by["plain"].frames == 15
    assert coll.counts() == {"done": 2, "skipped": 1, "failed": 1, "pending": 1}
    assert "not finished" in build_report(d).index.read_text()


def test_run_json_output_names_stay_in_the_folder(run_dir: Path, tmp_path: Path) -> None:
    d = tmp_path / "out"
    shutil.copytree(run_dir, d)
    rec = RunRecord(tool={"name": "avloc localize", "version": "0"}, started="s", finished="f",
                    inputs=[RunInput("x.mp4", "done", outputs={"json": "../../etc/x.avloc.json"})])
    with pytest.raises(DataError, match="is not a file name"):  # never written ...
        write_run(d, rec)
    (d / "run.json").write_text(json.dumps(rec.to_dict()))  # ... and never followed when found
    coll = collect(d)
    assert "is not a file name" in coll.errors[0] and "inferred from the files" in coll.errors[0]
    assert not [e for e in coll.entries if e.stem == "x"] and {e.status for e in coll.entries} == {"done"}


@pytest.mark.parametrize(("change", "message"), [
    (lambda r: r["inputs"][0].update(status="failed", error=None), "needs its one-line error"),
    (lambda r: r["inputs"][0].update(status="exploded"), "not one of"),
    (lambda r: r.pop("inputs"), "'inputs' is a required property"),
])
def test_run_json_is_checked(tmp_path: Path, change: Any, message: str) -> None:
    doc = RunRecord(tool={"name": "avloc localize", "version": "0"}, started="s", finished="f",
                    inputs=[RunInput("a.mp4", "done")]).to_dict()
    change(doc)
    (tmp_path / "run.json").write_text(json.dumps(doc))
    with pytest.raises(DataError, match=message):
        read_run(tmp_path)


def test_bad_run_json_falls_back_to_the_files(run_dir: Path, tmp_path: Path) -> None:
    d = tmp_path / "out"
    shutil.copytree(run_dir, d)
    (d / "run.json").write_text("[1, 2")
    coll = collect(d)
    assert coll.run is None and "run.json: not valid JSON" in coll.errors[0] and "inferred from the files" in coll.errors[0]
    assert {e.status for e in coll.entries} == {"done"}
    assert "inferred from the files" in build_report(d).index.read_text()


# -- escaping -------------------------------------------------------------------------------------


def test_hostile_file_name_is_escaped_everywhere(run_dir: Path, tmp_path: Path) -> None:
    res = build_report(run_dir, tmp_path / "site")
    index = res.index.read_text()
    assert "<img src=x" not in index and html.escape(HOSTILE) in index
    (row,) = [r for r in re.findall(r'<tr class="video.*?</tr>', index) if "onerror" in r]
    page_href = re.search(r'<a href="([^"]+)"', row)[1]  # type: ignore[index]
    page_path = res.out / unquote(page_href)
    assert page_path.is_file() and re.fullmatch(r"videos/[A-Za-z0-9._-]+\.html", page_href)
    text = page_path.read_text()
    assert "<img src=x" not in text and html.escape(HOSTILE) in text
    video_src = re.search(r'<video id="player"[^>]*src="([^"]+)"', text)[1]  # type: ignore[index]
    assert "#" not in video_src and "?" not in video_src and " " not in video_src
    assert (page_path.parent / unquote(video_src)).resolve() == (run_dir / f"{HOSTILE}.avloc.mp4").resolve()
    block = re.search(r'<script type="application/json" id="video-data">(.*?)</script>', text, re.S)[1]  # type: ignore[index]
    assert "<" not in block and json.loads(block)["name"] == HOSTILE


def test_escaping_helpers() -> None:
    evil = "</script><!-- <b>&amp;\u2028"
    block = json_block("d", {"s": evil})
    assert block.count("</script>") == 1 and "<!--" not in block
    assert json.loads(block[block.index(">") + 1 : -len("</script>")]) == {"s": evil}
    assert url("../a b/#?%.mp4") == "../a%20b/%23%3F%25.mp4"
    assert url(os.fsdecode(b"caf\xe9.mp4")) == "caf%E9.mp4"  # a non-UTF-8 name: its bytes, percent-encoded


def test_site_is_offline(run_dir: Path, tmp_path: Path) -> None:
    """Nothing the pages load comes from the network, and no page script fetches anything (file:// blocks it)."""
    site = build_report(run_dir, tmp_path / "site").out
    texts = {p: p.read_text() for p in site.rglob("*") if p.suffix in (".html", ".js", ".css")}
    assert len(texts) == 3 + 1 + 2
    for p, text in texts.items():
        assert not re.search(r'(src|href)="(https?:)?//', text), p
        assert "url(" not in text and "fetch(" not in text and "XMLHttpRequest" not in text and "@import" not in text, p


def test_timeline_svg_geometry(run_dir: Path) -> None:
    tl = timeline(_typed(_doc(run_dir, "heard")))
    svg = timeline_svg(tl)
    assert svg.startswith('<svg id="timeline"') and 'id="timeline-hit"' in svg and 'id="cursor"' in svg
    heard_cells = sum(1 for series in tl.classes.values() for v in series if v > 0)
    assert svg.count('class="cls"') == heard_cells
    assert f'data-duration="{tl.duration:.6f}"' in svg


# -- the CLI --------------------------------------------------------------------------------------


def test_cli_writes_refuses_and_replaces_atomically(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "out"
    shutil.copytree(run_dir, d)
    (d / ".report.avloc-tmp-killed0" / "report").mkdir(parents=True)  # what a killed `avloc report` leaves
    assert main(["report", str(d)]) == 0
    assert "3 video(s) (3 done)" in capsys.readouterr().out
    assert not (d / ".report.avloc-tmp-killed0").exists()
    site = d / "report"
    assert (site / "index.html").is_file() and len(list((site / "videos").iterdir())) == 3
    assert len(list((site / "thumbs").glob("*.jpg"))) == 3 and (site / "assets" / "report.js").is_file()
    (site / "stale.txt").write_text("from an older report")
    assert main(["report", str(d)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "exists" in err and "--force" in err
    assert main(["report", str(d), "--force", "--no-thumbnails"]) == 0
    assert not (site / "stale.txt").exists() and not any((site / "thumbs").iterdir())  # the whole site replaced
    assert sorted(p.name for p in d.iterdir() if p.name.startswith(".")) == []  # no temporaries, no lock left


@pytest.mark.parametrize("case", ["missing", "empty", "out-is-dir", "bad-port"])
def test_cli_bad_input_is_one_line_exit_2(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str) -> None:
    (tmp_path / "empty").mkdir()
    argv = {
        "missing": ["report", str(tmp_path / "nope")],
        "empty": ["report", str(tmp_path / "empty")],
        "out-is-dir": ["report", str(run_dir), "--out", str(run_dir), "--force"],
        "bad-port": ["report", str(run_dir), "--serve", "--port", "70000"],
    }[case]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("avloc report: error: ") and err.count("\n") == 1, err
    assert (run_dir / "plain.avloc.json").is_file()  # the reported folder is never touched


def test_serve_resolves_the_video_links(run_dir: Path, tmp_path: Path) -> None:
    import threading
    import urllib.request

    from avloc.report.site import make_server, slug

    res = build_report(run_dir, tmp_path / "site", thumbnails=False)
    httpd, address = make_server(res, port=0)
    worker = threading.Thread(target=httpd.serve_forever, daemon=True)
    worker.start()
    try:
        with urllib.request.urlopen(address, timeout=10) as r:
            assert b"avloc report" in r.read()
        page_url = address.rsplit("/", 1)[0] + f"/videos/{slug(HOSTILE)}.html"
        with urllib.request.urlopen(page_url, timeout=10) as r:
            src = re.search(r'<video id="player"[^>]*src="([^"]+)"', r.read().decode())[1]  # type: ignore[index]
        with urllib.request.urlopen(urllib.parse.urljoin(page_url, src), timeout=10) as r:
            assert r.read() == (run_dir / f"{HOSTILE}.avloc.mp4").read_bytes()
    finally:
        httpd.shutdown()
        httpd.server_close()


def _status(url: str) -> int:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return int(e.code)


def test_serve_serves_the_site_and_its_media_only(run_dir: Path, tmp_path: Path) -> None:
    """A site far from the reported folder (the server's URL root is then a common ancestor, here ``/``-like):
    files beside the site, above it, a planted link inside it and folder listings are all refused."""
    import threading

    from avloc.report.site import make_server, slug

    d = tmp_path / "a" / "b" / "run"
    shutil.copytree(run_dir, d)
    (d / "secret.txt").write_text("not part of the report")
    (tmp_path / "a" / "private.txt").write_text("a file beside the two folders")
    res = build_report(d, tmp_path / "x" / "site", thumbnails=False)
    os.symlink(tmp_path / "a" / "private.txt", res.out / "assets" / "planted.css")
    (d / "link.avloc.mp4").symlink_to(tmp_path / "a" / "private.txt")
    httpd, address = make_server(res, port=0)
    worker = threading.Thread(target=httpd.serve_forever, daemon=True)
    worker.start()
    try:
        site_url = address.rsplit("/", 1)[0]
        assert _status(address) == 200 and _status(f"{site_url}/assets/report.js") == 200
        assert _status(f"{site_url}/videos/{slug('plain')}.html") == 200
        assert _status(urllib_join(site_url, "../../a/b/run/plain.avloc.mp4")) == 200  # linked media
        assert _status(urllib_join(site_url, "../../a/b/run/plain.avloc.json")) == 404  # not linked
        for bad in ("../../a/b/run/secret.txt", "../../a/private.txt", "../../a/b/run/link.avloc.mp4", "../../a/b/run/",
                    "../", "assets/planted.css", "assets/", "/etc/passwd", "../../../../../../etc/passwd"):
            assert _status(urllib_join(site_url, bad)) == 404, bad
    finally:
        httpd.shutdown()
        httpd.server_close()


def urllib_join(base: str, rel: str) -> str:
    """``base/rel`` without the client normalising ``..`` away (the server must refuse it, not the client)."""
    return f"{base}/{rel}" if not rel.startswith("/") else base.split("/", 3)[0] + "//" + base.split("/", 3)[2] + rel


@pytest.mark.parametrize("what", ["folder", "file", "json-in-dir", "symlink"])
def test_force_never_replaces_what_avloc_did_not_write(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], what: str
) -> None:
    d = tmp_path / "run"
    shutil.copytree(run_dir, d)
    target = {"folder": tmp_path / "photos", "file": tmp_path / "notes.txt",
              "json-in-dir": d / "plain.avloc.json", "symlink": tmp_path / "link"}[what]
    if what == "folder":
        target.mkdir()
        (target / "holiday.jpg").write_bytes(b"jpeg")
        (target / "index.html").write_text("mine")
    elif what == "file":
        target.write_text("mine")
    elif what == "symlink":
        site = build_report(d, tmp_path / "real-site", thumbnails=False).out
        target.symlink_to(site)
        capsys.readouterr()
    before = {p: p.read_bytes() for p in [target, *target.rglob("*")] if p.is_file()} if target.exists() else {}
    assert main(["report", str(d), "--out", str(target), "--force", "--no-thumbnails"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not written by avloc" in err, err
    assert {p: p.read_bytes() for p in before} == before and (target.exists() or target.is_symlink())


def test_force_replaces_a_report_avloc_wrote_old_and_new(run_dir: Path, tmp_path: Path) -> None:
    from avloc.report.site import SITE_MARKER, is_report_site

    d = tmp_path / "run"
    shutil.copytree(run_dir, d)
    site = build_report(d, tmp_path / "site", thumbnails=False).out
    assert is_report_site(site) and (site / SITE_MARKER).is_file()
    assert main(["report", str(d), "--out", str(site), "--force", "--no-thumbnails"]) == 0
    (site / SITE_MARKER).unlink()  # a site written before the marker existed: exactly the site's own entries
    assert is_report_site(site)
    assert main(["report", str(d), "--out", str(site), "--force", "--no-thumbnails"]) == 0
    (site / SITE_MARKER).unlink()
    (site / "mine.txt").write_text("a user's file in it: no longer only a site")
    assert not is_report_site(site)
    assert main(["report", str(d), "--out", str(site), "--force", "--no-thumbnails"]) == 2
    assert (site / "mine.txt").read_text().startswith("a user's")


# -- in a real browser ----------------------------------------------------------------------------

def _program(env: str, *names: str) -> str | None:
    """``$env`` if set (and an executable), else the first of ``names`` on PATH."""
    given = os.environ.get(env)
    if given:
        return given if os.access(given, os.X_OK) else None
    return next((p for p in map(shutil.which, names) if p), None)


CHROMIUM = _program("AVLOC_CHROMIUM", "chromium", "chromium-browser")
CHROMEDRIVER = _program("AVLOC_CHROMEDRIVER", "chromedriver")


@pytest.fixture(scope="module")
def browser() -> Any:
    """Headless Chromium through Selenium, with the console log readable (``goog:loggingPrefs``)."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[dev]')")
    if not CHROMIUM or not CHROMEDRIVER:
        pytest.skip("Chromium or chromedriver not found (Debian: apt-get install chromium chromium-driver; "
                    "or set AVLOC_CHROMIUM / AVLOC_CHROMEDRIVER)")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--mute-audio",
              "--window-size=1280,1000"):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def site(mixed_dir: Path) -> Path:
    return build_report(mixed_dir).out


def _console_errors(driver: Any) -> list[dict[str, Any]]:
    return [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def _wait(driver: Any, script: str, timeout: float = 30.0) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(lambda d: d.execute_script(script))


def _artifact(name: str) -> Path:
    d = Path(os.environ.get("AVLOC_ARTIFACTS", ROOT / "artifacts")) / "report"
    d.mkdir(parents=True, exist_ok=True)
    return d / name


@pytest.mark.browser
def test_browser_index_lists_every_video_sorts_and_filters(browser: Any, site: Path, mixed_dir: Path) -> None:
    from selenium.webdriver.common.by import By

    browser.get_log("browser")  # drop what earlier pages logged
    browser.get((site / "index.html").as_uri())
    rows = browser.find_elements(By.CSS_SELECTOR, "#videos tbody tr")
    names = [r.find_element(By.CSS_SELECTOR, ".c-name a, .c-name").text.splitlines()[0] for r in rows]
    assert sorted(names) == sorted(e.stem for e in collect(mixed_dir).entries)  # the hostile name shown as text
    assert browser.find_element(By.ID, "shown").text == f"{len(rows)} of {len(rows)} shown"
    browser.find_element(By.CSS_SELECTOR, 'th[data-key="duration"]').click()
    durations = [r.get_attribute("data-duration") for r in browser.find_elements(By.CSS_SELECTOR, "#videos tbody tr")]
    known = [float(x) for x in durations if x]
    assert known == sorted(known) and all(x == "" for x in durations[len(known):])  # n/a last
    browser.find_element(By.ID, "filter").send_keys("invalid")
    visible = [r for r in browser.find_elements(By.CSS_SELECTOR, "#videos tbody tr") if r.is_displayed()]
    assert len(visible) == 3 and browser.find_element(By.ID, "shown").text == f"3 of {len(rows)} shown"
    browser.save_screenshot(str(_artifact("index.png")))
    assert _console_errors(browser) == []


@pytest.mark.browser
@pytest.mark.parametrize("stem", ["heard", HOSTILE])
def test_browser_video_page_plays_seeks_and_lists_boxes(browser: Any, site: Path, mixed_dir: Path, stem: str,
                                                        record_property: Any) -> None:
    from selenium.common.exceptions import NoAlertPresentException
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    from avloc.report.site import slug

    browser.get_log("browser")
    browser.get((site / "videos" / f"{slug(stem)}.html").as_uri())
    doc = _doc(mixed_dir, stem)
    duration = _wait(browser, "const v = document.getElementById('player');"
                              "return v.readyState >= 1 && v.duration > 0 ? v.duration : null;")
    assert duration == pytest.approx(doc["input"]["duration"], abs=0.15)  # Chromium decodes the overlay (H.264/AAC)
    assert browser.execute_script("return document.getElementById('player').currentTime") == 0
    hit = browser.find_element(By.ID, "timeline-hit")
    ActionChains(browser).move_to_element_with_offset(hit, int(hit.size["width"] * 0.3), 0).click().perform()
    t = _wait(browser, "const v = document.getElementById('player'); return v.currentTime > 0 ? v.currentTime : null;")
    assert t == pytest.approx(0.8 * duration, abs=0.25)  # 30% right of the centre of the plot
    # the boxes of the frame shown at t
    time.sleep(0.3)
    k = max(i for i, f in enumerate(doc["frames"]) if f["time"] <= t + 1e-6)
    rows = browser.find_elements(By.CSS_SELECTOR, "#boxes tbody tr")
    assert len(rows) == len(doc["frames"][k]["boxes"])
    for r, b in zip(rows, doc["frames"][k]["boxes"]):
        assert r.find_elements(By.TAG_NAME, "td")[5].text == f"{b['score']:.2f}"
    assert browser.find_element(By.ID, "current-time").text != "0:00.0"
    with pytest.raises(NoAlertPresentException):
        browser.switch_to.alert  # noqa: B018  (the property raises when no script ran from a name)
    shot = _artifact(f"video-{slug(stem)}.png")
    browser.save_screenshot(str(shot))
    record_property("screenshot", str(shot))
    print(f"screenshot: {shot}")
    assert _console_errors(browser) == []
