// LayerExplorer: the anywidget view of mechwidgets.viz.widgets.LayerExplorer.
//
// The Python traitlets are the whole contract. The view draws a layer x component heatmap
// of `scores` (float32 buffer of `shape` = [layers, components]), shows the CI and the
// control scores of the cell under the pointer, and on click writes `selected` =
// {layer, component} back to Python, which answers with a `detail_*` payload: per-class
// histograms of that probe's scores, or a patching grid, drawn below the heatmap.
// Below that, `samples_html`: the probe's test sentences and token view (HTML from Python).
//
//   export default { render }  // anywidget's ESM entry: render({ model, el })

import { decodeFloat32, index2 } from "./buffers.js";
import { cellAt, cellRect, gridLayout, histogramBars, toLocal } from "./layout.js";
import {
  divergingColor,
  extent,
  formatNumber,
  sequentialColor,
  textColorOn,
  viridisGradient,
} from "./scales.js";

const SVG = "http://www.w3.org/2000/svg";
const CLASS_COLORS = ["#4c78a8", "#f58518", "#54a24b", "#e45756", "#b279a2", "#9d755d"];
const STYLE = `
.mw-explorer { font: 12px var(--jp-ui-font-family, system-ui, sans-serif);
  color: var(--jp-ui-font-color1, #222); position: relative; padding: 4px; }
.mw-explorer .mw-head { display: flex; gap: 12px; align-items: center; margin: 4px 0; }
.mw-explorer .mw-title { font-weight: 600; }
.mw-explorer .mw-legend { display: flex; gap: 4px; align-items: center; }
.mw-explorer .mw-legend-bar { width: 120px; height: 10px; }
.mw-explorer svg { fill: currentColor; }
.mw-explorer svg text { font-size: 11px; }
.mw-explorer svg text.mw-in-cell { font-size: 10px; pointer-events: none; }
.mw-explorer rect.mw-cell { stroke: var(--jp-layout-color0, #fff); stroke-width: 1; }
.mw-explorer rect.mw-cell.mw-selected { stroke: #e4572e; stroke-width: 3; }
.mw-explorer .mw-heatmap { cursor: pointer; }
.mw-explorer .mw-tooltip { position: absolute; pointer-events: none; display: none;
  background: var(--jp-layout-color1, #fff); border: 1px solid #999; border-radius: 3px;
  padding: 4px 6px; white-space: pre; box-shadow: 0 1px 4px rgba(0,0,0,.2); z-index: 10; }
.mw-explorer .mw-detail { margin-top: 8px; }
.mw-explorer .mw-detail-title { font-weight: 600; margin-bottom: 2px; }
.mw-explorer .mw-below { margin-top: 8px; max-height: 420px; overflow: auto; }
.mw-explorer .mw-below table { border-collapse: collapse; }
.mw-explorer .mw-below td, .mw-explorer .mw-below th { padding: 2px 8px; text-align: right; }
.mw-explorer .mw-below th { border-bottom: 1px solid currentColor; }
`;

function svgEl(tag, attrs = {}, text = null) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (text !== null) node.textContent = text;
  return node;
}

function htmlEl(tag, className, text = null) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== null) node.textContent = text;
  return node;
}

/** The heatmap's data, decoded from the model's traits. */
function readGrid(model) {
  const shape = model.get("shape");
  const controls = model.get("controls");
  return {
    shape,
    layers: model.get("layers"),
    components: model.get("components"),
    scores: decodeFloat32(model.get("scores"), shape),
    ciLow: decodeFloat32(model.get("ci_low"), shape),
    ciHigh: decodeFloat32(model.get("ci_high"), shape),
    controls,
    controlScores: decodeFloat32(model.get("control_scores"), [controls.length, ...shape]),
  };
}

