// Decoding the float32 binary buffers that the Python widgets send.
//
// ipywidgets hands a `traitlets.Bytes` trait to JavaScript as a DataView (older managers
// may give an ArrayBuffer or a typed array). Python writes little-endian float32
// (`np.asarray(x, "<f4").tobytes()`); reading through DataView.getFloat32(..., true) is
// correct on any host and does not care whether the view's byte offset is 4-aligned.
//
//   const scores = decodeFloat32(model.get("scores"), model.get("shape"));
//   scores[index2(shape, layerIdx, componentIdx)];

/** A DataView over whatever binary value a widget manager gives for a Bytes trait. */
export function toDataView(value) {
  if (value == null) return new DataView(new ArrayBuffer(0));
  if (value instanceof DataView) return value;
  if (value instanceof ArrayBuffer) return new DataView(value);
  if (ArrayBuffer.isView(value)) {
    return new DataView(value.buffer, value.byteOffset, value.byteLength);
  }
  throw new TypeError(`expected binary data, got ${typeof value}`);
}

/** Number of values an array of `shape` holds (1 for the empty shape). */
export function size(shape) {
  return shape.reduce((n, d) => n * d, 1);
}

/**
 * Decode a little-endian float32 buffer into a Float32Array of `size(shape)` values.
 * Throws when the buffer's length does not match the shape, so a broken contract
 * between Python and JavaScript shows as an error instead of a wrong picture.
 */
export function decodeFloat32(value, shape) {
  const view = toDataView(value);
  if (view.byteLength % 4 !== 0) {
    throw new RangeError(`buffer of ${view.byteLength} bytes is not float32 data`);
  }
  const n = view.byteLength / 4;
  const expected = size(shape);
  if (n !== expected) {
    throw new RangeError(`buffer holds ${n} float32 values; shape [${shape}] needs ${expected}`);
  }
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = view.getFloat32(4 * i, true);
  return out;
}

/** Row-major flat index of element (i, j) of a 2-D array of `shape`. */
export function index2(shape, i, j) {
  return i * shape[1] + j;
}
