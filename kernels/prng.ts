/**
 * Counter-based PRNG: every random number is a pure function of (seed, stream, index), so a run
 * is reproducible from its seed whatever the dispatch order. The hash is PCG's output permutation
 * (O'Neill) applied in a chain: `h(index + h(seed ^ h(stream)))`.
 *
 * @module
 */

import { groups, LINEAR_MAIN } from "./_shader.ts";
import { type Gpu, Params, type Tensor } from "./runtime.ts";

/** WGSL functions `pcg_hash(u32) -> u32`, `rand_u32(seed, stream, index)`, `rand_f32(...)`. */
export const PRNG_WGSL = `
fn pcg_hash(v: u32) -> u32 {
  let state = v * 747796405u + 2891336453u;
  let word = ((state >> ((state >> 28u) + 4u)) ^ state) * 277803737u;
  return (word >> 22u) ^ word;
}
fn rand_u32(seed: u32, stream: u32, index: u32) -> u32 {
  return pcg_hash(index + pcg_hash(seed ^ pcg_hash(stream)));
}
// Uniform in [0, 1) with 24 bits.
fn rand_f32(seed: u32, stream: u32, index: u32) -> f32 {
  return f32(rand_u32(seed, stream, index) >> 8u) * (1.0 / 16777216.0);
}
`;

/** Host twin of the WGSL `pcg_hash` (bit-exact). */
export function pcgHash(v: number): number {
  const state = (Math.imul(v >>> 0, 747796405) + 2891336453) >>> 0;
  const word = Math.imul(((state >>> ((state >>> 28) + 4)) ^ state) >>> 0, 277803737) >>> 0;
  return ((word >>> 22) ^ word) >>> 0;
}

/** Host twin of the WGSL `rand_u32` (bit-exact). */
export function randU32(seed: number, stream: number, index: number): number {
  return pcgHash((index + pcgHash((seed ^ pcgHash(stream)) >>> 0)) >>> 0);
}

/** Host twin of the WGSL `rand_f32` (bit-exact). */
export function randF32(seed: number, stream: number, index: number): number {
  return (randU32(seed, stream, index) >>> 8) / 16777216;
}

/**
 * `cos(2π·t)` for `t` in [0, 1) from basic arithmetic: exact quadrant reduction in turns, then
 * Taylor polynomials on [−π/4, π/4] (error < 3e-8). WGSL's own `cos` is only specified to an
 * absolute error of 2⁻¹¹ on [−π, π] (SwiftShader's differs from llvmpipe's by ~1e-3 at 2π), too
 * coarse for initialisations that should not depend on the GPU.
 */
const COS_TURNS = `
fn cos_turns(t: f32) -> f32 {
  let q = round(4.0 * t);
  let x = 6.283185307179586 * (t - 0.25 * q);
  let x2 = x * x;
  let c = 1.0 + x2 * (-0.5 + x2 * (1.0 / 24.0 + x2 * (-1.0 / 720.0 + x2 * (1.0 / 40320.0))));
  let s = x * (1.0 + x2 * (-1.0 / 6.0 + x2 * (1.0 / 120.0 + x2 * (-1.0 / 5040.0 + x2 / 362880.0))));
  let k = u32(q) & 3u;
  return select(select(select(s, -c, k == 2u), -s, k == 1u), c, k == 0u);
}
`;

const FILL = `${PRNG_WGSL}${COS_TURNS}
struct P { n: u32, seed: u32, stream: u32, kind: u32, a: f32, b: f32, offset: u32 }
@group(0) @binding(0) var<storage, read_write> out: array<f32>; // (n)
@group(0) @binding(1) var<uniform> p: P;
${LINEAR_MAIN}
  if (i >= p.n) { return; }
  let j = i + p.offset; // index in the whole tensor when filling a chunk
  if (p.kind == 0u) {
    // uniform in [a, b)
    out[i] = p.a + (p.b - p.a) * rand_f32(p.seed, p.stream, j);
  } else {
    // normal(a, b) by Box-Muller on the index pair (2j, 2j + 1)
    let u1 = max(rand_f32(p.seed, p.stream, 2u * j), 1.0 / 16777216.0);
    let u2 = rand_f32(p.seed, p.stream, 2u * j + 1u);
    out[i] = p.a + p.b * sqrt(-2.0 * log(u1)) * cos_turns(u2);
  }
}`;

/**
 * Fills a new tensor with uniform numbers in `[lo, hi)` drawn from (seed, stream).
 *
 * @example Reproducible noise
 * ```ts
 * import { Gpu, randomUniform } from "../mod.ts";
 * const gpu = await Gpu.create();
 * const x = randomUniform(gpu, [4, 4], { seed: 42 });
 * console.log(await gpu.read(x));
 * ```
 */
export function randomUniform(
  gpu: Gpu,
  shape: readonly number[],
  opts: { seed: number; stream?: number; lo?: number; hi?: number; indexOffset?: number },
  out?: Tensor,
): Tensor {
  const y = out ?? gpu.empty(shape);
  gpu.dispatch(
    gpu.pipeline(FILL),
    [y],
    gpu.grid(groups(y.size)),
    new Params().u32(y.size, opts.seed, opts.stream ?? 0, 0).f32(opts.lo ?? 0, opts.hi ?? 1)
      .u32(opts.indexOffset ?? 0),
  );
  return y;
}

/**
 * Fills a new tensor with normal numbers (`mean`, `std`) drawn from (seed, stream), e.g. for
 * weight initialisation.
 *
 * @example
 * ```ts
 * import { Gpu, randomNormal } from "../mod.ts";
 * const gpu = await Gpu.create();
 * const w = randomNormal(gpu, [64, 64], { seed: 1, std: 0.02 });
 * ```
 */
export function randomNormal(
  gpu: Gpu,
  shape: readonly number[],
  opts: { seed: number; stream?: number; mean?: number; std?: number; indexOffset?: number },
  out?: Tensor,
): Tensor {
  const y = out ?? gpu.empty(shape);
  gpu.dispatch(
    gpu.pipeline(FILL),
    [y],
    gpu.grid(groups(y.size)),
    new Params().u32(y.size, opts.seed, opts.stream ?? 0, 1).f32(opts.mean ?? 0, opts.std ?? 1)
      .u32(opts.indexOffset ?? 0),
  );
  return y;
}
