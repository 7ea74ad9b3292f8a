"""What a batch already finished: inputs, parameters and output hashes, so a rerun skips them.

The manifest is ``<output>/.ijtorch-manifest.jsonl``: one JSON line per finished input, appended
(and flushed to disk) as soon as its outputs are in place, so a run killed at any moment keeps
every record of the inputs it finished; a torn last line is ignored. A record holds the verb, a
SHA-256 of the parameters that change the outputs, the input's path, size, mtime and SHA-256, and
every output file's size and SHA-256. An input is skipped by a rerun when the verb and parameters
are the same, the input is unchanged (same size and mtime, or the same SHA-256) and all of its
outputs are still there with the recorded hashes; anything else runs again.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

__all__ = ["MANIFEST_NAME", "Manifest", "file_sha256", "params_key", "hash_tree"]

MANIFEST_NAME = ".ijtorch-manifest.jsonl"

#: argparse names that do not change what a verb writes
NOT_PARAMETERS = frozenset({"inputs", "input", "output", "func", "verb", "verbose", "fail_fast", "dask",
                            "dask_workers", "dask_threads", "device"})


def file_sha256(path: str | os.PathLike, *, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def hash_tree(folder: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """``{relative path: {"size", "sha256"}}`` of every file under ``folder``."""
    root = Path(folder)
    out: dict[str, dict[str, Any]] = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            out[p.relative_to(root).as_posix()] = {"size": p.stat().st_size, "sha256": file_sha256(p)}
    return out


def params_key(verb: str, params: Mapping[str, Any]) -> str:
    """SHA-256 of the verb and the parameters that change its outputs (JSON, sorted keys)."""
    kept = {k: (str(v) if isinstance(v, os.PathLike) else v) for k, v in sorted(params.items())
            if k not in NOT_PARAMETERS and not callable(v)}
    text = json.dumps({"verb": verb, "params": kept}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _input_record(path: Path) -> dict[str, Any]:
    st = path.stat()
    return {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": file_sha256(path)}


class Manifest:
    """The manifest of one output folder for one verb and parameter set."""

    def __init__(self, output: str | os.PathLike, verb: str, params: str) -> None:
        self.output = Path(output)
        self.path = self.output / MANIFEST_NAME
        self.verb, self.params = verb, params
        self.records: dict[str, dict[str, Any]] = {}
        if self.path.is_file():
            with open(self.path, encoding="utf-8") as f:
                for line in f:
                    try:
                        rec = json.loads(line)
                    except ValueError:  # a torn last line of a killed run
                        continue
                    if rec.get("verb") == verb and rec.get("params") == params:
                        self.records[rec["input"]["path"]] = rec

    def finished(self, inputs: Iterable[Path]) -> bool:
        """Whether every one of ``inputs`` was finished with these parameters and its outputs are intact."""
        inputs = list(inputs)
        if not inputs:
            return False
        outputs_checked = False
        for path in inputs:
            rec = self.records.get(str(Path(path).resolve()))
            if rec is None:
                return False
            st = Path(path).stat()
            known = rec["input"]
            if (st.st_size, st.st_mtime_ns) != (known["size"], known["mtime_ns"]) and \
                    (st.st_size != known["size"] or file_sha256(path) != known["sha256"]):
                return False
            if outputs_checked:
                continue
            for rel, info in rec["outputs"].items():
                target = self.output / rel
                if not target.is_file() or target.stat().st_size != info["size"] or file_sha256(target) != info["sha256"]:
                    return False
            outputs_checked = True
        return True

    def record(self, inputs: Iterable[Path], outputs: Mapping[str, Mapping[str, Any]]) -> None:
        """Append one line per input (its outputs are the item's outputs), flushed to disk."""
        self.output.mkdir(parents=True, exist_ok=True)
        lines = []
        for path in inputs:
            rec = {"verb": self.verb, "params": self.params, "input": _input_record(Path(path)),
                   "outputs": dict(outputs)}
            self.records[rec["input"]["path"]] = rec
            lines.append(json.dumps(rec, sort_keys=True) + "\n")
        with open(self.path, "a", encoding="utf-8") as f:
            f.write("".join(lines))
            f.flush()
            os.fsync(f.fileno())
