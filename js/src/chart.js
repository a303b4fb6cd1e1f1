// Chart: the anywidget view of mechwidgets.viz.chart_widget.Chart.
//
// Draws the Vega-Lite spec in the `spec` trait with vega-embed, bundled here from npm
// (vega, vega-lite, vega-embed) so a chart works offline: hover tooltips, the export
// menu (PNG / SVG), and the notebook theme's colours, redrawn when the theme changes.
//
//   export default { render }  // anywidget's ESM entry: render({ model, el })

import embed from "vega-embed";
import { notebookPalette, vegaConfig } from "./theme.js";

/** vega-embed options: SVG (crisp, searchable text), export only (no network actions). */
export function embedOptions(palette) {
  return {
    renderer: "svg",
    actions: { export: true, source: true, compiled: false, editor: false },
    config: vegaConfig(palette),
    theme: palette.dark ? "dark" : undefined,
    tooltip: { theme: palette.dark ? "dark" : "light" },
    downloadFileName: "chart",
  };
}

function render({ model, el }) {
  const root = document.createElement("div");
  root.className = "mw-chart";
  el.appendChild(root);
  let current = null;
  let drawn = 0;

  async function draw() {
    const ticket = ++drawn;
    const style = getComputedStyle(el);
    const palette = notebookPalette((name) => style.getPropertyValue(name));
    const spec = model.get("spec");
    const result = await embed(root, spec, embedOptions(palette));
    if (ticket !== drawn) return result.finalize(); // a newer draw started meanwhile
    if (current) current.finalize();
    current = result;
    root.dataset.theme = palette.dark ? "dark" : "light";
  }

  const shown = draw();
  model.on("change:spec", draw);
  // JupyterLab switches themes by attributes on <body>; redraw in the new colours
  const watcher = new MutationObserver(() => draw());
  watcher.observe(document.body, { attributes: true, attributeFilter: ["data-jp-theme-light"] });
  return shown.then(() => () => {
    watcher.disconnect();
    model.off("change:spec", draw);
    if (current) current.finalize();
  });
}

export default { render };
