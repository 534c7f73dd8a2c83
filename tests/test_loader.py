""":class:`avloc.data.loader.Loader`: an ``AvlocError`` in a DataLoader worker reaches the caller as itself (issue 30)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from avloc.data.collate import collate_samples
from avloc.data.loader import Loader
from avloc.errors import CheckpointError, DataError, MediaError

MULTI_LINE = "m.safetensors: checkpoint refused, 2 problems:\n  - one\n  - two"


class _Samples:
    """Eight samples; ``bad`` raises ``error`` (a sample with other keys when ``error`` is None: collate fails)."""

    def __init__(self, bad: int, error: BaseException | None) -> None:
        self.bad, self.error = bad, error

    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int) -> dict[str, Any]:
        if i == self.bad:
            if self.error is None:
                return {"id": str(i), "extra": 1}
            raise self.error
        return {"id": str(i)}


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("error", [DataError("clip.mp4: truncated"), CheckpointError(MULTI_LINE)])
def test_worker_errors_keep_their_type_and_message(workers: int, error: Exception) -> None:
    loader = Loader(_Samples(5, error), batch_size=2, num_workers=workers, collate_fn=collate_samples)
    with pytest.raises(type(error)) as info:
        list(loader)
    assert str(info.value) == str(error)  # not "Caught ... in DataLoader worker process 0. Original Traceback ..."


def test_collate_errors_in_workers_too() -> None:
    loader = Loader(_Samples(3, None), batch_size=4, num_workers=2, collate_fn=collate_samples)
    with pytest.raises(DataError, match=r"^sample 3 \('3'\) has keys") as info:
        list(loader)
    assert "Traceback" not in str(info.value)


def test_bugs_keep_the_worker_traceback() -> None:
    loader = Loader(_Samples(1, ZeroDivisionError("a bug")), batch_size=2, num_workers=2, collate_fn=collate_samples)
    with pytest.raises(ZeroDivisionError, match="Original Traceback"):  # unexpected: torch's report, for the bug report
        list(loader)


def test_batches_are_unchanged() -> None:
    plain = [b["id"] for b in Loader(_Samples(-1, None), batch_size=3, num_workers=0, collate_fn=collate_samples)]
    workers = [b["id"] for b in Loader(_Samples(-1, None), batch_size=3, num_workers=2, collate_fn=collate_samples)]
    assert plain == workers == [["0", "1", "2"], ["3", "4", "5"], ["6", "7"]]


def test_eval_with_workers_reports_a_bad_file_in_one_line(tmp_path: Path) -> None:
    """End to end: a manifest entry whose image is not an image, read by a DataLoader worker."""
    from avloc.data.datasets import ManifestDataset
    from avloc.engine.evaluate import evaluate_model
    from avloc.methods import create_method

    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    (tmp_path / "m.jsonl").write_text(json.dumps({"id": "a", "image": "bad.jpg", "audio": "bad.jpg"}) + "\n")
    model = create_method("centre")
    data = ManifestDataset(tmp_path / "m.jsonl", model.cfg.image, model.cfg.audio)
    with pytest.raises(MediaError) as info:
        evaluate_model(model, data, "lvs-flickr", progress=False, num_workers=2)
    assert "bad.jpg" in str(info.value) and "\n" not in str(info.value)
