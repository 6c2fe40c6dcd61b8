/**
 * On-policy comparisons for the reward model (InstructGPT collected its comparisons on samples
 * of the policy being trained): K responses per prompt are sampled from the policy, every two
 * responses of a prompt with different gold scores form a pair, the gold-preferred one is
 * "chosen", flipped with probability `labelNoise` (the labellers' disagreement). Responses cut
 * at the token budget stay cut (no EOS), exactly as PPO's rollouts will show them to the reward
 * model, so it learns to score what the policy really emits.
 *
 * @module
 */

import { randF32 } from "../kernels/prng.ts";
import type { OptModel } from "../model/opt.ts";
import type { Tokenizer } from "../model/tokenizer.ts";
import type { KtoExample, PairExample } from "./data.ts";
import { rolloutSeed } from "./random.ts";
import { sampleAndScore, type ScoredSample } from "./rollout.ts";

/** A response of the policy to a prompt. */
export interface PolicySample {
  /** The prompt sampled from. */
  prompt: string;
  /** The decoded response (without EOS). */
  response: string;
  /** Cut at the token budget (no EOS). */
  truncated: boolean;
  /** Reward-model score (NaN when sampled without a reward model). */
  score: number;
}

/**
 * Samples `samplesPerPrompt` responses to each prompt from `policy` (batches of `batchSize`
 * rows, seeded per batch), scored by `reward` when given. Returns them grouped by prompt, in
 * prompt order.
 */
export async function samplePolicy(
  policy: OptModel,
  tok: Tokenizer,
  prompts: readonly string[],
  o: {
    samplesPerPrompt: number;
    maxNewTokens: number;
    maxPromptLength: number;
    temperature: number;
    seed: number;
    batchSize?: number;
    reward?: OptModel;
  },
): Promise<PolicySample[][]> {
  const rows = prompts.flatMap((p) => Array.from({ length: o.samplesPerPrompt }, () => p));
  const bs = o.batchSize ?? 64;
  const out: ScoredSample[] = [];
  for (let i = 0; i < rows.length; i += bs) {
    out.push(
      ...await sampleAndScore(policy, o.reward, tok, rows.slice(i, i + bs), {
        temperature: o.temperature,
        seed: rolloutSeed(o.seed, i / bs),
        maxNewTokens: o.maxNewTokens,
        maxPromptLength: o.maxPromptLength,
      }),
    );
  }
  return prompts.map((_, p) =>
    out.slice(p * o.samplesPerPrompt, (p + 1) * o.samplesPerPrompt).map((s) => ({
      prompt: s.prompt,
      response: s.response,
      truncated: s.truncated,
      score: s.score,
    }))
  );
}

/**
 * Labels every pair of a prompt's responses whose gold scores differ (identical responses and
 * gold ties are skipped): the gold-preferred response is chosen, swapped with probability
 * `labelNoise` (0 for clean evaluation pairs). With `margin > 0` each pair carries Llama 2's
 * preference margin `margin · |gold gap|` (kept when the label is flipped: it is the stated
 * strength, not the direction).
 *
 * @example Two samples of one prompt make one pair
 * ```ts
 * import { labelComparisons } from "../mod.ts";
 * const gold = (_p: string, r: string) => (r.trim() === "4." ? 1 : 0);
 * const pairs = labelComparisons(
 *   [[{ prompt: "2+2?", response: " 4.", truncated: false },
 *     { prompt: "2+2?", response: " 5, I am", truncated: true }]],
 *   gold,
 *   { labelNoise: 0, seed: 1 },
 * );
 * console.log(pairs[0].chosen, pairs[0].rejectedTruncated); // " 4." true
 * ```
 */
export function labelComparisons(
  groups: readonly (readonly Omit<PolicySample, "score">[])[],
  gold: (prompt: string, response: string) => number,
  o: { labelNoise: number; seed: number; margin?: number },
): PairExample[] {
  // label noise from the counter PRNG: draw k of stream 0 for the k-th labelled pair
  let k = 0;
  const r = () => randF32(o.seed, 0, k++);
  const pairs: PairExample[] = [];
  for (const g of groups) {
    const scores = g.map((s) => gold(s.prompt, s.response));
    for (let i = 0; i < g.length; i++) {
      for (let j = i + 1; j < g.length; j++) {
        const a = g[i], b = g[j];
        if (scores[i] === scores[j]) continue;
        if (a.response === b.response && a.truncated === b.truncated) continue;
        let [w, l] = scores[i] > scores[j] ? [a, b] : [b, a];
        if (r() < o.labelNoise) [w, l] = [l, w];
        const margin = (o.margin ?? 0) * Math.abs(scores[i] - scores[j]);
        pairs.push({
          prompt: a.prompt,
          chosen: w.response,
          rejected: l.response,
          chosenTruncated: w.truncated,
          rejectedTruncated: l.truncated,
          ...(margin > 0 ? { margin } : {}),
        });
      }
    }
  }
  return pairs;
}

/**
 * Labels each sample for KTO: desirable when its gold score reaches `threshold`, flipped with
 * probability `labelNoise` (the thumbs-up/down a labeller would give). Duplicates of one
 * prompt's response are kept once.
 *
 * @example
 * ```ts
 * import { labelExamples } from "../mod.ts";
 * const gold = (_p: string, r: string) => (r.trim() === "4." ? 1 : 0);
 * const xs = labelExamples(
 *   [[{ prompt: "2+2?", response: " 4.", truncated: false },
 *     { prompt: "2+2?", response: " 5", truncated: false }]],
 *   gold,
 *   { threshold: 0.8, labelNoise: 0, seed: 1 },
 * );
 * console.log(xs.map((x) => x.label)); // [true, false]
 * ```
 */
export function labelExamples(
  groups: readonly (readonly Omit<PolicySample, "score">[])[],
  gold: (prompt: string, response: string) => number,
  o: { threshold: number; labelNoise: number; seed: number },
): KtoExample[] {
  let k = 0;
  const out: KtoExample[] = [];
  for (const g of groups) {
    const seen = new Set<string>();
    for (const s of g) {
      const key = `${s.truncated ? 1 : 0}${s.response}`;
      if (seen.has(key)) continue;
      seen.add(key);
      let label = gold(s.prompt, s.response) >= o.threshold;
      if (randF32(o.seed, 0, k++) < o.labelNoise) label = !label;
      out.push({ prompt: s.prompt, completion: s.response, label, truncated: s.truncated });
    }
  }
  return out;
}
