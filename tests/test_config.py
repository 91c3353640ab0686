"""Config loading: every shipped config validates, overrides are typed and merged, errors help."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from vigsp.config import TrainConfig, find_config, list_configs, load_config, resolved_yaml
from vigsp.errors import UserError
from vigsp.launch.config import slurm_time_to_minutes

REPO_CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SHIPPED = list_configs(REPO_CONFIGS)


def _error(config: str | Path, overrides: list[str] | None = None) -> str:
    with pytest.raises(UserError) as caught:
        load_config(config, overrides or [])
    message = str(caught.value)
    # Never a pydantic dump: no pydantic names, URLs or Python types in what the user reads.
    for leak in ("pydantic", "errors.pydantic.dev", "Traceback", "type=", "input_value"):
        assert leak not in message, message
    return message


def _write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# --- the shipped configs ---------------------------------------------------------------------------


def test_the_expected_configs_are_shipped() -> None:
    expected = {
        "quickstart.yaml",
        "quickstart_patch.yaml",
        "quickstart_grid.yaml",
        "tiny_test.yaml",
        "imagenet100/vig_ti.yaml",
        "imagenet100/vig_b.yaml",
        "imagenet100/vig_sp196.yaml",
        "imagenet100/vig_sp100.yaml",
        "imagenet100/vig_sp_grid.yaml",
        "imagenet1k/vig_sp196.yaml",
    }
    assert expected <= set(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_every_config_validates_and_round_trips(name: str, tmp_path: Path) -> None:
    cfg = load_config(REPO_CONFIGS / name)
    assert isinstance(cfg, TrainConfig)
    # The resolved YAML written into a run directory loads back to the very same config.
    saved = _write(tmp_path, "resolved.yaml", resolved_yaml(cfg))
    assert load_config(saved) == cfg


@pytest.mark.parametrize("name", SHIPPED)
def test_every_config_names_a_registered_model(name: str) -> None:
    models = pytest.importorskip("vigsp.models")
    if not hasattr(models, "list_models"):
        pytest.skip("vigsp.models has no list_models() yet")
    assert load_config(REPO_CONFIGS / name).model.name in models.list_models()


def test_paper_configs_follow_the_vig_recipe() -> None:
    for name in [n for n in SHIPPED if n.startswith(("imagenet100/", "imagenet1k/"))]:
        cfg = load_config(REPO_CONFIGS / name)
        assert (cfg.optim.lr, cfg.optim.base_batch_size, cfg.optim.weight_decay) == (2e-3, 1024, 0.05), name
        assert (cfg.run.epochs, cfg.schedule.warmup_epochs, cfg.optim.label_smoothing) == (300, 20, 0.1), name
        assert cfg.data.augmentation.randaugment is not None, name
        assert cfg.launch.world_size * cfg.data.batch_size * cfg.deepspeed.gradient_accumulation_steps == 1024


def test_base_chain_and_default_run_name() -> None:
    cfg = load_config("imagenet100/vig_sp100")  # vig_sp100 <- vig_sp196 <- vig_ti
    assert cfg.run.name == "imagenet100-vig_sp100"  # from the path, not inherited from a base
    assert cfg.data.superpixel is not None
    assert (cfg.data.superpixel.method, cfg.data.superpixel.n_segments) == ("slic", 100)  # its own
    assert cfg.model.name == "vig_sp100_ti"  # overrides vig_sp196's
    assert (cfg.data.image_size, cfg.optim.ema_decay) == (224, 0.99996)  # from vig_ti
    # A base in another directory, named relative to the including file.
    assert load_config("imagenet1k/vig_sp196").model.num_classes == 1000


def test_patch_variant_drops_the_superpixel_section() -> None:
    assert load_config("quickstart_patch").data.superpixel is None
    assert load_config("quickstart").data.superpixel is not None


# --- overrides -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "read", "expected"),
    [
        ("optim.lr=1e-3", lambda c: c.optim.lr, 1e-3),
        ("run.epochs=7", lambda c: c.run.epochs, 7),
        ("deepspeed.bf16=true", lambda c: c.deepspeed.bf16, True),
        ("optim.betas=[0.8,0.95]", lambda c: c.optim.betas, (0.8, 0.95)),
        ("optim.ema_decay=null", lambda c: c.optim.ema_decay, None),
        ("deepspeed.gradient_clipping=5", lambda c: c.deepspeed.gradient_clipping, 5.0),
        ("checkpoint.resume=never", lambda c: c.checkpoint.resume, "never"),
        ("checkpoint.resume=runs/x/step_100", lambda c: c.checkpoint.resume, Path("runs/x/step_100")),
        # Free-form mappings receive the YAML type itself, so 1e-3 must already be a float there.
        ("model.overrides.scale=1e-3", lambda c: c.model.overrides, {"scale": 1e-3}),
        ("model.overrides={depth: 4, act: gelu}", lambda c: c.model.overrides, {"depth": 4, "act": "gelu"}),
        # YAML 1.1 would read these as the integer 5400 and the boolean true.
        ("launch.time=1:30:00", lambda c: (c.launch.time, c.launch.timeout_min), ("1:30:00", 90)),
        ("tracking.experiment_name=yes", lambda c: c.tracking.experiment_name, "yes"),
        ("data.classes=[a,b,c,d,e,f,g,h,i,j]", lambda c: c.data.classes, list("abcdefghij")),
    ],
)
def test_override_values_are_typed_like_yaml(override: str, read, expected) -> None:
    value = read(load_config("quickstart", [override]))
    assert value == expected
    assert type(value) is type(expected)


def test_overrides_beat_the_file_and_later_overrides_win() -> None:
    cfg = load_config("quickstart", ["data.batch_size=32", "data.batch_size=16", "run.seed=3"])
    assert (cfg.data.batch_size, cfg.run.seed, cfg.optim.lr) == (16, 3, 2e-3)


def test_mapping_override_merges_into_the_section() -> None:
    cfg = load_config("quickstart_grid", ["data.superpixel={n_segments: 36}"])
    assert cfg.data.superpixel is not None
    assert (cfg.data.superpixel.method, cfg.data.superpixel.n_segments) == ("grid", 36)


def test_override_inside_a_null_section_creates_it_with_defaults() -> None:
    cfg = load_config("quickstart_patch", ["data.superpixel.n_segments=20"])
    assert cfg.data.superpixel is not None
    assert (cfg.data.superpixel.method, cfg.data.superpixel.n_segments) == ("slic", 20)


def test_yaml_files_use_yaml_12_scalars(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "scalars.yaml",
        "base: quickstart\noptim:\n  lr: 3e-4\nlaunch:\n  time: 2:00:00\ntracking:\n  experiment_name: no\n",
    )
    cfg = load_config(path)
    assert (cfg.optim.lr, cfg.launch.timeout_min, cfg.tracking.experiment_name) == (3e-4, 120, "no")
    assert cfg.run.name == "scalars"  # outside configs/: the file's stem


# --- errors ----------------------------------------------------------------------------------------


def test_unknown_key_in_yaml_names_the_file_and_the_nearest_key(tmp_path: Path) -> None:
    path = _write(tmp_path, "typo.yaml", "base: quickstart\noptim:\n  lrr: 1.0e-3\n")
    message = _error(path)
    assert "optim.lrr: unknown key" in message
    assert "did you mean 'optim.lr'" in message
    assert str(path) in message


@pytest.mark.parametrize(
    ("override", "unknown", "suggestion"),
    [
        ("data.batchsize=3", "data.batchsize", "data.batch_size"),
        ("optim.wieght_decay=0", "optim.wieght_decay", "optim.weight_decay"),
        ("data.lr=1", "data.lr", "optim.lr"),  # right name, wrong section
        ("optimizer.lr=1", "optimizer", "optim"),
        ("launch.gpus=4", "launch.gpus", "launch.gpus_per_node"),  # a shortened name
    ],
)
def test_unknown_override_key_suggests_the_nearest(override: str, unknown: str, suggestion: str) -> None:
    message = _error("quickstart", [override])
    assert f"{unknown}: unknown key" in message
    assert f"did you mean {suggestion!r}" in message
    assert f"override {override!r}" in message


def test_unknown_key_without_a_near_match_lists_the_valid_ones() -> None:
    message = _error("quickstart", ["model.zzz=1"])
    assert "model.zzz: unknown key" in message
    assert "valid keys in model: name, num_classes, drop_path_rate, overrides" in message


@pytest.mark.parametrize(
    ("override", "expected_line"),
    [
        ("optim.lr=abc", "optim.lr: expected a number > 0, got 'abc' (a string)"),
        ("optim.lr=-1", "optim.lr: expected a number > 0, got -1 (an integer)"),
        ("run.epochs=1.5", "run.epochs: expected an integer >= 1, got 1.5 (a number)"),
        ("deepspeed.zero_stage=3", "deepspeed.zero_stage: expected one of 0, 1, 2, got 3 (an integer)"),
        ("optim.betas=[0.9,2]", "optim.betas[1]: expected a number >= 0 and < 1, got 2 (an integer)"),
        ("checkpoint.resume=12", "checkpoint.resume: expected one of 'auto', 'never' or a path, got 12"),
        ("model.name=null", "model.name: expected a string, got null"),
        ("optim.ema_decay=2", "optim.ema_decay: expected a number > 0 and < 1, or null, got 2"),
        ("launch.time=1:xx", "launch.time: '1:xx' is not a Slurm time limit"),
        ("launch.mem=12Q", "launch.mem: '12Q' is not a Slurm memory size"),
        ("run.name=a/b", "run.name: run name 'a/b' names a directory"),
        ("data.augmentation.scale=[0.9,0.1]", "data.augmentation.scale: needs 0 < min <= max <= 1"),
    ],
)
def test_wrong_value_names_the_key_the_value_and_the_expected_type(override: str, expected_line: str) -> None:
    message = _error("quickstart", [override])
    assert f"  - {expected_line}" in message
    assert f"[from override {override!r}]" in message


def test_all_problems_are_listed_at_once() -> None:
    message = _error("quickstart", ["optim.lr=abc", "data.batchsize=3", "run.epochs=0"])
    assert "quickstart.yaml (3 problems):\n" in message
    for key in ("optim.lr:", "data.batchsize:", "run.epochs:"):
        assert key in message


def test_missing_required_keys_are_named(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "partial.yaml",
        "run: {epochs: 1}\nmodel: {num_classes: 10}\n"
        "data: {train_dir: a, val_dir: b, image_size: 32, batch_size: 4}\n",
    )
    message = _error(path)
    assert "model.name: required but missing (expected a string; registered model name" in message
    assert "optim: required but missing" in message


def test_cross_section_problems_name_every_key_involved() -> None:
    message = _error(
        "quickstart",
        ["schedule.warmup_epochs=5", "deepspeed.micro_batch_per_rank=8", "data.classes=[a,b]"],
    )
    assert "schedule.warmup_epochs (5.0) must be smaller than run.epochs (4)" in message
    assert "deepspeed.micro_batch_per_rank (8) differs from data.batch_size (64)" in message
    assert "data.classes lists 2 classes but model.num_classes is 10" in message


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["optim.lr"], "override 'optim.lr' has no '=': write KEY=VALUE with no spaces around '='"),
        (["optim.lr", "=", "1e-3"], "override '=' has no key before '='"),
        (["optim.lr="], "override 'optim.lr=' has no value after '='"),
        (["optim.lr=[1,2"], "override 'optim.lr=[1,2': the value is not valid YAML"),
        (["optim..lr=1"], "'optim..lr' is not a dotted key"),
        (["--lr=1"], "'--lr=1'"),
        (["optim.lr.x=1"], "cannot set optim.lr.x: optim.lr is a value (0.002), not a section"),
    ],
)
def test_malformed_overrides_are_explained(overrides: list[str], expected: str) -> None:
    assert expected in _error("quickstart", overrides)


def test_spaces_around_equals_report_every_piece() -> None:
    message = _error("quickstart", ["optim.lr", "=", "1e-3"])
    assert "'optim.lr' has no '='" in message
    assert "'1e-3' has no '='" in message


def test_missing_config_names_the_path_and_lists_the_configs() -> None:
    message = _error("quickstrt")
    assert "config file not found: 'quickstrt'" in message
    assert "Did you mean 'quickstart.yaml'?" in message
    assert f"Configs in {REPO_CONFIGS}" in message
    for name in SHIPPED:
        assert name in message


def test_config_directory_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write(tmp_path, "lab/small.yaml", "base: quickstart\nrun: {epochs: 1}\nschedule: {warmup_epochs: 0}\n")
    monkeypatch.setenv("VIGSP_CONFIG_DIR", str(tmp_path))
    assert find_config("lab/small") == tmp_path / "lab/small.yaml"
    cfg = load_config("lab/small")
    assert (cfg.run.name, cfg.run.epochs, cfg.model.name) == ("lab-small", 1, "vig_sp_tiny")
    assert "lab/small.yaml" in _error("nothing-here")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("run: {epochs: 1}\nrun: {epochs: 2}\n", "found duplicate key 'run' (first defined on line 1)"),
        ("run: [1\n", "is not valid YAML: line 2, column 1"),
        ("- a\n- b\n", "must hold a mapping of sections"),
        ("defaults: [quickstart]\n", "'defaults:' is not supported; write 'base: OTHER.yaml'"),
        ("base: not_a_config\n", "base file 'not_a_config' not found"),
        ("base: {a: 1}\n", "base must be a config file name or a list of them"),
    ],
)
def test_bad_files_are_explained(tmp_path: Path, text: str, expected: str) -> None:
    path = _write(tmp_path, "bad.yaml", text)
    message = _error(path)
    assert expected in message
    assert str(path) in message


def test_base_cycle_is_reported(tmp_path: Path) -> None:
    _write(tmp_path, "one.yaml", "base: two.yaml\n")
    _write(tmp_path, "two.yaml", "base: one.yaml\n")
    assert "include each other in a cycle: " in _error(tmp_path / "one.yaml")


@pytest.mark.parametrize(
    ("value", "minutes"),
    [
        (45, 45),
        ("90", 90),
        ("10:30", 11),
        ("01:30:00", 90),
        ("2-00", 2880),
        ("1-12:00", 2160),
        ("1-00:00:01", 1441),
    ],
)
def test_slurm_time_formats(value: int | str, minutes: int) -> None:
    assert slurm_time_to_minutes(value) == minutes


def test_resolved_yaml_records_every_default_and_the_hash() -> None:
    cfg = load_config("quickstart", ["optim.lr=1e-3"])
    text = resolved_yaml(cfg)
    assert text.startswith("# Resolved vigsp config")
    assert "# config_hash: " in text
    tree = yaml.safe_load(text)
    assert tree["optim"]["lr"] == 1e-3
    assert tree["checkpoint"]["keep_best"] is True  # a default, written out
    assert tree == cfg.model_dump(mode="json")
