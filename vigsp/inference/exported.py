"""The exported model: the folder a finished run writes (``RUN_DIR/model/``), which is everything
needed to rebuild and use the model, in formats that cannot run code when read::

    model.json           what this is: model name, weights files, step, validation top-1, vigsp version
    config.yaml          the run's resolved config (model, data and superpixel settings)
    classes.json         the class names in label order
    weights.safetensors  the final weights (fp32)
    ema.safetensors      the EMA weights, when the run kept an EMA
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor

from vigsp._version import __version__
from vigsp.config.schema import TrainConfig
from vigsp.errors import UserError
from vigsp.inference.weights import load_weights, save_weights

FORMAT = 1
INFO_FILE = "model.json"
CONFIG_FILE = "config.yaml"
CLASSES_FILE = "classes.json"
WEIGHT_FILES = {"final": "weights.safetensors", "ema": "ema.safetensors"}
EXPORT_DIR = "model"  # under the run directory


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_exported(
    out: Path,
    cfg: TrainConfig,
    classes: tuple[str, ...],
    weights: dict[str, Tensor] | None,
    ema: dict[str, Tensor] | None = None,
    **info: Any,
) -> Path:
    """The exported model in ``out`` (final weights, EMA weights, or both); ``info`` (step,
    val_top1, ...) goes into model.json."""
    from vigsp.config import resolved_yaml

    out.mkdir(parents=True, exist_ok=True)
    stored = {"final": weights, "ema": ema}
    files = {kind: name for kind, name in WEIGHT_FILES.items() if stored[kind] is not None}
    for kind, name in files.items():
        save_weights(out / name, stored[kind], {"kind": kind, "model": cfg.model.name})
    _write_text(out / CONFIG_FILE, resolved_yaml(cfg))
    _write_text(out / CLASSES_FILE, json.dumps(list(classes), indent=1) + "\n")
    meta = {"format": FORMAT, "model": cfg.model.name, "weights": files, "vigsp_version": __version__, **info}
    _write_text(out / INFO_FILE, json.dumps(meta, indent=2) + "\n")  # last: its presence means complete
    return out


def is_exported(path: Path) -> bool:
    return (path / INFO_FILE).is_file()


@dataclass(frozen=True)
class ExportedModel:
    root: Path
    info: dict[str, Any]
    cfg: TrainConfig
    classes: tuple[str, ...]

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(self.info["weights"])

    def weights(self, kind: str = "final") -> dict[str, Tensor]:
        if kind not in self.info["weights"]:
            raise UserError(
                f"the model in {self.root} has no {kind!r} weights (it has {', '.join(self.kinds)}); "
                f"choose --weights {' or '.join(self.kinds)}"
            )
        name = self.info["weights"][kind]
        if not isinstance(name, str) or Path(name).name != name:  # a file beside model.json, nothing else
            raise UserError(
                f"{self.root / INFO_FILE} names weights file {name!r}: expected a file name in {self.root}"
            )
        return load_weights(self.root / name)


def read_classes(path: Path) -> tuple[str, ...]:
    try:
        classes = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise UserError(f"cannot read the class list {path}: {err}") from None
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        raise UserError(f"{path} must hold a JSON list of class names")
    return tuple(classes)


def read_exported(root: Path) -> ExportedModel:
    """The exported model in ``root``, checked: a clear error names what is missing or wrong."""
    from vigsp.config.loading import load_config

    try:
        info = json.loads((root / INFO_FILE).read_text())
    except FileNotFoundError:
        raise UserError(f"{root} is not an exported vigsp model (no {INFO_FILE})") from None
    except (OSError, json.JSONDecodeError) as err:
        raise UserError(f"cannot read {root / INFO_FILE}: {err}") from None
    if info.get("format") != FORMAT:
        raise UserError(
            f"{root / INFO_FILE} has format {info.get('format')!r}; this vigsp ({__version__}) reads "
            f"format {FORMAT}: use the vigsp version that wrote it ({info.get('vigsp_version', 'unknown')})"
        )
    cfg = load_config(root / CONFIG_FILE)
    classes = read_classes(root / CLASSES_FILE)
    if len(classes) != cfg.model.num_classes:
        raise UserError(
            f"{root / CLASSES_FILE} lists {len(classes)} classes but the model has "
            f"model.num_classes={cfg.model.num_classes}"
        )
    return ExportedModel(root, info, cfg, classes)
