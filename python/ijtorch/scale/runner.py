"""Run a CLI batch one task per input on a ``dask.distributed`` cluster.

:func:`run_batch` is what :meth:`ijtorch.cli.batch.Batch.run` calls under ``--dask``. Each input
becomes one task running the verb's own step on a worker, inside the batch's own staging
(``staged``: a private folder in the output folder whose files are moved into place only when the
whole input succeeded), so the outputs are those of the single-process run and a failed or killed
task leaves none of its files. On the client:

- progress counts the tasks the cluster finished (the CLI's files-done bar / lines);
- a failed input is reported as ``file: reason`` and the others go on (``--fail-fast`` cancels the
  rest); a task whose worker died is run again on another worker by the scheduler (up to
  ``distributed.scheduler.allowed-failures`` times, then it is reported as failed);
- every finished input that wrote files is appended to the manifest (:mod:`ijtorch.scale.manifest`) with its output
  hashes, and a rerun of the same command skips the inputs already finished, and says so.

A step runs in another process: it is sent with cloudpickle and gets a copy of what it refers to.
The entries it adds to dicts, lists and sets of its closure (e.g. a per-file object count) are sent back
and merged into the originals, and what it says through the batch (``batch.warn`` / ``batch.say``)
is printed here.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import sys
import threading
import uuid
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from .cluster import DaskOptions, describe_client, open_client
from .manifest import Manifest, hash_tree, params_key

__all__ = ["run_batch", "worker_say", "STAGING_PREFIX"]

STAGING_PREFIX = ".ijtorch-partial-"

_local = threading.local()


def worker_say(kind: str, text: str) -> None:
    """Called on a worker for ``batch.say``/``batch.warn`` inside a step: the line is sent back."""
    lines = getattr(_local, "lines", None)
    if lines is None:
        print(text, file=sys.stderr if kind == "warn" else sys.stdout)
    else:
        lines.append((kind, text))


def _cells(step: Callable) -> list[Any]:
    return [c.cell_contents if _filled(c) else None for c in (getattr(step, "__closure__", None) or ())]


def _filled(cell: Any) -> bool:
    try:
        cell.cell_contents
    except ValueError:
        return False
    return True


def _snapshot(step: Callable) -> dict[int, Any]:
    snap: dict[int, Any] = {}
    for i, v in enumerate(_cells(step)):
        if isinstance(v, dict):
            snap[i] = dict(v)
        elif isinstance(v, list):
            snap[i] = len(v)
        elif isinstance(v, set):
            snap[i] = set(v)
    return snap


def _updates(step: Callable, before: Mapping[int, Any]) -> dict[int, Any]:
    cells = _cells(step)
    out: dict[int, Any] = {}
    for i, old in before.items():
        now = cells[i]
        if isinstance(now, dict):
            new = {k: v for k, v in now.items() if k not in old or old[k] is not v}
            if new:
                out[i] = new
        elif isinstance(now, list) and len(now) > old:
            out[i] = now[old:]
        elif isinstance(now, set) and now - old:
            out[i] = now - old
    return out


def _merge(step: Callable, updates: Mapping[int, Any]) -> None:
    cells = _cells(step)
    for i, new in updates.items():
        target = cells[i]
        if isinstance(target, dict):
            target.update(new)
        elif isinstance(target, list):
            target.extend(new)
        elif isinstance(target, set):
            target.update(new)


class _CapturedLines(io.TextIOBase):
    """``sys.stdout``/``sys.stderr`` of a worker while a step runs: what the step prints (e.g. a
    dataset-shift warning) is sent back with its input's result, so the client prints it next to that
    input's line, in input order (not when the worker happened to run it, and not lost on a remote
    worker). Text written by other threads of the worker goes to the worker's own stream."""

    def __init__(self, kind: str, lines: list, original: Any) -> None:
        self.kind, self.lines, self.original, self.owner = kind, lines, original, threading.get_ident()
        self.pending = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        if threading.get_ident() != self.owner:
            return self.original.write(text)
        self.pending += text
        *complete, self.pending = self.pending.split("\n")
        self.lines.extend((self.kind, line) for line in complete)
        return len(text)

    def flush(self) -> None:
        if threading.get_ident() != self.owner:
            self.original.flush()

    def finish(self) -> None:
        if self.pending:
            self.lines.append((self.kind, self.pending))
            self.pending = ""


@contextlib.contextmanager
def _capture_prints(lines: list) -> Any:
    out = _CapturedLines("say", lines, sys.stdout)
    err = _CapturedLines("warn", lines, sys.stderr)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            yield
    finally:
        out.finish()
        err.finish()


def _run_item(step: Callable, item: Any, output: str, item_inputs: Sequence[str], staged: Callable) -> dict[str, Any]:
    """On a worker: the step inside the batch's staging; its line, output hashes, closure updates."""
    _local.lines = []
    try:
        before = _snapshot(step)
        outputs: dict[str, Any] = {}
        with _capture_prints(_local.lines):
            if staged is None:
                line = step(item)
            else:
                with staged(output, inputs=[Path(p) for p in item_inputs]) as staging:
                    line = step(item, staging)
                    outputs = hash_tree(staging)
        return {"line": line, "outputs": outputs, "updates": _updates(step, before), "lines": list(_local.lines),
                "worker": os.getpid()}
    except Exception as exc:  # noqa: BLE001 - sent back as a result: the client reports it, the worker stays quiet
        return {"error": _portable(exc), "lines": list(_local.lines or ())}
    finally:
        _local.lines = None


