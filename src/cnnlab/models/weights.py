"""Reading weight files as tensors, never as code, and loading them strictly into a model.

PyTorch files are read with ``torch.load(weights_only=True)``: only tensors and plain containers are
unpickled. safetensors files hold tensors only. A file that does not fit the model is a one-line error
naming the first keys that differ.
"""

from __future__ import annotations

import pickle
import re
import warnings
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from torch import nn

from cnnlab.errors import CnnlabError
from cnnlab.files import regular_file

_TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
# Checkpoint dictionaries that wrap the state dict under one of these keys are unwrapped.
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "module")
_SAFETENSORS_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64,
                       "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
                       "U8": torch.uint8, "BOOL": torch.bool}


def load_state_dict_file(path: str | Path, *, device: str = "cpu") -> dict[str, torch.Tensor]:
    """Reads a state dict (name → tensor) from a PyTorch or safetensors file onto the CPU (or ``meta``: shapes
    and dtypes only, nothing read into memory).

    PyTorch files are read with ``weights_only=True``: only tensors and plain containers are unpickled,
    never code. A checkpoint that wraps the state dict (``{"state_dict": ...}``, ``{"model": ...}``) is
    unwrapped, and a ``module.`` prefix left by ``DataParallel`` is removed.

    Args:
        path: a ``.pth`` / ``.pt`` / ``.bin`` / ``.ckpt`` or ``.safetensors`` file.

    Returns:
        The tensors by parameter/buffer name.

    Raises:
        CnnlabError: the file is missing, of an unsupported type, unreadable, corrupt, or holds something
            other than a state dict.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        raise CnnlabError(f"weights file {path} is a folder; give the weight file in it (.pth or .safetensors)")
    if not path.is_file():
        raise CnnlabError(f"weights file {path} does not exist; check the `model.weights` path")
    suffix = path.suffix.lower()
    if suffix in (".h5", ".keras"):
        raise CnnlabError(f"{path} is a Keras model file, not PyTorch weights; make it a run with "
                          "cnnlab import-keras (then use that run's model.safetensors)")
    if suffix != ".safetensors" and suffix not in _TORCH_SUFFIXES:
        raise CnnlabError(f"{path}: unsupported weight file type {suffix or '(no suffix)'!r}; "
                          "use a PyTorch .pth/.pt file or a .safetensors file")
    try:
        if suffix == ".safetensors" and device == "meta":
            with safe_open(str(path), framework="pt") as f:
                obj = {}
                for k in f.keys():  # noqa: SIM118 - safe_open is no mapping
                    part = f.get_slice(k)
                    obj[k] = torch.empty(part.get_shape(), dtype=_SAFETENSORS_DTYPES.get(part.get_dtype(),
                                                                                       torch.float32), device="meta")
        elif suffix == ".safetensors":
            obj = load_file(str(path), device=device)
        else:
            with warnings.catch_warnings():  # its pickle-protocol notice would print before our one error line
                warnings.simplefilter("ignore", UserWarning)
                obj = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as exc:
        if found := re.search(r"Unsupported global: GLOBAL (\S+)", str(exc)):
            raise CnnlabError(f"{path}: refused to unpickle {found[1]} (weight files are read as tensors "
                              "only, never as code); re-save the model's state_dict() with torch.save"
                              ) from None
        raise CnnlabError(f"cannot read weights file {path} (not a valid PyTorch file); it is truncated, "
                          "corrupt or of another format — fetch it again") from None
    except Exception as exc:  # torch, zipfile and safetensors raise many types for a bad file
        raise CnnlabError(f"cannot read weights file {path} ({_first_line(exc)}); it is truncated, corrupt "
                          "or not a PyTorch/safetensors file — fetch it again") from None
    return _as_state_dict(obj, path)


def _first_line(exc: BaseException, limit: int = 160) -> str:
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _as_state_dict(obj: object, path: Path) -> dict[str, torch.Tensor]:
    while isinstance(obj, Mapping) and not _is_state_dict(obj):
        inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping) or not obj or not _is_state_dict(obj):
        raise CnnlabError(f"{path} does not hold a state dict (parameter name → tensor); "
                          "save one with torch.save(model.state_dict(), FILE)")
    state = dict(obj)
    if all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


def _is_state_dict(obj: Mapping) -> bool:
    return bool(obj) and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


# --- loading into a model ---------------------------------------------------------------------------------


def load_weights_file(path: Path, *, fix: str = "train the run again") -> dict[str, torch.Tensor]:
    """A safetensors state dict, with a one-line error for a missing, damaged or non-regular file.

    Args:
        path: the ``.safetensors`` file.
        fix: what to do about a damaged file, the end of the error (the caller knows which copies exist).

    Raises:
        CnnlabError: nothing is there, something else than a file is there, or it is not safetensors.
    """
    if not regular_file(path, fix=fix):
        raise CnnlabError(f"{path} not found; the run has no saved weights yet")
    try:
        return load_file(str(path))
    except FileNotFoundError:
        raise CnnlabError(f"{path} not found; the run has no saved weights yet") from None
    except (SafetensorError, OSError, ValueError) as exc:
        raise CnnlabError(f"{path} is not a readable safetensors file ({_first_line(exc)}); {fix}") from None


def load_into(model: nn.Module, weights: dict[str, torch.Tensor], source: str) -> None:
    """Strict load with a one-line error naming the first mismatching keys (wrong model for these weights)."""
    own = model.state_dict()
    missing = [k for k in own if k not in weights]
    extra = [k for k in weights if k not in own]
    wrong = [k for k in own if k in weights and own[k].shape != weights[k].shape]
    # another float width is cast as torch does; an integer, bool or complex tensor for a float (or the
    # reverse) is not a weight of this model
    kinds = [f"{k} {str(weights[k].dtype).removeprefix('torch.')} for {str(own[k].dtype).removeprefix('torch.')}"
             for k in own if k in weights and k not in wrong and _kind(weights[k]) != _kind(own[k])]
    if missing or extra or wrong or kinds:
        parts = [f"{label}: {', '.join(keys[:3])}" for label, keys in
                 (("missing", missing), ("unexpected", extra), ("shape differs", wrong), ("dtype differs", kinds))
                 if keys]
        raise CnnlabError(f"{source} does not fit this model ({'; '.join(parts)}); "
                          "was it saved from a different architecture or class count?")
    model.load_state_dict(weights)


def _kind(t: torch.Tensor) -> str:
    return "complex" if t.is_complex() else "float" if t.is_floating_point() else "bool" if t.dtype == torch.bool \
        else "int"
