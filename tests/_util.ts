/**
 * Helpers for the kernel cases: seeded host random data, a case type shared by the Deno runner
 * and the browser page, and central finite differences for gradient checks.
 *
 * @module
 */

import { mulberry32 } from "../trainer/random.ts";
import type { Gpu } from "../kernels/runtime.ts";

/**
 * One named test case; runs against a shared {@link Gpu}. A case whose `run` declares no
 * parameter needs no GPU, and the Deno runner runs it also where no WebGPU adapter exists.
 */
export interface Case {
  name: string;
  run(gpu: Gpu): Promise<void> | void;
}

/** Mulberry32 (the trainer's generator), for host-side test data. */
export const rng: (seed: number) => () => number = mulberry32;

/** `n` values uniform in [lo, hi), as f32 (exactly representable, so refs see the same input). */
export function randArray(n: number, seed: number, lo = -1, hi = 1): Float32Array {
  const r = rng(seed);
  const a = new Float32Array(n);
  for (let i = 0; i < n; i++) a[i] = lo + (hi - lo) * r();
  return a;
}

/** Integer values uniform in [0, n). */
export function randInts(count: number, n: number, seed: number): Int32Array {
  const r = rng(seed);
  const a = new Int32Array(count);
  for (let i = 0; i < count; i++) a[i] = Math.floor(r() * n);
  return a;
}

/**
 * Central finite differences of a scalar float64 function `f` at `x` for the listed indices
 * (all when omitted): `(f(x + h·e_i) − f(x − h·e_i)) / 2h`.
 */
export function finiteDiff(
  f: (x: Float64Array) => number,
  x: ArrayLike<number>,
  h = 1e-5,
  indices?: number[],
): Float64Array {
  const xs = Float64Array.from(x);
  const g = new Float64Array(xs.length);
  for (const i of indices ?? xs.keys()) {
    const v = xs[i];
    xs[i] = v + h;
    const fp = f(xs);
    xs[i] = v - h;
    const fm = f(xs);
    xs[i] = v;
    g[i] = (fp - fm) / (2 * h);
  }
  return g;
}

/** Σ w_i·y_i: a random projection that turns a tensor output into a scalar loss. */
export function dot(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i] * b[i];
  return s;
}
