// Theme-aware Vega config: the notebook's own colours (JupyterLab / Notebook 7 CSS
// variables, VS Code's) for text, axes and grid, on a transparent background, so a chart
// reads the same in a light and a dark theme.

/** "#rrggbb", "#rgb" or "rgb(r, g, b)" -> [r, g, b] in 0..255, or null. */
export function parseColor(text) {
  const s = String(text || "").trim();
  let m = s.match(/^#([0-9a-f]{6})$/i);
  if (m) return [0, 2, 4].map((i) => parseInt(m[1].slice(i, i + 2), 16));
  m = s.match(/^#([0-9a-f]{3})$/i);
  if (m) return [...m[1]].map((c) => parseInt(c + c, 16));
  m = s.match(/^rgba?\(\s*(\d+)[\s,]+(\d+)[\s,]+(\d+)/i);
  return m ? [Number(m[1]), Number(m[2]), Number(m[3])] : null;
}

/** Relative luminance (WCAG) of an [r, g, b] colour, 0 (black) .. 1 (white). */
export function luminance([r, g, b]) {
  const lin = (v) => {
    const c = v / 255;
    return c <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4;
  };
  return 0.2126 * lin(r) + 0.7152 * lin(g) + 0.0722 * lin(b);
}

/**
 * The page's palette from its CSS variables.
 *
 * `css(name)` returns a CSS custom property's value ("" when unset). A dark theme is one
 * whose background is dark; with no theme variables at all the page is taken as light.
 */
export function notebookPalette(css) {
  const pick = (...names) => names.map((n) => css(n).trim()).find((v) => parseColor(v)) || "";
  const background = pick("--jp-layout-color0", "--vscode-editor-background");
  const bg = parseColor(background);
  const dark = bg ? luminance(bg) < 0.3 : false;
  const text = pick("--jp-ui-font-color1", "--vscode-editor-foreground") || (dark ? "#ddd" : "#222");
  const muted = pick("--jp-ui-font-color2") || (dark ? "#aaa" : "#555");
  const grid = pick("--jp-border-color2") || (dark ? "#444" : "#ddd");
  return { dark, text, muted, grid, background: background || (dark ? "#111" : "#fff") };
}

/** A Vega config that draws text, axes and grid in the palette's colours. */
export function vegaConfig(palette) {
  const axis = {
    labelColor: palette.text,
    titleColor: palette.text,
    domainColor: palette.muted,
    tickColor: palette.muted,
    gridColor: palette.grid,
  };
  const legend = { labelColor: palette.text, titleColor: palette.text };
  return {
    background: null,
    axis,
    legend,
    header: { labelColor: palette.text, titleColor: palette.text },
    title: { color: palette.text, subtitleColor: palette.muted },
    view: { stroke: palette.grid },
    // marks drawn "black" (chance lines, rules) stay visible on a dark background
    rule: { color: palette.text },
    text: { color: palette.text },
  };
}