def _portable(exc: BaseException) -> BaseException:
    """``exc`` with the worker's traceback as a note, or a RuntimeError saying the same when it does not pickle."""
    import pickle
    import traceback

    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)).rstrip()
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:  # noqa: BLE001
        exc = RuntimeError(f"{type(exc).__name__}: {exc}")
    exc.__traceback__ = None
    if hasattr(exc, "add_note"):
        exc.add_note(f"(on the Dask worker)\n{text}")
    return exc


def _stale_staging(output: Path) -> set[Path]:
    return set(output.glob(STAGING_PREFIX + "*")) if output.is_dir() else set()


def run_batch(batch: Any, items: Iterable[Any], step: Callable, *, name: Callable[[Any], str],
              output: str | os.PathLike | None, inputs: Callable[[Any], Sequence[Path]], staged: Callable | None,
              skip: type[BaseException], options: DaskOptions, params: Mapping[str, Any],
              client: Any = None) -> list[Any]:
    """Run ``step`` for each item on the cluster; report into ``batch`` as :meth:`Batch.run` does.

    ``staged`` is the batch's staging context manager (``staged(output, inputs=...)``), ``skip``
    its Skip exception, ``params`` the verb's options (the manifest keeps a hash of those that
    change the outputs), ``client`` a connected ``distributed.Client`` to use (else ``options`` says
    which cluster to open). Returns the items that were done (not those skipped by the manifest).
    """
    from distributed import as_completed

    try:
        from distributed import KilledWorker
    except ImportError:  # pragma: no cover - older distributed
        from distributed.scheduler import KilledWorker

    items = list(items)
    out = Path(output) if output is not None else None
    manifest = Manifest(out, batch.verb, params_key(batch.verb, params)) if out is not None else None
    todo, already = [], []
    for item in items:
        if manifest is not None and manifest.finished(inputs(item)):
            already.append(item)
        else:
            todo.append(item)
    for item in already:
        batch.skipped.append((name(item), "finished by an earlier run with the same parameters"))
        batch.progress.update()
    if already:
        batch.warn(f"ijtorch {batch.verb}: {len(already)} input(s) already finished by an earlier run with the same "
                   f"parameters and outputs (manifest {manifest.path}): skipped; delete the manifest to redo them")
    ok: list[Any] = []
    if not todo:
        return ok
    stale_before = _stale_staging(out) if out is not None else set()
    run_id = uuid.uuid4().hex[:8]
    with (contextlib.nullcontext(client) if client is not None else open_client(options)) as connected:
        client = connected
        batch.warn(describe_client(client))
        futures = [client.submit(_run_item, step, item, str(out) if out is not None else "",
                                 [str(p) for p in inputs(item)], staged if out is not None else None,
                                 key=f"ijtorch-{batch.verb}-{run_id}-{i}", pure=False) for i, item in enumerate(todo)]
        position = {f.key: i for i, f in enumerate(futures)}
        finished: dict[int, Any] = {}
        emitted = 0
        try:
            for fut in as_completed(futures):
                i = position[fut.key]
                if fut.cancelled():
                    finished[i] = None
                else:
                    finished[i] = _outcome(fut, KilledWorker)
                    batch.progress.update()  # progress as the cluster finishes tasks
                    result = finished[i]
                    if isinstance(result, dict) and "error" not in result and result["outputs"] and \
                            manifest is not None and inputs(todo[i]):
                        manifest.record(inputs(todo[i]), result["outputs"])  # on record at once (a step that
                        # writes no files of its own, e.g. evaluate's per-pair scores, is simply run again)
                    error = result.get("error") if isinstance(result, dict) else result
                    if batch.fail_fast and error is not None and not isinstance(error, skip):
                        client.cancel([f for f in futures if not f.done()])
                # lines, failures, merged results: in input order, as the single-process run prints them
                while emitted in finished:
                    _emit(batch, step, todo[emitted], finished.pop(emitted), name, skip, ok)
                    emitted += 1
        except BaseException:
            client.cancel(futures)
            raise
    if out is not None:  # staging folders of tasks whose worker was killed: their task ran again elsewhere
        for stale in _stale_staging(out) - stale_before:
            shutil.rmtree(stale, ignore_errors=True)
    return ok


def _outcome(fut: Any, killed: type[BaseException]) -> Any:
    """A finished task's result dict, or the exception it ended with (a Skip, a dead worker, ...)."""
    try:
        result = fut.result()
    except killed as exc:
        return RuntimeError(f"the workers running it died {_failures(exc)} (out of memory, or killed); the other "
                            "inputs went on")
    except Exception as exc:  # noqa: BLE001 - reported as this input's failure
        return exc
    return result


def _emit(batch: Any, step: Callable, item: Any, outcome: Any, name: Callable[[Any], str],
          skip: type[BaseException], ok: list) -> None:
    label = name(item)
    if outcome is None:  # cancelled (--fail-fast): not run
        return
    if isinstance(outcome, dict):
        for kind, text in outcome.get("lines", ()):
            (batch.warn if kind == "warn" else batch.say)(text)
        if "error" in outcome:
            outcome = outcome["error"]
    if isinstance(outcome, skip):
        batch.skipped.append((label, str(outcome)))
        batch.warn(f"{label}: skipped: {outcome}")
    elif isinstance(outcome, BaseException):
        batch.fail(label, outcome, count=False)
    else:
        _merge(step, outcome["updates"])
        ok.append(item)
        if outcome["line"]:
            batch.say(outcome["line"])
        batch.done.append(label)


def _failures(exc: BaseException) -> str:
    import dask

    n = dask.config.get("distributed.scheduler.allowed-failures", default=3)
    return f"{int(n) + 1} times"
