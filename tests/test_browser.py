"""The widgets in a real browser: JupyterLab and Notebook 7 driven by headless Chromium.

Starts each frontend on a free localhost port in a temporary folder, opens a notebook that
builds a LayerExplorer over a synthetic result (no model needed), a detect result's rich
display, toy-induction's attention view and token views for toy-induction and
toy-grammar, runs all cells, and checks that every heatmap cell is drawn, that hovering
shows the CI and that a click changes ``selected`` in the kernel (an observer there
writes it to a file) and brings the probe's histograms and test sentences back; that the
result's chart widget (vega bundled, no CDN) shows a tooltip on hover, offers its export
menu and clips no text, with no request leaving localhost; that the attention and token
views render; and that a shipped tutorial opened untrusted shows its charts as images.
The nbconvert HTML of an executed notebook is opened too: each widget's PNG fallback
loads. JupyterLab's screenshots go to docs/img/ (the README's).
Needs Debian's chromium (scripts/browser_setup.sh installs it; MECHWIDGETS_CHROMIUM names
another binary) and fails, never skips, without it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import nbformat
import pytest

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[1]
SHOTS = ROOT / "docs" / "img"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
N_LAYERS, COMPONENTS = 6, ["resid", "attn", "mlp", "head.0", "head.1"]
CLICKED = {"layer": 5, "component": "attn"}  # last column: the hover tooltip hides no cell

SETUP = f"""\
import json, types
from pathlib import Path
import numpy as np
import pandas as pd
import mechwidgets as mw

rng = np.random.default_rng(0)
rows, preds = [], []
for layer in range({N_LAYERS}):
    for j, comp in enumerate({COMPONENTS!r}):
        real = 0.5 + 0.45 / (1 + np.exp(-(layer - 2.5 + j % 3))) - 0.08 * (j >= 3)
        shuffled = 0.5 + 0.01 * rng.standard_normal()
        for control, score in (("none", real), ("label_shuffle", shuffled)):
            half = 0.02 + 0.02 * rng.random()
            rows.append(dict(label="subject_number", layer=layer, component=comp, control=control,
                             score=score, ci_low=score - half, ci_high=score + half))
        y = np.arange(200) % 2
        p = 1 / (1 + np.exp(-(2 * y - 1) * 8 * (real - 0.5) - rng.standard_normal(200)))
        preds.append(pd.DataFrame(dict(layer=layer, component=comp, sample_id=np.arange(200),
                                       y_true=y, y_pred=(p >= 0.5).astype(int), y_score=p)))
res = types.SimpleNamespace(table=pd.DataFrame(rows), predictions=pd.concat(preds))
"""
EXPLORER = """\
ex = mw.widgets.LayerExplorer(res, texts=[f"sentence number {i}" for i in range(200)])
ex.observe(lambda change: Path("selected.json").write_text(json.dumps(change["new"])), "selected")
ex
"""
GRID = """\
import xarray as xr
from mechwidgets.actions.localize import LocalizeResult

ranking = res.table[res.table["control"] == "none"].rename(columns={"score": "effect"})
drops = [dict(layer=4, component="resid", metric=metric, intervention=how, drop=k / 8)
         for k, (metric, how) in enumerate((m, h) for m in ("behavior", "probe")
                                           for h in ("zero", "mean", "resample", "patch"))]
localized = LocalizeResult("localize", xr.Dataset(), ranking.assign(ablation="mean"),
                           params={"label": None}, impact=pd.DataFrame(drops))
grid_ex = mw.widgets.LayerExplorer(localized)
grid_ex.selected = {"layer": 4, "component": "resid"}  # selected from Python, drawn in JS
grid_ex
"""
RESULT = """\
from mechwidgets.probes.synthetic import planted_cube
cube = planted_cube({"number": {(2, "resid"): 3.0}}, n_samples=400, n_layers=5, seed=2)
det = mw.detect(cube, label="number", seeds=1, permutations=20, resamples=100)
det  # verdict, chart widget, compact table, details
"""
ATTENTION = """\
induction_model = mw.load_model("toy-induction")
texts = mw.get_task("induction", n=20, seed=0).texts[:2]
mw.viz.attention_patterns(induction_model, texts)
"""
INDUCTION_TOKENS = """\
repeats = mw.extract(induction_model, mw.get_task("induction", n=300), selectors=["resid:1"])
mw.viz.token_scores(induction_model, repeats, "in_repeat", layer=1, k=4)
"""
TOKENS = """\
grammar_model = mw.load_model("toy-grammar")
grammar = mw.extract(grammar_model, mw.get_task("subject_number", n=300), selectors=["resid:2"])
mw.viz.token_scores(grammar_model, grammar, "subject_number", layer=2, k=6)
"""
LAUNCHER = """\
ui = mw.widgets.Launcher()
ui.model.value, ui.task.value, ui.layers.value, ui.n.value = "toy-grammar", "animacy", "2", 3000
ui.seeds.value = 1
for name, box in ui.components.items():
    box.value = name == "resid"
