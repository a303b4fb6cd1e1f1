// Colour scales and number formatting for the heatmaps.
//
// Pure functions of numbers to CSS colours, so they are unit-tested in node. Sequential
// values (probe scores) use viridis, perceptually uniform and readable in greyscale;
// signed values (patching effects) use a blue-white-red scale centred on zero. Missing
// values (NaN) get a neutral grey, never a colour that could be read as a score.
//
//   const [lo, hi] = extent(scores);
//   rect.setAttribute("fill", sequentialColor(score, lo, hi));

export const MISSING = "#d9d9d9";

// viridis sampled at 9 evenly spaced points (matplotlib's table)
const VIRIDIS = [
  [68, 1, 84],
  [71, 44, 122],
  [59, 81, 139],
  [44, 113, 142],
  [33, 144, 141],
  [39, 173, 129],
  [92, 200, 99],
  [170, 220, 50],
  [253, 231, 37],
];
const DIVERGING = [
  [33, 102, 172],
  [247, 247, 247],
  [178, 24, 43],
];

/** [min, max] of the finite values, or null when there are none. */
export function extent(values) {
  let lo = Infinity;
  let hi = -Infinity;
  for (const v of values) {
    if (Number.isFinite(v)) {
      if (v < lo) lo = v;
      if (v > hi) hi = v;
    }
  }
  return lo <= hi ? [lo, hi] : null;
}

/** Position of v in [lo, hi] as t in [0, 1] (clamped); 0.5 when lo == hi; NaN stays NaN. */
export function normalize(v, lo, hi) {
  if (!Number.isFinite(v)) return NaN;
  if (hi <= lo) return 0.5;
  return Math.min(1, Math.max(0, (v - lo) / (hi - lo)));
}

/** Linear interpolation between evenly spaced RGB stops at t in [0, 1]. */
export function interpolate(stops, t) {
  const x = Math.min(1, Math.max(0, t)) * (stops.length - 1);
  const i = Math.min(stops.length - 2, Math.floor(x));
  const f = x - i;
  return stops[i].map((c, k) => Math.round(c + f * (stops[i + 1][k] - c)));
}

function css([r, g, b]) {
  return `rgb(${r}, ${g}, ${b})`;
}

/** Viridis colour of v on the domain [lo, hi]; grey for missing values. */
export function sequentialColor(v, lo, hi) {
  const t = normalize(v, lo, hi);
  return Number.isNaN(t) ? MISSING : css(interpolate(VIRIDIS, t));
}

/** Blue (negative) - white (0) - red (positive) colour of v on [-absMax, absMax]. */
export function divergingColor(v, absMax) {
  const t = normalize(v, -absMax, absMax);
  return Number.isNaN(t) ? MISSING : css(interpolate(DIVERGING, t));
}

/** Black or white, whichever reads better on the CSS `rgb(...)` background given. */
export function textColorOn(background) {
  const m = /rgb\((\d+), (\d+), (\d+)\)/.exec(background);
  if (!m) return "#000";
  const [r, g, b] = m.slice(1).map(Number);
  // relative luminance per ITU-R BT.709, on 0-255 values
  return 0.2126 * r + 0.7152 * g + 0.0722 * b > 140 ? "#000" : "#fff";
}

/** A number with `digits` decimals, or an em dash for a missing value. */
export function formatNumber(v, digits = 3) {
  return Number.isFinite(v) ? v.toFixed(digits) : "\u2014";
}

/** CSS linear-gradient of the viridis scale, for the legend bar. */
export function viridisGradient() {
  const parts = VIRIDIS.map((c, i) => `${css(c)} ${((100 * i) / (VIRIDIS.length - 1)).toFixed(1)}%`);
  return `linear-gradient(to right, ${parts.join(", ")})`;
}
