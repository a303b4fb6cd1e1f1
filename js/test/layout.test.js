import assert from "node:assert/strict";
import { test } from "node:test";
import { cellAt, cellRect, gridLayout, histogramBars, toLocal } from "../src/layout.js";

test("cells fill the width allowed, within the size bounds", () => {
  const lay = gridLayout({ nRows: 3, nCols: 6, rowLabelWidth: 50, maxWidth: 400, right: 10 });
  assert.equal(lay.cellW, 48); // (400 - 60) / 6 = 56, clamped to maxCell
  const many = gridLayout({ nRows: 3, nCols: 200, rowLabelWidth: 50, maxWidth: 400 });
  assert.equal(many.cellW, 12); // would be 1 px; clamped to minCell
  assert.equal(many.width, 50 + 200 * 12 + 8);
  const mid = gridLayout({ nRows: 2, nCols: 20, rowLabelWidth: 40, maxWidth: 448, right: 8 });
  assert.equal(mid.cellW, 20);
  assert.equal(mid.height, mid.top + 2 * mid.cellH + 34);
});

test("every cell's centre hits that cell and nothing else", () => {
  const lay = gridLayout({ nRows: 4, nCols: 7, rowLabelWidth: 33, maxWidth: 300 });
  for (let row = 0; row < 4; row++) {
    for (let col = 0; col < 7; col++) {
      const r = cellRect(lay, row, col);
      assert.deepEqual(cellAt(lay, r.x + r.w / 2, r.y + r.h / 2), { row, col });
      assert.deepEqual(cellAt(lay, r.x, r.y), { row, col }, "top-left edge belongs to the cell");
    }
  }
});

test("points in the labels or past the grid hit nothing", () => {
  const lay = gridLayout({ nRows: 2, nCols: 3, rowLabelWidth: 40 });
  assert.equal(cellAt(lay, 10, lay.top + 1), null);
  assert.equal(cellAt(lay, lay.left + 3 * lay.cellW, lay.top + 1), null);
  assert.equal(cellAt(lay, lay.left + 1, lay.top + 2 * lay.cellH), null);
  assert.equal(cellAt(lay, lay.left + 1, lay.top - 1), null);
});

test("pointer positions map through CSS scaling into layout coordinates", () => {
  const rect = { left: 100, top: 50, width: 200, height: 100 };
  assert.deepEqual(toLocal(150, 75, rect, 400, 200), { x: 100, y: 50 });
  assert.deepEqual(toLocal(100, 50, { left: 100, top: 50, width: 0, height: 0 }, 10, 10), { x: 0, y: 0 });
});

test("histogram bars share one count axis and sit on the baseline", () => {
  const counts = new Float32Array([1, 4, 0, 2, 2, 2]); // 2 classes x 3 bins
  const box = { x: 10, y: 0, w: 30, h: 100 };
  const bars = histogramBars(counts, 2, 3, box);
  assert.equal(bars.length, 6);
  const tallest = bars.find((b) => b.cls === 0 && b.bin === 1);
  assert.equal(tallest.h, 100);
  assert.equal(bars.find((b) => b.cls === 1 && b.bin === 0).h, 50);
  assert.equal(bars.find((b) => b.cls === 0 && b.bin === 2).h, 0);
  for (const b of bars) {
    assert.equal(b.y + b.h, 100);
    assert.equal(b.x, 10 + b.bin * 10);
  }
  assert.ok(histogramBars(new Float32Array(3), 1, 3, box).every((b) => b.h === 0));
});
