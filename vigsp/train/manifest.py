"""A checkpoint tag's ``COMPLETE`` file: the manifest of every file in it, and its verification.

``COMPLETE`` is written last, after every rank has written and fsynced its files, so its presence
says the tag was finished; its content says what finished looks like: each file's size and XXH3
64-bit checksum (xxhash: about 8 GB/s on one core here, see BENCHMARKS.md), the world size,
and the vigsp/DeepSpeed/torch versions that wrote it. ``verify`` re-reads the files and names
every one that is missing, cut short or changed. A ``COMPLETE`` of vigsp before manifests holds a
timestamp only: such a tag is accepted unverified.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import xxhash

__all__ = ["COMPLETE", "FileEntry", "Manifest", "checksum", "read_manifest", "verify"]

COMPLETE = "COMPLETE"
MANIFEST_VERSION = 1
_CHUNK = 8 << 20  # large reads: the checksum then runs at memory speed on cached files


def checksum(path: Path) -> str:
    """XXH3-64 of the file's bytes, as 16 hex digits."""
    digest = xxhash.xxh3_64()
    buffer = bytearray(_CHUNK)
    view = memoryview(buffer)
    with path.open("rb", buffering=0) as stream:
        while n := stream.readinto(buffer):
            digest.update(view[:n])
    return digest.hexdigest()


@dataclass(frozen=True)
class FileEntry:
    size: int
    xxh3_64: str

    @classmethod
    def of(cls, path: Path) -> FileEntry:
        return cls(path.stat().st_size, checksum(path))


@dataclass
class Manifest:
    tag: str
    world_size: int
    files: dict[str, FileEntry]  # path relative to the tag directory -> entry
    versions: dict[str, str] = field(default_factory=dict)
    written_at: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S%z"))

    @property
    def total_bytes(self) -> int:
        return sum(entry.size for entry in self.files.values())

    def to_json(self) -> str:
        body: dict[str, Any] = {"manifest_version": MANIFEST_VERSION, **asdict(self)}
        return json.dumps(body, indent=1, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        body = json.loads(text)
        if body.get("manifest_version") != MANIFEST_VERSION:
            raise ValueError(
                f"manifest version {body.get('manifest_version')!r}, expected {MANIFEST_VERSION}"
            )
        files = {name: FileEntry(**entry) for name, entry in body["files"].items()}
        return cls(
            body["tag"], body["world_size"], files, body.get("versions", {}), body.get("written_at", "")
        )


def read_manifest(tag_dir: Path) -> Manifest | None:
    """The manifest of ``tag_dir``; None for a COMPLETE written before manifests existed.
    Raises ValueError when COMPLETE is unreadable (itself damaged)."""
    text = (tag_dir / COMPLETE).read_text()
    if not text.lstrip().startswith("{"):
        return None
    try:
        return Manifest.from_json(text)
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{COMPLETE} is not a readable manifest ({err})") from None


def verify(tag_dir: Path) -> list[str]:
    """What is wrong with ``tag_dir``, one line per file (empty: intact, or unverifiable legacy)."""
    if not (tag_dir / COMPLETE).is_file():
        return [f"{COMPLETE}: missing (the save never finished)"]
    try:
        manifest = read_manifest(tag_dir)
    except (OSError, ValueError) as err:
        return [str(err)]
    if manifest is None:
        return []
    problems = []
    for name, entry in sorted(manifest.files.items()):
        path = tag_dir / name
        if not path.is_file():
            problems.append(f"{name}: missing")
            continue
        size = path.stat().st_size
        if size != entry.size:
            problems.append(
                f"{name}: {size} bytes, the manifest says {entry.size} (cut short or overwritten)"
            )
        elif checksum(path) != entry.xxh3_64:
            problems.append(f"{name}: checksum differs from the manifest's (its bytes changed)")
    return problems
