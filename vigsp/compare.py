"""``vigsp compare``: rank the MLflow runs of an experiment, export them, plot their validation curves.

Reads the embedded store in the working directory (``sqlite:///<cwd>/mlruns.db``) unless
``--tracking-uri`` or ``MLFLOW_TRACKING_URI`` names another store or a tracking server.
"""

from __future__ import annotations

import argparse
import csv
import math
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vigsp.errors import UserError
from vigsp.tracking.names import (
    DEFAULT_EXPERIMENT,
    EPOCH,
    EPOCH_METRICS,
    TAG_MODEL_NAME,
    TAG_NUM_PARAMS,
    TRAIN_EPOCH_IMG_PER_S,
    TRAIN_IMG_PER_S,
    VAL_LOSS,
    VAL_TOP1,
    VAL_TOP5,
    WALL_TIME_S,
)

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--experiment",
        action="append",
        help=f"experiment name (repeat for several; default: {DEFAULT_EXPERIMENT})",
    )
    parser.add_argument(
        "--filter",
        default="",
        help='MLflow search filter, e.g. "params.model.name = \'vig_sp_ti\'" or "metrics.`val/top1` > 50"',
    )
    parser.add_argument(
        "--tracking-uri",
        help="tracking server or store (default: $MLFLOW_TRACKING_URI, else sqlite:///mlruns.db here)",
    )
    parser.add_argument(
        "--metric", default=VAL_TOP1, help=f"rank by and plot this metric (default: {VAL_TOP1})"
    )
    parser.add_argument("--csv", type=Path, metavar="OUT", help="also write the table to this CSV file")
    parser.add_argument("--png", type=Path, metavar="OUT", help="plot validation curves side by side here")
    parser.add_argument("--max-runs", type=int, default=200, help="at most this many runs (default: 200)")


@dataclass
class Row:
    run_name: str
    run_id: str
    experiment: str
    model: str
    num_params: float | None
    top1: float | None  # best val/top1
    top5: float | None  # val/top5 at the epoch of the best top-1
    epochs: float | None
    img_per_s: float | None
    wall_time_s: float | None
    status: str
    rank_value: float | None  # best value of --metric


def lower_is_better(metric: str) -> bool:
    name = metric.rsplit("/", 1)[-1]
    return name.endswith("loss") or "error" in name or name.endswith("time")


def run(args: argparse.Namespace) -> int:
    from vigsp.tracking.store import (
        INTERACTIVE_HTTP_ENV,
        apply_http_defaults,
        open_client,
        resolve_tracking_uri,
        sqlite_path,
    )

    uri = resolve_tracking_uri(args.tracking_uri)
    db = sqlite_path(uri)
    if db is not None and not db.exists():
        raise UserError(
            f"no MLflow store at {db}: run from the directory you trained in, "
            "or pass --tracking-uri (or set MLFLOW_TRACKING_URI)"
        )
    if args.max_runs < 1:
        raise UserError("--max-runs must be at least 1")
    apply_http_defaults(INTERACTIVE_HTTP_ENV)
    client = open_client(uri)
    names = args.experiment or [DEFAULT_EXPERIMENT]
    experiments = _experiments(client, uri, names)
    runs = _search(client, uri, list(experiments), args.filter, args.max_runs)
    histories = {run.info.run_id: _histories(client, run.info.run_id, args.metric) for run in runs}
    rows = [
        _row(run, experiments[run.info.experiment_id], histories[run.info.run_id], args.metric)
        for run in runs
    ]
    rows = rank(rows, lower_is_better(args.metric))
    _print_table(rows, args.metric, ", ".join(names), uri)
    if args.csv:
        write_csv(rows, args.csv, args.metric)
        print(f"wrote {args.csv}")
    if args.png:
        plot_curves(rows, histories, args.metric, args.png)
        print(f"wrote {args.png}")
    return 0


def rank(rows: list[Row], lower_better: bool) -> list[Row]:
    """Best first; runs without the metric last, in their search order."""
    scored = [r for r in rows if r.rank_value is not None]
    unscored = [r for r in rows if r.rank_value is None]
    scored.sort(key=lambda r: r.rank_value if lower_better else -r.rank_value)  # type: ignore[operator]
    return scored + unscored


def _experiments(client: MlflowClient, uri: str, names: list[str]) -> dict[str, str]:
    """experiment id -> name; a clear error for a missing one, listing those that exist."""
    found: dict[str, str] = {}
    for name in names:
        exp = _call(uri, lambda name=name: client.get_experiment_by_name(name))
        if exp is None or exp.lifecycle_stage == "deleted":
            existing = _call(uri, lambda: client.search_experiments(max_results=50))
            listing = ", ".join(sorted(repr(e.name) for e in existing)) or "none"
            raise UserError(f"no experiment named {name!r} at {uri}; experiments there: {listing}")
        found[exp.experiment_id] = name
    return found


def _search(client: MlflowClient, uri: str, exp_ids: list[str], filter_string: str, limit: int) -> list[Run]:
    from mlflow.exceptions import MlflowException

    try:
        return list(client.search_runs(exp_ids, filter_string=filter_string, max_results=limit))
    except MlflowException as err:
        if err.get_http_status_code() < 500:
            raise UserError(f"bad --filter {filter_string!r}: {err.message}") from err
        raise _unreachable(uri, err) from err


def _call(uri: str, fn: Any) -> Any:
    from mlflow.exceptions import MlflowException

    try:
        return fn()
    except MlflowException as err:
        raise _unreachable(uri, err) from err


