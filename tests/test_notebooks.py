"""The tutorial notebooks run offline and reproduce the outputs stored in them (nbval).

Each notebook runs in its own ``pytest --nbval`` subprocess with a fresh activation cache
(a warm one would skip the extractions whose progress bars the stored outputs show) and
the Hugging Face hub offline. ``notebooks/nbval_sanitize.cfg`` masks what legitimately
varies (chart markup, progress bars, addresses, the sign of a rounded zero).
``pythia70m.ipynb`` needs EleutherAI/pythia-70m's weights, which this project never
downloads: it runs only where they are already in the local Hugging Face cache (its
cells must run; its outputs, unstored, are not compared), and the skip says so elsewhere.

After changing a notebook, store fresh outputs with a fresh cache and no widget state
(each chart widget's state would carry the 1.1 MB vega bundle; untrusted notebooks, where
widgets never run, show the outputs' PNG fallbacks):
``MECHWIDGETS_CACHE=$(mktemp -d) .venv/bin/jupyter nbconvert --to notebook --execute
--inplace --ExecutePreprocessor.store_widget_state=False notebooks/NAME.ipynb``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from huggingface_hub import try_to_load_from_cache

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
SANITIZE = NOTEBOOKS / "nbval_sanitize.cfg"
PYTHIA = "EleutherAI/pythia-70m"
PYTHIA_NOTEBOOK = NOTEBOOKS / "pythia70m.ipynb"
#: the tutorials that run offline on the embedded models, each on every test run
TUTORIALS = [
    "quickstart", "01_detect", "02_compare", "03_localize", "04_polysemantic", "05_collapse",
    "06_scale", "07_encoder",
]  # fmt: skip
#: seconds one notebook may take (they take well under a minute each)
TIMEOUT = 300


def run_nbval(notebook: Path, cache: Path, *options: str) -> subprocess.CompletedProcess:
    """``pytest --nbval`` on one notebook in a subprocess, with its own activation cache."""
    env = os.environ | {"MECHWIDGETS_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    command = [
        sys.executable, "-m", "pytest", "--nbval", "--nbval-current-env",
        "--nbval-sanitize-with", str(SANITIZE), "-p", "no:cacheprovider", "-q",
        *options, str(notebook),
    ]  # fmt: skip
    return subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT
    )


def pythia_cached() -> bool:
    """Whether Pythia-70m's config, tokenizer and weights are in the local HF cache."""
    found = {
        name: isinstance(try_to_load_from_cache(PYTHIA, name), str)
        for name in ("config.json", "tokenizer.json", "model.safetensors", "pytorch_model.bin")
    }
    return (
        found["config.json"]
        and found["tokenizer.json"]
        and (found["model.safetensors"] or found["pytorch_model.bin"])
    )


def test_every_notebook_is_tested():
    assert {p.stem for p in NOTEBOOKS.glob("*.ipynb")} == {*TUTORIALS, PYTHIA_NOTEBOOK.stem}


@pytest.mark.slow
@pytest.mark.parametrize("name", TUTORIALS)
def test_notebook_reproduces_its_outputs(name, tmp_path):
    done = run_nbval(NOTEBOOKS / f"{name}.ipynb", tmp_path / "cache")
    assert done.returncode == 0, f"nbval failed on {name}:\n{done.stdout[-20000:]}{done.stderr}"


@pytest.mark.slow
def test_pythia_notebook_runs_where_the_weights_are_cached(tmp_path):
    if not pythia_cached():
        pytest.skip(
            f"{PYTHIA} is not in the local Hugging Face cache, so notebooks/pythia70m.ipynb "
            "was not run (it runs wherever the weights are cached, e.g. on Binder)"
        )
    done = run_nbval(PYTHIA_NOTEBOOK, tmp_path / "cache", "--nbval-lax")
    assert done.returncode == 0, f"pythia70m.ipynb failed:\n{done.stdout[-20000:]}{done.stderr}"


#: a small notebook of every widget kind: a result (its chart widget), a LayerExplorer
#: and a Launcher, on a planted cube so it runs in seconds
WIDGET_CELLS = [
    "import mechwidgets as mw\n"
    "from mechwidgets.actions.detect import detect\n"
    "from mechwidgets.probes.synthetic import planted_cube\n"
    "cube = planted_cube({'number': {2: 3.0}}, n_samples=200, n_layers=3, dim=16)\n"
    "res = detect(cube, 'number', seeds=1, controls=('label_shuffle',))\n"
    "res",
    "mw.widgets.LayerExplorer(res)",
    "mw.widgets.Launcher()",
]
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


@pytest.mark.slow
def test_nbconvert_html_of_an_executed_notebook_shows_each_widgets_fallback(tmp_path, monkeypatch):
    import nbformat
    from bs4 import BeautifulSoup
    from nbclient import NotebookClient
    from nbconvert import HTMLExporter

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(source) for source in WIDGET_CELLS]
    monkeypatch.setenv("MECHWIDGETS_CACHE", str(tmp_path / "cache"))  # the kernel inherits it
    NotebookClient(nb, timeout=TIMEOUT, kernel_name="python3", store_widget_state=False).execute()
    widgets = [o for c in nb.cells for o in c.outputs if WIDGET_VIEW in o.get("data", {})]
    # each widget output carries its fallbacks: a PNG of the chart (not the launcher's
    # form) and a one-line text summary (not "<... object at 0x...>")
    assert [o["data"]["text/plain"].split("(")[0].split(":")[0] for o in widgets] == [
        "ChartView",
        "LayerExplorer",
        "Launcher",
    ]
    assert all("image/png" in o["data"] for o in widgets[:2])
    assert "on toy-grammar" in widgets[2]["data"]["text/plain"]
    page = BeautifulSoup(HTMLExporter().from_notebook_node(nb)[0], "html.parser")
    images = [img["src"] for img in page.select(".jp-OutputArea-output img")]
    assert len(images) == 2 and all(src.startswith("data:image/png;base64,") for src in images)
    text = page.get_text()
    assert "object at 0x" not in text and "Launcher: detect on toy-grammar" in text
    assert "number' is decodable" in text  # the verdict, as text
