"""The example notebook runs from top to bottom (so it cannot rot)."""
import pathlib

import pytest

NOTEBOOK = pathlib.Path(__file__).resolve().parents[1] / "studies" / "gradient_behaviour.ipynb"


def test_gradient_behaviour_notebook_executes():
    pytest.importorskip("torch")
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOK.parent.parent)}}).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 3  # the three figures
