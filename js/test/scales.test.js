import assert from "node:assert/strict";
import { test } from "node:test";
import {
  MISSING,
  divergingColor,
  extent,
  formatNumber,
  interpolate,
  normalize,
  sequentialColor,
  textColorOn,
  viridisGradient,
} from "../src/scales.js";

test("extent ignores NaN and infinities; null when nothing is finite", () => {
  assert.deepEqual(extent(new Float32Array([0.5, Number.NaN, 0.875, 0.75])), [0.5, 0.875]);
  assert.deepEqual(extent([Infinity, 2, -Infinity]), [2, 2]);
  assert.equal(extent([Number.NaN]), null);
  assert.equal(extent([]), null);
});

test("normalize clamps to [0, 1], keeps NaN, and centres a flat domain", () => {
  assert.equal(normalize(0.75, 0.5, 1), 0.5);
  assert.equal(normalize(2, 0, 1), 1);
  assert.equal(normalize(-2, 0, 1), 0);
  assert.equal(normalize(3, 3, 3), 0.5);
  assert.ok(Number.isNaN(normalize(Number.NaN, 0, 1)));
});

test("interpolate hits the stops exactly and blends between them", () => {
  const stops = [
    [0, 0, 0],
    [100, 200, 50],
  ];
  assert.deepEqual(interpolate(stops, 0), [0, 0, 0]);
  assert.deepEqual(interpolate(stops, 1), [100, 200, 50]);
  assert.deepEqual(interpolate(stops, 0.5), [50, 100, 25]);
  assert.deepEqual(interpolate(stops, 7), [100, 200, 50]);
});

test("viridis runs dark purple (low) to yellow (high); missing is grey", () => {
  assert.equal(sequentialColor(0, 0, 1), "rgb(68, 1, 84)");
  assert.equal(sequentialColor(1, 0, 1), "rgb(253, 231, 37)");
  assert.equal(sequentialColor(Number.NaN, 0, 1), MISSING);
  const lum = (c) => c.match(/\d+/g).map(Number).reduce((a, b) => a + b, 0);
  const steps = [0, 0.25, 0.5, 0.75, 1].map((v) => lum(sequentialColor(v, 0, 1)));
  for (let i = 1; i < steps.length; i++) assert.ok(steps[i] > steps[i - 1], "brighter as the score rises");
});

test("the diverging scale is white at zero, blue below and red above", () => {
  assert.equal(divergingColor(0, 2), "rgb(247, 247, 247)");
  assert.equal(divergingColor(-2, 2), "rgb(33, 102, 172)");
  assert.equal(divergingColor(5, 2), "rgb(178, 24, 43)");
  assert.equal(divergingColor(Number.NaN, 2), MISSING);
});

test("cell text is white on dark cells and black on light ones", () => {
  assert.equal(textColorOn(sequentialColor(0, 0, 1)), "#fff");
  assert.equal(textColorOn(sequentialColor(1, 0, 1)), "#000");
  assert.equal(textColorOn(MISSING), "#000");
});

test("numbers format with fixed decimals and an em dash when missing", () => {
  assert.equal(formatNumber(0.91234), "0.912");
  assert.equal(formatNumber(0.5, 2), "0.50");
  assert.equal(formatNumber(Number.NaN), "\u2014");
  assert.match(viridisGradient(), /^linear-gradient\(to right, rgb\(68, 1, 84\) 0\.0%.*rgb\(253, 231, 37\) 100\.0%\)$/);
});
