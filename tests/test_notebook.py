"""The example notebook executes (so that it cannot rot): examples/compare_methods.ipynb
run cell by cell in a fresh kernel, in a temporary folder."""

from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "compare_methods.ipynb"


def test_compare_methods_notebook_executes(tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=180, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # a failing cell raises CellExecutionError with its traceback
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                   for o in c.get("outputs", []))  # fmt: skip
    for method in ("icom", "epie", "ml"):
        assert f"{method:5s} NCC with the ground truth" in text
    assert (tmp_path / "sto_ml_phase.npy").exists()
