"""User-facing errors: one line that names the problem and the fix.

The CLI prints ``error: <message>`` for these and exits with status 2; anything else is a bug and keeps
its traceback.
"""

from __future__ import annotations

from collections.abc import Iterable


class CnnlabError(Exception):
    """A mistake in the user's input (config, data, files, names) with a one-line explanation."""


def one_of(kind: str, name: object, valid: Iterable[str]) -> CnnlabError:
    """Builds the standard "unknown X 'y'; valid: a, b, c" error."""
    names = ", ".join(sorted(valid))
    return CnnlabError(f"unknown {kind} {name!r}; valid: {names}")
