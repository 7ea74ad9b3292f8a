"""The model folder's config.json: compact number lists, same content, refused tampering."""

import json

import numpy as np
import pytest
import torch
from ijtorch.errors import ModelError
from ijtorch.models.folder import (
    CONFIG_NAME,
    config_text,
    load_model_dir,
    save_model_dir,
)


def test_config_text_puts_number_lists_on_one_line_and_keeps_the_content():
    rng = np.random.default_rng(0)
    cfg = {"model_type": "x", "shift": {"mean": rng.normal(size=300).tolist(), "components": rng.normal(size=(4, 50)).tolist(),
                                        "threshold": 1.5, "names": ["a b", "c"]}, "thresholds": {"prob": 0.5}}
    text = config_text(cfg)
    assert json.loads(text) == cfg
    assert len(text.splitlines()) < 30  # one line per list of numbers, not one per number
    assert '"names": [\n' in text  # lists of strings keep the indented layout


def test_saved_config_is_compact_and_loads_back(tmp_path):
    state = {"w": torch.arange(6, dtype=torch.float32)}
    cfg = {"model_type": "unit-test", "shift": {"mean": [0.25] * 500}}
    save_model_dir(tmp_path / "m", state, cfg)
    text = (tmp_path / "m" / CONFIG_NAME).read_text()
    assert len(text.splitlines()) < 20
    loaded = load_model_dir(tmp_path / "m")
    assert loaded.config["shift"]["mean"] == [0.25] * 500
    torch.testing.assert_close(loaded.state_dict["w"], state["w"], rtol=0, atol=0)


def test_weights_that_differ_from_the_config_are_refused(tmp_path):
    save_model_dir(tmp_path / "m", {"w": torch.zeros(3)}, {"model_type": "unit-test"})
    from safetensors.torch import save_file

    save_file({"w": torch.ones(3)}, str(tmp_path / "m" / "weights.safetensors"))
    with pytest.raises(ModelError, match="SHA-256|sha256|differ"):
        load_model_dir(tmp_path / "m")
