/**
 * Float64 references of the PRNG fill kernels.
 *
 * @module
 */

import { randF32 } from "../prng.ts";

/** Uniform [0, 1) values of (seed, stream) for indices 0..n−1 (bit-exact with the GPU). */
export function randUniformRef(
  n: number,
  seed: number,
  stream: number,
  lo = 0,
  hi = 1,
): Float64Array {
  return Float64Array.from({ length: n }, (_, i) => lo + (hi - lo) * randF32(seed, stream, i));
}

/** Box–Muller normals on index pairs (2i, 2i+1), as the GPU fill computes them. */
export function randNormalRef(
  n: number,
  seed: number,
  stream: number,
  mean = 0,
  std = 1,
): Float64Array {
  return Float64Array.from({ length: n }, (_, i) => {
    const u1 = Math.max(randF32(seed, stream, 2 * i), 1 / 16777216);
    const u2 = randF32(seed, stream, 2 * i + 1);
    return mean + std * Math.sqrt(-2 * Math.log(u1)) * Math.cos(2 * Math.PI * u2);
  });
}
