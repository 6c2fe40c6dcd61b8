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
import type { ParamStore } from "../model/params.ts";
import { learningRate, type OptimizerSettings } from "./optim.ts";
import { epochSeed, mulberry32, permutation, rolloutSeed } from "./random.ts";
import type { Reward } from "./reward.ts";
import { type Rollout, rollout } from "./rollout.ts";
import { checkStateNumber, type Metrics, type StateFile, type Trainer } from "./types.ts";

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

/** The fields every group method's section has (besides sampling). */
export interface GroupMethodConfig extends GroupSampling, OptimizerSettings {
  /** Rollout + update iterations. */
  iterations: number;
  /** Sequences per optimizer step. */
  miniBatchSize: number;
  /** Passes over each rollout. */
  numIterations: number;
  /** KL coefficient (0: no reference model needed). */
  beta: number;
}

/** The resumable state of a group method. */
export interface GroupTrainerState {
  /** Iterations done. */
  iteration: number;
  /** Counter of the minibatch-order seeds. */
  orderSeed: number;
}

/** Callbacks of the group trainers. */
export interface GroupHooks {
  /** Extra per-iteration metrics from the decoded rollout (e.g. the built-in task's gold). */
  scoreRollout?: (samples: GroupSample[]) => Metrics;
}

/**
 * What the group trainers share: the checks, the iteration's scored rollout, the passes over
 * shuffled minibatches, the common metrics and the resumable state. A method writes its
 * `step` (advantages, loss, statistics) over these.
 */
export abstract class GroupTrainer<C extends GroupMethodConfig>
  implements Trainer<GroupTrainerState> {
  iteration = 0;
  /** The decoded samples of the last rollout. */
  lastSamples: GroupSample[] = [];
  #orderSeed: number;

  /**
   * Checks the setup (no GPU work until the first step).
   * @param who the trainer's name, in errors
   * @param files the checkpoint folder of its store ("grpo", "rloo", …)
   * @param actor the policy trained (its LoRA adapters when it has them)
   * @param reference the frozen reference (optional with LoRA or `beta: 0`)
   * @param reward what scores the samples
   * @param tok the tokenizer
   * @param data prompts (and references)
   * @param cfg the method's section
   * @param hooks extra per-iteration metrics
   */
  constructor(
    who: string,
    readonly files: string,
    readonly actor: OptModel,
    readonly reference: OptModel | undefined,
    readonly reward: Reward,
    readonly tok: Tokenizer,
    readonly data: GroupData,
    readonly cfg: C,
    readonly hooks: GroupHooks = {},
  ) {
    if (cfg.beta > 0 && !reference && !actor.lora) {
      throw new RangeError(`${who}: beta > 0 needs a reference model or LoRA adapters`);
    }
    checkGroupSetup(who, data, cfg.numGenerations);
    this.#orderSeed = cfg.seed;
  }

  get total(): number {
    return this.cfg.iterations;
  }

  abstract step(log: boolean): Promise<Metrics>;

  /** This iteration's scored group rollout (see {@link scoredGroupRollout}). */
  protected scoredRollout(
    leaveOut: { maskTruncated: boolean; dropTied: boolean },
  ): Promise<ScoredGroups> {
    return scoredGroupRollout(
      this.actor,
      this.tok,
      this.reward,
      this.data,
      this.cfg,
      this.iteration,
      leaveOut,
    );
  }

  /**
   * `numIterations` passes over `N` rows in shuffled minibatches of `miniBatchSize`: calls
   * `each(rows, k)` inside a GPU scope for the k-th minibatch; returns how many there were.
   */
  protected passes(N: number, each: (rows: number[], k: number) => void): number {
    const cfg = this.cfg, gpu = this.actor.gpu;
    let k = 0;
    for (let pass = 0; pass < cfg.numIterations; pass++) {
      const order = permutation(N, mulberry32(epochSeed(this.#orderSeed++, pass)));
      for (let s = 0; s < N; s += cfg.miniBatchSize) {
        const rows = order.slice(s, s + cfg.miniBatchSize), i = k++;
        gpu.scope(() => each(rows, i));
      }
    }
    return k;
  }

  /** Minibatches per iteration (the rows of the statistics tensor). */
  protected minibatches(N: number): number {
    return this.cfg.numIterations * Math.ceil(N / this.cfg.miniBatchSize);
  }

  /** The store trained: the LoRA adapters when the actor has them. */
  protected get store(): ParamStore {
    return this.actor.lora?.store ?? this.actor.store;
  }

  /**
   * The metrics every group method reports: the iteration, the rollout's (`reward`, …),
   * whether it updated, the learning rate, and the hooks' extra metrics.
   */
  protected commonMetrics(g: ScoredGroups, updated: boolean): Metrics {
    const cfg = this.cfg;
    return {
      iteration: this.iteration + 1,
      ...groupMetrics(g, cfg.numGenerations),
      "train/updated": updated ? 1 : 0,
      learning_rate: learningRate(this.iteration, {
        lr: cfg.lr,
        totalSteps: cfg.iterations,
        warmupRatio: cfg.warmupRatio,
        decay: cfg.lrDecay,
      }),
      ...(this.hooks.scoreRollout?.(g.samples) ?? {}),
    };
  }

  /** Rollout sampling is keyed by (seed, iteration), minibatch order by a counter. */
  state(): GroupTrainerState {
    return { iteration: this.iteration, orderSeed: this.#orderSeed };
  }

  /** Restores {@link state}, checked field by field. */
  restore(s: GroupTrainerState): void {
    const iteration = checkStateNumber("iteration", s?.iteration, { min: 0, max: this.total });
    const orderSeed = checkStateNumber("orderSeed", s.orderSeed);
    [this.iteration, this.#orderSeed] = [iteration, orderSeed];
  }

  /** The actor's trained store (its LoRA adapters when it has them). */
  stores(): StateFile[] {
    const a = this.actor, f = this.files;
    return [
      a.lora
        ? { name: `${f}/actor_lora_state.safetensors`, store: a.lora.store }
        : { name: `${f}/actor_state.safetensors`, store: a.store },
    ];
  }
}

/**
 * Column means of a statistics readback laid out as rows of `columns` (one row per
 * minibatch); zeros when there were none.
 */
export function columnMeans(st: Float32Array, columns: number): number[] {
  const rows = st.length / columns, out = new Array<number>(columns).fill(0);
  for (let i = 0; i < rows; i++) for (let c = 0; c < columns; c++) out[c] += st[i * columns + c];
  return out.map((v) => (rows ? v / rows : 0));
}