ui
"""
CELLS = (SETUP, EXPLORER, GRID, RESULT, ATTENTION, INDUCTION_TOKENS, TOKENS, LAUNCHER)
#: a tutorial with two stored result charts, opened untrusted
SHIPPED = "02_compare.ipynb"
#: frontend -> (the module that serves it, the path a notebook opens at)
FRONTENDS = {"jupyterlab": ("jupyterlab", "lab/tree"), "notebook7": ("notebook", "notebooks")}
#: toy-induction's sequences: 16 tokens, so a head's causal pattern has 16 * 17 / 2 cells
INDUCTION_CELLS = 8 * 16 * 17 // 2
#: text elements of the charts whose box is not inside their SVG's box
CLIPPED_TEXT = """() => {
  const out = [];
  for (const svg of document.querySelectorAll(".mw-chart svg")) {
    const box = svg.getBoundingClientRect();
    for (const text of svg.querySelectorAll("text")) {
      const r = text.getBoundingClientRect();
      if (!text.textContent.trim() || r.width === 0) continue;
      if (r.left < box.left - 0.5 || r.right > box.right + 0.5 ||
          r.top < box.top - 0.5 || r.bottom > box.bottom + 0.5) out.push(text.textContent);
    }
  }
  return out;
}"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as reply:  # noqa: S310  (our localhost server)
        return reply.read()


def _pids_mentioning(marker: str) -> list[int]:
    """Processes whose command line names ``marker`` (our temp folder): kernels we started."""
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != os.getpid():
            try:
                if marker in (proc / "cmdline").read_bytes().decode(errors="replace"):
                    pids.append(int(proc.name))
            except OSError:
                continue
    return pids


def _stop(server: subprocess.Popen, url: str, marker: str) -> None:
    """Shut kernels down, stop the server's process group; kill what is left by pid."""
    try:
        for kernel in json.loads(_get(f"{url}/api/kernels")):
            request = urllib.request.Request(f"{url}/api/kernels/{kernel['id']}", method="DELETE")
            urllib.request.urlopen(request, timeout=5).close()  # noqa: S310
    except OSError:
        pass  # the server is already gone; the sweep below still finds its kernels
    if server.poll() is None:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=5)
    for pid in _pids_mentioning(marker):  # kernels run in their own sessions
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            continue


