"""``model=auto``: the nuclei model whose dataset-shift reference fits an image best (ijtorch.models.auto).

Stand-ins (copies of the bundled ``nuclei`` model with an edited reference, in a temporary user
model folder) test the rule itself; the bundled ``nuclei`` / ``nuclei-transmitted`` pair is tested
on shared real images of each kind (the transmitted model's validation images)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ijtorch.errors import ModelError
from ijtorch.models import auto
from ijtorch.models.store import bundled_dir, clear_model_cache, list_models, new_user_model_dir

TRANSMITTED = bundled_dir() / "nuclei-transmitted"


@pytest.fixture(autouse=True)
def one_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def user_models(tmp_path, monkeypatch):
    folder = tmp_path / "models"
    folder.mkdir()
    monkeypatch.setenv("IJTORCH_MODELS", str(folder))
    yield folder
    clear_model_cache()


def _stand_in(folder: Path, name: str, *, threshold: float, median: tuple[float, float], auto_entry=True) -> Path:
    """A copy of the bundled nuclei model whose reference says "bright background" and has ``threshold``."""
    dest = folder / name
    shutil.copytree(bundled_dir() / "nuclei", dest)
    cfg = json.loads((dest / "config.json").read_text())
    cfg["shift"]["threshold"] = threshold
    cfg["shift"]["inputs"]["median"] = list(median)
    if auto_entry:
        cfg["auto"] = {"family": "nuclei"}
    else:
        cfg.pop("auto", None)
    (dest / "config.json").write_text(json.dumps(cfg))
    return dest


def _fluorescence(shared_data: Path, k: int = 0) -> np.ndarray:
    import tifffile

    return tifffile.imread(sorted((shared_data / "nuclei_dsb2018" / "more" / "images").glob("*.tif"))[k])


def _transmitted_validation(shared_data: Path, kind: str, k: int = 0) -> tuple[str, np.ndarray]:
    """The ``k``-th validation image of ``kind`` (histology / brightfield) of the transmitted model."""
    import tifffile

    data = shared_data / "nuclei_dsb2018_brightfield_histology" / "train"
    kinds = {item["id"]: item["kind"] for item in json.loads((data / "index.json").read_text())["items"]}
    val = json.loads((TRANSMITTED / "config.json").read_text())["training"]["val_names"]
    name = [n for n in val if kinds[n] == kind][k]
    return name, tifffile.imread(data / "images" / f"{name}.tif")


def test_candidates_are_the_models_marked_in_their_config(user_models):
    _stand_in(user_models, "marked", threshold=1.0, median=(0.6, 1.0))
    _stand_in(user_models, "unmarked", threshold=1.0, median=(0.6, 1.0), auto_entry=False)
    names = [m["name"] for m in auto.candidates("nuclei")]
    assert "nuclei" in names and "marked" in names and "unmarked" not in names
    with pytest.raises(ModelError, match="no registered model is marked as a cells candidate"):
        auto.candidates("cells")


def test_auto_is_a_reserved_model_name(user_models):
    with pytest.raises(ModelError, match="reserved"):
        new_user_model_dir("auto")


def test_a_fitting_first_candidate_decides_alone(user_models, shared_data):
    """Two candidates with the fluorescence background: the one tried first (by name) fits, so the
    other is never scored."""
    _stand_in(user_models, "dark-any", threshold=1e6, median=(0.0, 0.1))  # fits any features
    choice = auto.choose_model(_fluorescence(shared_data), device="cpu")
    assert choice.name == "dark-any" and list(choice.ratios) == ["dark-any"] and choice.ratios["dark-any"] <= 1


def test_the_only_candidate_with_the_image_background_needs_no_encoder_pass(user_models, shared_data):
    choice = auto.choose_model(_fluorescence(shared_data), device="cpu")
    assert choice.name == "nuclei" and choice.ratios == {} and "background level" in choice.message


def test_when_the_first_candidate_does_not_fit_the_lowest_ratio_wins(user_models, shared_data):
    _stand_in(user_models, "any-none", threshold=1e-3, median=(0.0, 1.0))  # any background, fits no features
    choice = auto.choose_model(_fluorescence(shared_data), device="cpu")
    assert list(choice.ratios) == ["any-none", "nuclei"]  # same background distance: tried by name ...
    assert choice.name == "nuclei" and choice.ratios["nuclei"] < choice.ratios["any-none"]  # ... the better wins
    assert "nuclei" in choice.message and "any-none" in choice.message


def test_a_candidate_whose_background_misses_is_not_chosen_for_its_features(user_models, shared_data, monkeypatch):
    """Features alone can mislead (a transmitted-light model scores fluorescence images low): a
    candidate trained on bright backgrounds loses on a dark image even with the better ratio."""
    _stand_in(user_models, "bright-any", threshold=1e6, median=(0.6, 1.0))
    _stand_in(user_models, "dark-none", threshold=1e-3, median=(0.0, 0.1))
    ratios = {1e6: 0.2, 1e-3: 1.8}  # forced: bright-any fits the features best, nuclei (1.5) better than dark-none
    monkeypatch.setattr(auto, "fit_ratio", lambda model, x, scale=1.0: ratios.get(model.shift_reference["threshold"], 1.5))
    choice = auto.choose_model(_fluorescence(shared_data), device="cpu")
    assert {"nuclei", "dark-none", "bright-any"} <= set(choice.ratios) and choice.name == "nuclei"
    assert "fits no candidate's training images well" in choice.message


def test_segment_auto_names_the_model_and_explicit_choice_is_unchanged(user_models, shared_data):
    from ijtorch.tasks.segment import segment

    image = _fluorescence(shared_data)
    auto_result = segment(image, "YX", device="cpu")  # model="auto" is the default
    assert auto_result.model == "nuclei" and auto_result.model_choice.startswith("model=auto: nuclei")
    explicit = segment(image, "YX", model="nuclei", device="cpu")
    assert explicit.model == "nuclei" and explicit.model_choice == ""
    np.testing.assert_array_equal(auto_result.labels, explicit.labels)
    assert auto_result.shift_score == explicit.shift_score


def test_a_stack_gets_one_model_chosen_on_its_middle_plane(user_models, shared_data):
    from ijtorch.tasks.segment import segment

    plane = _fluorescence(shared_data)[:128, :128]
    stack = np.stack([np.full_like(plane, 200), plane, np.full_like(plane, 200)])  # middle plane: fluorescence
    r = segment(stack, "TYX", device="cpu")
    assert r.model == "nuclei" and r.model_choice and len(r.objects_per_plane) == 3


needs_transmitted = pytest.mark.skipif(not (TRANSMITTED / "config.json").is_file(),
                                       reason="the bundled nuclei-transmitted model is not in this checkout")


@needs_transmitted
@pytest.mark.parametrize("k", [0, 1, 2])
def test_auto_picks_the_fluorescence_model_for_fluorescence_images(shared_data, k):
    assert auto.choose_model(_fluorescence(shared_data, 40 * k), device="cpu").name == "nuclei"


@needs_transmitted
@pytest.mark.parametrize("kind,k", [("histology", 0), ("histology", 1), ("brightfield", 0)])
def test_auto_picks_the_transmitted_model_for_brightfield_and_he_images(shared_data, kind, k):
    from ijtorch.tasks.segment import choose_auto_model

    name, image = _transmitted_validation(shared_data, kind, k)
    axes = "YXS" if image.ndim == 3 else "YX"
    assert choose_auto_model(image, axes, device="cpu").name == "nuclei-transmitted", name


@needs_transmitted
def test_bundled_transmitted_model_is_an_auto_candidate_with_a_calibrated_reference():
    cfg = json.loads((TRANSMITTED / "config.json").read_text())
    assert cfg["auto"] == {"family": "nuclei"} and cfg["shift"]["threshold"] > 0
    assert (TRANSMITTED / "weights.safetensors").stat().st_size <= 20 * 2**20
    assert {"nuclei", "nuclei-transmitted"} <= {m["name"] for m in list_models() if m.get("auto")}


def test_cli_segment_names_the_chosen_model(tmp_path, shared_data):
    src = sorted((shared_data / "nuclei_dsb2018" / "more" / "images").glob("*.tif"))[0]
    out = tmp_path / "out"
    env = dict(os.environ, OMP_NUM_THREADS="1", IJTORCH_MODELS=str(tmp_path / "none"))
    run = subprocess.run([sys.executable, "-m", "ijtorch.cli", "segment", str(src), "--output", str(out)],
                         capture_output=True, text=True, timeout=180, env=env)
    assert run.returncode == 0, run.stderr
    text = run.stdout + run.stderr
    assert f"{src.name}: " in text and "(model nuclei, shift score " in text
    assert "model auto (nuclei: 1)" in text
    assert (out / f"{src.stem}.tif").is_file()


def test_command_log_and_status_name_the_chosen_model(user_models, shared_data):
    from ijtorch.commands.outputs import CommandInputs
    from ijtorch.commands.segment import SegmentParams, segment_compute
    from ijtorch.image import Image

    image = Image(_fluorescence(shared_data), "YX", title="fluo.tif")
    result, outputs = segment_compute(CommandInputs(image=image), SegmentParams())
    assert SegmentParams().model == "auto"
    assert "(nuclei chosen by model=auto" in outputs.status
    assert any(line.startswith("ijtorch Segment fluo.tif: model=auto: nuclei") for line in outputs.log)