/** Tooltip text of the probe at layer index i, component index j. */
export function tooltipText(grid, metric, i, j) {
  const k = index2(grid.shape, i, j);
  const lines = [
    `layer ${grid.layers[i]} \u00b7 ${grid.components[j]}`,
    `${metric} ${formatNumber(grid.scores[k])} ` +
      `[${formatNumber(grid.ciLow[k])}, ${formatNumber(grid.ciHigh[k])}]`,
  ];
  const cells = grid.shape[0] * grid.shape[1];
  grid.controls.forEach((name, c) => {
    lines.push(`${name} ${formatNumber(grid.controlScores[c * cells + k])}`);
  });
  return lines.join("\n");
}

function drawHeatmap(model, parts) {
  const grid = readGrid(model);
  const [nLayers, nComps] = grid.shape;
  const range = extent(grid.scores) || [0, 1];
  const longest = Math.max(1, ...grid.components.map((c) => c.length));
  const lay = gridLayout({ nRows: nComps, nCols: nLayers, rowLabelWidth: 12 + 7 * longest });
  const selected = model.get("selected") || {};

  parts.title.textContent = `${model.get("label")}: ${model.get("metric")} by layer \u00d7 component`;
  parts.legendLo.textContent = formatNumber(range[0], 2);
  parts.legendHi.textContent = formatNumber(range[1], 2);

  const svg = parts.heatmap;
  svg.replaceChildren();
  svg.setAttribute("width", lay.width);
  svg.setAttribute("height", lay.height);
  svg.setAttribute("viewBox", `0 0 ${lay.width} ${lay.height}`);
  for (let j = 0; j < nComps; j++) {
    const y = lay.top + (j + 0.5) * lay.cellH;
    svg.append(svgEl("text", { x: lay.left - 6, y, "text-anchor": "end", "dominant-baseline": "middle" }, grid.components[j]));
    for (let i = 0; i < nLayers; i++) {
      const r = cellRect(lay, j, i);
      const value = grid.scores[index2(grid.shape, i, j)];
      const fill = sequentialColor(value, range[0], range[1]);
      const isSel = selected.layer === grid.layers[i] && selected.component === grid.components[j];
      svg.append(
        svgEl("rect", {
          class: isSel ? "mw-cell mw-selected" : "mw-cell",
          x: r.x,
          y: r.y,
          width: r.w,
          height: r.h,
          fill,
          "data-layer": grid.layers[i],
          "data-component": grid.components[j],
        }),
      );
      if (lay.cellW >= 30) {
        const attrs = { x: r.x + r.w / 2, y: r.y + r.h / 2, class: "mw-in-cell", fill: textColorOn(fill) };
        svg.append(svgEl("text", { ...attrs, "text-anchor": "middle", "dominant-baseline": "middle" }, formatNumber(value, 2)));
      }
    }
  }
  const labelEvery = Math.ceil(24 / lay.cellW);
  const yAxis = lay.top + nComps * lay.cellH;
  for (let i = 0; i < nLayers; i += labelEvery) {
    svg.append(svgEl("text", { x: lay.left + (i + 0.5) * lay.cellW, y: yAxis + 12, "text-anchor": "middle" }, grid.layers[i]));
  }
  svg.append(svgEl("text", { x: lay.left + (nLayers * lay.cellW) / 2, y: yAxis + 28, "text-anchor": "middle" }, "layer"));
  return { grid, lay };
}