@pytest.fixture(params=sorted(FRONTENDS))
def jupyter(request, tmp_path: Path) -> Iterator[tuple[str, Path, str]]:
    """A JupyterLab or Notebook 7 server on a free port, serving a temp folder; stopped in
    every case. Yields its URL, the folder and the frontend's name."""
    module, _ = FRONTENDS[request.param]
    work = tmp_path / "nb"
    work.mkdir()
    notebook = nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_code_cell(c) for c in CELLS],
        metadata={
            "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}
        },
    )
    nbformat.write(notebook, work / "explorer.ipynb")
    # a shipped tutorial as a user gets it: stored outputs, no signature, so untrusted
    shutil.copy(ROOT / "notebooks" / SHIPPED, work / SHIPPED)
    # no "get Jupyter news?" toast over the screenshots, no "Select Kernel" dialog
    settings = tmp_path / "config" / "lab" / "user-settings" / "@jupyterlab"
    for plugin, value in [
        ("apputils-extension/notification", {"fetchNews": "false"}),
        ("notebook-extension/tracker", {"autoStartDefaultKernel": True}),
    ]:
        path = settings / f"{plugin}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(value))
    env = {
        **os.environ,
        "JUPYTER_CONFIG_DIR": str(tmp_path / "config"),
        "JUPYTER_DATA_DIR": str(tmp_path / "data"),
        "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
        "IPYTHONDIR": str(tmp_path / "ipython"),
        # its own activation cache: the launcher's run extracts (and moves the bar) anew
        "MECHWIDGETS_CACHE": str(tmp_path / "cache"),
    }
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = (tmp_path / "jupyter.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", module, "--no-browser", f"--port={port}", "--ip=127.0.0.1"]
        + [f"--ServerApp.root_dir={work}", "--IdentityProvider.token=", "--ServerApp.password="]
        + ["--ServerApp.disable_check_xsrf=True", "--ServerApp.allow_root=True"]
        + ["--ServerApp.terminals_enabled=False", "--LabApp.news_url=None"]
        + ["--LabServerApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
        cwd=work,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 40
        while True:
            try:
                _get(f"{url}/api/status")
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    tail = (tmp_path / "jupyter.log").read_text()[-1500:]
                    pytest.fail(f"{request.param} did not start: {tail}", pytrace=False)
                time.sleep(0.3)
        yield url, work, request.param
    finally:
        _stop(server, url, str(tmp_path))
        log.close()


def _chromium() -> str:
    path = os.environ.get("MECHWIDGETS_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).is_file():
        pytest.fail(
            "chromium is missing: run scripts/browser_setup.sh (apt-get install -y chromium)",
            pytrace=False,
        )
    return path


def _run_all(page, expect, frontend: str) -> None:
    """Run All Cells once the frontend has a kernel ready (a Run All before that runs
    nothing): JupyterLab's status bar says so; Notebook 7 has none, so there Run All is
    repeated until the first cell starts."""
    if frontend == "jupyterlab":
        page.get_by_text(re.compile(r"\(ipykernel\) \| Idle$")).first.wait_for(timeout=120_000)
    page.locator('.jp-Notebook-ExecutionIndicator[data-status="idle"]').first.wait_for(
        timeout=120_000
    )
    # "[*]:" running or "[1]:" done; a cell never run shows "[ ]:"
    first = page.locator(".jp-Notebook .jp-Cell .jp-InputPrompt").first
    for _ in range(10):
        page.get_by_role("menuitem", name="Run", exact=True).click()
        page.get_by_role("menuitem", name="Run All Cells", exact=True).click()
        try:
            expect(first).to_have_text(re.compile(r"\[(\*|\d+)\]"), timeout=10_000)
            return
        except AssertionError:
            continue
    raise AssertionError("Run All Cells never started the notebook's first cell")


def _drive(page, expect, url: str, work: Path, frontend: str, shots: Path) -> None:
    """Run the notebook, check the explorer and its round trip, take the screenshots."""
    page.goto(f"{url}/{FRONTENDS[frontend][1]}/explorer.ipynb")
    page.locator(".jp-Notebook .jp-Cell").first.wait_for()
    if frontend == "jupyterlab":
        page.keyboard.press("Control+b")  # hide the file browser: the charts get the width
    _run_all(page, expect, frontend)

    explorer = page.locator(".mw-explorer").first
    cells = explorer.locator("rect.mw-cell")
    expect(cells).to_have_count(N_LAYERS * len(COMPONENTS), timeout=45_000)
    # the second explorer, a localize result: a selection made in Python shows that
    # site's drops, metric x intervention (2 x 4)
    patched = page.locator(".mw-explorer").nth(1)
    expect(patched.locator("rect.mw-grid-cell")).to_have_count(8, timeout=180_000)
    expect(patched.locator("rect.mw-selected")).to_have_attribute("data-layer", "4")
    layer, comp = CLICKED["layer"], CLICKED["component"]
    target = explorer.locator(f'rect.mw-cell[data-layer="{layer}"][data-component="{comp}"]')
    target.hover()
    tooltip = explorer.locator(".mw-tooltip")
    expect(tooltip).to_be_visible()
    expect(tooltip).to_contain_text(f"layer {layer} \u00b7 {comp}")
    expect(tooltip).to_contain_text("label_shuffle")

    target.click()
    written = work / "selected.json"
    # the kernel answers once the later cells (models, extraction) have run
    deadline = time.monotonic() + 180
    while not written.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert written.exists(), "the click never reached the kernel's `selected` trait"
    assert json.loads(written.read_text()) == CLICKED

    # the kernel answered with the probe's per-class histograms (2 classes x 20 bins)
    # and its test sentences: label, prediction, score (the test split is all 200 here)
    expect(explorer.locator("svg.mw-histogram rect.mw-bar")).to_have_count(40)
    expect(explorer.locator("rect.mw-selected")).to_have_attribute("data-layer", str(layer))
    sentences = explorer.locator(".mw-below .mw-samples tbody tr")
    expect(sentences).to_have_count(12)
    expect(explorer.locator(".mw-below")).to_contain_text("of 200 test sentences")
    expect(sentences.first).to_contain_text("sentence number")
    target.hover()
    explorer.screenshot(path=str(shots / "layer_explorer.png"))

    _check_views(page, expect, shots)


def _shot_with_tooltip(page, element, path: Path) -> None:
    """Screenshot ``element`` together with the vega tooltip showing beside it."""
    box = element.bounding_box()
    tip = page.locator("#vg-tooltip-element").bounding_box() or box
    left, top = min(box["x"], tip["x"]), min(box["y"], tip["y"])
    right = max(box["x"] + box["width"], tip["x"] + tip["width"])
    bottom = max(box["y"] + box["height"], tip["y"] + tip["height"])
    clip = {"x": left - 4, "y": top - 4, "width": right - left + 8, "height": bottom - top + 8}
    page.screenshot(path=str(path), clip=clip)


def _check_views(page, expect, shots: Path) -> None:
    """The result's chart widget, the attention view and the token view."""
    charts = page.locator(".mw-chart")
    expect(charts).to_have_count(2, timeout=120_000)  # the detect result's, the attention's
    result_chart = charts.first
    points = result_chart.locator("g.mark-symbol.role-mark path")
    expect(points.first).to_be_visible(timeout=30_000)
    expect(result_chart.locator("details summary")).to_have_count(1)  # the export menu
    # the topmost point (a probe's peak): its tooltip opens inside the chart, not over the
    # table below it
    tops = points.evaluate_all("ps => ps.map(p => p.getBoundingClientRect().top)")
    points.nth(tops.index(min(tops))).hover()
    tooltip = page.locator("#vg-tooltip-element.visible")
    expect(tooltip).to_be_visible()
    expect(tooltip).to_contain_text("score")
    _shot_with_tooltip(page, result_chart, shots / "chart.png")

    attention = charts.nth(1)
    expect(attention.locator("g.mark-rect.role-mark path")).to_have_count(
        INDUCTION_CELLS, timeout=30_000
    )
    expect(attention).to_contain_text("head:0.0")
    attention.locator("g.mark-rect.role-mark path").nth(40).hover()
    expect(tooltip).to_contain_text("weight")
    _shot_with_tooltip(page, attention, shots / "attention_view.png")

    views = page.locator(".mw-tokens")
    expect(views).to_have_count(2, timeout=180_000)
    repeats, grammar = views.nth(0), views.nth(1)
    # toy-induction: 4 sequences of 16 tokens; the second copy lights up as "second_copy"
    expect(repeats.locator("tr")).to_have_count(4)
    expect(repeats.locator("span.mw-token")).to_have_count(4 * 16)
    expect(repeats).to_contain_text("second_copy")
    expect(grammar.locator("tr")).to_have_count(6)
    for view in (repeats, grammar):
        colours = view.locator("span.mw-token").evaluate_all(
            "ts => ts.map(t => getComputedStyle(t).backgroundColor)"
        )
        assert len(set(colours)) > 3, colours  # coloured by score, not one flat colour
    page.mouse.move(1, 1)  # no row highlighted by the pointer in the pictures
    repeats.screenshot(path=str(shots / "token_view_induction.png"))
    grammar.screenshot(path=str(shots / "token_view.png"))

    clipped = page.evaluate(CLIPPED_TEXT)
    assert clipped == [], f"chart text outside its SVG: {clipped[:10]}"

    _check_launcher(page, expect)


def _check_launcher(page, expect) -> None:
    """Run turns off while a run goes, Cancel stops it, a full run moves the one bar."""
    form = page.locator(".widget-vbox").filter(has=page.get_by_role("button", name="Cancel"))
    form = form.last
    run, cancel = (form.get_by_role("button", name=n, exact=True) for n in ("Run", "Cancel"))
    status = form.locator(".widget-label").last
    expect(run).to_be_enabled(timeout=120_000)
    expect(cancel).to_be_disabled()
    run.click()
    expect(form.get_by_role("button", name="Running\u2026")).to_be_disabled()
    expect(cancel).to_be_enabled()
    cancel.click()
    expect(status).to_have_text("cancelled", timeout=120_000)
    expect(form).to_contain_text("press Run to start again")
    expect(run).to_be_enabled()
    run.click()
    bar = form.locator(".progress-bar")
    widths: list[float] = []
    deadline = time.monotonic() + 300
    while status.text_content() != "done" and time.monotonic() < deadline:
        width = bar.evaluate("b => parseFloat(b.style.width) || 0")
        if not widths or width != widths[-1]:
            widths.append(width)
        time.sleep(0.1)
    assert status.text_content() == "done", status.text_content()
    # the bar moved through extraction, never back (one bar: no second tqdm bar below it)
    assert widths == sorted(widths) and len([w for w in widths if 15 < w < 70]) >= 3, widths
    expect(form.locator(".mw-verdict")).to_contain_text("'animacy' is decodable")
    assert form.locator(".widget-hprogress").count() == 1


def _check_untrusted(page, expect, url: str, frontend: str) -> None:
    """A shipped notebook opened untrusted shows its charts' PNG fallbacks, not widgets."""
    page = page.context.browser.new_page()  # a second tab: the first keeps its notebook
    page.set_default_timeout(30_000)
    page.goto(f"{url}/{FRONTENDS[frontend][1]}/{SHIPPED}")
    outputs = page.locator(".jp-Notebook .jp-OutputArea-output")
    expect(outputs.first).to_be_visible(timeout=30_000)
    images = page.locator('.jp-OutputArea-output[data-mime-type="image/png"] img')
    expect(images).to_have_count(2, timeout=30_000)  # the two results' charts
    assert page.get_by_text("Error displaying widget").count() == 0
    assert page.locator(".mw-chart").count() == 0  # untrusted: no widget code ran
    loaded = images.evaluate_all("imgs => imgs.map(i => i.complete && i.naturalWidth > 0)")
    assert loaded == [True, True]


def _check_nbconvert_html(browser, expect, tmp_path: Path) -> None:
    """An executed notebook of every widget kind, as nbconvert's HTML, shows each chart's
    PNG fallback (loaded, not broken) and the launcher's summary, offline (file://, every
    http request refused)."""
    from nbclient import NotebookClient
    from nbconvert import HTMLExporter
    from test_notebooks import WIDGET_CELLS  # tests/ is on sys.path (rootdir conftest)

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in WIDGET_CELLS])
    NotebookClient(nb, timeout=300, kernel_name="python3", store_widget_state=False).execute()
    page_file = tmp_path / "executed.html"
    page_file.write_text(HTMLExporter().from_notebook_node(nb)[0])
    page = browser.new_page()
    # offline: nbconvert's page asks a CDN for require.js and MathJax; refuse it
    page.route(
        re.compile(r"^https?://"),
        lambda route: route.abort(),
    )
    page.goto(page_file.as_uri())
    images = page.locator(".jp-OutputArea-output img")
    expect(images).to_have_count(2)
    loaded = images.evaluate_all("imgs => imgs.map(i => i.complete && i.naturalWidth > 0)")
    assert loaded == [True, True]
    expect(page.get_by_text("Launcher: detect on toy-grammar")).to_be_visible()


