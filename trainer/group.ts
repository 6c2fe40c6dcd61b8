/**
 * The shared pieces of the online group methods (GRPO, RLOO): the group rollout (G samples of
 * each prompt, adjacent, in one batched KV-cache generation), the rewards of a {@link Reward}
 * with the loss mask (truncated completions and tied groups optionally left out), minibatch
 * row gathering and the rollout's metrics with TRL's names.
 *
 * @module
 */

import type { Gpu, Tensor } from "../kernels/runtime.ts";
import type { OptModel } from "../model/opt.ts";
import type { Tokenizer } from "../model/tokenizer.ts";
import { rolloutSeed } from "./random.ts";
import type { Reward } from "./reward.ts";
import { type Rollout, rollout } from "./rollout.ts";
import type { Metrics } from "./types.ts";

/** What a group method trains on: prompts and, for graders, each prompt's reference answer. */
export interface GroupData {
  /** Rollout prompts, taken `promptsPerIteration` at a time in order (wrapping around). */
  prompts: readonly string[];
  /** `references[i]` belongs to `prompts[i]` (empty strings for a reward model). */
  references?: readonly string[];
}

/** A decoded sample of a group rollout with its reward. */
export interface GroupSample {
  /** The prompt. */
  prompt: string;
  /** The decoded response. */
  response: string;
  /** Its reward. */
  score: number;
  /** The response hit the token budget without EOS. */
  truncated: boolean;
}

/** How a group rollout samples (fields shared by the group methods' sections). */
export interface GroupSampling {
  /** Prompts per iteration. */
  promptsPerIteration: number;
  /** Samples per prompt, G ≥ 2. */
  numGenerations: number;
  /** Response tokens per sample at most. */
  maxNewTokens: number;
  /** Prompt tokens kept. */
  maxPromptLength: number;
  /** Sampling temperature. */
  temperature: number;
  /** Top-k (0 = off). */
  topK: number;
  /** Top-p (1 = off). */
  topP: number;
  /** Rollout seed (the device PRNG is keyed by it and the iteration). */
  seed: number;
}

/** Checks a group method's data and group size; `who` names the trainer in errors. */
export function checkGroupSetup(who: string, data: GroupData, G: number): void {
  if (data.prompts.length === 0) throw new RangeError(`${who}: no prompts`);
  if (data.references && data.references.length !== data.prompts.length) {
    throw new RangeError(
      `${who}: ${data.references.length} references for ${data.prompts.length} prompts`,
    );
  }
  if (!(G >= 2)) throw new RangeError(`${who}: numGenerations must be ≥ 2, got ${G}`);
}

/** A scored group rollout and its loss mask. */
export interface ScoredGroups {
  /** The rollout's tensors. */
  r: Rollout;
  /** The decoded samples with their rewards, G per prompt, adjacent. */
  samples: GroupSample[];
  /** The rewards, `(N)` on the host. */
  rewards: Float32Array;
  /** Per group: all its rewards tie. */
  zeroStd: boolean[];
  /** The action mask without the left-out samples `(N, T)`. */
  mask: Tensor;
  /** Response tokens in `mask`. */
  tokens: number;
  /** Response tokens of each sample in `mask` (0 for left-out samples). */
  rowTokens: number[];
}

/**
 * The iteration's prompts (`promptsPerIteration` from `iteration · promptsPerIteration`, each
 * G times, adjacent), sampled in one batched generation seeded by (seed, iteration), scored by
 * `reward`; samples without EOS (`maskTruncated`) and groups whose rewards all tie
 * (`dropTied`) are left out of the loss mask.
 */
export async function scoredGroupRollout(
  actor: OptModel,
  tok: Tokenizer,
  reward: Reward,
  data: GroupData,
  s: GroupSampling,
  iteration: number,
  leaveOut: { maskTruncated: boolean; dropTied: boolean },
): Promise<ScoredGroups> {
  const n = data.prompts.length, G = s.numGenerations;
  const prompts: string[] = [], refs: string[] = [];
  for (let p = 0; p < s.promptsPerIteration; p++) {
    const i = (iteration * s.promptsPerIteration + p) % n;
    for (let g = 0; g < G; g++) {
      prompts.push(data.prompts[i]);
      refs.push(data.references?.[i] ?? "");
    }
  }
  const r = await rollout(actor, tok, prompts, {
    maxNewTokens: s.maxNewTokens,
    maxPromptLength: s.maxPromptLength,
    temperature: s.temperature,
    topK: s.topK,
    topP: s.topP,
    seed: rolloutSeed(s.seed, iteration),
  });
  const rewards = await reward.score(r, refs);
  const samples = r.texts.map((x, i) => ({ ...x, score: rewards[i] }));
  const zeroStd: boolean[] = [];
  for (let g = 0; g < samples.length / G; g++) {
    const xs = rewards.subarray(g * G, (g + 1) * G);
    zeroStd.push(xs.every((x) => x === xs[0]));
  }
  const T = r.length, host = Float32Array.from(r.hostActionMask);
  let tokens = 0, changed = false;
  const rowTokens = samples.map(() => 0);
  samples.forEach((x, b) => {
    if (
      (leaveOut.maskTruncated && x.truncated) || (leaveOut.dropTied && zeroStd[Math.floor(b / G)])
    ) {
      host.fill(0, b * T, (b + 1) * T);
      changed = true;
    }
    for (let t = 0; t < T; t++) rowTokens[b] += host[b * T + t];
    tokens += rowTokens[b];
  });
  const mask = changed ? actor.gpu.fromArray(host, [samples.length, T]) : r.actionMask;
  return { r, samples, rewards, zeroStd, mask, tokens, rowTokens };
}

/** Copies rows `rows` of a `(N, width)` tensor (or `(N)` with width 1) into a new tensor. */
export function gatherRows(gpu: Gpu, t: Tensor, rows: readonly number[], width: number): Tensor {
  const out = gpu.empty(width === 1 ? [rows.length] : [rows.length, width], t.dtype);
  rows.forEach((row, i) => gpu.copyRange(t, row * width, out, i * width, width));
  return out;
}

/**
 * The rollout's metrics with TRL's names: `reward`, `reward_std` (mean of the groups' unbiased
 * standard deviations), `frac_reward_zero_std`, `completions/mean_length`,
 * `completions/clipped_ratio` (no EOS), `completions/invalid_text_frac` (byte sequences that
 * are not UTF-8, decoded with U+FFFD).
 */
export function groupMetrics(g: ScoredGroups, G: number): Metrics {
  const { samples, r, zeroStd } = g, N = samples.length, T = r.length;
  const mean = (xs: number[]) => xs.reduce((a, v) => a + v, 0) / xs.length;
  const stds: number[] = [];
  for (let k = 0; k < N / G; k++) {
    const xs = samples.slice(k * G, (k + 1) * G).map((s) => s.score), m = mean(xs);
    stds.push(Math.sqrt(xs.reduce((a, v) => a + (v - m) ** 2, 0) / (G - 1)));
  }
  const lengths = samples.map((_, b) =>
    r.hostResponseMask.subarray(b * T, (b + 1) * T).reduce((a, v) => a + v, 0)
  );
  return {
    reward: mean(samples.map((s) => s.score)),
    reward_std: mean(stds),
    frac_reward_zero_std: zeroStd.filter((z) => z).length / zeroStd.length,
    "completions/mean_length": mean(lengths),
    "completions/clipped_ratio": samples.filter((s) => s.truncated).length / N,
    "completions/invalid_text_frac": samples.filter((s) => s.response.includes("\uFFFD")).length /
      N,
  };
}
