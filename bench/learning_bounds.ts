/**
 * The bar every cell of the learning matrix must clear with the default run (issue #15), shared
 * by `deno task bench:learning` and the acceptance test.
 *
 * @module
 */

import type { PipelineSummary } from "../trainer/pipeline.ts";

/** The bounds, stated once. */
export const LEARNING_BOUNDS = {
  /** Reward-model accuracy on held-out clean pairs, at least. */
  rmAccuracy: 0.9,
  /** Gold after PPO − gold before, at least. */
  goldGain: 0.1,
  /** Mean per-sequence KL to the reference at the last iteration, at most. */
  kl: 10,
  /** The correct-answer rate after PPO − before, at least (it must not fall). */
  correctGain: 0,
} as const;

/**
 * The change of the correct-answer rate and its standard error (two independent sets of
 * `gold/samples` samples each), e.g. to print "+0.056 ± 0.029".
 */
export function correctChange(s: PipelineSummary): { delta: number; se: number } {
  const a = s["gold/correct/before"], b = s["gold/correct/after"], n = s["gold/samples"];
  return { delta: b - a, se: Math.sqrt((a * (1 - a) + b * (1 - b)) / n) };
}

/** The bounds a summary misses, in words (empty when it clears them all). */
export function learningFailures(s: PipelineSummary): string[] {
  const b = LEARNING_BOUNDS, out: string[] = [];
  const gain = s["gold/after"] - s["gold/before"];
  const correct = s["gold/correct/after"] - s["gold/correct/before"];
  if (!(s["rm/accuracy"] >= b.rmAccuracy)) {
    out.push(`RM held-out accuracy ${s["rm/accuracy"].toFixed(3)} < ${b.rmAccuracy}`);
  }
  if (!(gain >= b.goldGain)) {
    out.push(
      `gold ${s["gold/before"].toFixed(3)} → ${s["gold/after"].toFixed(3)} gains < ${b.goldGain}`,
    );
  }
  if (!(s["objective/kl"] <= b.kl)) out.push(`KL ${s["objective/kl"].toFixed(2)} > ${b.kl}`);
  if (!(correct >= b.correctGain)) {
    out.push(
      `correct answers ${s["gold/correct/before"].toFixed(3)} → ${
        s["gold/correct/after"].toFixed(3)
      } fell`,
    );
  }
  if (s.reward_hacking?.detected) {
    out.push(`reward hacking detected from iteration ${s.reward_hacking.started ?? "?"}`);
  }
  if (s.reward_hacking?.goldFell) {
    out.push(
      `rollout gold fell ${(s.reward_hacking.maxGoldDrop ?? 0).toFixed(3)} below its start ` +
        `(counts from ${
          (s.reward_hacking.threshold ?? 0).toFixed(3)
        }: tolerance, 2 standard errors)`,
    );
  }
  return out;
}
