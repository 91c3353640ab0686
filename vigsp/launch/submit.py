"""``vigsp submit``: queue a training run on Slurm through submitit, or a sweep as one job array.

Resources come from the config's ``launch:`` section; the flags override it (they become
``launch.*`` overrides, so the run directory's config records what the job really asked for).
Everything is checked before anything is queued: the config (unknown keys, missing files) with
the same loader ``vigsp train`` uses, and the request against what ``sinfo`` says the cluster has.
``--local`` runs the same job through submitit's local executor on this machine, and waits.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vigsp.errors import UserError
from vigsp.launch.config import LaunchConfig
from vigsp.launch.follow import LogFollower
from vigsp.launch.slurm_env import JobRequest, format_minutes, read_partitions, validate_request
from vigsp.launch.sweep import Entry, expand_sweep, is_override, plan_runs

if TYPE_CHECKING:
    import submitit

    from vigsp.launch.job import TrainFunction
    from vigsp.train.outcome import TrainOutcome

__all__ = ["Submission", "add_arguments", "make_executor", "memory_gb", "run", "submit"]

# flag -> (launch key, type, metavar, help). Each becomes the override launch.KEY=VALUE.
_LAUNCH_FLAGS: dict[str, tuple[str, type, str, str]] = {
    "--nodes": ("nodes", int, "N", "number of nodes"),
    "--min-nodes": ("min_nodes", int, "N", "after a node failure, resume on as few as this many nodes"),
    "--gpus-per-node": ("gpus_per_node", int, "G", "GPUs per node; one rank per GPU unless --tasks-per-node"),
    "--tasks-per-node": ("tasks_per_node", int, "T", "ranks per node (CPU runs: e.g. 2)"),
    "--partition": ("partition", str, "P", "Slurm partition (default: the cluster's default)"),
    "--time": ("time", str, "TIME", "limit per job: minutes or [D-]H:M:S; requeued when it is reached"),
    "--account": ("account", str, "A", "Slurm account"),
    "--qos": ("qos", str, "Q", "Slurm QOS"),
    "--constraint": ("constraint", str, "C", "node features, e.g. 'h100|a100'"),
    "--mem": ("mem", str, "M", "memory per node, e.g. 200G"),
    "--cpus-per-task": ("cpus_per_task", int, "C", "CPUs per rank (DALI threads)"),
    "--signal-delay-s": ("signal_delay_s", int, "S", "USR2 this many seconds before the time limit"),
    "--max-num-timeout": ("max_num_timeout", int, "N", "requeue at most this many times on timeout"),
}
_SIGNAL_DELAY_FLOOR_S = 30  # less leaves no time to finish a step and save


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "args",
        nargs="*",
        metavar="CONFIG [KEY=VALUE ...]",
        help="a config (path or name under configs/) and dotted overrides; with --sweep, CONFIG is the "
        "base of its override sets, and overrides without CONFIG apply to every entry",
    )
    resources = parser.add_argument_group("resources (default: the config's launch: section)")
    for flag, (key, kind, metavar, text) in _LAUNCH_FLAGS.items():
        resources.add_argument(flag, dest=f"launch_{key}", type=kind, metavar=metavar, help=text)
    resources.add_argument(
        "--extra-sbatch",
        action="append",
        default=[],
        metavar="KEY[=VALUE]",
        help="another sbatch option, e.g. reservation=foo or exclusive (repeat for several)",
    )
    parser.add_argument(
        "--sweep",
        nargs="+",
        metavar="ITEM",
        help="submit a job array, one run per ITEM: a config, a quoted override set for CONFIG "
        "('optim.lr=1e-3 run.seed=1'), or a sweep file (YAML with a sweep: list)",
    )
    parser.add_argument(
        "--local", action="store_true", help="run here through submitit's local executor (and wait)"
    )
    parser.add_argument("--wait", action="store_true", help="wait for the jobs and report how they ended")
    parser.add_argument(
        "--follow",
        action="store_true",
        help="while waiting, show the first job's rank-0 log (progress bar) here; the default when a "
        "terminal waits on one job",
    )
    parser.add_argument(
        "--tracking-uri",
        metavar="URI",
        help="MLflow tracking URI (default: tracking.tracking_uri, else $MLFLOW_TRACKING_URI)",
    )
    parser.add_argument(
        "--folder",
        type=Path,
        help="submitit's folder for job files and logs; %%j is the job id "
        "(default: RUN.OUTPUT_DIR/submitit/%%j)",
    )


def _split_positionals(tokens: Sequence[str]) -> tuple[str | None, list[str]]:
    """(CONFIG, overrides): the config is the first token without '='."""
    configs = [t for t in tokens if not is_override(t)]
    if len(configs) > 1:
        raise UserError(
            f"more than one config given ({', '.join(configs)}); overrides are KEY=VALUE. "
            "To run several configs, use --sweep A.yaml B.yaml"
        )
    if configs and tokens[0] != configs[0]:
        raise UserError(f"put the config {configs[0]!r} before the overrides")
    return (configs[0] if configs else None), [t for t in tokens if is_override(t)]


def _launch_overrides(args: argparse.Namespace) -> dict[str, str]:
    """The launch.* overrides the flags stand for, each with the flag as typed (for messages)."""
    overrides = {}
    for flag, (key, *_) in _LAUNCH_FLAGS.items():
        value = getattr(args, f"launch_{key}")
        if value is not None:
            # JSON is YAML: a partition named "1" or "true" stays a string.
            overrides[f"launch.{key}={json.dumps(value)}"] = f"{flag} {value}"
    # "One task per GPU": --gpus-per-node alone sets the ranks too, whatever the config had.
    if args.launch_gpus_per_node is not None and args.launch_tasks_per_node is None:
        overrides["launch.tasks_per_node=null"] = f"--gpus-per-node {args.launch_gpus_per_node}"
    for item in args.extra_sbatch:
        key, sep, value = item.partition("=")
        key = key.strip().lstrip("-")
        if not key:
            raise UserError(f"--extra-sbatch {item!r}: write KEY=VALUE (e.g. reservation=foo) or KEY")
        typed: Any = value if sep else True  # a bare KEY is a flag: #SBATCH --KEY
        overrides[f"launch.extra_sbatch.{key}={json.dumps(typed)}"] = f"--extra-sbatch {item}"
    return overrides


def memory_gb(mem: str | None) -> float | None:
    """GiB in a Slurm memory size ("200G", "64000M", "1T"; no unit = MiB)."""
    if mem is None:
        return None
    units = {"K": 1 / 1024**2, "M": 1 / 1024, "G": 1.0, "T": 1024.0}
    unit = mem[-1].upper()
    if unit in units:
        return float(mem[:-1]) * units[unit]
    return float(mem) / 1024


def job_request(launch: LaunchConfig) -> JobRequest:
    return JobRequest(
        partition=launch.partition,
        nodes=launch.nodes,
        tasks_per_node=launch.ranks_per_node,
        cpus_per_task=launch.cpus_per_task or 1,
        gpus_per_node=launch.gpus_per_node,
        memory_gb=memory_gb(launch.mem),
        time_min=launch.timeout_min,
    )


def _check_local(launch: LaunchConfig) -> None:
    if launch.nodes > 1:
        raise UserError(f"--local runs on this machine only: {launch.nodes} nodes requested; use --nodes 1")
    if launch.gpus_per_node > 0:
        import torch

        have = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if launch.gpus_per_node > have:
            raise UserError(
                f"--local: {launch.gpus_per_node} GPUs per node requested, but this machine has {have}; "
                "use --gpus-per-node 0 (CPU ranks: --tasks-per-node N)"
            )


def make_executor(launch: LaunchConfig, folder: Path, *, local: bool, name: str) -> submitit.Executor:
    """A submitit executor for these resources: Slurm (through AutoExecutor) or this machine."""
    import submitit

    if local:
        # LocalExecutor itself, not AutoExecutor: only it takes signal_delay_s for local jobs.
        local_ex = submitit.LocalExecutor(folder=folder, max_num_timeout=launch.max_num_timeout)
        local_ex.update_parameters(
            timeout_min=launch.timeout_min,
            tasks_per_node=launch.ranks_per_node,
            gpus_per_node=launch.gpus_per_node,
            signal_delay_s=launch.signal_delay_s,
        )
        return local_ex
    # max_num_timeout is a constructor argument: set through update_parameters it is ignored.
    ex = submitit.AutoExecutor(folder=folder, cluster="slurm", slurm_max_num_timeout=launch.max_num_timeout)
    parameters: dict[str, Any] = {
        "name": name,
        "timeout_min": launch.timeout_min,
        "nodes": launch.nodes,
        "tasks_per_node": launch.ranks_per_node,
        "cpus_per_task": launch.cpus_per_task,
        "mem_gb": memory_gb(launch.mem),
        "slurm_signal_delay_s": launch.signal_delay_s,
        "slurm_partition": launch.partition,
        "slurm_account": launch.account,
        "slurm_qos": launch.qos,
        "slurm_constraint": launch.constraint,
        # A rank that fails ends the job instead of leaving its peers hung in a collective.
        "slurm_srun_args": ["--kill-on-bad-exit=1"],
    }
    if launch.min_nodes is not None:
        # A job shrunk after a node failure (vigsp/launch/node_failure.py) keeps the task count of
        # its submission in its environment, and srun would ask for that many: derive it anew.
        tasks = f"$((SLURM_JOB_NUM_NODES * {launch.ranks_per_node}))"
        parameters["slurm_setup"] = [f"export SLURM_NTASKS={tasks} SLURM_NPROCS={tasks}"]
    if launch.gpus_per_node:  # --gpus-per-node=0 is an error on clusters without GPU gres
        parameters["gpus_per_node"] = launch.gpus_per_node
    if launch.extra_sbatch:
        parameters["slurm_additional_parameters"] = dict(launch.extra_sbatch)
    ex.update_parameters(**{k: v for k, v in parameters.items() if v is not None})
    return ex


@dataclass
class Submission:
    job: submitit.Job[TrainOutcome]
    entry: Entry
    run_dir: Path
    tracking_uri: str
    experiment: str
    where: str  # "partition debug", "this machine"


def _tracking_uri(flag: str | None, entry: Entry) -> str:
    """Where the job logs, resolved here as the engine would in the job (which runs in this
    directory, with this environment): --tracking-uri, tracking.tracking_uri, $MLFLOW_TRACKING_URI,
    else the embedded store ./mlruns.db. Passed to the job explicitly, so every rank, restart and
    array element agrees."""
    from vigsp.tracking.store import resolve_tracking_uri

    return resolve_tracking_uri(flag or entry.cfg.tracking.tracking_uri)


def _check_tracking(uris: set[str]) -> None:
    from vigsp.tracking.store import check_access

    for uri in sorted(uris):
        check_access(uri)


def submit(
    entries: list[Entry],
    *,
    local: bool = False,
    folder: Path | None = None,
    tracking_uri: str | None = None,
    array: bool | None = None,
    train: TrainFunction | None = None,
) -> list[Submission]:
    """Check the request and queue one job per entry (a job array when ``array``, default: several
    entries). ``entries`` are loaded and validated already (``plan_runs``)."""
    from vigsp.launch.job import TrainJob

    array = len(entries) > 1 if array is None else array
    first = entries[0].cfg
    launch = first.launch
    if launch.signal_delay_s < _SIGNAL_DELAY_FLOOR_S:
        print(
            f"vigsp submit: warning: launch.signal_delay_s={launch.signal_delay_s} leaves little time "
            "to finish a step and save a checkpoint before Slurm kills the job",
            file=sys.stderr,
        )
    others = {e.source for e in entries[1:] if e.cfg.launch != launch}
    if others:
        print(
            f"vigsp submit: note: the array runs all entries with the resources of the first "
            f"({entries[0].source}); these differ in launch: {', '.join(sorted(others))}",
            file=sys.stderr,
        )
    if local:
        _check_local(launch)
        where = "this machine"
    else:
        where = f"partition {validate_request(job_request(launch), read_partitions()).name}"

    _check_tracking({_tracking_uri(tracking_uri, entry) for entry in entries})  # before any file
    folder = folder or Path(first.run.output_dir) / "submitit"
    folder = folder.resolve()
    if "%j" not in str(folder):
        folder = folder / "%j"  # one directory per job: its pickles and logs
    name = f"vigsp-{first.run.name}" if not array else f"vigsp-sweep-{first.tracking.experiment_name}"
    executor = make_executor(launch, folder, local=local, name=name)

    workdir = os.getcwd()
    planned = []
    for entry in entries:
        uri = _tracking_uri(tracking_uri, entry)
        job = TrainJob(
            str(entry.config),
            entry.overrides,
            tracking_uri=uri,
            workdir=workdir,
            train=train,
            node_failure_wait_s=entry.cfg.launch.node_failure_wait_s,
            min_nodes=entry.cfg.launch.min_nodes,
        )
        planned.append((entry, uri, job))
    try:
        if array:
            with executor.batch():
                jobs = [executor.submit(job) for _, _, job in planned]
        else:
            jobs = [executor.submit(planned[0][2])]
    except Exception as err:  # sbatch refused: its message is what the user needs
        text = str(err).strip()
        raise UserError(f"Slurm did not accept the job: {text.splitlines()[-1] if text else err!r}") from None
    return [
        Submission(
            job=job,
            entry=entry,
            run_dir=entry.cfg.run.directory,
            tracking_uri=uri,
            experiment=entry.cfg.tracking.experiment_name,
            where=where,
        )
        for job, (entry, uri, _) in zip(jobs, planned, strict=True)
    ]


def _task0_paths(job: submitit.Job[Any]) -> tuple[Path, Path]:
    task0 = job._sub_jobs[0] if job._sub_jobs else job  # multi-task jobs: one log pair per task
    return task0.paths.stdout, task0.paths.stderr


def describe(sub: Submission) -> str:
    launch = sub.entry.cfg.launch
    stdout, stderr = _task0_paths(sub.job)
    return "\n".join(
        [
            f"job {sub.job.job_id}: run {sub.entry.cfg.run.name} on {sub.where}, {launch.nodes} node(s) x "
            f"{launch.ranks_per_node} rank(s), {launch.gpus_per_node} GPU(s) per node, "
            f"time {format_minutes(launch.timeout_min)}"
            + (f"; down to {launch.min_nodes} node(s) after a node failure" if launch.min_nodes else ""),
            f"  run dir: {sub.run_dir}",
            f"  mlflow:  {sub.tracking_uri} (experiment {sub.experiment})",
            f"  stdout:  {stdout}",
            f"  stderr:  {stderr}",
        ]
    )


def wait(submissions: list[Submission], poll_s: float = 2.0, follow: bool = False) -> int:
    """Wait for every job; print how each ended. 0 when all finished, 1 otherwise.

    ``follow``: echo the (single) job's rank-0 log meanwhile, so a waiting user sees progress."""
    pending = list(submissions)
    failed = 0
    follower = LogFollower(Path(_task0_paths(submissions[0].job)[1])) if follow else None
    while pending:
        if follower is not None:
            follower.poll()
        for sub in [s for s in pending if s.job.done()]:
            pending.remove(sub)
            if follower is not None:
                follower.poll()
            try:
                # Rank 0's result: every rank's would also wait for tasks that a job shrunk after a
                # node failure (launch.min_nodes) no longer has. A rank that fails takes rank 0 along.
                outcome = sub.job.task(0).result()
            except Exception as err:  # the job's traceback, as submitit gathered it
                failed += 1
                print(f"job {sub.job.job_id} ({sub.entry.cfg.run.name}) failed:\n{err}", file=sys.stderr)
                continue
            print(
                f"job {sub.job.job_id} ({sub.entry.cfg.run.name}): {outcome.status} at step "
                f"{outcome.global_step}, MLflow run {outcome.mlflow_run_id} in {outcome.tracking_uri}"
            )
        if pending:
            time.sleep(poll_s)
    return 1 if failed else 0


