"""Checkpoint manifests, their verification, the choice of the tag to resume from, and a save on a
really full file system (a small tmpfs). The training processes that rely on them are in
tests/test_checkpoint_faults.py."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import xxhash

from tests.fixtures.disks import tmpfs
from vigsp.errors import UserError
from vigsp.train.checkpoint import BEST, COMPLETE, LATEST, CheckpointManager, CheckpointWriteError, tag_for
from vigsp.train.distributed import DistEnv
from vigsp.train.manifest import _CHUNK, FileEntry, Manifest, checksum, read_manifest, verify
from vigsp.train.resume import DAMAGED_DIR

CPU = DistEnv(0, 1, 0, torch.device("cpu"))


class _Engine:
    """Writes what DeepSpeed's save_checkpoint writes, the way it does: through its checkpoint
    engine (DeepSpeed's real TorchCheckpointEngine), which CheckpointManager wraps."""

    def __init__(self, payload_bytes: int = 4096) -> None:
        from deepspeed.runtime.checkpoint_engine import TorchCheckpointEngine

        self.checkpoint_engine = TorchCheckpointEngine()
        self.payload = torch.arange(payload_bytes // 4, dtype=torch.float32)

    def save_checkpoint(self, save_dir: str, tag: str, client_state: dict, save_latest: bool) -> None:
        path = Path(save_dir) / tag
        self.checkpoint_engine.save(
            {"w": self.payload, **client_state}, str(path / "mp_rank_00_model_states.pt")
        )


def manager(run_dir: Path, payload_bytes: int = 4096, keep_last: int = 3) -> CheckpointManager:
    ckpt = CheckpointManager(run_dir, CPU, keep_last=keep_last, keep_best=True, meta={"config": {}})
    ckpt.register_engine(_Engine(payload_bytes))
    return ckpt


def flip_bit(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x10
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("size", [0, 1, 1000, _CHUNK - 1, _CHUNK, _CHUNK + 1, 2 * _CHUNK + 12345])
def test_checksum_equals_xxh3_of_the_whole_file(tmp_path: Path, size: int) -> None:
    # The chunked reader against the plain one-shot digest, on random bytes.
    data = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8).tobytes()
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    assert checksum(path) == xxhash.xxh3_64(data).hexdigest()
    assert FileEntry.of(path) == FileEntry(size, xxhash.xxh3_64(data).hexdigest())


def test_save_writes_a_manifest_of_every_file(tmp_path: Path) -> None:
    ckpt = manager(tmp_path)
    tag_dir = ckpt.save(10)
    manifest = read_manifest(tag_dir)
    assert manifest is not None and manifest.tag == tag_for(10) and manifest.world_size == 1
    on_disk = {p.name for p in tag_dir.iterdir()} - {COMPLETE}
    assert set(manifest.files) == on_disk == {"mp_rank_00_model_states.pt", "vigsp_state.pt", "rank_00000.pt"}
    for name, entry in manifest.files.items():
        assert entry == FileEntry.of(tag_dir / name)
    assert set(manifest.versions) == {"vigsp", "deepspeed", "torch"}
    assert verify(tag_dir) == []
    assert (ckpt.dir / LATEST).read_text().strip() == tag_for(10)


def test_verify_names_each_damaged_file(tmp_path: Path) -> None:
    tag_dir = manager(tmp_path).save(10)
    model = tag_dir / "mp_rank_00_model_states.pt"
    with model.open("r+b") as f:
        f.truncate(model.stat().st_size - 100)
    flip_bit(tag_dir / "rank_00000.pt", 40)
    (tag_dir / "vigsp_state.pt").unlink()
    problems = verify(tag_dir)
    assert len(problems) == 3
    assert any(p.startswith("mp_rank_00_model_states.pt:") and "cut short" in p for p in problems)
    assert any(p.startswith("rank_00000.pt:") and "checksum" in p for p in problems)
    assert "vigsp_state.pt: missing" in problems


def test_unreadable_and_legacy_complete(tmp_path: Path) -> None:
    tag_dir = manager(tmp_path).save(10)
    (tag_dir / COMPLETE).write_text('{"manifest_version": 1, "files": ')
    assert verify(tag_dir) and "not a readable manifest" in verify(tag_dir)[0]
    (tag_dir / COMPLETE).write_text("2026-11-30T10:00:00+0000\n")  # a tag of vigsp before manifests
    assert read_manifest(tag_dir) is None and verify(tag_dir) == []


def test_manifest_round_trips(tmp_path: Path) -> None:
    m = Manifest(
        "step_00000001", 4, {"a.pt": FileEntry(3, "00ff"), "sub/b.pt": FileEntry(0, "ef46")}, {"torch": "x"}
    )
    assert Manifest.from_json(m.to_json()) == m
    assert m.total_bytes == 3
    with pytest.raises(ValueError, match="manifest version"):
        Manifest.from_json(json.dumps({**json.loads(m.to_json()), "manifest_version": 99}))


def test_resume_skips_a_damaged_latest_and_keeps_it_aside(tmp_path: Path) -> None:
    ckpt = manager(tmp_path)
    for step in (10, 20, 30):
        ckpt.save(step)
    ckpt.mark_best(tag_for(30), 50.0, 3)
    flip_bit(ckpt.dir / tag_for(30) / "mp_rank_00_model_states.pt", 200)
    resumed = manager(tmp_path)
    assert resumed.resume_dir("auto") == ckpt.dir / tag_for(20)
    assert (ckpt.dir / LATEST).read_text().strip() == tag_for(20)
    aside = ckpt.dir / DAMAGED_DIR / tag_for(30)
    assert (aside / "mp_rank_00_model_states.pt").is_file()  # moved, not deleted
    assert not (ckpt.dir / BEST).exists()  # it named the damaged tag
    assert resumed.resume_note is not None and tag_for(30) in resumed.resume_note
    assert "mp_rank_00_model_states.pt" in resumed.resume_note and "from step_00000020" in resumed.resume_note
    assert resumed.complete_tags() == [tag_for(10), tag_for(20)]
    # Saving the damaged step again later does not collide with the copy kept aside.
    resumed.save(30)
    assert verify(ckpt.dir / tag_for(30)) == [] and aside.is_dir()


def test_a_tag_after_latest_is_not_a_candidate(tmp_path: Path) -> None:
    ckpt = manager(tmp_path)
    for step in (10, 20, 30):
        ckpt.save(step)
    (ckpt.dir / LATEST).write_text(tag_for(20) + "\n")  # the step-30 save died before `latest` moved
    assert manager(tmp_path).resume_dir("auto") == ckpt.dir / tag_for(20)


def test_no_intact_tag_is_an_error_with_the_choices(tmp_path: Path) -> None:
    ckpt = manager(tmp_path)
    for step in (10, 20):
        ckpt.save(step)
    for step in (10, 20):
        (ckpt.dir / tag_for(step) / "rank_00000.pt").unlink()
    with pytest.raises(UserError) as err:
        manager(tmp_path).resume_dir("auto")
    text = str(err.value)
    assert "no intact checkpoint" in text and "rank_00000.pt: missing" in text
    assert "checkpoint.resume=never" in text and "checkpoint.resume=PATH" in text
    assert sorted(p.name for p in (ckpt.dir / DAMAGED_DIR).iterdir()) == [tag_for(10), tag_for(20)]
    assert manager(tmp_path).resume_dir("never") is None  # nothing usable is left to overwrite


def test_an_explicit_damaged_path_is_refused_and_left_in_place(tmp_path: Path) -> None:
    tag_dir = manager(tmp_path).save(10)
    flip_bit(tag_dir / "vigsp_state.pt", 30)
    with pytest.raises(UserError, match=r"vigsp_state\.pt: checksum"):
        manager(tmp_path).resume_dir(str(tag_dir))
    assert tag_dir.is_dir()


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    with tmpfs(tmp_path / "small", "1m") as mount:
        yield mount


def test_a_full_disk_fails_the_save_cleanly_and_keeps_latest(small_tmpfs: Path) -> None:
    ckpt = manager(small_tmpfs, payload_bytes=300_000, keep_last=5)
    ckpt.save(10)  # ~300 kB per tag on a 1 MiB file system: the fourth does not fit
    ckpt.save(20)
    ckpt.save(30)
    with pytest.raises(CheckpointWriteError) as err:
        ckpt.save(40)
    text = str(err.value)
    assert "no space left" in text and str(ckpt.dir) in text and "checkpoint.keep_last=5" in text
    assert f"`latest` still names {tag_for(30)}, which is intact" in text
    assert not (ckpt.dir / tag_for(40)).exists()  # the partial tag gave its space back
    assert (ckpt.dir / LATEST).read_text().strip() == tag_for(30)
    assert verify(ckpt.dir / tag_for(30)) == []
    assert manager(small_tmpfs).resume_dir("auto") == ckpt.dir / tag_for(30)


def test_a_blank_latest_falls_back_to_the_newest_complete_tag_and_moves_nothing(tmp_path: Path) -> None:
    ckpt = manager(tmp_path)
    for step in (10, 20):
        ckpt.save(step)
    (ckpt.dir / LATEST).write_text("\n")
    resumed = manager(tmp_path)
    assert resumed.resume_dir("auto") == ckpt.dir / tag_for(20)
    assert resumed.complete_tags() == [tag_for(10), tag_for(20)]  # nothing moved
    assert (ckpt.dir / LATEST).read_text().strip() == tag_for(20)


def test_latest_without_complete_is_damage_kept_aside_not_an_interrupted_save(tmp_path: Path) -> None:
    ckpt = manager(tmp_path)
    for step in (10, 20):
        ckpt.save(step)
    (ckpt.dir / tag_for(20) / COMPLETE).unlink()  # `latest` is only written after COMPLETE
    resumed = manager(tmp_path)
    resumed.remove_incomplete()
    assert (ckpt.dir / tag_for(20)).is_dir()  # not deleted as a half-written save
    assert resumed.resume_dir("auto") == ckpt.dir / tag_for(10)
    assert (ckpt.dir / DAMAGED_DIR / tag_for(20) / "rank_00000.pt").is_file()


def test_a_tag_that_does_not_load_names_the_versions_that_wrote_it(tmp_path: Path) -> None:
    ckpt = manager(tmp_path)
    tag_dir = ckpt.save(10)
    body = json.loads((tag_dir / COMPLETE).read_text())
    body["versions"]["deepspeed"] = "0.9.0"
    (tag_dir / COMPLETE).write_text(json.dumps(body))

    def incompatible(*args: object, **kwargs: object) -> None:
        raise KeyError("optimizer_state_dict")  # what an older DeepSpeed's layout gives

    ckpt.engine.load_checkpoint = incompatible
    with pytest.raises(UserError) as err:
        ckpt.load(tag_dir)
    import deepspeed

    assert f"deepspeed 0.9.0 (this is {deepspeed.__version__})" in str(err.value)
    assert "KeyError" in str(err.value) and "new run.name" in str(err.value)
