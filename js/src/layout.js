// Geometry of the heatmaps and histograms: where each cell or bar goes, and which cell a
// pointer is over.
//
// One pointer handler on the whole SVG finds its cell with `cellAt` (instead of a
// listener per cell), so hover and click cost the same for 10 cells or 10,000, and the
// geometry is testable without a DOM.
//
//   const lay = gridLayout({ nRows: 3, nCols: 12, rowLabelWidth: 60 });
//   const hit = cellAt(lay, x, y); // {row, col} or null

/**
 * Layout of an nRows x nCols grid of cells with row labels on the left and column labels
 * below. Cells are square-ish: as wide as fits in `maxWidth`, clamped to
 * [minCell, maxCell]; rows are `rowHeight` tall unless that is smaller than minCell.
 */
export function gridLayout({
  nRows,
  nCols,
  rowLabelWidth = 60,
  colLabelHeight = 34,
  top = 4,
  right = 8,
  maxWidth = 720,
  minCell = 12,
  maxCell = 48,
  rowHeight = 30,
}) {
  const room = maxWidth - rowLabelWidth - right;
  const cellW = Math.max(minCell, Math.min(maxCell, Math.floor(room / Math.max(1, nCols))));
  const cellH = Math.max(minCell, rowHeight);
  return {
    nRows,
    nCols,
    left: rowLabelWidth,
    top,
    cellW,
    cellH,
    width: rowLabelWidth + nCols * cellW + right,
    height: top + nRows * cellH + colLabelHeight,
  };
}

/** Rectangle {x, y, w, h} of cell (row, col). */
export function cellRect(layout, row, col) {
  return {
    x: layout.left + col * layout.cellW,
    y: layout.top + row * layout.cellH,
    w: layout.cellW,
    h: layout.cellH,
  };
}

/** The cell {row, col} under point (x, y) in layout coordinates, or null outside the grid. */
export function cellAt(layout, x, y) {
  const col = Math.floor((x - layout.left) / layout.cellW);
  const row = Math.floor((y - layout.top) / layout.cellH);
  if (row < 0 || col < 0 || row >= layout.nRows || col >= layout.nCols) return null;
  return { row, col };
}

/**
 * A client-space pointer position mapped into the coordinates of an element drawn at
 * `width` x `height` whose bounding box on screen is `rect` (handles zoom and CSS scaling).
 */
export function toLocal(clientX, clientY, rect, width, height) {
  const sx = rect.width > 0 ? width / rect.width : 1;
  const sy = rect.height > 0 ? height / rect.height : 1;
  return { x: (clientX - rect.left) * sx, y: (clientY - rect.top) * sy };
}

/**
 * Bars of an overlaid histogram. `counts` is a row-major (nClasses x nBins) array; bars of
 * every class share the box {x, y, w, h} and one count axis, so classes compare by height.
 * Returns [{cls, bin, x, y, w, h, count}], zero-count bars included (h = 0).
 */
export function histogramBars(counts, nClasses, nBins, box) {
  let max = 0;
  for (const c of counts) if (c > max) max = c;
  const bw = box.w / Math.max(1, nBins);
  const bars = [];
  for (let cls = 0; cls < nClasses; cls++) {
    for (let bin = 0; bin < nBins; bin++) {
      const count = counts[cls * nBins + bin];
      const h = max > 0 ? (count / max) * box.h : 0;
      bars.push({ cls, bin, x: box.x + bin * bw, y: box.y + box.h - h, w: bw, h, count });
    }
  }
  return bars;
}