def run(args: argparse.Namespace) -> int:
    base, common = _split_positionals(args.args)
    launch_overrides = _launch_overrides(args)
    try:
        entries, is_sweep = expand_sweep(base, [*common, *launch_overrides], args.sweep)
        if is_sweep:
            plan_runs(entries)
        else:
            entries[0].cfg  # noqa: B018 (loads and validates before anything is queued)
    except UserError as err:
        message = str(err)
        for override, flag in launch_overrides.items():  # name the flag the user typed
            message = message.replace(f"override {override!r}", flag)
        raise UserError(message) from None
    submissions = submit(
        entries, local=args.local, folder=args.folder, tracking_uri=args.tracking_uri, array=is_sweep
    )
    if is_sweep:
        print(f"job array {submissions[0].job.job_id.split('_')[0]}: {len(submissions)} runs")
    for sub in submissions:
        print(describe(sub), flush=True)
    if args.local or args.wait:
        try:
            return wait(submissions, follow=(len(submissions) == 1 and sys.stderr.isatty()) or args.follow)
        except KeyboardInterrupt:
            if args.local:
                for sub in submissions:
                    sub.job.cancel(check=False)
                print("vigsp submit: interrupted; the local jobs are cancelled", file=sys.stderr)
            else:
                print("vigsp submit: stopped waiting; the jobs go on in Slurm", file=sys.stderr)
            return 130
    return 0
