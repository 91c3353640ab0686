"""The trained model as a registered MLflow pyfunc model, against a real ``mlflow server`` with
MLflow's basic-auth app: a tiny 2-rank training logs with the right credentials and registers
its model; the model loads by ``models:/NAME/1`` in a fresh process without DALI and without the
installed vigsp, and predicts what ``vigsp predict`` predicts; ``mlflow models serve`` answers
HTTP; a wrong password fails before training; the password is recorded nowhere."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.datasets import fashion_mnist  # noqa: F401 (fixture)
from tests.fixtures.mlflow_server import MlflowServer, free_port
from tests.fixtures.tiny_training import (
    TOTAL_STEPS,
    data_fixture,  # noqa: F401 (fixture)
    finish,
    train,
)
from tests.fixtures.trained_run import TRAINED_SIZE
from tests.fixtures.training import SmallData
from tests.test_eval import vigsp_eval
from tests.test_inference_weights import hostile_weights

pytestmark = [pytest.mark.mlflow, pytest.mark.slow, pytest.mark.distributed, pytest.mark.dali]

ADMIN = ("admin", "Pa55-w0rd-only-in-env")
MODEL_NAME = "vigsp-tiny"
CREDENTIALS = {"MLFLOW_TRACKING_USERNAME": ADMIN[0], "MLFLOW_TRACKING_PASSWORD": ADMIN[1]}


@pytest.fixture(scope="module", name="auth_server")
def auth_server_fixture(tmp_path_factory) -> Iterator[MlflowServer]:
    server = MlflowServer(tmp_path_factory.mktemp("auth_server"), admin=ADMIN)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _client_env(server: MlflowServer, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    return {**env, "MLFLOW_TRACKING_URI": server.uri, **CREDENTIALS, **extra}


@pytest.fixture(scope="module", name="registered")
def registered_fixture(auth_server: MlflowServer, data: SmallData, tmp_path_factory) -> Path:
    """A finished tiny run that logged to the basic-auth server and registered its model."""
    cwd = tmp_path_factory.mktemp("registered")
    env = {"MLFLOW_TRACKING_URI": auth_server.uri, **CREDENTIALS}
    finish(train(cwd, data, *TRAINED_SIZE, f"tracking.register_model={MODEL_NAME}", env=env))
    return cwd


@pytest.fixture(scope="module", autouse=True)
def _credentials_in_this_process() -> Iterator[None]:
    """MLflow clients read the login from the environment at each request; restored afterwards."""
    saved = {k: os.environ.get(k) for k in CREDENTIALS}
    os.environ.update(CREDENTIALS)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _client(server: MlflowServer):
    from mlflow import MlflowClient

    return MlflowClient(server.uri)


def _requirement_closure(name: str, seen: set[str] | None = None) -> set[str]:
    """``name`` and every distribution it requires, transitively (as installed here)."""
    import re
    from importlib import metadata

    seen = set() if seen is None else seen
    key = re.sub(r"[-_.]+", "-", name).lower()
    if key in seen:
        return seen
    seen.add(key)
    try:
        requires = metadata.requires(name) or []
    except metadata.PackageNotFoundError:
        return seen
    for requirement in requires:
        if "extra ==" not in requirement:
            _requirement_closure(re.split(r"[ ;<>=!~\[(]", requirement, maxsplit=1)[0], seen)
    return seen


def _val_images(data: SmallData, count: int = 6) -> list[Path]:
    lines = [line.split()[0] for line in data.val_list.read_text().splitlines() if line.strip()]
    return [data.root / "val" / name for name in lines[:count]]


def _predict_json(cwd: Path, model: str, images: list[Path], env: dict[str, str]) -> dict[str, list[float]]:
    """``vigsp predict --json`` with every class: file -> probabilities in class order."""
    done = subprocess.run(
        [sys.executable, "-m", "vigsp.cli", "predict", model, *map(str, images), "--json", "--topk", "99"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    classes = json.loads((cwd / "runs" / "r" / "model" / "classes.json").read_text())
    out = {}
    for p in json.loads(done.stdout)["predictions"]:
        by_class = {t["class"]: t["probability"] for t in p["top"]}
        out[p["file"]] = [by_class[c] for c in classes]
    return out


# A fresh interpreter that cannot import the installed vigsp (its editable finder and source tree
# are hidden) nor DALI nor DeepSpeed: whatever runs the model must come from the model's own code/.
_FRESH_LOAD = textwrap.dedent(
    """
    import json, os, sys
    sys.modules["nvidia.dali"] = None
    sys.modules["deepspeed"] = None
    sys.meta_path[:] = [f for f in sys.meta_path if "vigsp" not in repr(f)]
    sys.path[:] = [p for p in sys.path if not os.path.isfile(os.path.join(p or ".", "vigsp", "__init__.py"))]
    import mlflow.pyfunc, numpy as np, pandas as pd
    from PIL import Image
    before = set(sys.modules)
    model = mlflow.pyfunc.load_model(sys.argv[1])
    files = sys.argv[2:]
    images = [open(f, "rb").read() for f in files]
    arrays = [np.array(Image.open(f).convert("RGB")) for f in files]
    out = model.predict(pd.DataFrame({"image": images + arrays + [b"not an image"]}))
    import vigsp
    print(json.dumps({
        "vigsp": vigsp.__file__,
        "classes": model.metadata.metadata["classes"],
        "rows": out.to_dict(orient="records"),
        "imported": sorted({m.split(".")[0] for m in set(sys.modules) - before}),
    }))
    """
)


def _fresh_load(uri: str, files: list[Path], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    script = cwd / "fresh_load.py"
    script.write_text(_FRESH_LOAD)
    return subprocess.run(
        [sys.executable, str(script), uri, *map(str, files)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_training_with_credentials_logs_registers_and_records_no_password(registered, auth_server):
    from vigsp.train.artifacts import MLFLOW_MODEL_DIR

    run_dir = registered / "runs" / "r"
    run_id = json.loads((run_dir / "mlflow_run.json").read_text())["run_id"]
    client = _client(auth_server)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.metrics["val/top1"] >= 0
    version = client.get_model_version(MODEL_NAME, "1")
    assert version.run_id == run_id and version.status == "READY"
    assert float(version.tags["val_top1"]) == run.data.metrics["val/top1"]
    assert version.tags["step"] == str(TOTAL_STEPS)
    assert {a.path for a in client.list_artifacts(run_id, "model")} >= {"model/MLmodel", "model/artifacts"}
    assert (run_dir / MLFLOW_MODEL_DIR / "MLmodel").is_file()
    # The password: in no file of the working directory (run dir, logs, the rank logs)...
    secret = ADMIN[1].encode()
    leaks = [p for p in registered.rglob("*") if p.is_file() and secret in p.read_bytes()]
    assert not leaks, leaks
    # ...and in no param or tag of the run.
    values = [*run.data.params.values(), *run.data.tags.values(), *run.data.params, *run.data.tags]
    assert not [v for v in values if ADMIN[1] in v]


def test_registered_model_loads_fresh_without_vigsp_or_dali_and_equals_predict(
    registered, auth_server, data, tmp_path
):
    from vigsp.inference.pyfunc_model import REQUIREMENTS

    files = _val_images(data)
    env = _client_env(auth_server)
    done = _fresh_load(f"models:/{MODEL_NAME}/1", files, env, tmp_path)
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert "/code/vigsp/" in result["vigsp"], result["vigsp"]  # the model's own copy of vigsp
    expected = _predict_json(registered, "runs/r", files, env)
    rows = result["rows"]
    assert len(rows) == 2 * len(files) + 1
    for i, path in enumerate(files):
        for row in (rows[i], rows[len(files) + i]):  # encoded bytes, then the decoded uint8 array
            assert row["error"] == ""
            want = expected[str(path)]
            assert max(abs(a - b) for a, b in zip(row["probabilities"], want, strict=True)) <= 1e-5
            assert row["class"] == result["classes"][want.index(max(want))]
    assert rows[-1]["class"] is None and "row 12" in rows[-1]["error"]
    # Every distribution the model imported, beyond what MLflow itself needs, is pinned.
    import re
    from importlib.metadata import packages_distributions

    dists = packages_distributions()
    imported = {re.sub(r"[-_.]+", "-", d).lower() for m in result["imported"] for d in dists.get(m, [])}
    pinned = {r.lower() for r in REQUIREMENTS}
    optional = {"nvidia-ml-py"}  # torch imports pynvml whenever it is installed; not needed
    assert imported - _requirement_closure("mlflow") - {"vigsp"} - optional <= pinned, imported


def test_served_model_answers_http_with_the_same_classes(registered, auth_server, data, tmp_path):
    files = _val_images(data, 4)
    expected = _predict_json(registered, "runs/r", files, _client_env(auth_server))
    port = free_port()
    env = _client_env(auth_server, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    mlflow_cli = str(Path(sys.executable).parent / "mlflow")
    log = (tmp_path / "serve.log").open("wb")
    serve = subprocess.Popen(
        [
            mlflow_cli,
            "models",
            "serve",
            "-m",
            f"models:/{MODEL_NAME}/1",
            "--env-manager",
            "local",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 180
        while True:
            assert serve.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2):
                    break
            except (urllib.error.URLError, OSError):
                assert time.monotonic() < deadline, (tmp_path / "serve.log").read_text()[-3000:]
                time.sleep(0.5)
        rows = [[base64.b64encode(p.read_bytes()).decode()] for p in files]
        rows.append([base64.b64encode(b"\x89PNG broken").decode()])
        body = json.dumps({"dataframe_split": {"columns": ["image"], "data": rows}}).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations", body, {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=120) as response:
            answer = json.loads(response.read())["predictions"]
    finally:
        os.killpg(serve.pid, 15)
        serve.wait(timeout=30)
    classes = json.loads((registered / "runs" / "r" / "model" / "classes.json").read_text())
    for path, row in zip(files, answer, strict=False):
        want = expected[str(path)]
        assert row["class"] == classes[want.index(max(want))], path
        assert abs(row["probability"] - max(want)) <= 1e-5
    assert answer[-1]["class"] is None and answer[-1]["error"].startswith("row 4")


@pytest.mark.parametrize("where", ["named_by_model_json", "as_safetensors"])
def test_the_pyfunc_refuses_weights_that_would_run_code(registered, tmp_path, where):
    from vigsp.train.artifacts import MLFLOW_MODEL_DIR

    model = tmp_path / "mlflow_model"
    shutil.copytree(registered / "runs" / "r" / MLFLOW_MODEL_DIR, model)
    exported = next(model.glob("artifacts/*/model.json")).parent
    marker = tmp_path / "code_ran"
    if where == "named_by_model_json":
        hostile_weights(exported / "evil.pt", marker, key="unused")
        info = json.loads((exported / "model.json").read_text())
        info["weights"]["final"] = "evil.pt"
        (exported / "model.json").write_text(json.dumps(info))
    else:
        hostile_weights(exported / "weights.safetensors", marker, key="unused")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    done = _fresh_load(str(model), [], env, tmp_path)
    assert done.returncode != 0
    assert not marker.exists()
    if where == "named_by_model_json":
        assert "pickled Python objects" in done.stderr and "evil.pt" in done.stderr
    else:
        assert "weights.safetensors" in done.stderr and "cannot read the weights file" in done.stderr


def test_a_wrong_password_fails_before_training(auth_server, data, tmp_path):
    wrong = {"MLFLOW_TRACKING_USERNAME": ADMIN[0], "MLFLOW_TRACKING_PASSWORD": "not-the-password"}
    env = {**_client_env(auth_server), **wrong}
    overrides = [*data.overrides(), "run.output_dir=runs", "run.name=w", "run.epochs=1"]
    # vigsp submit checks the login before it queues anything...
    submit = subprocess.run(
        [sys.executable, "-m", "vigsp.cli", "submit", "tiny_test", "--local", "--wait", *overrides],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert submit.returncode != 0
    assert "refused the login" in submit.stderr and "MLFLOW_TRACKING_PASSWORD" in submit.stderr
    assert "Traceback" not in submit.stderr and not (tmp_path / "runs" / "w" / "steps.csv").exists()
    assert not (tmp_path / "runs" / "submitit").exists()
    # ...and vigsp train itself (2 ranks) stops before the first step, both ranks.
    group = train(tmp_path, data, *TRAINED_SIZE, env={**wrong, "MLFLOW_TRACKING_URI": auth_server.uri})
    codes = group.wait()
    assert codes[0] != 0 and codes[1] != 0, codes
    out = group.output(0)
    assert "cannot open an MLflow run" in out and "were refused" in out, out[-3000:]
    assert not (tmp_path / "runs" / "r" / "steps.csv").exists()
    assert "not-the-password" not in out + group.output(1)


def test_eval_logs_and_registers_the_evaluated_model(registered, auth_server):
    done = vigsp_eval(registered, "runs/r", "--weights", "best", "--register", MODEL_NAME)
    assert f"models:/{MODEL_NAME}/2" in done.stderr
    client = _client(auth_server)
    version = client.get_model_version(MODEL_NAME, "2")
    run_id = json.loads((registered / "runs" / "r" / "mlflow_run.json").read_text())["run_id"]
    assert version.run_id == run_id and version.tags["weights"] == "best"
    assert float(version.tags["eval/val/top1"]) == client.get_run(run_id).data.metrics["eval/val/top1"]
    assert {a.path for a in client.list_artifacts(run_id, "model_best")} >= {"model_best/MLmodel"}
