"""One training process group per run directory: the lease in ``run_dir/LEASE``.

Rank 0 holds it while the run trains. ``LEASE`` says who: host, pid (and the pid's start time,
so a recycled pid is not taken for the holder), the Slurm job id and restart count, when it
started, and a heartbeat that a background thread renews every ``timeout / 10`` seconds. The
file is created with ``O_CREAT | O_EXCL``, which is atomic on local disks and on NFS, Lustre and
GPFS alike, so two processes on two nodes cannot both win; ``flock`` is not trusted across nodes.

A second process finds the lease and refuses, naming the holder. It takes over instead when the
holder is gone: its pid is dead (or recycled) on this same host, or its heartbeat is older than
``checkpoint.lease_timeout_s`` (another host, which may have died with its slurmd), or it is an
earlier incarnation of this very Slurm job (a requeue: Slurm has ended it). A takeover renames
the stale file aside first, so of two racing takers exactly one wins. The holder checks at every
heartbeat and before every checkpoint that the lease is still its own.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType

from vigsp.errors import UserError
from vigsp.train.durable import fsync_dir, write_atomic

log = logging.getLogger("vigsp.train")

__all__ = ["LEASE_FILE", "LeaseHolder", "LeaseLost", "RunLease"]

LEASE_FILE = "LEASE"


class LeaseLost(UserError):
    """Another process took the run directory over while this one trained."""


def _pid_start(pid: int) -> str | None:
    """The pid's start time in clock ticks since boot (field 22 of /proc/PID/stat); None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # fields after the command name, which may hold spaces


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


@dataclass(frozen=True)
class LeaseHolder:
    lease_id: str
    host: str
    boot_id: str
    pid: int
    pid_start: str | None
    slurm_job_id: str | None
    slurm_restart: int
    started_at: float
    heartbeat_at: float

    @classmethod
    def this_process(cls) -> LeaseHolder:
        now = time.time()
        job = os.environ.get("SLURM_ARRAY_JOB_ID") and (
            f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ.get('SLURM_ARRAY_TASK_ID', '')}"
        )
        return cls(
            lease_id=uuid.uuid4().hex,
            host=socket.gethostname(),
            boot_id=_boot_id(),
            pid=os.getpid(),
            pid_start=_pid_start(os.getpid()),
            slurm_job_id=job or os.environ.get("SLURM_JOB_ID"),
            slurm_restart=int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0),
            started_at=now,
            heartbeat_at=now,
        )

    def describe(self, now: float) -> str:
        job = f", Slurm job {self.slurm_job_id} (restart {self.slurm_restart})" if self.slurm_job_id else ""
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started_at))
        beat = now - self.heartbeat_at
        return f"pid {self.pid} on {self.host}{job}, started {started}, last heartbeat {beat:.0f} s ago"

    def gone_because(self, me: LeaseHolder, timeout_s: float, now: float) -> str | None:
        """Why this holder no longer holds the run (None: it may well be alive)."""
        if (
            self.slurm_job_id
            and self.slurm_job_id == me.slurm_job_id
            and self.slurm_restart < me.slurm_restart
        ):
            return f"it is restart {self.slurm_restart} of this Slurm job, which Slurm requeued"
        if self.host == me.host and self.boot_id == me.boot_id:
            start = _pid_start(self.pid)
            if start is None:
                return f"pid {self.pid} is not running on {self.host}"
            if start != self.pid_start:
                return f"pid {self.pid} on {self.host} is another process now"
            return None
        if now - self.heartbeat_at > timeout_s:
            age = now - self.heartbeat_at
            return f"its heartbeat is {age:.0f} s old (checkpoint.lease_timeout_s={timeout_s:g})"
        return None


