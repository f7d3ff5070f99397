"""Where dataset files are looked for: ``--data-dir``, ``$CNNLAB_DATA``, then the cache.

A data dir holds ``<dir>/<dataset name>/<official file names>``; downloads go into the cache
(:func:`cnnlab.io.cache_dir`), verified against the published checksums (:func:`cnnlab.io.download_file`).
"""

from __future__ import annotations

import os
from pathlib import Path

from cnnlab.errors import CnnlabError
from cnnlab.io import cache_dir


def data_roots(data_dir: str | os.PathLike | None = None) -> list[Path]:
    """Candidate data roots in resolution order (the cache last; it is also where downloads go)."""
    roots = []
    if data_dir:
        given = Path(data_dir).expanduser()
        if not given.is_dir():  # a typo must not fall back to another copy of the data without a word
            raise CnnlabError(f"`data_dir` {given} is not a folder; give the folder that holds <dataset>/")
        roots.append(given)
    if env := os.environ.get("CNNLAB_DATA"):
        roots.append(Path(env).expanduser())
    roots.append(cache_dir() / "datasets")
    return roots
