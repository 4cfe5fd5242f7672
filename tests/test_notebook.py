"""docs/tour.ipynb runs from top to bottom, in a kernel of this interpreter, and shows
what its text says (the evolved rule's fitness fell; there are figures)."""

import os
import sys

import nbclient
import nbformat
import pytest
from jupyter_client import KernelManager
from jupyter_client.kernelspec import KernelSpecManager

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, "docs", "tour.ipynb")

# Run after the notebook's own cells, in its namespace.
CHECK = """
import sys
print(sys.executable)
assert float(metrics["best_fitness"][-1]) < float(metrics["best_fitness"][0]) - 0.1, \\
    "ES did not lower the fitness of the new rule"
"""


def this_interpreters_kernel() -> KernelManager:
    """A kernel manager for ipykernel in ``sys.executable``, whatever kernelspecs the user
    or the system have installed: with no kernel directories, jupyter_client falls back
    to ipykernel's own spec, whose command is this interpreter."""
    specs = KernelSpecManager(kernel_dirs=[], ensure_native_kernel=True)
    return KernelManager(kernel_name="python3", kernel_spec_manager=specs)


@pytest.mark.slow  # end to end: the whole tour in a kernel
def test_tour_notebook_executes(tmp_path):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code_cells = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert all(not cell.outputs for cell in code_cells), "commit docs/tour.ipynb with outputs cleared"
    nb.cells.append(nbformat.v4.new_code_cell(CHECK))
    client = nbclient.NotebookClient(nb, km=this_interpreters_kernel(), timeout=300,
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError, naming the cell, on any error

    check_output = "".join(o.get("text", "") for o in nb.cells[-1].outputs)
    assert check_output.strip() == sys.executable
    figures = sum("image/png" in o.get("data", {}) for cell in code_cells for o in cell.outputs)
    assert figures == 3
    assert os.listdir(tmp_path) == [], "the notebook wrote into its working directory"
