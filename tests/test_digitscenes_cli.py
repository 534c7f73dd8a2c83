"""``avloc data make digitscenes``: round trip, preview, refusing to overwrite, missing raw data."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import pytest

from avloc.cli import data_make
from avloc.errors import AvlocError
from avloc.formats.manifest import read_manifest, resolve_media


def run_make(argv: list[str]) -> int:
    """Parse and run ``make ARGS`` like ``avloc data`` does (user errors -> status 2)."""
    parser = argparse.ArgumentParser(prog="avloc data")
    data_make.add_parser(parser.add_subparsers(dest="action"), "make")
    args = parser.parse_args(["make", *argv])
    try:
        return int(args.run(args))
    except AvlocError:
        return 2


def test_cli_round_trip_and_errors(shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "ds"
    base = ["digitscenes", "--raw", str(shared_data), "--out", str(out), "--variant", "offscreen",
            "--split", "val", "--count", "5", "--seed", "4", "--size", "80"]
    assert run_make([*base, "--preview"]) == 0
    man = out / "offscreen_val.jsonl"
    entries = read_manifest(man)
    assert len(entries) == 5 and all(e["size"] == [80, 80] and e["split"] == "val" for e in entries)
    assert all(resolve_media(man, e["image"]).is_file() for e in entries)
    assert (out / "offscreen_val_preview.png").stat().st_size > 0
    assert "wrote" in capsys.readouterr().out
    before = man.read_bytes()
    # existing output without --force: refused, manifest untouched
    assert run_make([*base[:-2], "--size", "64"]) == 2
    assert man.read_bytes() == before
    # with --force: overwritten
    assert run_make([*base[:-2], "--size", "64", "--force"]) == 0
    assert read_manifest(man)[0]["size"] == [64, 64]
    # missing raw dir: clear error, nothing written
    with pytest.raises(AvlocError, match="raw data directory not found"):
        parser = argparse.ArgumentParser()
        data_make.add_parser(parser.add_subparsers(dest="action"), "make")
        a = parser.parse_args(["make", "digitscenes", "--raw", str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
        a.run(a)
    assert not (tmp_path / "o" / "single_train.jsonl").exists()


@pytest.mark.skipif(
    importlib.util.find_spec("avloc.cli.data_prepare") is None,
    reason="avloc.cli.data_prepare (dispatched by `avloc data`) is not written yet",
)
def test_main_entry_point(shared_data: Path, tmp_path: Path) -> None:
    from avloc.cli.main import main

    argv = ["data", "make", "digitscenes", "--raw", str(shared_data), "--out", str(tmp_path), "--count", "2", "--size", "64"]
    assert main(argv) == 0
    assert main(argv) == 2  # exists, no --force
    assert main(["data", "make", "digitscenes", "--raw", str(tmp_path / "none"), "--out", str(tmp_path / "x")]) == 2
