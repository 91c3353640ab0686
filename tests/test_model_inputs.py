"""The model owns its input contract: the data settings follow from it, and a disagreement is
refused before training, naming both keys."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from vigsp.config import load_config
from vigsp.config.model_inputs import model_arguments
from vigsp.errors import UserError
from vigsp.models import create_model, get_spec


def test_registry_entries_declare_what_they_read() -> None:
    sp = get_spec("vig_sp_tiny").inputs()
    assert sp.names == ("images", "label_maps", "node_features", "node_mask")
    assert (sp.superpixel_method, sp.n_segments, sp.max_nodes) == ("slic", 49, 64)
    assert sp.pipeline_outputs == ("label_maps", "node_features", "node_counts")
    assert get_spec("vig_sp_grid_ti").inputs({"n_segments": 100}).n_segments == 100
    patch = get_spec("vig_tiny_patch").inputs()
    assert patch.names == ("images",) and not patch.needs_superpixels and patch.pipeline_outputs == ()


def test_data_settings_are_derived_from_the_model_when_left_out() -> None:
    cfg = load_config("quickstart", ["data.superpixel=null", "data.max_nodes=null"])
    assert cfg.data.superpixel is not None
    assert (cfg.data.superpixel.method, cfg.data.superpixel.n_segments, cfg.data.max_nodes) == (
        "slic",
        49,
        64,
    )
    grid = load_config("quickstart_grid", ["data.superpixel=null", "data.max_nodes=null"])
    assert (grid.data.superpixel.method, grid.data.max_nodes) == ("grid", 49)


def test_the_model_is_built_for_the_data_it_is_fed() -> None:
    cfg = load_config("tiny_test")
    kwargs = model_arguments(cfg)
    assert (kwargs["n_segments"], kwargs["max_nodes"]) == (16, 32)
    model = create_model(cfg.model.name, **kwargs)
    assert (model.n_segments, model.max_nodes) == (16, 32)
    assert "n_segments" not in model_arguments(load_config("quickstart_patch"))


@pytest.mark.parametrize(
    ("override", "data_key", "model_key"),
    [
        ("model.overrides.max_nodes=128", "data.max_nodes", "model.overrides.max_nodes"),
        ("model.overrides.n_segments=30", "data.superpixel.n_segments", "model.overrides.n_segments"),
    ],
)
def test_a_disagreeing_model_is_refused_naming_both_keys(
    override: str, data_key: str, model_key: str
) -> None:
    with pytest.raises(UserError) as caught:
        load_config("quickstart", [override])
    message = str(caught.value)
    assert data_key in message and model_key in message
    # Agreeing values are fine, and so is a model pin where the data leaves the value open.
    load_config("quickstart", ["model.overrides.max_nodes=64", "model.overrides.n_segments=49"])
    assert (
        load_config("quickstart", ["data.max_nodes=null", "model.overrides.max_nodes=80"]).data.max_nodes
        == 80
    )


def _train_refused(tmp_path: Path, override: str) -> str:
    """``vigsp train quickstart OVERRIDE`` in a real process: exit 2, a clear message, nothing written."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "vigsp.cli",
            "train",
            "quickstart",
            "run.output_dir=runs",
            "run.name=x",
            override,
        ],
        cwd=tmp_path,
        env={**os.environ, "DS_ACCELERATOR": "cpu"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "runs").exists()  # refused before anything was written
    return result.stderr


def test_vigsp_train_refuses_a_disagreeing_model_before_training(tmp_path: Path) -> None:
    stderr = _train_refused(tmp_path, "model.overrides.max_nodes=128")
    assert "data.max_nodes" in stderr and "model.overrides.max_nodes" in stderr


def test_vigsp_train_refuses_another_superpixel_method(tmp_path: Path) -> None:
    stderr = _train_refused(tmp_path, "data.superpixel.method=grid")
    assert "data.superpixel.method" in stderr and "model.name" in stderr
