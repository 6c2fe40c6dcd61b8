/**
 * Float64 references of the elementwise kernels (same argument order, host arrays).
 *
 * @module
 */

type Arr = ArrayLike<number>;

const map = (x: Arr, f: (v: number, i: number) => number) => Float64Array.from(x, f);

/** `a + b`. */
export const add = (a: Arr, b: Arr): Float64Array => map(a, (v, i) => v + b[i]);
/** `a − b`. */
export const sub = (a: Arr, b: Arr): Float64Array => map(a, (v, i) => v - b[i]);
/** `a ⊙ b`. */
export const mul = (a: Arr, b: Arr): Float64Array => map(a, (v, i) => v * b[i]);
/** `alpha·x + y`. */
export const axpy = (alpha: number, x: Arr, y: Arr): Float64Array =>
  map(x, (v, i) => alpha * v + y[i]);
/** `s·x`. */
export const scale = (x: Arr, s: number): Float64Array => map(x, (v) => s * v);
/** `max(x, 0)`. */
export const relu = (x: Arr): Float64Array => map(x, (v) => Math.max(v, 0));
/** `dy ⊙ [x > 0]`. */
export const reluBackward = (dy: Arr, x: Arr): Float64Array => map(dy, (g, i) => x[i] > 0 ? g : 0);

const K = Math.sqrt(2 / Math.PI);
/** GELU, tanh approximation. */
export const gelu = (x: Arr): Float64Array =>
  map(x, (v) => 0.5 * v * (1 + Math.tanh(K * (v + 0.044715 * v ** 3))));
/** `dy ⊙ gelu'(x)`. */
export const geluBackward = (dy: Arr, x: Arr): Float64Array =>
  map(dy, (g, i) => {
    const v = x[i];
    const t = Math.tanh(K * (v + 0.044715 * v ** 3));
    return g * (0.5 * (1 + t) + 0.5 * v * (1 - t * t) * K * (1 + 3 * 0.044715 * v * v));
  });

/** Row-wise concatenation of `(B, Ta)` and `(B, Tb)` arrays. */
export function concatColumns(a: Arr, b: Arr, B: number): Float64Array {
  const Ta = a.length / B, Tb = b.length / B;
  const out = new Float64Array(a.length + b.length);
  for (let r = 0; r < B; r++) {
    for (let c = 0; c < Ta; c++) out[r * (Ta + Tb) + c] = a[r * Ta + c];
    for (let c = 0; c < Tb; c++) out[r * (Ta + Tb) + Ta + c] = b[r * Tb + c];
  }
  return out;
}