def _read(path: Path) -> LeaseHolder | None:
    try:
        return LeaseHolder(**json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    except (ValueError, TypeError) as err:
        raise UserError(
            f"{path} is not a vigsp lease ({err}); if no training runs on this directory, delete it"
        ) from None


class RunLease:
    """Held by rank 0 of a run from before anything is written into its directory to the end."""

    def __init__(self, run_dir: Path, timeout_s: float) -> None:
        self.path = run_dir / LEASE_FILE
        self.timeout_s = timeout_s
        self.me = LeaseHolder.this_process()
        self.took_over: str | None = None  # what was said about the holder taken over
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost: str | None = None

    # ---- acquiring -----------------------------------------------------------------------------

    def acquire(self) -> RunLease:
        try:
            return self._acquire()
        except OSError as err:
            raise UserError(
                f"cannot hold the run directory {self.path.parent}: {err.strerror or err} "
                f"({err.filename or self.path}); choose a writable run.output_dir"
            ) from None

    def _acquire(self) -> RunLease:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(5):  # each turn loses at most one race, to a process that then holds it
            if self._create():
                self._start_heartbeat()
                return self
            holder = _read(self.path)
            if holder is None:
                continue  # released in between
            now = time.time()
            reason = holder.gone_because(self.me, self.timeout_s, now)
            if reason is None:
                raise UserError(
                    f"{self.path.parent} is in use by another training: {holder.describe(now)}.\n"
                    "Two trainings on one run directory would mix their checkpoints, steps.csv and MLflow "
                    "run. Wait for it to end, stop it (scancel / kill), or train under another run.name. "
                    f"If it is dead on another host, it is taken over once its heartbeat is "
                    f"{self.timeout_s:g} s old (checkpoint.lease_timeout_s)."
                )
            if self._take_over(holder):
                self.took_over = f"{holder.describe(now)}: {reason}"  # logged once logging is set up
        raise UserError(f"could not acquire {self.path}: other processes keep taking it; try again")

    def _create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as out:
            out.write(json.dumps(asdict(self.me)) + "\n")
            out.flush()
            os.fsync(out.fileno())
        fsync_dir(self.path.parent)
        return True

    def _take_over(self, stale: LeaseHolder) -> bool:
        """Move the stale lease aside; False when another taker (or its holder) moved first."""
        aside = self.path.with_name(f".{LEASE_FILE}.stale.{self.me.lease_id}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return False
        moved = _read(aside)
        if moved is not None and moved.lease_id != stale.lease_id:
            # A new holder won the race between our read and our rename: give its lease back.
            with contextlib.suppress(FileExistsError):
                os.link(aside, self.path)
            aside.unlink(missing_ok=True)
            return False
        aside.unlink(missing_ok=True)
        return True

    # ---- holding -------------------------------------------------------------------------------

    def check(self) -> None:
        """Raise LeaseLost if another process holds the lease now (before a checkpoint)."""
        if self.lost is None:
            holder = _read(self.path)
            if holder is None or holder.lease_id != self.me.lease_id:
                self.lost = holder.describe(time.time()) if holder else "nobody (LEASE was removed)"
        if self.lost is not None:
            raise LeaseLost(
                f"{self.path.parent} was taken over by {self.lost} while this training ran; this one "
                "stops without writing more. Make sure only one training uses a run directory"
            )

    def _start_heartbeat(self) -> None:
        self._thread = threading.Thread(target=self._beat, name="vigsp-lease", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        interval = max(0.5, self.timeout_s / 10)
        while not self._stop.wait(interval):
            try:
                self.check()
                self.me = LeaseHolder(**{**asdict(self.me), "heartbeat_at": time.time()})
                write_atomic(self.path, json.dumps(asdict(self.me)) + "\n", durable_dir=False)
            except LeaseLost:
                log.error("lost the lease on %s to %s", self.path.parent, self.lost)
                return
            except OSError as err:  # a full or flaky file system: keep training, try again later
                log.warning("could not renew the lease %s: %s", self.path, err)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        holder = _read(self.path) if self.path.exists() else None
        if holder is not None and holder.lease_id == self.me.lease_id:
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> RunLease:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()
