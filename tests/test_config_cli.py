"""`vigsp config show|list|keys` through its own argument parser."""

from __future__ import annotations

import argparse
import json

import pytest
import yaml

from vigsp.config import cli, load_config, to_deepspeed_config
from vigsp.config.messages import schema_keys
from vigsp.errors import UserError


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    parser = argparse.ArgumentParser(prog="vigsp config")
    cli.add_arguments(parser)
    assert cli.run(parser.parse_args(argv)) == 0
    return capsys.readouterr().out


def test_show_prints_the_resolved_config(capsys: pytest.CaptureFixture[str]) -> None:
    out = _run(["show", "imagenet100/vig_sp100", "optim.lr=1e-3", "launch.nodes=2"], capsys)
    cfg = load_config("imagenet100/vig_sp100", ["optim.lr=1e-3", "launch.nodes=2"])
    assert yaml.safe_load(out) == cfg.model_dump(mode="json")
    # 2 nodes x 4 GPUs x 128 x 2 accumulation = 2048 images, so lr 1e-3 at 1024 scales to 2e-3.
    assert "# with 8 rank(s): global batch 2048, peak lr 0.002" in out


def test_show_deepspeed_prints_the_dict_for_a_world_size(capsys: pytest.CaptureFixture[str]) -> None:
    out = _run(["show", "quickstart", "--deepspeed", "--world-size", "6"], capsys)
    assert json.loads(out) == to_deepspeed_config(load_config("quickstart"), 6)


def test_show_reports_user_errors() -> None:
    parser = argparse.ArgumentParser(prog="vigsp config")
    cli.add_arguments(parser)
    with pytest.raises(UserError, match=r"did you mean 'optim\.lr'"):
        cli.run(parser.parse_args(["show", "quickstart", "optim.lrr=1"]))
    with pytest.raises(UserError, match="--world-size must be at least 1"):
        cli.run(parser.parse_args(["show", "quickstart", "--world-size", "0"]))


def test_list_names_the_configs(capsys: pytest.CaptureFixture[str]) -> None:
    out = _run(["list"], capsys)
    for name in ("quickstart", "tiny_test", "imagenet100/vig_sp196", "imagenet1k/vig_sp196"):
        assert f"  {name}\n" in out


def test_keys_documents_every_key(capsys: pytest.CaptureFixture[str]) -> None:
    out = _run(["keys"], capsys)
    for key in schema_keys():
        assert f"{key}:" in out, key
    assert "  optim.lr: a number > 0; required - peak learning rate" in out
    assert "  deepspeed.zero_stage: one of 0, 1, 2; default 0" in out


def test_through_the_vigsp_command(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from vigsp import cli as vigsp_cli

    monkeypatch.setitem(vigsp_cli.COMMANDS, "config", ("vigsp.config.cli", "show and check run configs"))
    assert vigsp_cli.main(["config", "show", "quickstart", "optim.lr=5e-4"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["optim"]["lr"] == 5e-4
    assert vigsp_cli.main(["config", "show", "quickstart", "optim.lrr=1", "data.batch_size=x"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vigsp config: error: invalid config ")
    assert "  - optim.lrr: unknown key [from override 'optim.lrr=1']; did you mean 'optim.lr'?" in err
    assert "  - data.batch_size: expected an integer >= 1, got 'x' (a string)" in err
    assert "Traceback" not in err


def test_min_nodes_above_nodes_is_refused_with_both_keys_named() -> None:
    with pytest.raises(UserError, match=r"launch.min_nodes=3 is more than launch.nodes=2"):
        load_config("quickstart", ["launch.nodes=2", "launch.min_nodes=3"])
    assert load_config("quickstart", ["launch.nodes=2", "launch.min_nodes=1"]).launch.min_nodes == 1
