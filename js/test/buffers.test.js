import assert from "node:assert/strict";
import { test } from "node:test";
import { decodeFloat32, index2, size, toDataView } from "../src/buffers.js";

function littleEndianBytes(values) {
  const view = new DataView(new ArrayBuffer(4 * values.length));
  values.forEach((v, i) => view.setFloat32(4 * i, v, true));
  return view;
}

test("decodes little-endian float32 from a DataView, ArrayBuffer or typed array", () => {
  const values = [0.5, -1.25, 3, Number.NaN];
  const view = littleEndianBytes(values);
  for (const input of [view, view.buffer, new Uint8Array(view.buffer)]) {
    const out = decodeFloat32(input, [2, 2]);
    assert.deepEqual(Array.from(out.slice(0, 3)), [0.5, -1.25, 3]);
    assert.ok(Number.isNaN(out[3]));
  }
});

test("decodes a view whose byte offset is not 4-aligned", () => {
  const backing = new Uint8Array(4 * 2 + 1);
  const inner = new DataView(backing.buffer, 1, 8);
  inner.setFloat32(0, 7.5, true);
  inner.setFloat32(4, -2, true);
  assert.deepEqual(Array.from(decodeFloat32(inner, [2])), [7.5, -2]);
});

test("a buffer that does not match its shape is an error, not a wrong picture", () => {
  const view = littleEndianBytes([1, 2, 3]);
  assert.throws(() => decodeFloat32(view, [2, 2]), /holds 3 float32 values; shape \[2,2\] needs 4/);
  assert.throws(() => decodeFloat32(new Uint8Array(5), [1]), /not float32 data/);
  assert.throws(() => toDataView("abc"), TypeError);
});

test("missing data decodes to an empty array for an empty shape", () => {
  assert.equal(decodeFloat32(null, [0, 3]).length, 0);
  assert.equal(decodeFloat32(undefined, [0]).length, 0);
});

test("row-major indexing agrees with numpy's C order", () => {
  // numpy: np.arange(6).reshape(2, 3)[1, 2] == 5
  assert.equal(index2([2, 3], 1, 2), 5);
  assert.equal(index2([2, 3], 0, 1), 1);
  assert.equal(size([2, 3, 4]), 24);
  assert.equal(size([]), 1);
});
