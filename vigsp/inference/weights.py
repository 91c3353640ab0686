"""Model weights that load without running anybody's code.

Models come from shared registries and shared file systems, and a pickle can run any code when it
is unpickled. So every weights file vigsp reads for inference is either safetensors (tensors and
string metadata, nothing executable) or a torch file read with ``torch.load(weights_only=True)``,
whose unpickler only rebuilds tensors and plain containers and refuses every other object.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor

from vigsp.errors import UserError

SAFETENSORS_SUFFIX = ".safetensors"


class UnsafeWeightsError(UserError):
    """A weights file holds pickled objects that could run code when loaded."""


def cpu_state(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A state dict as fp32 CPU tensors of their own (integer buffers keep their dtype): what is
    saved, whatever the training device and precision."""
    return {
        name: (t.detach().float() if t.is_floating_point() else t.detach()).cpu().contiguous().clone()
        for name, t in state.items()
    }


def save_weights(path: Path, state: Mapping[str, Tensor], metadata: Mapping[str, str] | None = None) -> None:
    """``state`` as safetensors at ``path``, written to a temporary file, fsynced, then renamed."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file(cpu_state(state), str(tmp), metadata=dict(metadata or {}))
    with open(tmp, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _refusal(path: Path, err: Exception) -> UnsafeWeightsError:
    # torch's message ends with the global it refused ("Unsupported global: GLOBAL os.system").
    detail = next((line.strip() for line in str(err).splitlines() if "GLOBAL" in line), "")
    return UnsafeWeightsError(
        f"{path} holds pickled Python objects besides tensors{f' ({detail})' if detail else ''}; "
        "unpickling them could run code, so vigsp does not load it. Use a safetensors file or a "
        "torch file of tensors only (the model/ folder a vigsp run writes has both)"
    )


def load_torch_file(path: Path) -> object:
    """``torch.load(path, weights_only=True)`` on the CPU, with errors that name the file."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"weights file {path} does not exist") from None
    except pickle.UnpicklingError as err:
        if "global" in str(err).lower() or "reduce" in str(err).lower():  # an object, not a tensor
            raise _refusal(path, err) from None
        raise UserError(f"cannot read the weights file {path}: not a torch file ({err})") from None
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise UserError(f"cannot read the weights file {path}: {err} (is it damaged or truncated?)") from None


def load_weights(path: Path, key: str | None = None) -> dict[str, Tensor]:
    """The tensors of ``path``: a safetensors file, or a torch file (then ``key`` picks the state
    dict inside, e.g. ``module`` of a DeepSpeed file, ``model`` of a legacy ``final_model.pt``)."""
    if path.suffix == SAFETENSORS_SUFFIX:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        if not path.is_file():
            raise UserError(f"weights file {path} does not exist")
        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError) as err:
            raise UserError(
                f"cannot read the weights file {path}: {err} (is it damaged or truncated?)"
            ) from None
    loaded = load_torch_file(path)
    if key is not None:
        if not isinstance(loaded, Mapping) or key not in loaded:
            found = ", ".join(map(str, loaded)) if isinstance(loaded, Mapping) else type(loaded).__name__
            raise UserError(f"{path} has no {key!r} entry (it holds {found})")
        loaded = loaded[key]
    if not isinstance(loaded, Mapping) or not all(isinstance(v, Tensor) for v in loaded.values()):
        raise UserError(f"{path} does not hold a state dict of tensors{f' under {key!r}' if key else ''}")
    return dict(loaded)
