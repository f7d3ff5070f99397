"""Checkpoints as plain files: weights in safetensors, everything else in JSON + a tensor sidecar.

A checkpoint is a folder (``checkpoints/last``, ``checkpoints/best``) holding:

* ``model.safetensors`` — the model's state dict;
* ``state.safetensors`` — every tensor of the training state (optimiser moments, RNG states);
* ``state.json`` — the rest (epoch, history, optimiser hyper-parameters, callback state), with tensors
  replaced by ``{"__tensor__": key}`` references into ``state.safetensors``.

Nothing is pickled, so loading a checkpoint never executes code. A folder is written beside its final
name and swapped in with renames, so a crash leaves either the old or the new checkpoint, never half.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from cnnlab.errors import CnnlabError
from cnnlab.io import recover_folder, replace_folder, temp_folder_beside
from cnnlab.models.weights import load_into, load_weights_file

MODEL_FILE = "model.safetensors"
STATE_FILE = "state.safetensors"
META_FILE = "state.json"


def _split(obj: Any, tensors: dict[str, torch.Tensor], path: str) -> Any:
    """Replaces tensors in a nested structure by references, collecting them in ``tensors``."""
    if isinstance(obj, torch.Tensor):
        tensors[path] = obj.detach().cpu().contiguous().clone()
        return {"__tensor__": path}
    if isinstance(obj, dict):
        if any(not isinstance(k, (str, int)) for k in obj):
            raise TypeError(f"checkpoint state at {path!r} has non-string keys")
        # JSON keys are strings: remember which were ints (optimizer state is keyed by param index).
        return {"__dict__": [[k, _split(v, tensors, f"{path}.{k}")] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        return [_split(v, tensors, f"{path}.{i}") for i, v in enumerate(obj)]
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    raise TypeError(f"cannot store {type(obj).__name__} at {path!r} in a checkpoint")


def _join(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__dict__" in obj:
            return {k: _join(v, tensors) for k, v in obj["__dict__"]}
        return {k: _join(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_join(v, tensors) for v in obj]
    return obj


def save_checkpoint(folder: Path, model: nn.Module, state: dict[str, Any]) -> Path:
    """Writes ``model`` and the training ``state`` to ``folder`` atomically (temp folder + renames)."""
    folder = Path(folder)
    tmp = temp_folder_beside(folder)
    try:
        weights = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
        save_file(weights, str(tmp / MODEL_FILE))
        tensors: dict[str, torch.Tensor] = {}
        meta = _split(state, tensors, "state")
        save_file(tensors, str(tmp / STATE_FILE))
        (tmp / META_FILE).write_text(json.dumps(meta))
        return replace_folder(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_checkpoint(folder: Path, model: nn.Module | None = None) -> dict[str, Any]:
    """Loads the weights into ``model`` (if given) and returns the training state."""
    folder = recover_folder(Path(folder))
    if not (folder / META_FILE).is_file():
        raise CnnlabError(f"{folder} holds no checkpoint (no {META_FILE}); nothing to resume from")
    if model is not None:
        load_into(model, load_weights_file(folder / MODEL_FILE), str(folder / MODEL_FILE))
    tensors = load_weights_file(folder / STATE_FILE)
    try:
        meta = json.loads((folder / META_FILE).read_text())
    except ValueError as exc:
        raise CnnlabError(f"{folder / META_FILE} is corrupt ({exc})") from None
    return _join(meta, tensors)
