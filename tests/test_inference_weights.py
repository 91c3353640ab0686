"""Weights that load without running code (vigsp/inference/weights.py) and the evaluation's
arithmetic (vigsp/inference/evaluation.py) against simple references."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import confusion_matrix

from vigsp.errors import UserError
from vigsp.inference.evaluation import Predictions, summarize
from vigsp.inference.weights import UnsafeWeightsError, load_weights, save_weights


class WritesAFile:
    """Unpickling this creates ``path``: what a hostile weights file could do instead."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (os.mknod, (str(self.path),))


def hostile_weights(path: Path, marker: Path, key: str = "model") -> Path:
    """A torch file whose state dict looks normal but carries an object that runs code on load."""
    torch.save({key: {"weight": torch.zeros(2), "payload": WritesAFile(marker)}}, path)
    return path


def test_safetensors_round_trip_is_exact_and_fp32(tmp_path):
    state = {"w": torch.randn(3, 4, dtype=torch.bfloat16), "n": torch.tensor(7), "b": torch.randn(5)}
    save_weights(tmp_path / "w.safetensors", state, {"kind": "final"})
    loaded = load_weights(tmp_path / "w.safetensors")
    assert loaded["w"].dtype == torch.float32 and torch.equal(loaded["w"], state["w"].float())
    assert loaded["n"].dtype == torch.int64 and int(loaded["n"]) == 7
    assert torch.equal(loaded["b"], state["b"])
    assert not list(tmp_path.glob(".*tmp"))


def test_a_torch_file_of_tensors_loads_by_key(tmp_path):
    state = {"weight": torch.randn(4)}
    torch.save({"module": state, "step": 3}, tmp_path / "m.pt")
    assert torch.equal(load_weights(tmp_path / "m.pt", key="module")["weight"], state["weight"])
    with pytest.raises(UserError, match="has no 'model' entry"):
        load_weights(tmp_path / "m.pt", key="model")


def test_a_pickled_object_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "ran"
    path = hostile_weights(tmp_path / "final_model.pt", marker)
    with pytest.raises(UnsafeWeightsError) as refused:
        load_weights(path, key="model")
    assert str(path) in str(refused.value) and "pickled" in str(refused.value)
    assert not marker.exists()
    torch.load(path, weights_only=False)  # the control: a plain torch.load would have run it
    assert marker.exists()


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_a_damaged_weights_file_gets_a_clear_error(tmp_path, damage):
    for name in ("w.safetensors", "w.pt"):
        path = tmp_path / name
        if name.endswith(".pt"):
            torch.save({"w": torch.randn(100)}, path)
        else:
            save_weights(path, {"w": torch.randn(100)})
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"\x00garbage" * 20)
        with pytest.raises(UserError, match="cannot read the weights file") as err:
            load_weights(path)
        assert str(path) in str(err.value) and not isinstance(err.value, UnsafeWeightsError)
    with pytest.raises(UserError, match="does not exist"):
        load_weights(tmp_path / "missing.safetensors")


def _random_predictions(rng: np.random.Generator, n: int, classes: int, k: int) -> Predictions:
    logits = rng.normal(size=(n, classes))
    topk = np.argsort(-logits, axis=1)[:, :k]
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return Predictions(
        index=rng.permutation(n),
        labels=rng.integers(0, classes, n),
        topk=topk,
        topk_prob=np.take_along_axis(probs, topk, 1).astype(np.float32),
        loss_sum=float(rng.random() * n),
    )


def test_summary_matches_simple_references():
    rng = np.random.default_rng(0)
    classes = tuple(f"c{i}" for i in range(7))
    p = _random_predictions(rng, 500, len(classes), 5)
    summary = summarize(p, classes)
    expected = confusion_matrix(p.labels, p.topk[:, 0], labels=range(len(classes)))
    assert (summary.confusion == expected).all()
    assert summary.top1 == 100.0 * np.mean(p.topk[:, 0] == p.labels)
    assert summary.top5 == 100.0 * np.mean(
        [label in row for label, row in zip(p.labels, p.topk, strict=True)]
    )
    for c, row in enumerate(summary.per_class()):
        others = expected[c].copy()
        others[c] = -1
        assert row.images == expected[c].sum() and row.correct == expected[c, c]
        assert row.confused_count == others.max() and row.confused_with == classes[int(others.argmax())]


def test_gathered_parts_are_put_back_in_index_order():
    rng = np.random.default_rng(1)
    whole = _random_predictions(rng, 40, 4, 3)
    fields = (whole.index, whole.labels, whole.topk, whole.topk_prob)
    parts = [Predictions(*(field[i::3] for field in fields), 1.0) for i in range(3)]
    joined = Predictions.concatenate(parts)
    order = np.argsort(whole.index)
    assert (joined.index == np.arange(40)).all() and (joined.topk == whole.topk[order]).all()
    assert joined.loss_sum == 3.0


def test_the_hostile_fixture_really_is_hostile(tmp_path):
    with pytest.raises(pickle.UnpicklingError):
        torch.load(hostile_weights(tmp_path / "x.pt", tmp_path / "m"), weights_only=True)
