/**
 * Float64 reference of the sampler: exact (sorted) top-k / top-p cut-offs and the same
 * Gumbel-max draw from the same counter PRNG as the GPU kernel.
 *
 * @module
 */

import { randF32 } from "../prng.ts";

/** The set of allowed token indices of one row under temperature/top-k/top-p (HF order). */
export function allowedTokens(
  z: ArrayLike<number>,
  T: number,
  topK: number,
  topP: number,
): number[] {
  const idx = Array.from(z, (_, i) => i).sort((a, b) => z[b] - z[a]);
  let keep = idx;
  if (topK > 0 && topK < z.length) {
    const kth = z[idx[topK - 1]];
    keep = idx.filter((i) => z[i] >= kth);
  }
  if (topP < 1) {
    const mx = z[keep[0]];
    const w = keep.map((i) => Math.exp((z[i] - mx) / T));
    const total = w.reduce((a, b) => a + b, 0);
    // smallest prefix (by value; ties kept together) with mass ≥ p
    let mass = 0, n = 0;
    while (n < keep.length) {
      const v = z[keep[n]];
      while (n < keep.length && z[keep[n]] === v) mass += w[n++];
      if (mass >= topP * total) break;
    }
    keep = keep.slice(0, n);
  }
  return keep;
}

/** The token the GPU sampler draws for row `b` at `step` (greedy when T ≤ 0). */
export function sampleRef(
  z: ArrayLike<number>,
  b: number,
  o: { temperature: number; topK: number; topP: number; seed: number; step: number },
): { token: number; logp: number; margin: number } {
  const V = z.length;
  let mx = -Infinity;
  for (let i = 0; i < V; i++) mx = Math.max(mx, z[i]);
  let s = 0;
  for (let i = 0; i < V; i++) s += Math.exp(z[i] - mx);
  const lse = mx + Math.log(s);
  let best = -Infinity, second = -Infinity, token = 0;
  const allowed = o.temperature <= 0
    ? Array.from(z, (_, i) => i)
    : allowedTokens(z, o.temperature, o.topK, o.topP);
  for (const i of allowed.sort((a, c) => a - c)) {
    const key = o.temperature <= 0 ? z[i] : z[i] / o.temperature -
      Math.log(-Math.log(Math.max(randF32(o.seed, o.step, b * V + i), 1 / 16777216)));
    if (key > best) {
      second = best;
      best = key;
      token = i;
    } else if (key > second) second = key;
  }
  return { token, logp: z[token] - lse, margin: best - second };
}
