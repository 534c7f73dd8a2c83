"""``DIR/run.json``: the record a batch run keeps of its inputs (``run_schema.json``).

A batch run of ``avloc localize INPUTS... --out DIR`` writes ``DIR/run.json``
and rewrites it (atomically, :func:`write_run`) whenever an input changes
state, so that a run killed at any point leaves a readable record::

    {
      "schema_version": "1.0",
      "tool": {"name": "avloc localize", "version": "0.1.0"},
      "command": ["avloc", "localize", "clips/", "--out", "DIR"],   # optional
      "config": {"fps": 5.0, "model": "avsemantic", "model_sha256": "9f2c...", "workers": 2},  # optional
      "started": "2025-01-01T12:00:00+00:00",
      "finished": null,                  # null while running or when killed
      "inputs": [
        {"input": "clips/a.mp4", "stem": "a", "status": "done", "error": null,
         "outputs": {"json": "a.avloc.json", "video": "a.avloc.mp4", "sheet": "a.sheet.png"},
         "seconds": 3.1},
        {"input": "clips/b.mp4", "status": "failed", "error": "clips/b.mp4: no audio track; ..."},
        {"input": "clips/c.mp4", "status": "skipped", "error": null},
        {"input": "clips/d.mp4", "status": "pending", "error": null}
      ]
    }

``status`` is one of :data:`RUN_STATUSES`: ``done`` (written by this run),
``skipped`` (complete, valid outputs of an earlier run kept), ``failed``
(``error`` holds the one-line reason the CLI printed; required) and
``pending`` (queued or in progress when the file was last written).
``outputs`` names the files in ``DIR`` of that input; without it they are
``STEM.avloc.json`` and so on, ``STEM`` being ``stem`` (the output name the run
gave the input) or else the input's own stem. ``config`` is what the results
depend on: the resolved configuration, the model's name and ``model_sha256``,
the digest of its content (:mod:`avloc.applications.models`), and how the run
was spread (workers).

``avloc report`` reads the file when present (:func:`read_run`) and otherwise
infers each video's status from the files alone (avloc.report.collect).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

from avloc.errors import DataError

RUN_FILE = "run.json"
RUN_SCHEMA_VERSION = "1.0"
RUN_STATUSES = ("done", "failed", "skipped", "pending")
RunStatus = Literal["done", "failed", "skipped", "pending"]


@dataclass
class RunInput:
    """One input of a batch run and what became of it."""

    input: str
    status: RunStatus
    error: str | None = None
    outputs: dict[str, str] = field(default_factory=dict)
    started: str | None = None
    finished: str | None = None
    seconds: float | None = None
    stem: str | None = None  # the output name the run gave the input (``STEM`` of ``STEM.avloc.json``)

    @property
    def output_stem(self) -> str:
        """The output name: ``stem``, else ``STEM`` of ``outputs["json"]``, else the input's stem."""
        if self.stem is not None:
            return self.stem
        js = Path(self.outputs.get("json") or "").name
        if js.endswith(".avloc.json"):
            return js[: -len(".avloc.json")]
        return Path(self.input).stem

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"input": self.input}
        if self.stem is not None:
            d["stem"] = self.stem
        d.update(status=self.status, error=self.error)
        if self.outputs:
            d["outputs"] = dict(self.outputs)
        for k in ("started", "finished", "seconds"):
            if getattr(self, k) is not None:
                d[k] = getattr(self, k)
        return d


@dataclass
class RunRecord:
    """The whole of ``run.json`` (module doc)."""

    tool: dict[str, str]
    started: str
    finished: str | None
    inputs: list[RunInput]
    command: list[str] | None = None
    config: dict[str, Any] | None = None
    schema_version: str = RUN_SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"schema_version": self.schema_version, "tool": dict(self.tool)}
        if self.command is not None:
            d["command"] = list(self.command)
        if self.config is not None:
            d["config"] = self.config
        d.update(started=self.started, finished=self.finished, inputs=[i.to_dict() for i in self.inputs])
        return d

    @classmethod
    def from_dict(cls, doc: Any, where: str = RUN_FILE) -> RunRecord:
        """Check ``doc`` against ``run_schema.json`` and the rules it cannot say; raises :class:`DataError`."""
        from avloc.formats.jsonschema import load_schema, validate

        errs = validate(doc, load_schema("avloc.formats", "run_schema.json"))
        if not errs:
            for i, r in enumerate(doc["inputs"]):
                if r["status"] == "failed" and not (r["error"] or "").strip():
                    errs.append(f"$.inputs[{i}]: status 'failed' needs its one-line error")
                errs += [f"$.inputs[{i}].outputs.{k}: {v!r} is not a file name in the run's folder"
                         for k, v in r.get("outputs", {}).items() if not _plain_name(v)]
                if "stem" in r and not _plain_name(r["stem"]):
                    errs.append(f"$.inputs[{i}].stem: {r['stem']!r} is not a name in the run's folder")
        if errs:
            more = f" (and {len(errs) - 1} more problem(s))" if len(errs) > 1 else ""
            raise DataError(f"{where}: does not match run_schema.json: {errs[0]}{more}")
        inputs = [
            RunInput(
                input=r["input"], status=cast(RunStatus, r["status"]), error=r["error"],
                outputs=dict(r.get("outputs", {})), started=r.get("started"), finished=r.get("finished"),
                seconds=r.get("seconds"), stem=r.get("stem"),
            )
            for r in doc["inputs"]
        ]
        return cls(tool=dict(doc["tool"]), started=doc["started"], finished=doc["finished"], inputs=inputs,
                   command=doc.get("command"), config=doc.get("config"), schema_version=doc["schema_version"])


def _plain_name(v: str) -> bool:
    """A file name in the run's folder: no folder part, not ``.`` or ``..``."""
    return Path(v).name == v and v not in ("", ".", "..")


def read_run(folder: str | Path) -> RunRecord | None:
    """``folder/run.json`` checked (:meth:`RunRecord.from_dict`), or ``None`` when there is none.

    Raises :class:`DataError` when it is not JSON or not a valid record.
    """
    from avloc.formats.jsonschema import load_json_strict

    p = Path(folder) / RUN_FILE
    if not p.exists():
        return None
    try:
        doc = load_json_strict(p)
    except (ValueError, UnicodeDecodeError) as e:  # json.JSONDecodeError is a ValueError
        raise DataError(f"{p}: not valid JSON ({e})") from None
    return RunRecord.from_dict(doc, where=str(p))


def write_run(folder: str | Path, record: RunRecord, name: str = RUN_FILE, check: bool = True) -> Path:
    """Write ``folder/name`` (``run.json``) atomically (readers see the old record or the new one, never half).

    ``check``: validate it first (:meth:`RunRecord.from_dict`), so that no record the reader would refuse is
    written; a runner rewriting the record after every input checks its first and last writes only (validating
    thousands of inputs at every rewrite would cost more than the inputs)."""
    from avloc.formats.atomic import write_text_atomic

    doc = record.to_dict()
    if check:
        RunRecord.from_dict(doc)
    p = Path(folder) / name
    write_text_atomic(p, json.dumps(doc, indent=2, allow_nan=False) + "\n")
    return p
