"""Where runs go: the tracking URI, the artifact location, the experiment, and which errors to retry.

Without ``--tracking-uri`` or ``MLFLOW_TRACKING_URI`` the tracker uses an embedded sqlite
store, ``sqlite:///<cwd>/mlruns.db``, with artifacts in ``<cwd>/mlartifacts`` (MLflow would
otherwise put them in ``./mlruns``). Browse it with
``mlflow ui --backend-store-uri sqlite:///mlruns.db``.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from vigsp.errors import UserError
from vigsp.tracking.names import EMBEDDED_ARTIFACTS, EMBEDDED_DB

if TYPE_CHECKING:
    from mlflow import MlflowClient

# Short client-side HTTP limits: our own worker retries with backoff, so MLflow's default
# (120 s timeout, 7 retries: minutes per call) would only delay noticing a dead server.
TRACKER_HTTP_ENV = {"MLFLOW_HTTP_REQUEST_TIMEOUT": "10", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}
# Interactive commands (compare) retry once, then say the server is unreachable.
INTERACTIVE_HTTP_ENV = {
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
}


def apply_http_defaults(defaults: dict[str, str]) -> None:
    """Set MLflow's HTTP settings unless the user exported their own."""
    for key, value in defaults.items():
        os.environ.setdefault(key, value)


def http_timeout_s() -> float:
    key = "MLFLOW_HTTP_REQUEST_TIMEOUT"
    return float(os.environ.get(key, TRACKER_HTTP_ENV[key]))


# MLflow reads a server's credentials from these; vigsp passes them on and never records them.
CREDENTIAL_ENV = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")
AUTH_ERROR_CODES = ("UNAUTHENTICATED", "PERMISSION_DENIED")


def refuse_credentials_in_uri(uri: str) -> str:
    """A URI is written to the run directory, logs and MLflow tags, so it must hold no password."""
    from urllib.parse import urlsplit

    if "://" in uri and urlsplit(uri).password is not None:
        raise UserError(
            "the MLflow tracking URI holds a password (user:password@host); it would be written to "
            "logs and the run directory. Give the URI without it and export MLFLOW_TRACKING_USERNAME "
            "and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) instead"
        )
    return uri


def auth_hint(err: BaseException) -> str:
    """What to do about a refused login, for errors that are one; else empty."""
    if getattr(err, "error_code", None) not in AUTH_ERROR_CODES:
        return ""
    given = [name for name in CREDENTIAL_ENV if os.environ.get(name)]
    have = f"the credentials given ({', '.join(given)}) were refused" if given else "none were given"
    return (
        f"; the server requires a login and {have}: export MLFLOW_TRACKING_USERNAME and "
        "MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) for a user with access to the experiment"
    )


def resolve_tracking_uri(tracking_uri: str | None, cwd: Path | None = None) -> str:
    """``--tracking-uri`` first, then ``MLFLOW_TRACKING_URI``, then the embedded sqlite store."""
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return refuse_credentials_in_uri(uri)
    return f"sqlite:///{(cwd or Path.cwd()).resolve() / EMBEDDED_DB}"


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI, None for any other store."""
    prefix = "sqlite:///"  # then a relative path, or a second slash and an absolute one
    if not uri.startswith(prefix):
        return None
    return Path(uri[len(prefix) :].split("?", 1)[0])


@contextmanager
def sqlite_init_lock(uri: str) -> Iterator[None]:
    """Held while a client opens the store. MLflow creates and migrates a sqlite store's schema
    when a client first opens it, and two processes doing that at once (the jobs of a sweep on a
    fresh store) can leave it half-migrated ("table _alembic_tmp_tags already exists" for every
    later client). One opener at a time, across processes: flock on ``<db>.lock`` beside it."""
    db = sqlite_path(uri)
    if db is None:
        yield
        return
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def open_client(uri: str) -> MlflowClient:
    """An MlflowClient on ``uri``; a sqlite store is opened under :func:`sqlite_init_lock`."""
    from mlflow import MlflowClient

    with sqlite_init_lock(uri):
        return MlflowClient(uri)


def check_access(uri: str) -> None:
    """Before a job is queued: a tracking server that refuses the credentials is an error now, not
    a failed job later. A server that does not answer only warns (training logs once it is back)."""
    import logging

    if not uri.startswith(("http://", "https://")):
        return
    apply_http_defaults(INTERACTIVE_HTTP_ENV)
    try:
        open_client(uri).search_experiments(max_results=1)
    except Exception as err:
        if auth_hint(err):
            raise UserError(f"MLflow at {uri} refused the login{auth_hint(err)}") from None
        logging.getLogger("vigsp.tracking").warning(
            "MLflow at %s did not answer (%s); the job logs once it is reachable",
            uri,
            getattr(err, "message", err),
        )


def artifact_location(uri: str) -> str | None:
    """Artifacts of a sqlite store go next to the database; a server decides for itself."""
    db = sqlite_path(uri)
    if db is None:
        return None
    return (db.parent / EMBEDDED_ARTIFACTS).resolve().as_uri()


def is_transient(err: BaseException) -> bool:
    """True for errors worth retrying (server down, 5xx, rate limit, locked database)."""
    from mlflow.exceptions import MlflowException

    if isinstance(err, UserError):
        return False
    if isinstance(err, (FileNotFoundError, IsADirectoryError, PermissionError)):
        return False  # an artifact that is gone or unreadable will not come back
    if isinstance(err, MlflowException):
        status = err.get_http_status_code()
        return status >= 500 or status == 429
    return True  # connection and OS errors from requests/sqlalchemy


def get_or_create_experiment(client: MlflowClient, name: str, uri: str) -> str:
    """The id of experiment ``name``, created on first use (with our artifact location)."""
    from mlflow.exceptions import MlflowException

    exp = client.get_experiment_by_name(name)
    if exp is None:
        try:
            return client.create_experiment(name, artifact_location=artifact_location(uri))
        except MlflowException as err:
            # Another process created it between our lookup and create.
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise UserError(f"cannot create MLflow experiment {name!r} at {uri}: {err.message}") from err
    if exp.lifecycle_stage == "deleted":
        raise UserError(
            f"MLflow experiment {name!r} at {uri} is deleted: restore it with "
            f"`mlflow experiments restore --experiment-id {exp.experiment_id}` or choose another name"
        )
    return str(exp.experiment_id)
