"""The run-directory lease with real processes: refusal, takeover of a dead or stale holder, a
requeued Slurm restart, the heartbeat, a lost lease, racing takers, and a read-only disk. The
training processes that hold it are in tests/test_checkpoint_faults.py."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fixtures.disks import tmpfs
from vigsp.errors import UserError
from vigsp.train.lease import LEASE_FILE, LeaseLost, RunLease

HOLD = """
import sys, time
from pathlib import Path
from vigsp.train.lease import RunLease
lease = RunLease(Path(sys.argv[1]), 300).acquire()
print("held", flush=True)
time.sleep(600)
"""


def hold_in_subprocess(run_dir: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def write_lease(run_dir: Path, **fields: object) -> None:
    now = time.time()
    lease = {
        "lease_id": "f" * 32,
        "host": "node-elsewhere",
        "boot_id": "another-boot",
        "pid": 4242,
        "pid_start": "1",
        "slurm_job_id": None,
        "slurm_restart": 0,
        "started_at": now - 3600,
        "heartbeat_at": now,
        **fields,
    }
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / LEASE_FILE).write_text(json.dumps(lease))


def test_a_second_process_is_refused_with_the_holder_named(tmp_path: Path) -> None:
    holder = hold_in_subprocess(tmp_path)
    try:
        with pytest.raises(UserError) as err:
            RunLease(tmp_path, 300).acquire()
        text = str(err.value)
        assert f"pid {holder.pid} on {os.uname().nodename}" in text and "in use by another training" in text
        assert "run.name" in text and "checkpoint.lease_timeout_s" in text
        assert json.loads((tmp_path / LEASE_FILE).read_text())["pid"] == holder.pid  # untouched
    finally:
        holder.kill()
        holder.wait()


def test_a_killed_holder_on_this_host_is_taken_over_at_once(tmp_path: Path) -> None:
    holder = hold_in_subprocess(tmp_path)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with RunLease(tmp_path, 300).acquire() as lease:
        assert lease.took_over is not None and f"pid {holder.pid} is not running" in lease.took_over
        assert json.loads((tmp_path / LEASE_FILE).read_text())["pid"] == os.getpid()
    assert not (tmp_path / LEASE_FILE).exists()  # released


def test_a_recycled_pid_is_not_the_holder(tmp_path: Path) -> None:
    me = RunLease(tmp_path, 300).me
    write_lease(tmp_path, host=me.host, boot_id=me.boot_id, pid=os.getpid(), pid_start="0")
    with RunLease(tmp_path, 300).acquire() as lease:
        assert "is another process now" in (lease.took_over or "")


def test_another_host_is_waited_for_until_its_heartbeat_is_stale(tmp_path: Path) -> None:
    write_lease(tmp_path, heartbeat_at=time.time() - 100)
    with pytest.raises(UserError, match="node-elsewhere"):
        RunLease(tmp_path, 300).acquire()
    write_lease(tmp_path, heartbeat_at=time.time() - 400)
    with RunLease(tmp_path, 300).acquire() as lease:
        assert "heartbeat is 400 s old" in (lease.took_over or "")


def test_a_requeued_slurm_job_takes_over_its_own_lease(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID", raising=False)
    write_lease(tmp_path, slurm_job_id="77", slurm_restart=1)  # the same incarnation elsewhere: refused
    with pytest.raises(UserError):
        RunLease(tmp_path, 300).acquire()
    write_lease(tmp_path, slurm_job_id="77", slurm_restart=0)  # alive by its heartbeat, but requeued
    with RunLease(tmp_path, 300).acquire() as lease:
        assert "restart 0 of this Slurm job" in (lease.took_over or "")


def test_the_heartbeat_renews_and_a_lost_lease_is_noticed(tmp_path: Path) -> None:
    lease = RunLease(tmp_path, 2.0).acquire()  # a beat every 0.5 s
    try:
        first = json.loads((tmp_path / LEASE_FILE).read_text())["heartbeat_at"]
        time.sleep(1.3)
        assert json.loads((tmp_path / LEASE_FILE).read_text())["heartbeat_at"] > first
        lease.check()
        write_lease(tmp_path, lease_id="e" * 32)  # someone else's now
        with pytest.raises(LeaseLost, match="node-elsewhere"):
            lease.check()
    finally:
        lease.release()
    assert json.loads((tmp_path / LEASE_FILE).read_text())["lease_id"] == "e" * 32  # not ours to remove


def _race(run_dir: str, start: float, results: multiprocessing.Queue) -> None:
    time.sleep(max(0.0, start - time.time()))
    try:
        lease = RunLease(Path(run_dir), 300).acquire()
        results.put(("won", os.getpid()))
        time.sleep(2)  # hold it while the others decide
        lease.release()
    except UserError:
        results.put(("refused", os.getpid()))


def test_of_racing_takers_of_a_stale_lease_exactly_one_wins(tmp_path: Path) -> None:
    write_lease(tmp_path, heartbeat_at=time.time() - 10_000)
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    start = time.time() + 3  # all spawned and imported by then
    procs = [ctx.Process(target=_race, args=(str(tmp_path), start, results)) for _ in range(4)]
    for proc in procs:
        proc.start()
    outcomes = [results.get(timeout=60) for _ in procs]
    for proc in procs:
        proc.join(30)
    assert sorted(kind for kind, _ in outcomes) == ["refused", "refused", "refused", "won"], outcomes


def test_a_read_only_run_directory_is_a_clear_error(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "ro", "1m", read_only=True) as mount, pytest.raises(UserError) as err:
        RunLease(mount / "runs" / "r", 300).acquire()
    assert "Read-only file system" in str(err.value) and "run.output_dir" in str(err.value)
