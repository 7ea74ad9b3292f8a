"""How the CLI reports errors and runs batches: the one place every verb goes through.

Exit codes (also in the README, "When something goes wrong"):

====  ==========================================================================================
0     everything asked for was done
1     one or more inputs of a batch failed (each reported on stderr as ``file: reason``)
2     user error before any work: a bad option, a missing input or model, nothing to process
3     internal error: a bug in ijtorch (the traceback is printed; please report it)
130   interrupted (Ctrl-C)
====  ==========================================================================================

A batch verb hands its inputs to :class:`Batch`: each input is processed on its own; its output
files are written into a private staging folder inside the output folder and moved into place only
when the whole input succeeded, so a failed input never leaves some of its outputs behind. A
failure is reported in one line and the batch goes on (``--fail-fast`` stops it); a summary line
(done / failed / skipped) ends the run. ``-v`` adds the traceback to every failure line.

``--dask [SCHEDULER]`` (for a verb that passes its ``options`` to :class:`Batch`) runs the same steps
one task per input on a ``dask.distributed`` cluster (:mod:`ijtorch.scale.runner`), with the same
staging, failure lines, summary and exit codes, and a manifest that lets a rerun skip finished inputs.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence, TypeVar

from ..errors import IjtorchError

__all__ = ["EXIT_OK", "EXIT_FAILED", "EXIT_USAGE", "EXIT_INTERNAL", "EXIT_INTERRUPTED", "UsageError", "Skip",
           "USER_ERRORS", "Batch", "staged_outputs", "describe_error", "run_verb", "positive_int",
           "positive_float", "one_based_channel", "add_batch_options", "add_dask_options"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERNAL, EXIT_INTERRUPTED = 0, 1, 2, 3, 130

#: Errors that mean "the input or the options are wrong", not "ijtorch has a bug": reported in one
#: line without a traceback (tifffile's TiffFileError is a ValueError; a missing file an OSError).
USER_ERRORS: tuple[type[BaseException], ...] = (IjtorchError, ValueError, OSError)

_STAGING_PREFIX = ".ijtorch-partial-"

T = TypeVar("T")


class UsageError(IjtorchError):
    """Bad command-line usage found by a verb (missing input, empty folder, ...): exit code 2."""


class Skip(Exception):
    """Raised by a batch step: this input is skipped (not an error), ``str()`` says why."""


def describe_error(exc: BaseException) -> str:
    """One line for a user: the message of a user error, ``Type: message`` for anything else."""
    text = " ".join(str(exc).split())
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        text = f"{exc.strerror}: {exc.filename}"
    if not text:
        return type(exc).__name__
    return text if isinstance(exc, USER_ERRORS) else f"{type(exc).__name__}: {text}"


def run_verb(verb: str, func: Callable[[], int | None], *, verbose: int = 0) -> int:
    """Run a verb's function; turn what escapes it into one stderr line and an exit code."""
    try:
        return int(func() or 0)
    except KeyboardInterrupt:
        print(f"ijtorch {verb}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except SystemExit as exc:  # `raise SystemExit("message")` is a user error too; exit statuses pass through
        if not isinstance(exc.code, str):
            raise
        print(exc.code, file=sys.stderr)
        return EXIT_USAGE
    except USER_ERRORS as exc:
        if verbose:
            traceback.print_exc()
        print(f"ijtorch {verb}: {describe_error(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as exc:  # noqa: BLE001 - a bug: say so, with the traceback to report
        traceback.print_exc()
        print(f"ijtorch {verb}: internal error ({describe_error(exc)}); this is a bug in ijtorch, "
              "please report it with the traceback above", file=sys.stderr)
        return EXIT_INTERNAL


# ----------------------------------------------------------------------------- argparse helpers
def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1 (a positive integer), got {value}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text}")
    return value


def one_based_channel(text: str) -> int:
    """``--channel N`` as users (and ImageJ) count, from 1; returned as the 0-based numpy index."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a channel number (1 = first channel), got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"channels are numbered from 1 as in ImageJ, got {value}")
    return value - 1


def add_batch_options(p: argparse.ArgumentParser) -> None:
    from .generated import cli_option

    cli_option(p, "--fail-fast", action="store_true", reason="batch behaviour (ImageJ runs on one image)",
               help="stop at the first input that fails (default: report it and go on with the others)")
    add_dask_options(p)


def add_dask_options(p: argparse.ArgumentParser) -> None:
    """``--dask [SCHEDULER]``, ``--dask-workers N``, ``--dask-threads N`` (see :mod:`ijtorch.scale.cluster`)."""
    try:
        from .generated import cli_option
    except ImportError:  # before the options were generated from the command models
        def cli_option(parser, *flags, reason, **kwargs):  # type: ignore[no-redef]
            return parser.add_argument(*flags, **kwargs)
    why = "where the batch runs (ImageJ runs on one image)"
    cli_option(p, "--dask", nargs="?", const="local", default=None, metavar="SCHEDULER", reason=why,
               help="one task per input on a dask.distributed cluster: a local cluster of worker processes "
                    "(bare --dask), a scheduler address (tcp://host:8786), a scheduler file, 'slurm' or a dask "
                    "jobqueue .yaml (dask-jobqueue SLURMCluster); a rerun skips the inputs already finished")
    cli_option(p, "--dask-workers", type=positive_int, default=None, metavar="N", reason=why,
               help="worker processes of the local cluster (default: one per CPU core), or SLURM jobs")
    cli_option(p, "--dask-threads", type=positive_int, default=1, metavar="N", reason=why,
               help="torch threads per Dask worker (default 1)")


# ----------------------------------------------------------------------------- staged outputs
def _move_into(staging: Path, output: Path, inputs: Sequence[Path]) -> list[Path]:
    from ..io.atomic import refuse_overwrite

    entries = sorted(staging.iterdir())
    targets = [output / e.name for e in entries]
    for entry, target in zip(entries, targets):  # check everything before moving anything
        refuse_overwrite(target, list(inputs))
        if target.exists() and entry.is_dir() != target.is_dir():
            kind = "folder" if target.is_dir() else "file"
            raise ValueError(f"cannot write {target}: a {kind} of that name is in the way")
    for entry, target in zip(entries, targets):
        if entry.is_dir() and target.is_dir():  # a result folder (e.g. the CTC result) replaces the old one
            shutil.rmtree(target)
        os.replace(entry, target)
    return targets


@contextlib.contextmanager
def staged_outputs(output: str | os.PathLike, *, inputs: Sequence[str | os.PathLike] = ()) -> Iterator[Path]:
    """Yield a private folder inside ``output`` to write one input's outputs into.

    On success its files (and folders) are moved into ``output``, replacing older ones; on any
    error the folder is removed, so ``output`` holds either all of this input's new outputs or none
    of them. An output that would replace one of ``inputs`` is refused (ValueError) before any move.
    """
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=_STAGING_PREFIX, dir=out))
    try:
        yield staging
        _move_into(staging, out, [Path(p) for p in inputs])
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# ----------------------------------------------------------------------------- the batch runner
class Batch:
    """Run a verb's inputs one by one, report each failure in one line, summarise, give the exit code.

    Parameters
    ----------
    verb : str
        The CLI verb (prefix of the progress bar and summary).
    total : int
        Number of inputs (for the progress bar: ``files done of n``).
    fail_fast : bool
        Stop at the first failure (the inputs not run are counted in the summary).
    verbose : int
        ``-v``: print each failure's traceback too.
    """

    def __init__(self, verb: str, total: int, *, fail_fast: bool = False, verbose: int = 0,
                 options: argparse.Namespace | None = None) -> None:
        from ..core.progress import CountProgress

        self.verb, self.total, self.fail_fast, self.verbose = verb, total, fail_fast, verbose
        self.options, self.dask = options, None
        if options is not None and getattr(options, "dask", None):
            from ..scale.cluster import DaskOptions

            if verb == "denoise" and not getattr(options, "model", None):
                raise UsageError("--dask applies a given model to each input: give --model (training Noise2Void "
                                 "on all the inputs runs here, without --dask)")
            self.dask = DaskOptions(options.dask, getattr(options, "dask_workers", None),
                                    getattr(options, "dask_threads", None) or 1)
        self.done: list[str] = []
        self.failed: list[tuple[str, str]] = []
        self.skipped: list[tuple[str, str]] = []
        self.stopped = False
        self.progress = CountProgress(verb, total, unit="file")

    def say(self, text: str) -> None:
        """A result line on stdout (kept clear of the progress bar)."""
        self.progress.write(text)

    def warn(self, text: str) -> None:
        self.progress.write(text, file=sys.stderr)

    def fail(self, name: str, exc: BaseException, *, count: bool = True) -> None:
        """Count ``name`` as failed with ``exc`` (also for failures found outside :meth:`run`);
        ``count=False``: the progress was already counted (a Dask task counts when it finishes)."""
        if self.verbose:
            self.warn("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)).rstrip())
        self.failed.append((name, describe_error(exc)))
        self.warn(f"{name}: {describe_error(exc)}")
        if count:
            self.progress.update()
        if self.fail_fast:
            self.stopped = True

    def run(self, items: Iterable[T], step: Callable[..., str | None], *, name: Callable[[T], str] = str,
            output: str | os.PathLike | None = None, inputs: Callable[[T], Sequence[Path]] = lambda item: (),
            final: bool = True) -> list[T]:
        """Call ``step(item)`` (``step(item, staging_folder)`` when ``output`` is given) for each item.

        ``step`` returns the line to print for a done item (or None); it raises :class:`Skip` to skip
        the item, anything else to fail it. Returns the items that went through. ``final=False``
        is a first pass (e.g. reading every input before training on all of them): its failures and
        skips count, its successes do not yet. Under ``--dask`` a final pass runs on the cluster
        (:func:`ijtorch.scale.runner.run_batch`): ``step`` must pickle, and what it adds to dicts,
        lists and sets of its closure comes back.
        """
        if self.dask is not None and final:
            from ..scale.runner import run_batch

            return run_batch(self, items, step, name=name, output=output, inputs=inputs,
                             staged=staged_outputs if output is not None else None, skip=Skip, options=self.dask,
                             params=vars(self.options))
        ok: list[T] = []
        for item in items:
            if self.stopped:
                break
            label = name(item)
            try:
                if output is not None:
                    with staged_outputs(output, inputs=inputs(item)) as staging:
                        line = step(item, staging)
                else:
                    line = step(item)
            except Skip as why:
                self.skipped.append((label, str(why)))
                self.warn(f"{label}: skipped: {why}")
                self.progress.update()
                continue
            except Exception as exc:  # noqa: BLE001 - one input's failure must not stop the others
                self.fail(label, exc)
                continue
            ok.append(item)
            if line:
                self.say(line)
            if final:
                self.done.append(label)
                self.progress.update()
        return ok

    def finish(self) -> int:
        """Print the summary line; the exit code: 0 when nothing failed, else 1."""
        self.progress.close()
        not_run = self.total - len(self.done) - len(self.failed) - len(self.skipped)
        parts = [f"{len(self.done)} done", f"{len(self.failed)} failed", f"{len(self.skipped)} skipped"]
        if not_run > 0 and self.stopped:
            parts.append(f"{not_run} not run (--fail-fast)")
        print(f"ijtorch {self.verb}: {', '.join(parts)}", flush=True)
        return EXIT_FAILED if self.failed else EXIT_OK

    def close(self) -> None:
        self.progress.close()

    def __reduce__(self):  # a step that uses the batch runs on a Dask worker: its lines come back here
        return (_WorkerBatch, (self.verb,))


class _WorkerBatch:
    """The batch as a step sees it on a Dask worker: what it says is sent back to the client."""

    def __init__(self, verb: str) -> None:
        self.verb = verb

    def say(self, text: str) -> None:
        from ..scale.runner import worker_say

        worker_say("say", text)

    def warn(self, text: str) -> None:
        from ..scale.runner import worker_say

        worker_say("warn", text)
