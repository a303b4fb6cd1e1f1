import assert from "node:assert/strict";
import { test } from "node:test";
import widget, { tooltipText } from "../src/layer_explorer.js";

test("the module is an anywidget ESM entry", () => {
  assert.equal(typeof widget.render, "function");
});

test("the tooltip shows the score with its CI and every control", () => {
  const grid = {
    shape: [2, 3],
    layers: [0, 1],
    components: ["resid", "attn", "mlp"],
    scores: new Float32Array([0.5, 0.6, 0.7, 0.8, 0.9, 0.95]),
    ciLow: new Float32Array([0.4, 0.5, 0.6, 0.7, 0.8, 0.9]),
    ciHigh: new Float32Array([0.6, 0.7, 0.8, 0.9, 1.0, 1.0]),
    controls: ["label_shuffle"],
    controlScores: new Float32Array([0.51, 0.49, 0.5, 0.52, 0.48, 0.5]),
  };
  assert.equal(
    tooltipText(grid, "accuracy", 1, 1),
    "layer 1 \u00b7 attn\naccuracy 0.900 [0.800, 1.000]\nlabel_shuffle 0.480",
  );
});
