"""The CLI contract: every verb ``ijtorch --help`` lists runs end to end, in a subprocess, on small
real data, and fails cleanly on bad input.

What every verb promises (README, "When something goes wrong"): exit code 0 when all was done, 1
when some inputs of a batch failed (each reported as ``file: reason`` on stderr, the others done,
a summary ``done / failed / skipped``), 2 for user errors (one line, no traceback; ``-v`` adds it),
3 for bugs; a failed input leaves none of its outputs.

Registering a verb's tests — the table ``CONTRACT`` below
---------------------------------------------------------
:func:`test_every_verb_and_option_has_an_end_to_end_test` builds the verbs and their options from
``ijtorch.cli.build_parser()`` and fails when a verb has no entry in ``CONTRACT``, when an option
of the verb is exercised by none of its tests, when an entry names a test that does not exist, or
when an entry names a verb the parser no longer has. A new verb therefore cannot land untested.
To register one, add an entry::

    "export-bioimageio": Contract(
        runs={"tests/e2e/test_cli_bioimageio.py::test_export_writes_a_valid_package": ("--output", "--model")},
        bad_input=("tests/e2e/test_cli_bioimageio.py::test_export_refuses_an_unknown_model",),
    ),

``runs`` maps a test (``test_name`` in this module, or ``path/to/test_file.py::test_name`` from the
repository root) to the options it passes in an end-to-end run of the verb (a subprocess running
``python -m ijtorch.cli VERB ...`` that checks exit code, files written and their content);
``bad_input`` lists tests of a bad input (message text, exit code, no traceback, nothing written).
Options every verb shares (``--help``, ``--verbose``) are covered once, in ``COMMON_OPTIONS``.
A verb whose tests need something not everywhere (a Fiji.app, a JVM) still gets an entry; say why
in ``needs`` (the tests themselves skip with a reason, or carry the ``jvm`` marker).
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pytest
import tifffile

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Contract:
    """The end-to-end tests of one verb (see the module docstring)."""

    runs: Mapping[str, Sequence[str]]
    bad_input: Sequence[str]
    needs: str = ""  # why some of these tests skip in some environments


#: Options every verb has, and the test that exercises each (None: argparse's own).
COMMON_OPTIONS: dict[str, str | None] = {"--help": None, "--verbose": "test_verbose_adds_the_traceback"}

#: ``ijtorch serve`` options and the values the serve test starts the server with.
SERVE_VALUES = {"--host": "127.0.0.1", "--allow-host": "ijtorch.test", "--max-queue": "4", "--max-per-client": "4",
                "--max-request-mb": "8", "--max-memory-gb": "1", "--max-pixels": "4000000", "--max-batch": "2",
                "--batch-wait-ms": "1", "--header-timeout": "5", "--body-timeout": "10", "--send-timeout": "10",
                "--request-timeout": "60", "--keep-alive": "2", "--max-connections": "16", "--job-ttl-h": "1",
                "--job-results-mb": "64", "--drain-s": "1", "--device": "cpu", "--threads": "1"}
SERVE_OPTIONS = (*SERVE_VALUES, "--port", "--token-file", "--state-dir", "--no-access-log")

#: ``--dask`` (issue 21): each batch verb on a real ``distributed`` cluster, its outputs compared with
#: the single-process run's (tests/integration/test_scale.py).
DASK_OPTIONS = ("--output", "--dask", "--dask-workers", "--dask-threads")
DASK_SEGMENT = "tests/integration/test_scale.py::test_segment_dask_folder_equals_single_process_and_a_rerun_skips_finished_work"
DASK_VERBS = "tests/integration/test_scale.py::test_batch_verbs_on_a_dask_scheduler_write_what_the_single_process_run_writes"

CONTRACT: dict[str, Contract] = {
    "segment": Contract(
        runs={DASK_SEGMENT: DASK_OPTIONS,
              "test_segment_folder_writes_labels_rois_measurements_overlay": (
                  "--output", "--model", "--prob-threshold", "--nms-threshold", "--device", "--axes", "--scale",
                  "--test-time-augmentation", "--tile-size", "--overlap"),
              "test_segment_channel_is_one_based": ("--output", "--channel"),
              "test_segment_min_confidence_and_rgb": ("--output", "--min-confidence", "--rgb"),
              "test_segment_bad_files_are_reported_and_the_rest_go_on": ("--output", "--fail-fast")},
        bad_input=("test_segment_bad_files_are_reported_and_the_rest_go_on",
                   "test_segment_failed_input_leaves_none_of_its_outputs", "test_segment_user_errors_are_one_line"),
    ),
    "train": Contract(
        runs={"test_train_fine_tune_and_resume": (
            "--output", "--method", "--base-model", "--epochs", "--steps", "--patch-size", "--batch-size",
            "--val-fraction", "--seed", "--resume", "--device")},
        bad_input=("test_train_offers_only_methods_that_work",),
    ),
    "evaluate": Contract(
        runs={DASK_VERBS: DASK_OPTIONS,
              "test_evaluate_reports_bad_pairs_and_scores_the_rest": ("--output",),
              "tests/e2e/test_cli_tasks.py::test_evaluate_cli_prints_table_and_writes_csv": ("--output",),
              "test_evaluate_fail_fast": ("--fail-fast",)},
        bad_input=("test_evaluate_reports_bad_pairs_and_scores_the_rest", "test_evaluate_fail_fast"),
    ),
    "track": Contract(
        runs={"test_track_label_folder": ("--output", "--labels", "--max-distance", "--max-gap", "--no-divisions",
                                          "--fill-gaps"),
              "test_track_segments_the_chosen_channel": ("--output", "--model", "--channel", "--axes"),
              "test_track_overlap_linking_options": (
                  "--output", "--labels", "--linking", "--merges", "--motion", "--displacement-sigma",
                  "--size-growth", "--size-sigma", "--overlap-sigma", "--orientation-sigma", "--max-cost")},
        bad_input=("test_track_refuses_a_movie_without_time",),
    ),
    "restore": Contract(
        runs={DASK_VERBS: DASK_OPTIONS,
              "test_restore_with_a_trained_model_writes_maps": ("--output", "--model", "--channel", "--uncertainty",
                                                                "--error-map", "--device", "--fail-fast",
                                                                "--tile-size")},
        bad_input=("test_restore_bad_inputs",),
    ),
    "denoise": Contract(
        runs={DASK_VERBS: DASK_OPTIONS,
              "test_denoise_folder_trains_one_model_for_all_inputs": ("--output", "--epochs", "--steps", "--save-model",
                                                                       "--device"),
              "test_denoise_per_image_and_saved_model": ("--output", "--per-image", "--channel", "--model",
                                                         "--uncertainty", "--error-map", "--fail-fast"),
              "tests/e2e/test_cli_tasks.py::test_denoise_writes_float_image_with_calibration_and_keeps_input": (
                  "--output", "--epochs", "--steps")},
        bad_input=("test_denoise_bad_inputs",),
    ),
    "normalize": Contract(
        runs={DASK_VERBS: DASK_OPTIONS,
              "test_normalize_writes_the_command_image_per_input": (
            "--output", "--low", "--high", "--per-plane", "--clip", "--axes", "--fail-fast")},
        bad_input=("test_normalize_bad_inputs",),
    ),
    "train-restoration": Contract(
        runs={"test_train_restoration_and_fine_tune": ("--output", "--epochs", "--steps", "--base-model")},
        bad_input=("test_train_restoration_bad_inputs",),
    ),
    "classify": Contract(
        runs={"tests/e2e/test_cli_tasks.py::test_classifier_train_classify_embed": ("--model", "--output")},
        bad_input=("test_classify_embed_bad_inputs",),
    ),
    "embed": Contract(
        runs={"tests/e2e/test_cli_tasks.py::test_classifier_train_classify_embed": ("--model", "--output",
                                                                                   "--clusters")},
        bad_input=("test_classify_embed_bad_inputs",),
    ),
    "train-classifier": Contract(
        runs={"tests/e2e/test_cli_tasks.py::test_classifier_train_classify_embed": ("--output", "--epochs"),
              "test_train_classifier_fine_tune": ("--output", "--epochs", "--base-model", "--seed")},
        bad_input=("test_train_classifier_fine_tune",),
    ),
    "train-pixels": Contract(
        runs={"tests/e2e/test_cli_pixels.py::test_train_pixels_warm_start_and_segment_write_class_maps": (
            "--output", "--classes", "--steps", "--seed", "--device", "--base-model")},
        bad_input=("tests/e2e/test_cli_pixels.py::test_train_pixels_bad_annotations_fail_in_one_line",),
    ),
    "models": Contract(runs={"test_models_lists_bundled_and_user_models": ()},
                       bad_input=("test_models_lists_bundled_and_user_models",)),
    "demo": Contract(runs={"test_demo_runs_and_writes_outputs": ("--output", "--data")},
                     bad_input=("test_demo_bad_data_folder",), needs="the JVM (jvm marker)"),
    "doctor": Contract(runs={"tests/e2e/test_cli.py::test_doctor_reports_every_piece_and_exits_zero": (),
                             "test_doctor_with_a_missing_fiji": ("--fiji",)},
                       bad_input=("tests/e2e/test_cli.py::test_doctor_exits_nonzero_when_imagej_is_missing",
                                  "test_doctor_with_a_missing_fiji"),
                       needs="the JVM (jvm marker)"),
    "macro": Contract(runs={"tests/e2e/test_cli.py::test_macro_arguments_reach_getargument": ("--arg",),
                            "test_macro_timeout_stops_a_hung_macro": ("--timeout",),
                            "test_macro_and_fiji_refuse_a_missing_fiji": ("--fiji",)},
                      bad_input=("tests/e2e/test_cli.py::test_missing_macro_file_is_a_clear_error",
                                 "tests/e2e/test_cli.py::test_macro_error_gives_exit_1_and_message_on_stderr",
                                 "test_macro_and_fiji_refuse_a_missing_fiji"),
                      needs="the JVM (jvm marker); a real --fiji run needs IJTORCH_FIJI (tests/fiji)"),
    "fiji": Contract(runs={"tests/fiji/test_fiji_attach.py::test_cli_fiji_headless_runs_a_macro_and_a_script": (
                               "--fiji", "--headless", "--macro", "--script", "--arg"),
                           "test_macro_and_fiji_refuse_a_missing_fiji": ("--fiji", "--headless", "--timeout")},
                     bad_input=("test_macro_and_fiji_refuse_a_missing_fiji",),
                     needs="a Fiji.app in IJTORCH_FIJI for the real run (tests/fiji skips without one); the UI "
                           "mode (no --headless) needs a person at a display and is not run"),
    "install-fiji": Contract(runs={"test_install_fiji_into_a_fake_fiji": ("--server", "--uninstall")},
                             bad_input=("test_install_fiji_into_a_fake_fiji",),
                             needs="javac and Debian's ij.jar to build the shim (skips without)"),
    "export-bioimageio": Contract(
        runs={"tests/e2e/test_cli_bioimageio.py::test_export_writes_a_valid_package": (
            "--test-image", "--author", "--license", "--pixel-size", "--name", "--no-test")},
        bad_input=("tests/e2e/test_cli_bioimageio.py::test_export_refuses_an_unknown_model",),
        needs="bioimageio.core (the test extra; skips without)"),
    "import-bioimageio": Contract(
        runs={"tests/e2e/test_cli_bioimageio.py::test_import_registers_a_model": (
            "--name", "--task", "--threshold", "--overwrite")},
        bad_input=("tests/e2e/test_cli_bioimageio.py::test_import_refuses_a_bad_package",),
        needs="bioimageio.core (the test extra; skips without)"),
    "segment-cluster": Contract(
        runs={"tests/integration/test_scale_cli.py::test_segment_cluster_folder_equals_segment": (
            "--input", "--output", "--model", "--channel", "--prob-threshold", "--nms-threshold", "--block", "--halo",
            "--scheduler", "--workers", "--threads")},
        bad_input=("tests/integration/test_scale_cli.py::test_segment_cluster_refuses_a_missing_input_in_one_line",),
        needs="dask and distributed (the dask extra; skips without)"),
    "serve": Contract(runs={"test_serve_answers_on_a_free_loopback_port": SERVE_OPTIONS,
                            "test_serve_refuses_a_public_address_without_a_token": ("--host", "--port", "--token")},
                      bad_input=("test_serve_refuses_a_public_address_without_a_token",)),
}


# ----------------------------------------------------------------------------- the coverage check
def _verbs_and_options() -> dict[str, set[str]]:
    import argparse

    from ijtorch.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    verbs = {}
    for verb, verb_parser in sub.choices.items():
        options = set()
        for action in verb_parser._actions:
            if action.option_strings:
                options.add(max(action.option_strings, key=len))  # the long form names the option
        verbs[verb] = options
    return verbs


def _test_exists(ref: str) -> bool:
    path, _, name = ref.rpartition("::")
    source = (ROOT / path).read_text() if path else Path(__file__).read_text()
    return re.search(rf"^def {re.escape(name)}\(", source, re.MULTILINE) is not None


def _contract_problems(verbs: Mapping[str, set[str]], contract: Mapping[str, Contract],
                       common: Mapping[str, str | None]) -> list[str]:
    """Everything that keeps ``contract`` from covering ``verbs`` (verb -> its options)."""
    problems = []
    for verb in sorted(set(verbs) - set(contract)):
        problems.append(f"verb {verb!r} has no entry in CONTRACT (tests/e2e/test_cli_contract.py): add its "
                        "end-to-end and bad-input tests there")
    for verb in sorted(set(contract) - set(verbs)):
        problems.append(f"CONTRACT names {verb!r}, which `ijtorch --help` no longer lists")
    for verb, entry in sorted(contract.items()):
        if verb not in verbs:
            continue
        refs = [*entry.runs, *entry.bad_input]
        problems += [f"{verb}: test {ref!r} does not exist" for ref in refs if not _test_exists(ref)]
        if not entry.runs or not entry.bad_input:
            problems.append(f"{verb}: needs at least one end-to-end run and one bad-input test")
        covered = {opt for opts in entry.runs.values() for opt in opts}
        for option in sorted(verbs[verb] - covered - set(common)):
            problems.append(f"{verb}: option {option} is exercised by none of its tests")
        problems += [f"{verb}: CONTRACT lists {opt}, which the verb does not have" for opt in sorted(covered - verbs[verb])]
    problems += [f"COMMON_OPTIONS: test {ref!r} does not exist" for ref in common.values()
                 if ref is not None and not _test_exists(ref)]
    return problems


def test_every_verb_and_option_has_an_end_to_end_test():
    problems = _contract_problems(_verbs_and_options(), CONTRACT, COMMON_OPTIONS)
    assert not problems, "\n".join(problems)


def test_the_contract_check_fails_loudly_for_an_untested_verb_or_option():
    verbs = {"segment": {"--output", "--channel", "--new-option", "--help"}, "new-verb": {"--output"}}
    contract = {"segment": Contract(runs={"test_segment_channel_is_one_based": ("--output", "--channel")},
                                    bad_input=("test_no_such_test",)),
                "gone-verb": Contract(runs={}, bad_input=())}
    problems = _contract_problems(verbs, contract, COMMON_OPTIONS)
    assert any("verb 'new-verb' has no entry in CONTRACT" in p for p in problems)
    assert "segment: option --new-option is exercised by none of its tests" in problems
    assert "segment: test 'test_no_such_test' does not exist" in problems
    assert any("'gone-verb', which `ijtorch --help` no longer lists" in p for p in problems)
    assert _test_exists("tests/e2e/test_cli.py::test_doctor_reports_every_piece_and_exits_zero")


# ----------------------------------------------------------------------------- helpers and data
def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    models = tmp_path / "user-models"
    models.mkdir(exist_ok=True)
    return {**os.environ, "IJTORCH_MODELS": str(models), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **extra}


def _cli(tmp_path: Path, *args: str, timeout: int = 300, **env: str) -> subprocess.CompletedProcess:
    """``ijtorch ARGS`` in a fresh process (home-free: IJTORCH_MODELS is a temporary folder)."""
    return subprocess.run([sys.executable, "-m", "ijtorch.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=tmp_path, env=_env(tmp_path, **env))


def _clean_failure(out: subprocess.CompletedProcess, code: int, *texts: str) -> None:
    """Exit ``code``, each of ``texts`` on stderr, and no Python traceback."""
    assert out.returncode == code, (out.returncode, out.stdout, out.stderr)
    assert "Traceback" not in out.stderr, out.stderr
    for text in texts:
        assert text in out.stderr, (text, out.stderr)


def _no_staging_left(folder: Path) -> None:
    assert not [p for p in folder.rglob(".ijtorch-partial-*")], list(folder.rglob("*"))


def _find_samples() -> Path | None:
    """The nuclei samples bundled with the package (images/ + labels/), when present."""
    try:
        from ijtorch import samples
    except ImportError:
        return None
    return samples.path() if (samples.path() / "images").is_dir() else None


@pytest.fixture(scope="module")
def nuclei(request, tmp_path_factory) -> Path:
    """Three real nuclei images and their label maps, cropped to 128 px: ``images/`` and ``labels/``."""
    source = _find_samples()
    if source is None:
        source = request.getfixturevalue("shared_data") / "nuclei_dsb2018" / "train"
    root = tmp_path_factory.mktemp("nuclei")
    names = sorted(p.name for p in (source / "images").glob("*.tif"))[:3]
    for kind in ("images", "labels"):
        (root / kind).mkdir()
        for name in names:
            data = tifffile.imread(source / kind / name)[:128, :128]
            tifffile.imwrite(root / kind / name, data)
    return root


def _noisy(nuclei: Path, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    clean = [tifffile.imread(p).astype(np.float64) for p in sorted((nuclei / "images").glob("*.tif"))]
    return [(rng.poisson(c / 4) * 4 + rng.normal(0, 5, c.shape)).astype(np.float32) for c in clean]


@pytest.fixture(scope="module")
def noisy(nuclei, tmp_path_factory) -> Path:
    """Two noisy versions of real nuclei images (Poisson-Gaussian), 96 px, ImageJ TIFFs."""
    from ijtorch.io.tiff import write_imagej_tiff

    folder = tmp_path_factory.mktemp("noisy")
    for i, image in enumerate(_noisy(nuclei, 0)[:2]):
        write_imagej_tiff(folder / f"noisy{i}.tif", image[:96, :96], "YX",
                          calibration={"pixel_width": 0.5, "pixel_height": 0.5, "unit": "micron"})
    return folder


@pytest.fixture(scope="module")
def n2v_model(noisy, tmp_path_factory) -> Path:
    """A tiny Noise2Void model trained by ``ijtorch train-restoration`` (1 epoch, 2 steps)."""
    tmp = tmp_path_factory.mktemp("n2v")
    out = _cli(tmp, "train-restoration", "n2v", noisy, "--output", tmp / "n2v", "--epochs", 1, "--steps", 2)
    assert out.returncode == 0, out.stderr
    return tmp / "n2v"


def _rgb_and_broken(folder: Path) -> None:
    tifffile.imwrite(folder / "colour.tif", np.zeros((64, 64, 3), np.uint8), photometric="rgb")
    (folder / "broken.tif").write_bytes(b"this is not a TIFF file")


# ----------------------------------------------------------------------------- common
def test_verbose_adds_the_traceback(tmp_path):
    out = _cli(tmp_path, "segment", tmp_path / "missing.tif", "--output", tmp_path / "out")
    _clean_failure(out, 2, "ijtorch segment: input", "does not exist")
    assert len(out.stderr.strip().splitlines()) == 1
    out = _cli(tmp_path, "segment", tmp_path / "missing.tif", "--output", tmp_path / "out", "-v")
    assert out.returncode == 2 and "Traceback" in out.stderr and "does not exist" in out.stderr
    out = _cli(tmp_path, "--help")
    assert out.returncode == 0 and "segment" in out.stdout
    out = _cli(tmp_path, "--version")
    assert out.returncode == 0 and out.stdout.startswith("ijtorch ")


def test_exit_codes_of_user_errors_bugs_and_interrupts(capsys):
    """In process: what escapes a verb becomes one stderr line and its exit code (README's table)."""
    from ijtorch.cli.batch import EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_USAGE, run_verb
    from ijtorch.errors import ModelError

    def raising(exc):
        def verb():
            raise exc
        return verb

    assert run_verb("x", raising(ModelError("no such model"))) == EXIT_USAGE
    assert capsys.readouterr().err == "ijtorch x: no such model\n"
    assert run_verb("x", raising(FileNotFoundError(2, "No such file or directory", "a.tif"))) == EXIT_USAGE
    assert capsys.readouterr().err == "ijtorch x: No such file or directory: a.tif\n"
    assert run_verb("x", raising(KeyError("oops"))) == EXIT_INTERNAL
    err = capsys.readouterr().err
    assert "Traceback" in err and "ijtorch x: internal error (KeyError: 'oops'); this is a bug in ijtorch" in err
    assert run_verb("x", raising(KeyboardInterrupt())) == EXIT_INTERRUPTED
    assert capsys.readouterr().err == "ijtorch x: interrupted\n"
    assert run_verb("x", raising(SystemExit("ijtorch x: no data here"))) == EXIT_USAGE
    assert capsys.readouterr().err == "ijtorch x: no data here\n"
    with pytest.raises(SystemExit) as status:  # an exit status (e.g. a batch macro's) passes through
        run_verb("x", raising(SystemExit(124)))
    assert status.value.code == 124
    assert run_verb("x", lambda: None) == 0


# ----------------------------------------------------------------------------- segment
def test_segment_folder_writes_labels_rois_measurements_overlay(tmp_path, nuclei):
    import roifile

    out = _cli(tmp_path, "segment", nuclei / "images", "--output", tmp_path / "out", "--model", "nuclei",
               "--prob-threshold", 0.5, "--nms-threshold", 0.4, "--device", "cpu", "--axes", "YX", "--scale", 1,
               "--test-time-augmentation", "--tile-size", 96, "--overlap", 32)
    assert out.returncode == 0, out.stderr
    names = sorted(p.stem for p in (nuclei / "images").glob("*.tif"))
    assert "ijtorch segment: 3 done, 0 failed, 0 skipped" in out.stdout
    for name in names:
        labels = tifffile.imread(tmp_path / "out" / f"{name}.tif")
        assert labels.shape == (128, 128) and labels.dtype == np.uint16
        n = len(np.unique(labels)) - 1
        assert n > 0 and f"{name}.tif: {n} objects" in out.stdout
        assert len(roifile.roiread(tmp_path / "out" / f"{name}_RoiSet.zip")) == n
        with open(tmp_path / "out" / f"{name}_measurements.csv") as f:
            assert len(list(csv.DictReader(f))) == n
        assert (tmp_path / "out" / f"{name}_overlay.png").stat().st_size > 0
    _no_staging_left(tmp_path / "out")


@pytest.mark.slow
def test_segment_min_confidence_and_rgb(tmp_path, nuclei):
    """The Segment command's min_confidence and rgb, generated as options of the verb."""
    image = tifffile.imread(sorted((nuclei / "images").glob("*.tif"))[0])
    grey = (255 * (image - image.min()) / max(np.ptp(image), 1)).astype(np.uint8)
    tifffile.imwrite(tmp_path / "grey.tif", grey)
    tifffile.imwrite(tmp_path / "colour.tif", np.stack([grey] * 3, axis=-1), photometric="rgb")
    counts = {}
    for name, args in (("all", ("grey.tif",)), ("sure", ("grey.tif", "--min-confidence", 0.9)),
                       ("rgb", ("colour.tif", "--rgb", "luminance"))):
        out = _cli(tmp_path, "segment", *[tmp_path / a if str(a).endswith(".tif") else a for a in args],
                   "--output", tmp_path / name)
        assert out.returncode == 0, out.stderr
        counts[name] = int(re.search(r"\.tif: (\d+) objects", out.stdout).group(1))
    assert 0 < counts["all"] and counts["sure"] <= counts["all"]
    assert abs(counts["rgb"] - counts["all"]) <= 1  # luminance of a grey RGB image is the grey image
    out = _cli(tmp_path, "segment", tmp_path / "colour.tif", "--rgb", "blue", "--output", tmp_path / "bad")
    _clean_failure(out, 2, "argument --rgb: invalid choice: 'blue'")


def test_segment_channel_is_one_based(tmp_path, nuclei):
    """Defect 4: ``--channel 1`` is the first channel (it segmented the second)."""
    image = tifffile.imread(sorted((nuclei / "images").glob("*.tif"))[0])
    two = np.stack([image, np.zeros_like(image)])  # channel 1: nuclei, channel 2: empty
    tifffile.imwrite(tmp_path / "two.tif", two, imagej=True, metadata={"axes": "CYX"})
    first = _cli(tmp_path, "segment", tmp_path / "two.tif", "--channel", 1, "--output", tmp_path / "c1")
    assert first.returncode == 0, first.stderr
    labels = tifffile.imread(tmp_path / "c1" / "two.tif")
    assert labels.max() > 0 and labels.shape == image.shape
    second = _cli(tmp_path, "segment", tmp_path / "two.tif", "--channel", 2, "--output", tmp_path / "c2")
    assert second.returncode == 0 and tifffile.imread(tmp_path / "c2" / "two.tif").max() == 0
    beyond = _cli(tmp_path, "segment", tmp_path / "two.tif", "--channel", 3, "--output", tmp_path / "c3")
    _clean_failure(beyond, 1, "two.tif: --channel 3: the image has 2 channel(s), numbered 1..2")
    zero = _cli(tmp_path, "segment", tmp_path / "two.tif", "--channel", 0, "--output", tmp_path / "c0")
    _clean_failure(zero, 2, "channels are numbered from 1")
    assert not (tmp_path / "c3" / "two.tif").exists() and not (tmp_path / "c0").exists()


@pytest.mark.slow
def test_segment_bad_files_are_reported_and_the_rest_go_on(tmp_path, nuclei):
    """Defect 5: one bad file no longer aborts the folder with a traceback."""
    folder = tmp_path / "in"
    shutil.copytree(nuclei / "images", folder)
    _rgb_and_broken(folder)
    out = _cli(tmp_path, "segment", folder, "--output", tmp_path / "out")
    _clean_failure(out, 1, f"{folder / 'broken.tif'}: ", "not a TIFF")  # RGB is segmented (issue #15), as grey
    assert "ijtorch segment: 4 done, 1 failed, 0 skipped" in out.stdout
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert "colour.tif" in written and not [n for n in written if n.startswith("broken")]
    assert len([n for n in written if n.endswith("_RoiSet.zip")]) == 4
    _no_staging_left(tmp_path / "out")
    # --fail-fast: the batch stops at broken.tif, the first bad file in name order
    out = _cli(tmp_path, "segment", folder, "--output", tmp_path / "fast", "--fail-fast")
    _clean_failure(out, 1, "broken.tif: ")
    summary = re.search(r"(\d) done, 1 failed, 0 skipped, (\d) not run \(--fail-fast\)", out.stdout)
    assert summary and int(summary[1]) + int(summary[2]) == 4, out.stdout
    assert len(list((tmp_path / "fast").glob("*_RoiSet.zip"))) == int(summary[1])


def test_segment_reads_png_and_jpeg_and_images_with_nan(tmp_path, nuclei):
    """PNG / JPEG inputs are segmented as their TIFF twins; NaN pixels (ImageJ's NaN background) read
    as the lowest value instead of making the whole image NaN (0 objects); two inputs that would
    write the same output names are a usage error."""
    from PIL import Image as PILImage

    image = tifffile.imread(sorted((nuclei / "images").glob("*.tif"))[0])
    grey = (255 * (image - image.min()) / max(np.ptp(image), 1)).astype(np.uint8)
    folder = tmp_path / "in"
    folder.mkdir()
    PILImage.fromarray(grey).save(folder / "grey.png")
    tifffile.imwrite(folder / "grey_twin.tif", grey)
    PILImage.fromarray(np.stack([grey] * 3, -1)).save(folder / "colour.jpg", quality=95)
    with_nan = grey.astype(np.float32)
    with_nan[:24, :24] = np.nan  # no data in one corner
    tifffile.imwrite(folder / "nan.tif", with_nan)
    tifffile.imwrite(folder / "nan_twin.tif", np.where(np.isnan(with_nan), grey.min(), with_nan).astype(np.float32))
    out = _cli(tmp_path, "segment", folder, "--output", tmp_path / "out", "--model", "nuclei")
    assert out.returncode == 0, out.stderr
    assert "ijtorch segment: 5 done, 0 failed, 0 skipped" in out.stdout
    labels = {p.stem: tifffile.imread(p) for p in (tmp_path / "out").glob("*.tif")}
    assert labels["grey"].max() > 0
    np.testing.assert_array_equal(labels["grey"], labels["grey_twin"])
    np.testing.assert_array_equal(labels["nan"], labels["nan_twin"])
    assert labels["colour"].max() > 0 and labels["colour"].shape == grey.shape
    (tmp_path / "clash").mkdir()
    shutil.copy(folder / "grey.png", tmp_path / "clash" / "a.png")
    shutil.copy(folder / "grey_twin.tif", tmp_path / "clash" / "a.tif")
    clash = _cli(tmp_path, "segment", tmp_path / "clash", "--output", tmp_path / "out2")
    _clean_failure(clash, 2, "would write outputs of the same name (a.*)")
    assert not (tmp_path / "out2").exists()


def test_segment_failed_input_leaves_none_of_its_outputs(tmp_path, nuclei):
    """An input whose later outputs cannot be written leaves none of its earlier ones."""
    image = sorted((nuclei / "images").glob("*.tif"))[0]
    out_dir = tmp_path / "out"
    (out_dir / f"{image.stem}_RoiSet.zip").mkdir(parents=True)  # the ROI set cannot be written
    out = _cli(tmp_path, "segment", image, "--output", out_dir)
    _clean_failure(out, 1, f"{image}: cannot write", "_RoiSet.zip: a folder of that name is in the way")
    assert sorted(p.name for p in out_dir.iterdir()) == [f"{image.stem}_RoiSet.zip"]
    _no_staging_left(out_dir)


def test_segment_user_errors_are_one_line(tmp_path, nuclei):
    empty = tmp_path / "empty"
    empty.mkdir()
    for args, text in (
        ((empty,), f"ijtorch segment: folder {empty} holds no image files (.tif, .tiff, .png, .jpg, "),
        ((nuclei / "images", "--model", "no-such-model"), "model='no-such-model' is neither a model directory"),
        ((nuclei / "images", "--scale", "-1"), "argument --scale: expected a number >= 0.1, got -1"),  # after argparse's usage
    ):
        out = _cli(tmp_path, "segment", *args, "--output", tmp_path / "out")
        _clean_failure(out, 2, text)
        assert text in out.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- train
@pytest.mark.slow
def test_train_fine_tune_and_resume(tmp_path, nuclei):
    common = ("--epochs", 1, "--steps", 2, "--patch-size", 64, "--batch-size", 2, "--val-fraction", 0,
              "--seed", 0, "--device", "cpu")
    out = _cli(tmp_path, "train", nuclei / "images", nuclei / "labels", "--output", tmp_path / "tuned",
               "--method", "stardist", "--base-model", "nuclei", *common)
    assert out.returncode == 0, out.stderr
    assert f"model saved to {tmp_path / 'tuned'}" in out.stdout
    assert "train: epoch 1/1" in out.stderr  # progress lines (stderr is not a terminal here)
    config = json.loads((tmp_path / "tuned" / "config.json").read_text())
    assert (tmp_path / "tuned" / "weights.safetensors").is_file() and config["model_type"].startswith("stardist")
    # resume (same settings, so the same network): a second epoch continues from the first one's checkpoint
    out = _cli(tmp_path, "train", nuclei / "images", nuclei / "labels", "--output", tmp_path / "tuned",
               "--base-model", "nuclei", "--resume", *common[2:], "--epochs", 2)
    assert out.returncode == 0, out.stderr
    history = json.loads((tmp_path / "tuned" / "config.json").read_text())["training"]
    assert history.get("epochs_run", 2) == 2, history


def test_train_offers_only_methods_that_work(tmp_path, nuclei):
    """Defect 3: every --method choice is one train_segmentation accepts; others fail in one line."""
    from ijtorch.cli import build_parser
    from ijtorch.tasks.segment import METHODS

    train = build_parser()._subparsers._group_actions[0].choices["train"]
    method = next(a for a in train._actions if "--method" in a.option_strings)
    assert tuple(method.choices) == METHODS
    out = _cli(tmp_path, "train", nuclei / "images", nuclei / "labels", "--output", tmp_path / "m",
               "--method", "no_such_method")
    _clean_failure(out, 2, "invalid choice: 'no_such_method'")
    out = _cli(tmp_path, "train", nuclei / "images", tmp_path / "no-labels", "--output", tmp_path / "m",
               "--epochs", 1, "--steps", 1)
    _clean_failure(out, 2, "ijtorch train: ")
    assert not (tmp_path / "m").exists()


# ----------------------------------------------------------------------------- evaluate
def _label_folders(tmp_path: Path, nuclei: Path) -> tuple[Path, Path]:
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    shutil.copytree(nuclei / "labels", gt)
    shutil.copytree(nuclei / "labels", pred)
    first = sorted(pred.glob("*.tif"))[0]
    tifffile.imwrite(first, tifffile.imread(first)[:64])  # shape differs from its ground truth
    tifffile.imwrite(pred / "extra.tif", np.zeros((8, 8), np.uint16))  # no ground truth
    return pred, gt


def test_evaluate_reports_bad_pairs_and_scores_the_rest(tmp_path, nuclei):
    pred, gt = _label_folders(tmp_path, nuclei)
    out = _cli(tmp_path, "evaluate", pred, gt, "--output", tmp_path / "ev")
    first = sorted(pred.glob("*.tif"))[0]
    _clean_failure(out, 1, f"{first}: ground truth has shape (128, 128) but the prediction has shape (64, 128)",
                   "extra.tif: skipped: no ground truth")
    assert "ijtorch evaluate: 2 done, 1 failed, 1 skipped" in out.stdout
    with open(tmp_path / "ev" / "evaluation.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["name"] for r in rows[:-2]] == sorted(p.stem for p in gt.glob("*.tif"))[1:]
    assert all(float(r["f1"]) == pytest.approx(1.0) for r in rows)  # predictions equal to the ground truth


def test_evaluate_fail_fast(tmp_path, nuclei):
    pred, gt = _label_folders(tmp_path, nuclei)
    out = _cli(tmp_path, "evaluate", pred, gt, "--output", tmp_path / "ev", "--fail-fast")
    _clean_failure(out, 1, "ground truth has shape")
    assert "0 done, 1 failed" in out.stdout and not (tmp_path / "ev" / "evaluation.csv").exists()
    out = _cli(tmp_path, "evaluate", pred, tmp_path / "nowhere")
    _clean_failure(out, 2, "ijtorch evaluate: ")


# ----------------------------------------------------------------------------- track
def test_track_label_folder(tmp_path, shared_data):
    tra = shared_data / "tracking_bacteria" / "01_GT" / "TRA"
    frames = tmp_path / "frames"
    frames.mkdir()
    for path in sorted(tra.glob("man_track*.tif"))[:5]:
        shutil.copy(path, frames / path.name)
    out = _cli(tmp_path, "track", frames, "--labels", "--output", tmp_path / "tracks", "--max-distance", 30,
               "--max-gap", 1, "--no-divisions", "--fill-gaps")
    assert out.returncode == 0, out.stderr
    assert "ijtorch track: 1 done, 0 failed, 0 skipped" in out.stdout
    root = ET.parse(tmp_path / "tracks" / "frames.xml").getroot()
    assert root.tag == "TrackMate" and len(root.findall(".//Spot")) > 0
    with open(tmp_path / "tracks" / "frames_track_statistics.csv") as f:
        stats = list(csv.DictReader(f))
    assert stats and all(r["divides"] in ("False", "0", "false") for r in stats)
    assert len(list((tmp_path / "tracks" / "frames_RES").glob("*.tif"))) == 5
    _no_staging_left(tmp_path / "tracks")


def test_track_overlap_linking_options(tmp_path, shared_data):
    """The Track command's linking parameters, generated as options of the verb, reach the linker."""
    tra = shared_data / "tracking_bacteria" / "01_GT" / "TRA"
    frames = tmp_path / "frames"
    frames.mkdir()
    for path in sorted(tra.glob("man_track*.tif"))[:4]:
        shutil.copy(path, frames / path.name)
    out = _cli(tmp_path, "track", frames, "--labels", "--output", tmp_path / "tracks", "--linking", "overlap",
               "--merges", "--motion", "none", "--displacement-sigma", 3, "--size-growth", 0,
               "--size-sigma", 0.3, "--overlap-sigma", 0.3, "--orientation-sigma", 20, "--max-cost", 40)
    assert out.returncode == 0, out.stderr
    assert int(re.search(r"frames: (\d+) detections", out.stdout).group(1)) > 0
    assert "overlap linking" in out.stdout  # the gates and cost scales used, in the summary
    assert (tmp_path / "tracks" / "frames.xml").is_file()
    out = _cli(tmp_path, "track", frames, "--labels", "--output", tmp_path / "t2", "--linking", "nearest")
    _clean_failure(out, 2, "argument --linking: invalid choice: 'nearest'")


def test_track_segments_the_chosen_channel(tmp_path, nuclei):
    image = tifffile.imread(sorted((nuclei / "images").glob("*.tif"))[0])
    movie = np.stack([np.stack([np.zeros_like(image), np.roll(image, t, axis=1)]) for t in range(3)])  # T, C, Y, X
    tifffile.imwrite(tmp_path / "movie.tif", movie)  # no axes metadata: --axes says what they are
    out = _cli(tmp_path, "track", tmp_path / "movie.tif", "--output", tmp_path / "tracks", "--model", "nuclei",
               "--channel", 2, "--axes", "TCYX")
    assert out.returncode == 0, out.stderr
    detections = int(re.search(r"movie.tif: (\d+) detections", out.stdout).group(1))
    assert detections > 0
    assert (tmp_path / "tracks" / "movie.xml").is_file()


def test_track_refuses_a_movie_without_time(tmp_path, nuclei):
    image = sorted((nuclei / "images").glob("*.tif"))[0]
    out = _cli(tmp_path, "track", image, "--output", tmp_path / "tracks")
    _clean_failure(out, 1, "tracking needs a time axis T")
    assert not list((tmp_path / "tracks").iterdir())
    out = _cli(tmp_path, "track", tmp_path / "nothing.tif", "--output", tmp_path / "t2")
    _clean_failure(out, 2, "does not exist")


# ----------------------------------------------------------------------------- restore / denoise / train-restoration
@pytest.mark.slow
def test_restore_with_a_trained_model_writes_maps(tmp_path, noisy, n2v_model):
    from ijtorch.io.tiff import read_tiff

    first = read_tiff(sorted(noisy.glob("*.tif"))[0])
    two = np.stack([np.zeros_like(first.data), first.data])
    tifffile.imwrite(tmp_path / "two.tif", two, imagej=True, metadata={"axes": "CYX"})
    out = _cli(tmp_path, "restore", tmp_path / "two.tif", "--model", n2v_model, "--output", tmp_path / "out",
               "--channel", 2, "--uncertainty", "--error-map", "--device", "cpu", "--fail-fast", "--tile-size", 64)
    assert out.returncode == 0, out.stderr
    out = _cli(tmp_path, "restore", noisy, "--model", n2v_model, "--output", tmp_path / "out")
    assert out.returncode == 0, out.stderr
    assert "ijtorch restore: 2 done, 0 failed, 0 skipped" in out.stdout
    for name, suffixes in (("two", ("", "_uncertainty", "_error_map")), ("noisy0", ("",)), ("noisy1", ("",))):
        for suffix in suffixes:
            data = tifffile.imread(tmp_path / "out" / f"{name}{suffix}.tif")
            assert data.dtype == np.float32 and data.shape == (96, 96)
    assert not (tmp_path / "out" / "noisy0_uncertainty.tif").exists()
    restored = tifffile.imread(tmp_path / "out" / "two.tif")
    assert restored.std() > 0  # channel 2 (the image), not channel 1 (zeros)
    assert read_tiff(tmp_path / "out" / "noisy0.tif").calibration.pixel_width == pytest.approx(0.5)


def test_restore_bad_inputs(tmp_path, noisy, n2v_model):
    folder = tmp_path / "in"
    shutil.copytree(noisy, folder)
    _rgb_and_broken(folder)
    out = _cli(tmp_path, "restore", folder, "--model", n2v_model, "--output", tmp_path / "out")
    _clean_failure(out, 1, "broken.tif: ")
    assert "colour.tif -> " in out.stdout  # RGB: each channel restored alone, as three float channels
    assert "3 done, 1 failed, 0 skipped" in out.stdout
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["colour.tif", "noisy0.tif", "noisy1.tif"]
    colour = tifffile.imread(tmp_path / "out" / "colour.tif")
    assert colour.dtype == np.float32 and colour.shape == (3, 64, 64)
    out = _cli(tmp_path, "restore", folder, "--output", tmp_path / "o2")
    _clean_failure(out, 2, "--model")
    out = _cli(tmp_path, "restore", folder, "--model", "nope", "--output", tmp_path / "o3")
    _clean_failure(out, 2, "model='nope' is neither a model directory")


# ----------------------------------------------------------------------------- normalize (a verb generated
# from its command: ijtorch Percentile Normalize's parameters and compute, outputs as ImageJ files)
def test_normalize_writes_the_command_image_per_input(tmp_path, noisy):
    from ijtorch.core.normalize import normalize
    from ijtorch.io.tiff import read_tiff

    folder = tmp_path / "in"
    shutil.copytree(noisy, folder)
    raw = tmp_path / "raw.tif"
    first = read_tiff(sorted(folder.glob("*.tif"))[0])
    tifffile.imwrite(raw, np.stack([first.data, first.data]))  # no axes metadata: --axes says what they are
    out = _cli(tmp_path, "normalize", folder, "--output", tmp_path / "out", "--low", 2, "--high", 98, "--clip",
               "--fail-fast")
    assert out.returncode == 0, out.stderr
    assert "ijtorch normalize: 2 done, 0 failed, 0 skipped" in out.stdout
    result = read_tiff(tmp_path / "out" / f"{first.title}-normalized.tif")
    assert result.data.dtype == np.float32 and result.calibration.pixel_width == first.calibration.pixel_width
    np.testing.assert_allclose(result.data, normalize(first.data, "YX", low=2, high=98, clip=True), rtol=1e-6)
    out = _cli(tmp_path, "normalize", raw, "--output", tmp_path / "out", "--axes", "ZYX", "--per-plane")
    assert out.returncode == 0, out.stderr
    stack = read_tiff(tmp_path / "out" / "raw-normalized.tif")
    assert stack.axes == "ZYX" and stack.data.shape == (2,) + first.data.shape
    np.testing.assert_allclose(stack.data, normalize(np.stack([first.data] * 2), "ZYX", per_plane=True), rtol=1e-6)
    _no_staging_left(tmp_path / "out")


def test_normalize_bad_inputs(tmp_path, noisy):
    folder = tmp_path / "in"
    shutil.copytree(noisy, folder)
    (folder / "broken.tif").write_bytes(b"not a tiff")
    out = _cli(tmp_path, "normalize", folder, "--output", tmp_path / "out")
    _clean_failure(out, 1, "broken.tif: ")
    assert "2 done, 1 failed, 0 skipped" in out.stdout
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["noisy0-normalized.tif", "noisy1-normalized.tif"]
    out = _cli(tmp_path, "normalize", folder, "--output", tmp_path / "o2", "--high", 101)
    _clean_failure(out, 2, "argument --high: expected a number <= 100, got 101")
    assert not (tmp_path / "o2").exists()


@pytest.mark.slow
def test_denoise_folder_trains_one_model_for_all_inputs(tmp_path, noisy):
    """Defect 7: one Noise2Void model for a folder (it trained one per image), and the output says so."""
    folder = tmp_path / "in"
    shutil.copytree(noisy, folder)
    _rgb_and_broken(folder)
    out = _cli(tmp_path, "denoise", folder, "--output", tmp_path / "out", "--epochs", 1, "--steps", 2,
               "--save-model", tmp_path / "model", "--device", "cpu")
    _clean_failure(out, 1, "broken.tif: ")
    # the RGB image's three channels are training planes too, and it is denoised per channel
    assert f"one Noise2Void model trained on 3 image(s) (5 planes), 1 epoch(s) x 2 steps" in out.stdout
    assert f"saved to {tmp_path / 'model'}" in out.stdout
    assert out.stdout.count("(the Noise2Void model trained on all 3 input(s))") == 3
    assert "ijtorch denoise: 3 done, 1 failed, 0 skipped" in out.stdout
    assert "denoise: epoch 1/1" in out.stderr  # training progress
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    assert config["model_type"] == "n2v" and config["training"]["items"] == 5
    for name in ("noisy0", "noisy1"):
        data = tifffile.imread(tmp_path / "out" / f"{name}.tif")
        assert data.dtype == np.float32 and data.shape == (96, 96)
    assert tifffile.imread(tmp_path / "out" / "colour.tif").shape == (3, 64, 64)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["colour.tif", "noisy0.tif", "noisy1.tif"]


@pytest.mark.slow
def test_denoise_per_image_and_saved_model(tmp_path, noisy, n2v_model):
    first = tifffile.imread(sorted(noisy.glob("*.tif"))[0])
    tifffile.imwrite(tmp_path / "two.tif", np.stack([np.zeros_like(first), first]), imagej=True,
                     metadata={"axes": "CYX"})
    shutil.copy(sorted(noisy.glob("*.tif"))[1], tmp_path / "other.tif")
    both = (tmp_path / "other.tif", tmp_path / "two.tif", "--per-image", "--channel", 2, "--epochs", 1, "--steps", 1)
    out = _cli(tmp_path, "denoise", *both, "--output", tmp_path / "out")
    _clean_failure(out, 1, "other.tif: --channel 2: the image has no channel axis")  # other.tif has one channel
    assert "two.tif -> " in out.stdout and "(its own Noise2Void model, trained on this image)" in out.stdout
    assert "1 done, 1 failed, 0 skipped" in out.stdout
    assert tifffile.imread(tmp_path / "out" / "two.tif").std() > 0
    out = _cli(tmp_path, "denoise", *both, "--output", tmp_path / "fast", "--fail-fast")  # other.tif comes first
    _clean_failure(out, 1, "other.tif: --channel 2")
    assert "0 done, 1 failed, 0 skipped, 1 not run (--fail-fast)" in out.stdout
    assert not (tmp_path / "fast").exists() or not list((tmp_path / "fast").iterdir())
    out = _cli(tmp_path, "denoise", tmp_path / "other.tif", "--model", n2v_model, "--output", tmp_path / "applied",
               "--uncertainty", "--error-map")
    assert out.returncode == 0, out.stderr
    assert f"(model {n2v_model})" in out.stdout
    assert {p.name for p in (tmp_path / "applied").iterdir()} == {"other.tif", "other_uncertainty.tif",
                                                                  "other_error_map.tif"}


def test_denoise_bad_inputs(tmp_path, noisy, n2v_model):
    out = _cli(tmp_path, "denoise", noisy, "--model", n2v_model, "--per-image", "--output", tmp_path / "o")
    _clean_failure(out, 2, "--per-image and --save-model are for training Noise2Void here")
    out = _cli(tmp_path, "denoise", noisy, "--epochs", 0, "--output", tmp_path / "o")
    _clean_failure(out, 2, "expected a number >= 1")
    assert not (tmp_path / "o").exists()


def test_train_restoration_and_fine_tune(tmp_path, noisy, n2v_model):
    """Defect 2: --base-model fine-tunes (it crashed with a TypeError)."""
    out = _cli(tmp_path, "train-restoration", "n2v", noisy, "--output", tmp_path / "tuned", "--epochs", 1,
               "--steps", 1, "--base-model", n2v_model)
    assert out.returncode == 0, out.stderr
    assert f"fine-tuned from: {n2v_model}" in out.stdout
    config = json.loads((tmp_path / "tuned" / "config.json").read_text())
    assert config["training"]["base_model"] == str(n2v_model)
    assert config["architecture"] == json.loads((n2v_model / "config.json").read_text())["architecture"]


def test_train_restoration_bad_inputs(tmp_path, noisy, n2v_model):
    out = _cli(tmp_path, "train-restoration", "care", noisy, noisy, "--output", tmp_path / "m", "--epochs", 1,
               "--steps", 1, "--base-model", n2v_model)
    _clean_failure(out, 2, "is a 'n2v' model; fine-tuning keeps the kind")
    out = _cli(tmp_path, "train-restoration", "n2v", noisy, noisy, "--output", tmp_path / "m")
    _clean_failure(out, 2, "trains on noisy images alone")
    assert not (tmp_path / "m").exists()


# ----------------------------------------------------------------------------- classify / embed / train-classifier
@pytest.fixture(scope="module")
def cells(request, nuclei, tmp_path_factory) -> Path:
    """Real cell crops with classes as an .npz: Jurkat cell-cycle crops from the shared data, or
    (on a fresh clone) 32-px crops around the bundled sample nuclei, classed small/large by area."""
    from skimage.measure import regionprops

    path = tmp_path_factory.mktemp("cells") / "cells.npz"
    jurkat = Path(os.environ.get("IJTORCH_SHARED_DATA", ROOT.parent / "shared" / "data")) / "classify_jurkat_cellcycle"
    if (jurkat / "train.npz").is_file():
        z = np.load(jurkat / "train.npz")
        idx = np.arange(0, len(z["labels"]), 24)
        np.savez(path, images=z["images"][idx], labels=z["labels"][idx], classes=z["classes"])
        return path
    crops, areas = [], []
    for image_path in sorted((nuclei / "images").glob("*.tif")):
        image = np.pad(tifffile.imread(image_path).astype(np.float32), 16)
        for region in regionprops(np.pad(tifffile.imread(nuclei / "labels" / image_path.name), 16)):
            y, x = (int(round(c)) for c in region.centroid)
            crops.append(image[None, y - 16:y + 16, x - 16:x + 16])
            areas.append(region.area)
    labels = (np.asarray(areas) > np.median(areas)).astype(np.int64)
    np.savez(path, images=np.stack(crops), labels=labels, classes=np.array(["small", "large"]))
    return path


@pytest.mark.slow
def test_train_classifier_fine_tune(tmp_path, cells):
    out = _cli(tmp_path, "train-classifier", cells, "--output", tmp_path / "clf", "--epochs", 1, "--seed", 1)
    assert out.returncode == 0, out.stderr
    out = _cli(tmp_path, "train-classifier", cells, "--output", tmp_path / "tuned", "--epochs", 1,
               "--base-model", tmp_path / "clf")
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "tuned" / "weights.safetensors").is_file()
    np.savez(tmp_path / "unlabelled.npz", images=np.load(cells)["images"])
    out = _cli(tmp_path, "train-classifier", tmp_path / "unlabelled.npz", "--output", tmp_path / "m")
    _clean_failure(out, 2, "has no 'labels' array")
    assert not (tmp_path / "m").exists()


def test_classify_embed_bad_inputs(tmp_path, cells):
    np.savez(tmp_path / "wrong.npz", pictures=np.zeros((2, 1, 8, 8)))
    for verb in ("classify", "embed"):
        out = _cli(tmp_path, verb, tmp_path / "missing.npz", "--model", "x", "--output", tmp_path / "o")
        _clean_failure(out, 2, "does not exist")
        out = _cli(tmp_path, verb, cells, "--model", "no-such-classifier", "--output", tmp_path / "o")
        _clean_failure(out, 2, "model='no-such-classifier' is neither a model directory")
    assert not (tmp_path / "o").exists()


# ----------------------------------------------------------------------------- models
def test_models_lists_bundled_and_user_models(tmp_path, n2v_model):
    shutil.copytree(n2v_model, tmp_path / "user-models" / "my-n2v")
    out = _cli(tmp_path, "models")
    assert out.returncode == 0, out.stderr
    names = [line.split()[0] for line in out.stdout.splitlines()]
    assert "nuclei" in names and "my-n2v" in names
    out = _cli(tmp_path, "models", "extra")
    _clean_failure(out, 2, "unrecognized arguments: extra")


# ----------------------------------------------------------------------------- JVM verbs: demo, doctor, macro
@pytest.mark.jvm
@pytest.mark.slow
def test_demo_runs_and_writes_outputs(tmp_path, nuclei):
    """``--data`` takes any images/ + labels/ folder (here three 128-px crops; default: the bundled samples)."""
    out = _cli(tmp_path, "demo", "--output", tmp_path / "demo", "--data", nuclei, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    labels = sorted((tmp_path / "demo").rglob("*.tif"))
    assert labels and all(tifffile.imread(p).max() > 0 for p in labels[:2])


@pytest.mark.jvm
def test_demo_bad_data_folder(tmp_path):
    out = _cli(tmp_path, "demo", "--output", tmp_path / "demo", "--data", tmp_path / "nowhere")
    _clean_failure(out, 2, "ijtorch demo: ", "nowhere")


@pytest.mark.jvm
def test_doctor_with_a_missing_fiji(tmp_path):
    out = _cli(tmp_path, "doctor", "--fiji", tmp_path / "NoFiji.app")
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert "[MISSING]" in out.stdout and "NoFiji.app" in out.stdout


@pytest.mark.jvm
def test_macro_timeout_stops_a_hung_macro(tmp_path):
    macro = tmp_path / "hang.ijm"
    macro.write_text('print("started");\nwait(60000);\n')
    out = _cli(tmp_path, "macro", macro, "--timeout", 3, timeout=120)
    assert out.returncode == 124, (out.stdout, out.stderr)
    assert "Traceback" not in out.stderr


def test_macro_and_fiji_refuse_a_missing_fiji(tmp_path):
    """No JVM starts: the Fiji.app is checked first."""
    out = _cli(tmp_path, "fiji", "--fiji", tmp_path / "NoFiji.app", "--headless", "--timeout", 30)
    _clean_failure(out, 2, "is not a Fiji.app folder")
    macro = tmp_path / "m.ijm"
    macro.write_text('print("x");\n')
    out = _cli(tmp_path, "macro", macro, "--fiji", tmp_path / "NoFiji.app", "--timeout", 30)
    _clean_failure(out, 2, "NoFiji.app")


# ----------------------------------------------------------------------------- install-fiji, serve
def test_install_fiji_into_a_fake_fiji(tmp_path):
    if shutil.which("javac") is None or not Path("/usr/share/java/ij.jar").exists():
        pytest.skip("javac and Debian's ij.jar are needed to build the shim (tools/setup.sh installs them)")
    fiji = tmp_path / "Fiji.app"
    (fiji / "jars").mkdir(parents=True)
    (fiji / "plugins").mkdir()
    (fiji / "jars" / "ij-1.53t.jar").symlink_to("/usr/share/java/ij.jar")
    out = _cli(tmp_path, "install-fiji", fiji, "--server", "http://127.0.0.1:8765")
    assert out.returncode == 0, out.stderr
    assert "http://127.0.0.1:8765" in (fiji / "ijtorch.properties").read_text()
    assert (fiji / "ijtorch-install.json").is_file() and list((fiji / "plugins").glob("*.jar"))
    out = _cli(tmp_path, "install-fiji", fiji, "--uninstall")
    assert out.returncode == 0, out.stderr
    assert not (fiji / "ijtorch.properties").exists()
    out = _cli(tmp_path, "install-fiji", tmp_path / "NoFiji.app")
    _clean_failure(out, 2, "ijtorch install-fiji: ")


TOKEN = "a-test-token-of-24-chars"


def test_serve_answers_on_a_free_loopback_port(tmp_path):
    import socket
    import time

    httpx = pytest.importorskip("httpx")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (tmp_path / "token").write_text(TOKEN + "\n")
    options = [x for option, value in SERVE_VALUES.items() for x in (option, value)]
    log = open(tmp_path / "serve.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "ijtorch.cli", "serve", *options, "--port", str(port),
                             "--token-file", str(tmp_path / "token"), "--state-dir", str(tmp_path / "state"),
                             "--no-access-log"],
                            env=_env(tmp_path), stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "server did not answer"
            time.sleep(0.2)
        assert httpx.get(url + "/models", timeout=10).status_code == 401  # the token is required
        models = httpx.get(url + "/models", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
        assert models.status_code == 200 and "nuclei" in models.text
        other = httpx.get(url + "/models", headers={"Authorization": f"Bearer {TOKEN}", "Host": "evil.example"},
                          timeout=10)
        assert other.status_code in (400, 403, 421)  # only localhost names and --allow-host ones
        assert (tmp_path / "state").is_dir()
    finally:
        proc.terminate()
        proc.wait(20)
        log.close()


def test_serve_refuses_a_public_address_without_a_token(tmp_path):
    out = _cli(tmp_path, "serve", "--host", "0.0.0.0", "--port", 0, IJTORCH_TOKEN="", IJTORCH_SERVER_TOKEN="")
    _clean_failure(out, 2, "ijtorch serve: ")
    out = _cli(tmp_path, "serve", "--port", 0, "--token", "short")
    _clean_failure(out, 2, "ijtorch serve: ", "--token")
