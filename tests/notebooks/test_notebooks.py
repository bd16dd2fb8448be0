"""Every notebook in ``notebooks/`` runs headless, top to bottom.

The notebooks are jupytext ``py:percent`` sources (no stored outputs). Each is
read with jupytext and executed by nbclient in a real ``python3`` kernel with
``MPLBACKEND=Agg``; a cell that raises (the notebooks assert what they show:
the engine's book equals LOBSTER's orderbook row, the book is never crossed,
a what-if diverges) fails the test. Each run builds its own data directory
under ``tmp_path`` with ``evengine start``. The real order flow comes from
``../shared/data`` (skip on a laptop without it, fail under CI).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support.data import data_path

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = ROOT / "notebooks"


def run_notebook(path: Path, env: dict) -> object:
    import jupytext
    from nbclient import NotebookClient
    nb = jupytext.read(path)
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)                      # the kernel inherits the environment
    try:
        NotebookClient(nb, timeout=600, kernel_name="python3",
                       resources={"metadata": {"path": str(ROOT)}}).execute()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return nb


def figures(nb) -> int:
    """Cells whose result is a matplotlib Figure (its repr under Agg)."""
    return sum(1 for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
               if o.get("output_type") == "execute_result" and "<Figure size" in o["data"].get("text/plain", ""))


def test_every_notebook_is_tested():
    assert sorted(p.name for p in NOTEBOOKS.glob("*.py")) == ["bitstamp_sample.py", "goog_day.py"]


@pytest.mark.slow
def test_bitstamp_notebook_runs(tmp_path):
    capture = ROOT / "data/samples/bitstamp/orders.csv.gz"
    if not capture.exists():
        data_path("bitstamp", "orders.csv.gz")
    nb = run_notebook(NOTEBOOKS / "bitstamp_sample.py",
                      {"EVENGINE_NOTEBOOK_DATA": str(tmp_path / "bitstamp"), "MPLBACKEND": "Agg"})
    assert figures(nb) == 4


@pytest.mark.slow
def test_goog_notebook_runs(tmp_path):
    lobster = data_path("lobster")
    nb = run_notebook(NOTEBOOKS / "goog_day.py",
                      {"EVENGINE_NOTEBOOK_DATA": str(tmp_path / "goog"), "LOBSTER_DIR": str(lobster),
                       "MPLBACKEND": "Agg"})
    assert figures(nb) == 3
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "rows: the engine's top 10 levels equal LOBSTER's orderbook file" in text
