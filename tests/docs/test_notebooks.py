"""The documentation notebooks run headless, top to bottom, without an error (nbclient, a real kernel)."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parents[2] / "docs" / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_and_draws_inline(path, tmp_path):
    nb = nbformat.read(path, as_version=4)
    # runs/ of the notebook go into tmp_path; a failing cell raises CellExecutionError with its traceback
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    pngs = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(pngs) >= 3  # the figures returned by run.show() are drawn inline
    assert any("text/html" in o.get("data", {}) and "cnnlab run" in o["data"]["text/html"] for o in outputs)
    assert (tmp_path / "runs" / "quickstart-cnn" / "report.html").is_file()