function drawHistogram(model, box) {
  const classes = model.get("detail_rows");
  const shape = model.get("detail_shape");
  const counts = decodeFloat32(model.get("detail_values"), shape);
  const edges = decodeFloat32(model.get("detail_edges"), [shape[1] + 1]);
  const plot = { x: 40, y: 8, w: 360, h: 120 };
  const svg = svgEl("svg", { class: "mw-histogram", width: plot.x + plot.w + 140, height: plot.y + plot.h + 34 });
  for (const bar of histogramBars(counts, shape[0], shape[1], plot)) {
    const color = CLASS_COLORS[bar.cls % CLASS_COLORS.length];
    svg.append(svgEl("rect", { class: "mw-bar", x: bar.x, y: bar.y, width: Math.max(0, bar.w - 1), height: bar.h, fill: color, "fill-opacity": 0.55 }));
  }
  const base = plot.y + plot.h;
  svg.append(svgEl("line", { x1: plot.x, y1: base, x2: plot.x + plot.w, y2: base, stroke: "currentColor" }));
  const ticks = [0, Math.floor(shape[1] / 2), shape[1]];
  for (const t of ticks) {
    const x = plot.x + (t / shape[1]) * plot.w;
    svg.append(svgEl("text", { x, y: base + 13, "text-anchor": "middle" }, formatNumber(edges[t], 2)));
  }
  svg.append(svgEl("text", { x: plot.x + plot.w / 2, y: base + 28, "text-anchor": "middle" }, "probe score"));
  svg.append(svgEl("text", { x: 4, y: plot.y + 8 }, "count"));
  classes.forEach((name, c) => {
    const y = plot.y + 10 + 16 * c;
    let n = 0;
    for (let b = 0; b < shape[1]; b++) n += counts[c * shape[1] + b];
    svg.append(svgEl("rect", { x: plot.x + plot.w + 12, y: y - 8, width: 10, height: 10, fill: CLASS_COLORS[c % CLASS_COLORS.length] }));
    svg.append(svgEl("text", { x: plot.x + plot.w + 26, y }, `${name} (n=${n})`));
  });
  box.append(svg);
}

function drawPatchingGrid(model, box) {
  const rows = model.get("detail_rows");
  const cols = model.get("detail_cols");
  const shape = model.get("detail_shape");
  const values = decodeFloat32(model.get("detail_values"), shape);
  const range = extent(values) || [0, 0];
  const absMax = Math.max(Math.abs(range[0]), Math.abs(range[1]), 1e-12);
  const longest = Math.max(1, ...rows.map((r) => String(r).length));
  const lay = gridLayout({ nRows: shape[0], nCols: shape[1], rowLabelWidth: 12 + 7 * longest, rowHeight: 22 });
  const svg = svgEl("svg", { class: "mw-grid", width: lay.width, height: lay.height });
  for (let r = 0; r < shape[0]; r++) {
    svg.append(svgEl("text", { x: lay.left - 6, y: lay.top + (r + 0.5) * lay.cellH, "text-anchor": "end", "dominant-baseline": "middle" }, rows[r]));
    for (let c = 0; c < shape[1]; c++) {
      const rect = cellRect(lay, r, c);
      const v = values[index2(shape, r, c)];
      const fill = divergingColor(v, absMax);
      const node = svgEl("rect", { class: "mw-grid-cell", x: rect.x, y: rect.y, width: rect.w, height: rect.h, fill });
      node.append(svgEl("title", {}, `${rows[r]} \u00b7 ${cols[c]}: ${formatNumber(v)}`));
      svg.append(node);
      if (lay.cellW >= 30) {
        const at = { x: rect.x + rect.w / 2, y: rect.y + rect.h / 2, class: "mw-in-cell", fill: textColorOn(fill) };
        svg.append(svgEl("text", { ...at, "text-anchor": "middle", "dominant-baseline": "middle" }, formatNumber(v, 2)));
      }
    }
  }
  const every = Math.ceil(24 / lay.cellW);
  for (let c = 0; c < shape[1]; c += every) {
    svg.append(svgEl("text", { x: lay.left + (c + 0.5) * lay.cellW, y: lay.top + shape[0] * lay.cellH + 12, "text-anchor": "middle" }, cols[c]));
  }
  box.append(svg);
}

function drawDetail(model, parts) {
  const box = parts.detail;
  box.replaceChildren(htmlEl("div", "mw-detail-title", model.get("detail_title")));
  const kind = model.get("detail_kind");
  if (kind === "histogram") drawHistogram(model, box);
  else if (kind === "grid") drawPatchingGrid(model, box);
}

// The clicked probe's sentences and token view: HTML built (and escaped) by Python.
function drawBelow(model, parts) {
  parts.below.innerHTML = model.get("samples_html");
}

