import assert from "node:assert/strict";
import { test } from "node:test";
import { luminance, notebookPalette, parseColor, vegaConfig } from "../src/theme.js";

const cssFrom = (vars) => (name) => vars[name] || "";

test("colours parse from hex and rgb() forms", () => {
  assert.deepEqual(parseColor("#1f5fa8"), [31, 95, 168]);
  assert.deepEqual(parseColor(" #fff "), [255, 255, 255]);
  assert.deepEqual(parseColor("rgba(10, 20, 30, 0.5)"), [10, 20, 30]);
  assert.equal(parseColor("var(--x)"), null);
  assert.ok(luminance([255, 255, 255]) > 0.99 && luminance([0, 0, 0]) === 0);
});

test("a dark JupyterLab theme gives a dark palette with the theme's text colour", () => {
  const dark = notebookPalette(
    cssFrom({ "--jp-layout-color0": "#111111", "--jp-ui-font-color1": "rgba(255,255,255,0.87)" }),
  );
  assert.equal(dark.dark, true);
  assert.equal(dark.text, "rgba(255,255,255,0.87)");
  const config = vegaConfig(dark);
  assert.equal(config.background, null); // transparent: the cell's own background shows
  assert.equal(config.axis.labelColor, dark.text);
  assert.equal(config.rule.color, dark.text); // black chance lines would vanish on dark
});

test("a light theme, VS Code's variables, and no variables at all", () => {
  assert.equal(notebookPalette(cssFrom({ "--jp-layout-color0": "white" })).dark, false);
  const vscode = notebookPalette(
    cssFrom({ "--vscode-editor-background": "#1e1e1e", "--vscode-editor-foreground": "#d4d4d4" }),
  );
  assert.equal(vscode.dark, true);
  assert.equal(vscode.text, "#d4d4d4");
  const bare = notebookPalette(cssFrom({}));
  assert.equal(bare.dark, false);
  assert.equal(bare.text, "#222");
});
