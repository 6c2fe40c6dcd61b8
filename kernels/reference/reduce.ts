/**
 * Float64 references of the reductions.
 *
 * @module
 */

type Arr = ArrayLike<number>;

function rows(x: Arr, cols: number, f: (row: number[]) => number): Float64Array {
  const n = cols === 0 ? 0 : x.length / cols;
  return Float64Array.from(
    { length: n },
    (_, r) => f(Array.from({ length: cols }, (_, c) => x[r * cols + c])),
  );
}

/** Sum along the last axis of a (rows × cols) array. */
export const sumLastAxis = (x: Arr, cols: number): Float64Array =>
  rows(x, cols, (r) => r.reduce((a, b) => a + b, 0));
/** Mean along the last axis. */
export const meanLastAxis = (x: Arr, cols: number): Float64Array =>
  rows(x, cols, (r) => r.reduce((a, b) => a + b, 0) / cols);
/** Max along the last axis. */
export const maxLastAxis = (x: Arr, cols: number): Float64Array =>
  rows(x, cols, (r) => Math.max(...r));

/** Column sums of a (rows × cols) array. */
export function sumColumns(x: Arr, cols: number): Float64Array {
  const out = new Float64Array(cols);
  for (let i = 0; i < x.length; i++) out[i % cols] += x[i];
  return out;
}

/** `(Σ m·x, Σ m, mean, var)`; var unbiased (÷ (Σm − 1)) unless `unbiased === false`. */
export function maskedStats(x: Arr, mask?: Arr, unbiased = true): Float64Array {
  let s = 0, w = 0;
  for (let i = 0; i < x.length; i++) {
    const m = mask ? mask[i] : 1;
    s += m * x[i];
    w += m;
  }
  const mean = w > 0 ? s / w : 0;
  let q = 0;
  for (let i = 0; i < x.length; i++) q += (mask ? mask[i] : 1) * (x[i] - mean) ** 2;
  const d = unbiased ? w - 1 : w;
  return Float64Array.from([s, w, mean, d > 0 ? q / d : 0]);
}

/** Global L2 norm of several arrays and the clip coefficient `min(1, maxNorm/(norm + 1e-6))`. */
export function globalNorm(xs: Arr[], maxNorm = 0): [number, number] {
  let s = 0;
  for (const x of xs) for (let i = 0; i < x.length; i++) s += x[i] * x[i];
  const norm = Math.sqrt(s);
  return [norm, maxNorm > 0 ? Math.min(1, maxNorm / (norm + 1e-6)) : 1];
}