function buildSkeleton(el) {
  const root = htmlEl("div", "mw-explorer");
  root.append(htmlEl("style", null, STYLE));
  const head = htmlEl("div", "mw-head");
  const title = htmlEl("span", "mw-title");
  const labelSelect = htmlEl("select", "mw-label-select");
  const legend = htmlEl("span", "mw-legend");
  const legendLo = htmlEl("span");
  const legendBar = htmlEl("span", "mw-legend-bar");
  legendBar.style.background = viridisGradient();
  const legendHi = htmlEl("span");
  legend.append(legendLo, legendBar, legendHi);
  head.append(title, labelSelect, legend);
  const heatmap = svgEl("svg", { class: "mw-heatmap" });
  const tooltip = htmlEl("div", "mw-tooltip");
  const detail = htmlEl("div", "mw-detail");
  const below = htmlEl("div", "mw-below");
  root.append(head, heatmap, tooltip, detail, below);
  el.replaceChildren(root);
  return { root, title, labelSelect, legendLo, legendHi, heatmap, tooltip, detail, below };
}

function fillLabels(model, select) {
  const labels = model.get("labels");
  select.replaceChildren(...labels.map((name) => htmlEl("option", null, name)));
  select.value = model.get("label");
  select.style.display = labels.length > 1 ? "" : "none";
}

function render({ model, el }) {
  const parts = buildSkeleton(el);
  let state = drawHeatmap(model, parts);
  fillLabels(model, parts.labelSelect);
  drawDetail(model, parts);
  drawBelow(model, parts);

  const cellUnder = (event) => {
    const rect = parts.heatmap.getBoundingClientRect();
    const p = toLocal(event.clientX, event.clientY, rect, state.lay.width, state.lay.height);
    const hit = cellAt(state.lay, p.x, p.y);
    return hit && { i: hit.col, j: hit.row, p };
  };
  const onMove = (event) => {
    const hit = cellUnder(event);
    if (!hit) {
      parts.tooltip.style.display = "none";
      return;
    }
    const tip = parts.tooltip;
    tip.textContent = tooltipText(state.grid, model.get("metric"), hit.i, hit.j);
    tip.style.display = "block";
    // right of the pointer, vertically centred on it: it covers cells to the right only
    const box = parts.root.getBoundingClientRect();
    tip.style.left = `${event.clientX - box.left + 16}px`;
    tip.style.top = `${event.clientY - box.top - tip.offsetHeight / 2}px`;
  };
  const onLeave = () => {
    parts.tooltip.style.display = "none";
  };
  const onClick = (event) => {
    const hit = cellUnder(event);
    if (!hit) return;
    model.set("selected", { layer: state.grid.layers[hit.i], component: state.grid.components[hit.j] });
    model.save_changes();
  };
  const onLabel = () => {
    model.set("label", parts.labelSelect.value);
    model.save_changes();
  };
  parts.heatmap.addEventListener("pointermove", onMove);
  parts.heatmap.addEventListener("pointerleave", onLeave);
  parts.heatmap.addEventListener("click", onClick);
  parts.labelSelect.addEventListener("change", onLabel);

  const redrawHeatmap = () => {
    state = drawHeatmap(model, parts);
  };
  const relabel = () => fillLabels(model, parts.labelSelect);
  const redrawDetail = () => drawDetail(model, parts);
  const redrawBelow = () => drawBelow(model, parts);
  const handlers = [
    ...["scores", "ci_low", "ci_high", "control_scores", "shape", "selected", "metric"].map(
      (name) => [`change:${name}`, redrawHeatmap],
    ),
    ["change:labels", relabel],
    ["change:label", relabel],
    ...["detail_kind", "detail_title", "detail_values", "detail_edges", "detail_shape"].map(
      (name) => [`change:${name}`, redrawDetail],
    ),
    ["change:samples_html", redrawBelow],
  ];
  for (const [event, fn] of handlers) model.on(event, fn);
  return () => {
    for (const [event, fn] of handlers) model.off(event, fn);
  };
}

export default { render };
