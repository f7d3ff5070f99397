"""Checkpoints as plain files: weights in safetensors, everything else in JSON + a tensor sidecar.

A checkpoint is a folder (``checkpoints/last``, ``checkpoints/best``) holding:

* ``model.safetensors`` — the model's state dict;
* ``state.safetensors`` — every tensor of the training state (optimiser moments, RNG states);
* ``state.json`` — the rest (epoch, history, optimiser hyper-parameters, callback state), with tensors
  replaced by ``{"__tensor__": key}`` references into ``state.safetensors``.

* ``digest.json`` — the SHA-256 of each file above, written last: a checkpoint without it, or whose files
  do not match it (torn by a crash, flipped on disk), is refused by name.

Nothing is pickled, so loading a checkpoint never executes code. A folder is written beside its final
name and swapped in with renames, so a crash leaves either the old or the new checkpoint, never half; with
``keep_previous`` the one it replaces stays as ``previous`` (``checkpoints/last`` → ``checkpoints/previous``),
and :func:`load_checkpoint` falls back to it when the newer one is damaged. A full disk stops with a one-line
error that names the last good checkpoint.
"""

from __future__ import annotations

import errno
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from cnnlab.errors import CnnlabError
from cnnlab.files import read_text, regular_file
from cnnlab.io import file_digest, recover_folder, replace_folder, temp_folder_beside
from cnnlab.models.weights import load_into, load_weights_file

MODEL_FILE = "model.safetensors"
STATE_FILE = "state.safetensors"
META_FILE = "state.json"
DIGEST_FILE = "digest.json"


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


def save_checkpoint(folder: Path, model: nn.Module, state: dict[str, Any], *,
                    keep_previous: Path | None = None) -> Path:
    """Writes ``model`` and the training ``state`` to ``folder`` atomically (temp folder + renames).

    Args:
        folder: the checkpoint folder (``checkpoints/last``).
        model: its state dict is saved.
        state: plain data and tensors (see the module's notes).
        keep_previous: move the checkpoint ``folder`` held to this path (the older one is dropped).

    Raises:
        CnnlabError: the disk is full (nothing of the new checkpoint is left; the old one is intact).
    """
    folder = Path(folder)
    tmp = temp_folder_beside(folder)
    try:
        weights = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
        save_file(weights, str(tmp / MODEL_FILE))
        tensors: dict[str, torch.Tensor] = {}
        meta = _split(state, tensors, "state")
        save_file(tensors, str(tmp / STATE_FILE))
        (tmp / META_FILE).write_text(json.dumps(meta))
        digests = {name: file_digest(tmp / name) for name in (MODEL_FILE, STATE_FILE, META_FILE)}
        (tmp / DIGEST_FILE).write_text(json.dumps({"sha256": digests}))  # last: its presence means "complete"
        return replace_folder(tmp, folder, keep=keep_previous)
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        good = folder if folder.exists() else keep_previous if keep_previous and keep_previous.exists() else None
        raise CnnlabError(f"no space left on {folder.parent} while writing {folder.name}; freed nothing; the last "
                          f"good checkpoint is {good or 'none yet'}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def check_checkpoint(folder: Path) -> str | None:
    """Why ``folder`` is not a complete, intact checkpoint, or None when its files match their digests."""
    digest = folder / DIGEST_FILE
    if problem := _not_regular(folder / META_FILE):
        return problem
    if problem := _not_regular(digest):
        return f"{problem} (written last: the checkpoint was torn while being written)"
    try:
        want = json.loads(read_text(digest))["sha256"]
    except (ValueError, KeyError, TypeError, RecursionError, OSError, CnnlabError):
        return f"{DIGEST_FILE} is damaged"
    # every file, and only these: a digest that leaves one out (or names another path) vouches for nothing
    if not isinstance(want, dict) or set(want) != {MODEL_FILE, STATE_FILE, META_FILE}:
        return f"{DIGEST_FILE} is damaged"
    for name, sha in want.items():
        if problem := _not_regular(folder / name):
            return problem
        if file_digest(folder / name) != sha:
            return f"{name} does not match its digest (damaged on disk)"
    return None


def _not_regular(path: Path) -> str | None:
    """Why ``path`` is no file to read (missing, a FIFO, a folder...), or None for a regular file."""
    try:
        return None if regular_file(path) else f"no {path.name}"
    except CnnlabError:  # its kind, without the advice meant for a user's own file
        return f"{path.name} is not a regular file"


def load_checkpoint(folder: Path, model: nn.Module | None = None, *, fallback: Path | None = None,
                    log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Loads the weights into ``model`` (if given) and returns the training state.

    Args:
        folder: the checkpoint folder.
        model: receives the weights (strict: keys and shapes must match).
        fallback: an older checkpoint to use, with a note to ``log``, when ``folder`` is damaged.
        log: receives that note.

    Raises:
        CnnlabError: neither ``folder`` nor ``fallback`` holds an intact checkpoint (the message says why), or
            the weights do not fit ``model``.
    """
    folder = recover_folder(Path(folder))
    problem = check_checkpoint(folder)
    if problem is not None and fallback is not None and check_checkpoint(fallback) is None:
        if folder.exists() and log is not None:
            log(f"note: {folder} is not usable ({problem}); resuming from {fallback} instead")
        folder, problem = fallback, None
    if problem is not None:
        raise CnnlabError(f"{folder} holds no usable checkpoint ({problem}); nothing to resume from: train the "
                          "run again with `overwrite`, or start a new run from weights it saved (`model.weights`)")
    if model is not None:
        load_into(model, load_weights_file(folder / MODEL_FILE), str(folder / MODEL_FILE))
    tensors = load_weights_file(folder / STATE_FILE)
    try:
        meta = json.loads(read_text(folder / META_FILE))
    except (ValueError, RecursionError, OSError) as exc:
        raise CnnlabError(f"{folder / META_FILE} is corrupt ({type(exc).__name__}); train the run again "
                          "with `overwrite`") from None
    return _join(meta, tensors)