def _unreachable(uri: str, err: Exception) -> UserError:
    text = str(err)
    cause = re.search(r"\[Errno -?\d+\] [^'\")]+", text)
    if cause:
        reason = cause.group(0)
    elif "timeout" in text.lower() or "timed out" in text.lower():
        reason = "timed out"
    else:
        reason = text.splitlines()[0][:200]
    return UserError(
        f"cannot reach the MLflow tracking server at {uri} ({reason}); is it running? "
        "Point --tracking-uri or MLFLOW_TRACKING_URI at a live server"
    )


def _histories(client: MlflowClient, run_id: str, metric: str) -> dict[str, list[tuple[int, float]]]:
    keys = dict.fromkeys([metric, VAL_TOP1, VAL_TOP5, VAL_LOSS])
    out = {}
    for key in keys:
        points = sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
        out[key] = points
    return out


def _best(points: list[tuple[int, float]], lower_better: bool) -> tuple[int, float] | None:
    finite = [p for p in points if math.isfinite(p[1])]
    if not finite:
        return None
    return min(finite, key=lambda p: p[1]) if lower_better else max(finite, key=lambda p: p[1])


def _row(run: Run, experiment: str, hist: dict[str, list[tuple[int, float]]], metric: str) -> Row:
    data, info = run.data, run.info
    best_top1 = _best(hist[VAL_TOP1], lower_better=False)
    top5_at = dict(hist[VAL_TOP5])
    top5 = top5_at.get(best_top1[0]) if best_top1 else None
    best_metric = _best(hist[metric], lower_is_better(metric))
    epochs = data.metrics.get(EPOCH)
    if epochs is None and hist[VAL_TOP1]:
        epochs = float(hist[VAL_TOP1][-1][0])
    wall = data.metrics.get(WALL_TIME_S)
    if wall is None and info.start_time:
        end_ms = info.end_time if info.end_time and info.status != "RUNNING" else time.time() * 1000
        wall = (end_ms - info.start_time) / 1000
    return Row(
        run_name=info.run_name or info.run_id[:8],
        run_id=info.run_id,
        experiment=experiment,
        model=data.params.get(TAG_MODEL_NAME) or data.tags.get(TAG_MODEL_NAME) or "?",
        num_params=_number(data.tags.get(TAG_NUM_PARAMS) or data.params.get(TAG_NUM_PARAMS)),
        top1=best_top1[1] if best_top1 else None,
        top5=top5,
        epochs=epochs,
        img_per_s=data.metrics.get(TRAIN_EPOCH_IMG_PER_S, data.metrics.get(TRAIN_IMG_PER_S)),
        wall_time_s=wall,
        status=info.status,
        rank_value=best_metric[1] if best_metric else None,
    )


def _number(text: str | None) -> float | None:
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None


def _fmt(value: float | None, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def _fmt_params(n: float | None) -> str:
    if n is None:
        return "-"
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f}{unit}"
    return f"{n:.0f}"


def _fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def _print_table(rows: list[Row], metric: str, experiments: str, uri: str) -> None:
    from rich.console import Console
    from rich.table import Table

    extra = metric not in (VAL_TOP1, VAL_TOP5)
    order = "lowest" if lower_is_better(metric) else "best"
    table = Table(title=f"{experiments}: {len(rows)} runs, ranked by {order} {metric}", caption=uri)
    for name, justify in [
        ("#", "right"),
        ("run", "left"),
        ("model", "left"),
        ("params", "right"),
        ("top-1 %", "right"),
        ("top-5 %", "right"),
        *([(f"{order} {metric}", "right")] if extra else []),
        ("epochs", "right"),
        ("img/s", "right"),
        ("wall time", "right"),
        ("status", "left"),
    ]:
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for i, r in enumerate(rows, 1):
        table.add_row(
            str(i),
            r.run_name,
            r.model,
            _fmt_params(r.num_params),
            _fmt(r.top1),
            _fmt(r.top5),
            *([_fmt(r.rank_value, ".4g")] if extra else []),
            _fmt(r.epochs, ".0f"),
            _fmt(r.img_per_s, ".0f"),
            _fmt_duration(r.wall_time_s),
            r.status,
        )
    Console(width=160).print(table)


def write_csv(rows: list[Row], path: Path, metric: str) -> None:
    """Raw numbers (no units), best run first; empty cells for missing values."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fields = [f"best {metric}" if f == "rank_value" else f for f in Row.__dataclass_fields__]
    with path.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["rank", *fields])
        for i, r in enumerate(rows, 1):
            writer.writerow([i, *("" if v is None else v for v in asdict(r).values())])


def plot_curves(
    rows: list[Row], histories: dict[str, dict[str, list[tuple[int, float]]]], metric: str, path: Path
) -> None:
    """One panel per validation metric, one line per run, x = epoch."""
    import matplotlib

    matplotlib.use("Agg")  # no display on compute nodes
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    keys = list(dict.fromkeys([metric, VAL_TOP5, VAL_LOSS]))
    keys = [k for k in keys if any(histories[r.run_id][k] for r in rows)] or [metric]
    fig, axes = plt.subplots(1, len(keys), figsize=(5.5 * len(keys), 4.2), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        for r in rows:
            points = histories[r.run_id][key]
            if points:
                steps, values = zip(*points, strict=True)
                ax.plot(steps, values, marker="o", markersize=3, label=r.run_name)
        ax.set_title(key)
        ax.set_xlabel("epoch" if key in EPOCH_METRICS else "step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    if any(ax.lines for ax in axes[0]):
        axes[0][0].legend(fontsize="small")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
