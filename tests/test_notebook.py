"""notebooks/results.ipynb runs end to end against a real (minimal) sweep: the Bicubic row of the tiny LEMMA comparison
sweep (no training; the baseline's three recognizer columns need all three recognizers), plus a hand-written
sampling-steps table so that the steps plot is drawn too."""

import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pandas as pd
import pytest
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep") / "lemma_textzoom-tiny"
    env = {**os.environ, "WANDB_MODE": "disabled"}
    done = subprocess.run([sys.executable, "-m", "stisr_lightning.sweeps.main", "sweeps/comparisons/lemma_textzoom.yaml", "--preset",
                           "tiny", "--only", "Bicubic", "--out", str(out), "--no-wandb"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    steps = pd.DataFrame({"PSNR ours": [20.0, 21.5, 22.0], "Acc ours": [40.0, 45.0, 47.0]},
                         index=pd.Index(["steps=5", "steps=20", "steps=200"], name="Method"))
    steps.to_csv(out / "tables" / "T5.csv")
    return out


def outputs(notebook) -> str:
    texts = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            texts.append(output.get("text", "") or str(output.get("data", {}).get("text/plain", "")))
    return "\n".join(texts)


def test_results_notebook_plots_the_sweep(sweep_dir, monkeypatch):
    monkeypatch.setenv("STISR_SWEEP_DIR", str(sweep_dir))
    notebook = nbformat.read(REPO / "notebooks" / "results.ipynb", as_version=4)
    NotebookClient(notebook, timeout=180, kernel_name="python3",
                   resources={"metadata": {"path": str(REPO / "notebooks")}}).execute()  # raises on any cell error
    text = outputs(notebook)
    assert "T3/Bicubic" in text and "3 table(s): T3, T5-synthetic, T5" in text and "1 sampling-steps plot(s)" in text
    plots = sorted(path.name for path in (sweep_dir / "plots").glob("*.png"))
    assert plots == ["accuracy_vs_psnr.png", "steps_T5.png", "table_T3.png", "table_T5-synthetic.png", "table_T5.png"]
