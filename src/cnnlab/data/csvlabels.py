"""Labels from a CSV file: which column names the image and which its class, found by the header's names.

Keras's ``flow_from_dataframe`` takes ``x_col``/``y_col`` and fastai's ``from_csv`` ``fn_col``/``label_col``;
``data.file_column`` and ``data.label_column`` are the same. Without them a header's names decide
(``file``/``filename``/``path``/``image``... and ``label``/``class``/``category``...); a plain two-column
file (with or without a header) is ``file,label``. Anything else is ambiguous and refused, never guessed:
a CSV with ``filename,width,height,class`` must not train on the width.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

from cnnlab.errors import CnnlabError

FILE_NAMES = ("file", "filename", "file_name", "filepath", "file_path", "path", "image", "image_path", "image_id",
              "img", "fname", "fn")
LABEL_NAMES = ("label", "labels", "class", "class_name", "classname", "category", "target", "y")


@dataclass
class CsvLabels:
    """(relative file, label) pairs of a label CSV, and the rows left out with why."""

    items: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)


def _pick(header: list[str], given: str | None, names: tuple[str, ...], key: str, path: Path) -> int | None:
    lowered = [h.strip().lower() for h in header]
    if given is not None:
        if given.strip().lower() not in lowered:
            raise CnnlabError(f"`data.{key}` {given!r} is not a column of {path.name} (its header: "
                              f"{', '.join(header)})")
        return lowered.index(given.strip().lower())
    found = [i for i, h in enumerate(lowered) if h in names]
    if len(found) > 1:
        raise CnnlabError(f"{path.name} has several columns that could be the {key.split('_')[0]} "
                          f"({', '.join(header[i] for i in found)}); say which with `data.{key}`")
    return found[0] if found else None


def _columns(header: list[str], root: Path, path: Path, file_column: str | None,
             label_column: str | None) -> tuple[int, int, bool]:
    """(file column, label column, whether the first row is a header)."""
    is_header = not (root / header[0].strip().replace("\\", "/")).is_file()
    if not is_header:
        if len(header) != 2 or file_column or label_column:
            raise CnnlabError(f"{path.name} has no header row, so its {len(header)} columns cannot be named; add a "
                              "header (e.g. file,label) and set `data.file_column` / `data.label_column`")
        return 0, 1, False
    fi = _pick(header, file_column, FILE_NAMES, "file_column", path)
    li = _pick(header, label_column, LABEL_NAMES, "label_column", path)
    if len(header) == 2:  # the classic file,label pair: one recognised name fixes the other column
        if fi is None and li is None:
            fi, li = 0, 1
        elif fi is None:
            fi = 1 - li
        elif li is None:
            li = 1 - fi
    if fi is None or li is None or fi == li:
        raise CnnlabError(f"cannot tell which column of {path.name} holds the file and which the label (header: "
                          f"{', '.join(header)}); set `data.file_column` and `data.label_column`")
    return fi, li, True


def read_label_csv(path: Path, *, file_column: str | None = None, label_column: str | None = None) -> CsvLabels:
    """The labelled files a CSV lists; files are relative to the CSV's folder and must stay inside it.

    Raises:
        CnnlabError: unreadable file, a named column that does not exist, or columns that cannot be told apart.
    """
    root = path.parent.resolve()
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: Excel writes a byte-order mark
            rows = [r for r in csv.reader(f) if r and any(c.strip() for c in r)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise CnnlabError(f"label CSV {path} cannot be read ({exc}); save it as UTF-8 CSV") from None
    out = CsvLabels()
    if not rows:
        return out
    fi, li, header = _columns(rows[0], root, path, file_column, label_column)
    seen: set[str] = set()
    for i, row in enumerate(rows[1:] if header else rows, start=2 if header else 1):
        rel = row[fi].strip().replace("\\", "/") if fi < len(row) else ""
        label = row[li].strip() if li < len(row) else ""
        try:
            target = (root / rel).resolve()
        except (RuntimeError, OSError):  # Python < 3.13 raises on a symbolic link loop
            out.skipped.append((rel, f"a symbolic link that loops ({path.name} row {i})"))
            continue
        if not target.is_relative_to(root):
            out.skipped.append((rel, f"outside the folder of {path.name} (row {i}); only files under it are read"))
        elif not label:
            out.skipped.append((rel, f"no label in {path.name} row {i}"))
        elif not target.is_file():
            out.skipped.append((rel, f"listed in {path.name} but missing"))
        elif rel in seen:
            out.skipped.append((rel, f"listed twice in {path.name}"))
        else:
            seen.add(rel)
            out.items.append((rel, label))
    return out
