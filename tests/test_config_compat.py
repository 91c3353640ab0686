"""The checkpoint-compatibility hash and the resume check."""

from __future__ import annotations

import typing

import pytest
import yaml
from pydantic.fields import FieldInfo

from vigsp.config import check_resume_compatible, config_hash, diff_incompatible, load_config, resolved_yaml
from vigsp.errors import UserError

# Settings a run may change between restarts: they must not change the hash.
COMPATIBLE_CHANGES = [
    "run.epochs=300",
    "run.max_steps=5",
    "run.log_every=1",
    "run.eval_every=5",
    "run.seed=7",
    "run.name=other",
    "optim.lr=1e-4",
    "optim.weight_decay=0.1",
    "optim.ema_decay=0.999",
    "optim.label_smoothing=0.0",
    "schedule.warmup_epochs=2",
    "schedule.min_lr=0",
    "data.batch_size=32",
    "data.num_threads=3",
    "data.train_dir=/scratch/fmnist/train",
    "data.augmentation.hflip_prob=0",
    "data.superpixel.compactness=20",
    "deepspeed.gradient_accumulation_steps=4",
    "deepspeed.gradient_clipping=1.0",
    "checkpoint.every_n_steps=10",
    "checkpoint.resume=never",
    "tracking.experiment_name=other",
    "tracking.tracking_uri=http://127.0.0.1:5000",
    "launch.nodes=4",
    "launch.gpus_per_node=8",
    "launch.partition=long",
    "launch.time=48:00:00",
]

# Settings that reshape or re-type what a checkpoint holds: each must change the hash.
INCOMPATIBLE_CHANGES = [
    ("model.name=vig_tiny_patch", "model.name"),
    ("model.num_classes=20", "model.num_classes"),
    ("model.drop_path_rate=0.2", "model.drop_path_rate"),
    ("model.overrides.depth=4", "model.overrides.depth"),
    ("data.image_size=64", "data.image_size"),
    ("data.classes=[a,b,c,d,e,f,g,h,i,j]", "data.classes"),
    ("data.superpixel.n_segments=36", "data.superpixel.n_segments"),
    ("data.superpixel.method=grid", "data.superpixel.method"),
    ("data.max_nodes=100", "data.max_nodes"),
    ("data.max_edges=1000", "data.max_edges"),
    ("deepspeed.zero_stage=1", "deepspeed.zero_stage"),
    ("deepspeed.bf16=true", "deepspeed.bf16"),
]


def test_hash_is_stable() -> None:
    first, second = load_config("quickstart"), load_config("quickstart")
    assert config_hash(first) == config_hash(second)
    assert len(config_hash(first)) == 16
    # A config read back from a run directory's resolved YAML, as a plain dict, hashes the same.
    assert config_hash(yaml.safe_load(resolved_yaml(first))) == config_hash(first)


@pytest.mark.parametrize("override", COMPATIBLE_CHANGES)
def test_hash_ignores_settings_that_may_change_on_resume(override: str) -> None:
    base = load_config("quickstart")
    changed = load_config("quickstart", [override])
    assert changed != base  # the override really changed something
    assert config_hash(changed) == config_hash(base)
    assert diff_incompatible(base, changed) == []


@pytest.mark.parametrize(("override", "key"), INCOMPATIBLE_CHANGES)
def test_hash_changes_with_checkpoint_shaping_settings(override: str, key: str) -> None:
    base = load_config("quickstart")
    changed = load_config("quickstart", [override])
    assert config_hash(changed) != config_hash(base)
    differences = diff_incompatible(base, changed)
    assert [line.split(":")[0] for line in differences] == [key]


def test_superpixels_off_is_a_difference() -> None:
    differences = diff_incompatible(load_config("quickstart"), load_config("quickstart_patch"))
    assert 'data.superpixel.method: checkpoint has "slic", config has null' in differences
    assert 'model.name: checkpoint has "vig_sp_tiny", config has "vig_tiny_patch"' in differences


def test_diff_lists_each_differing_key_with_both_values() -> None:
    saved = load_config("quickstart")
    new = load_config("quickstart", ["model.name=vig_tiny_patch", "data.image_size=64", "run.epochs=9"])
    assert diff_incompatible(saved, new) == [
        "data.image_size: checkpoint has 28, config has 64",
        'model.name: checkpoint has "vig_sp_tiny", config has "vig_tiny_patch"',
    ]