def test_widgets_render_and_sync_in_a_real_browser(jupyter, tmp_path):
    try:
        from playwright.sync_api import expect, sync_playwright
    except ImportError:
        pytest.fail("playwright is missing: run scripts/browser_setup.sh", pytrace=False)
    chromium = _chromium()
    url, work, frontend = jupyter
    # the README's screenshots come from JupyterLab; Notebook 7's stay with the test
    shots = SHOTS if frontend == "jupyterlab" else tmp_path / "shots"
    shots.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        console: list[str] = []
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 1400})
            page.set_default_timeout(30_000)
            requests: list[str] = []
            page.on("request", lambda request: requests.append(request.url))
            page.on("console", lambda msg: console.append(f"{msg.type}: {msg.text}"))
            page.on("pageerror", lambda exc: console.append(f"pageerror: {exc}"))
            try:
                _drive(page, expect, url, work, frontend, shots)
                _check_untrusted(page, expect, url, frontend)
                outside = [u for u in requests if not u.startswith((url, "blob:", "data:"))]
                assert outside == [], f"requests left localhost (a CDN?): {outside[:5]}"
                if frontend == "jupyterlab":  # the HTML is the same whichever frontend
                    _check_nbconvert_html(browser, expect, tmp_path)
            except AssertionError as exc:
                page.screenshot(path=str(tmp_path / "failure.png"), full_page=True)
                errors = [line for line in console if line.startswith(("error", "pageerror"))]
                raise AssertionError(
                    f"{exc}\npage at failure: {tmp_path / 'failure.png'}\n"
                    + "\n".join(errors[-10:])
                ) from exc
        finally:
            browser.close()
