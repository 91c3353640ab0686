"""Which checkpoint tag a run resumes from, checked file by file before anything is built.

``checkpoint.resume=auto`` starts at the tag ``latest`` names and verifies it against its
manifest. A damaged tag (a file missing, cut short or changed) is moved aside to
``checkpoints/damaged/`` (never deleted: it may still be rescued by hand), a warning names each
bad file, and the next older tag is tried; ``latest`` is then pointed at the tag that loads. An
explicit ``checkpoint.resume=PATH`` is verified too but never moved: a damaged one is an error.

Rank 0 decides and tells the others, so every rank loads the same tag.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from vigsp.errors import UserError
from vigsp.train.durable import fsync_dir, write_atomic
from vigsp.train.manifest import COMPLETE, verify

log = logging.getLogger("vigsp.train")

__all__ = ["DAMAGED_DIR", "LATEST", "ResumeChoice", "choose_resume", "complete_tags", "is_tag", "read_latest"]

DAMAGED_DIR = "damaged"
LATEST = "latest"  # the file naming the newest complete tag
_TAG = re.compile(r"step_\d{8}")


def is_tag(name: str) -> bool:
    """Whether ``name`` is a tag vigsp writes (never ``latest`` gone blank, nor ``..``)."""
    return _TAG.fullmatch(name) is not None


@dataclass
class ResumeChoice:
    tag_dir: Path | None  # None: a fresh start
    damaged: dict[str, list[str]] = field(default_factory=dict)  # tag -> what is wrong with it
    moved_to: dict[str, Path] = field(default_factory=dict)

    def note(self) -> str | None:
        """One line for the MLflow run when a damaged tag was skipped."""
        if not self.damaged:
            return None
        skipped = "; ".join(f"{tag}: {', '.join(problems)}" for tag, problems in self.damaged.items())
        target = self.tag_dir.name if self.tag_dir else "nothing"
        return f"resumed from {target}, skipping damaged checkpoints ({skipped})"


def _move_aside(ckpt_dir: Path, tag: str) -> Path:
    aside = ckpt_dir / DAMAGED_DIR
    aside.mkdir(exist_ok=True)
    target, n = aside / tag, 1
    while target.exists():
        n += 1
        target = aside / f"{tag}.{n}"
    os.replace(ckpt_dir / tag, target)
    fsync_dir(ckpt_dir)
    return target


def read_latest(ckpt_dir: Path) -> str | None:
    """What ``latest`` names (None when there is no ``latest`` yet)."""
    path = ckpt_dir / LATEST
    return path.read_text().strip() if path.is_file() else None


def complete_tags(ckpt_dir: Path) -> list[str]:
    """Tags whose save finished (COMPLETE present), oldest first; not yet verified."""
    if not ckpt_dir.is_dir():
        return []
    return sorted(
        p.name for p in ckpt_dir.iterdir() if p.name.startswith("step_") and (p / COMPLETE).is_file()
    )


def _choose_latest(ckpt_dir: Path, latest: str, best_file: Path) -> ResumeChoice:
    choice = ResumeChoice(None)
    # A complete tag after `latest` was never published (its save died before `latest` moved).
    older = [t for t in complete_tags(ckpt_dir) if t < latest or not is_tag(latest)]
    candidates = [latest, *sorted(older, reverse=True)]
    for tag in candidates:
        if not is_tag(tag):
            choice.damaged[tag] = [f"`latest` holds {tag!r}, not the name of a checkpoint tag"]
            log.warning(
                "CHECKPOINT DAMAGED: %s holds %r; trying the newest complete tag", ckpt_dir / LATEST, tag
            )
            continue
        problems = verify(ckpt_dir / tag)
        if not problems:
            choice.tag_dir = ckpt_dir / tag
            break
        choice.damaged[tag] = problems
        if (ckpt_dir / tag).exists():
            choice.moved_to[tag] = _move_aside(ckpt_dir, tag)
        log.warning(
            "CHECKPOINT DAMAGED: %s cannot be resumed from:\n%s\nit is kept in %s; trying the previous one",
            ckpt_dir / tag,
            "\n".join(f"  - {p}" for p in problems),
            choice.moved_to.get(tag, "(nowhere: it is gone)"),
        )
    if choice.tag_dir is None:
        listing = "\n".join(
            f"  - {tag} (moved to {choice.moved_to.get(tag, '-')}): {'; '.join(p)}"
            for tag, p in choice.damaged.items()
        )
        raise UserError(
            f"no intact checkpoint in {ckpt_dir}:\n{listing}\n"
            "Start this run afresh with checkpoint.resume=never, or resume from a copy you trust "
            "with checkpoint.resume=PATH/TO/TAG"
        )
    if choice.damaged:
        write_atomic(ckpt_dir / LATEST, choice.tag_dir.name + "\n")
        if best_file.is_file() and any(tag in best_file.read_text() for tag in choice.damaged):
            best_file.unlink()  # it named a tag that is no longer there; the next better epoch rewrites it
    return choice


def choose_resume(ckpt_dir: Path, setting: str | Path, best_file: Path) -> ResumeChoice:
    """The tag ``checkpoint.resume=setting`` resolves to, verified (rank 0 only)."""
    if setting == "never":
        if complete_tags(ckpt_dir):
            raise UserError(
                f"{ckpt_dir.parent} already holds checkpoints and checkpoint.resume=never would "
                "overwrite them; choose another run.name, delete the directory, or use "
                "checkpoint.resume=auto"
            )
        return ResumeChoice(None)
    if setting == "auto":
        latest = read_latest(ckpt_dir)
        return ResumeChoice(None) if latest is None else _choose_latest(ckpt_dir, latest, best_file)
    path = Path(setting).resolve()
    if not path.is_dir():
        raise UserError(f"checkpoint.resume={setting}: no such checkpoint directory")
    problems = verify(path)
    if problems:
        listing = "\n".join(f"  - {p}" for p in problems)
        raise UserError(
            f"checkpoint.resume={setting} is damaged:\n{listing}\n"
            "Resume from another tag (checkpoint.resume=PATH) or start afresh (checkpoint.resume=never)"
        )
    return ResumeChoice(path)
