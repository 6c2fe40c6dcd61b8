/**
 * Host-side randomness of the trainers: one generator (mulberry32) for data order, and every
 * derived seed in one place, named by what it seeds. Device-side sampling uses the counter
 * PRNG of `kernels/prng.ts`, keyed by the seeds derived here.
 *
 * @module
 */

/** Mulberry32: a small, fast, seeded generator of uniform numbers in [0, 1). */
export class Mulberry32 {
  /** The whole state (a u32): save it to resume the stream. */
  s: number;
  constructor(seed: number) {
    this.s = seed >>> 0;
  }
  /** The next number in [0, 1). */
  next(): number {
    this.s = (this.s + 0x6d2b79f5) >>> 0;
    let t = this.s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }
}

/**
 * A {@link Mulberry32} stream as a function.
 *
 * @example
 * ```ts
 * import { mulberry32 } from "../mod.ts";
 * const r = mulberry32(1);
 * console.log(r() < 1 && r() >= 0); // true
 * ```
 */
export function mulberry32(seed: number): () => number {
  const g = new Mulberry32(seed);
  return () => g.next();
}

/** A Fisher–Yates permutation of `0 … n−1` drawn with `rand`. */
export function permutation(n: number, rand: () => number): number[] {
  const a = Array.from({ length: n }, (_, i) => i);
  for (let i = n - 1; i > 0; i--) {
    const j = Math.floor(rand() * (i + 1));
    [a[i], a[j]] = [a[j], a[i]];
  }
  return a;
}

/**
 * The random streams of a run, each a fixed offset from the run seed, so that changing one
 * stage's use of randomness never shifts another's.
 */
export const SEED_STREAM = {
  /** Initialisation of the reward model's head (the body is copied from SFT). */
  rewardInit: 1,
  /** Initialisation of the critic's head. */
  criticInit: 2,
  /** Evaluation samples before and after PPO. */
  evaluation: 100,
  /** SFT-policy samples that become reward-model comparisons. */
  comparisonSamples: 200,
  /** Label noise of those comparisons. */
  comparisonLabels: 201,
  /** SFT-policy samples on held-out prompts that test the reward model. */
  rewardModelProbe: 300,
  /** PPO-ptx batch order. */
  ptxOrder: 0x5054,
  /** Fresh samples that probe gold and the implicit reward while a preference method trains. */
  goldProbe: 400,
  /** Rejection sampling's samples and each round's SFT data order. */
  rejectionSampling: 500,
} as const;

/** The seed of a named stream of run seed `seed` (see {@link SEED_STREAM}). */
export function deriveSeed(seed: number, stream: keyof typeof SEED_STREAM): number {
  return seed + SEED_STREAM[stream];
}

/** The sampling seed of rollout `iteration` of a run seeded `seed` (one per iteration). */
export function rolloutSeed(seed: number, iteration: number): number {
  return seed * 1_000_003 + iteration;
}

/** The shuffling seed of PPO epoch `epoch` of the `counter`-th rollout's minibatch order. */
export function epochSeed(counter: number, epoch: number): number {
  return counter * 7919 + epoch;
}