def test_diff_accepts_a_saved_dict_from_another_schema_version() -> None:
    saved = yaml.safe_load(resolved_yaml(load_config("quickstart")))
    saved["optim"]["name"] = "sgd"  # a checkpoint written by a run with another optimizer
    del saved["data"]["max_edges"]  # ...and by a version that had no such key
    assert diff_incompatible(saved, load_config("quickstart")) == [
        "data.max_edges: checkpoint has null, config has 512",
        'optim.name: checkpoint has "sgd", config has "adamw"',
    ]


def test_resume_check_refuses_with_every_difference_and_a_way_out() -> None:
    saved = load_config("quickstart")
    check_resume_compatible(saved, load_config("quickstart", ["run.epochs=10"]), "runs/q/step_500")
    with pytest.raises(UserError) as caught:
        check_resume_compatible(
            saved,
            load_config("quickstart", ["data.image_size=64", "deepspeed.zero_stage=2"]),
            "runs/q/step_500",
        )
    message = str(caught.value)
    assert message.startswith("cannot resume from runs/q/step_500")
    assert "  - data.image_size: checkpoint has 28, config has 64" in message
    assert "  - deepspeed.zero_stage: checkpoint has 0, config has 2" in message
    assert "checkpoint.resume=never" in message


# The keys the resume check compares, as published in the README; the schema's SHAPES_CHECKPOINT
# marks derive them, so adding or dropping a mark must show up here as a deliberate change.
PUBLISHED_INCOMPATIBLE_KEYS = {
    "model",
    "data.image_size",
    "data.classes",
    "data.class_list",
    "data.superpixel.method",
    "data.superpixel.n_segments",
    "data.max_nodes",
    "data.max_edges",
    "optim.name",
    "deepspeed.zero_stage",
    "deepspeed.bf16",
}


def _field(key: str) -> FieldInfo:
    """The FieldInfo a dotted key names, stepping into sections (through ``X | None``)."""
    from vigsp.config.schema import TrainConfig

    *parents, leaf = key.split(".")
    section: type = TrainConfig
    for name in parents:
        annotation = section.model_fields[name].annotation
        section = next(t for t in (annotation, *typing.get_args(annotation)) if hasattr(t, "model_fields"))
    return section.model_fields[leaf]


def test_incompatible_keys_come_from_the_schema_marks() -> None:
    from vigsp.config import INCOMPATIBLE_KEYS
    from vigsp.config.section import shapes_checkpoint

    assert set(INCOMPATIBLE_KEYS) == PUBLISHED_INCOMPATIBLE_KEYS
    assert len(INCOMPATIBLE_KEYS) == len(set(INCOMPATIBLE_KEYS))
    for key in INCOMPATIBLE_KEYS:
        assert shapes_checkpoint(_field(key)), key
    # An unmarked field next to marked ones is not collected.
    assert not shapes_checkpoint(_field("data.superpixel.compactness"))


def test_hash_of_a_saved_config_is_what_earlier_versions_computed() -> None:
    # Checkpoints written before the marks existed stored this hash (computed at d3f1d90, with a
    # hand-kept key list); the derived keys must reproduce it, or their resumes would be refused.
    saved = {
        "run": {"name": "pinned", "epochs": 3},
        "model": {"name": "vig_sp_tiny", "num_classes": 10, "overrides": {"depth": 4}},
        "data": {
            "image_size": 28,
            "classes": None,
            "class_list": None,
            "max_nodes": 98,
            "max_edges": None,
            "superpixel": {"method": "slic", "n_segments": 49, "compactness": 10.0},
        },
        "optim": {"name": "adamw", "lr": 0.001},
        "deepspeed": {"zero_stage": 1, "bf16": False},
    }
    assert config_hash(saved) == "519aaa82c9bf2f24"
    saved["data"]["superpixel"]["compactness"] = 20.0  # not checkpoint-shaping
    assert config_hash(saved) == "519aaa82c9bf2f24"
    saved["data"]["superpixel"]["n_segments"] = 36
    assert config_hash(saved) != "519aaa82c9bf2f24"
