/**
 * Rejection-sampling fine-tuning (Llama 2; SPEC §9): per round, sample K responses to each of
 * the round's prompts from the current policy, score them with a {@link Reward} (a grader or a
 * reward model), keep each prompt's best (only above `minScore`, and never a response cut at
 * the token budget), and fine-tune on those with SFT's loss for `stepsPerRound` steps. One
 * {@link RejectionSamplingTrainer.step} is one SFT step; a round's sampling happens on its first
 * step. The round's selected examples are part of the trainer's state, so a resumed run goes on
 * with the same data.
 *
 * @module
 */

import type { OptModel } from "../model/opt.ts";
import type { Tokenizer } from "../model/tokenizer.ts";
import type { Schema } from "./config.ts";
import type { SftExample } from "./data.ts";
import type { GroupData, GroupSample } from "./group.ts";
import { deriveSeed, rolloutSeed } from "./random.ts";
import type { Reward } from "./reward.ts";
import { rollout } from "./rollout.ts";
import { SftTrainer } from "./sft.ts";
import type { SupervisedTrainerState } from "./supervised.ts";
import {
  CheckpointError,
  checkStateNumber,
  type Metrics,
  type StateFile,
  type Trainer,
} from "./types.ts";

/** Rejection-sampling hyperparameters (the `rs.` section). */
export interface RejectionSamplingConfig {
  /** sample → select → fine-tune rounds (default 3) */
  rounds: number;
  /** prompts sampled per round (default 128) */
  promptsPerRound: number;
  /** samples per prompt K; the best is kept (default 8) */
  samplesPerPrompt: number;
  /** SFT steps on a round's selected samples (default 60) */
  stepsPerRound: number;
  /** selected samples per SFT step (default 16) */
  batchSize: number;
  /** peak learning rate of each round's SFT (default 1e-4) */
  lr: number;
  /** fraction of a round's steps with linear warmup (default 0) */
  warmupRatio: number;
  /** decay after warmup, within each round (default "constant") */
  lrDecay: "cosine" | "linear" | "constant";
  /** AdamW weight decay (default 0) */
  weightDecay: number;
  /** global gradient-norm clip (0 = off) (default 1) */
  maxGradNorm: number;
  /** tokens per SFT sequence (default 64) */
  maxLength: number;
  /** response tokens sampled per prompt (default 16) */
  maxNewTokens: number;
  /** prompt tokens kept when sampling (default 256) */
  maxPromptLength: number;
  /** sampling temperature (default 1) */
  temperature: number;
  /**
   * a prompt's best sample is kept only when its score exceeds this (graders: 0 keeps rewarded
   * samples only; give a reward model's scale otherwise) (default 0)
   */
  minScore: number;
  /** sampling and data-order seed (default 0) */
  seed: number;
}

/** The rejection-sampling schema with its documented defaults. */
export const REJECTION_SAMPLING_SCHEMA: Schema<RejectionSamplingConfig> = {
  rounds: { default: 3, doc: "sample → select → fine-tune rounds", min: 1, integer: true },
  promptsPerRound: { default: 128, doc: "prompts sampled per round", min: 1, integer: true },
  samplesPerPrompt: {
    default: 8,
    doc: "samples per prompt K; the best is kept",
    min: 1,
    integer: true,
  },
  stepsPerRound: {
    default: 60,
    doc: "SFT steps on a round's selected samples",
    min: 1,
    integer: true,
  },
  batchSize: { default: 16, doc: "selected samples per SFT step", min: 1, integer: true },
  lr: { default: 1e-4, doc: "peak learning rate of each round's SFT", min: 0 },
  warmupRatio: {
    default: 0,
    doc: "fraction of a round's steps with linear warmup",
    min: 0,
    max: 1,
  },
  lrDecay: {
    default: "constant",
    doc: "decay after warmup, within each round",
    choices: ["cosine", "linear", "constant"],
  },
  weightDecay: { default: 0, doc: "AdamW weight decay", min: 0 },
  maxGradNorm: { default: 1, doc: "global gradient-norm clip (0 = off)", min: 0 },
  maxLength: { default: 64, doc: "tokens per SFT sequence", min: 2, integer: true },
  maxNewTokens: { default: 16, doc: "response tokens sampled per prompt", min: 1, integer: true },
  maxPromptLength: { default: 256, doc: "prompt tokens kept when sampling", min: 2, integer: true },
  temperature: { default: 1.0, doc: "sampling temperature", min: 0 },
  minScore: {
    default: 0,
    doc: "a prompt's best sample is kept only when its score exceeds this (graders: 0 keeps " +
      "rewarded samples only; give a reward model's scale otherwise)",
  },
  seed: { default: 0, doc: "sampling and data-order seed", integer: true },
};

/** The trainer's own resumable state. */
export interface RejectionSamplingState {
  /** SFT steps done over all rounds. */
  iteration: number;
  /** The current round's selected examples. */
  examples: SftExample[];
  /** The current round's SFT state (its steps and data order). */
  sft?: SupervisedTrainerState;
  /** The current round's sampling statistics. */
  round: Metrics;
}

/**
 * Rejection-sampling fine-tuning of `actor` against `reward`.
 *
 * @example One round of two steps on a tiny random model, best of 2
 * ```ts
 * import { ByteTokenizer, defaults, Gpu, graderReward, OPT_PRESETS, OptModel, REJECTION_SAMPLING_SCHEMA, RejectionSamplingTrainer } from "../mod.ts";
 * const gpu = await Gpu.create();
 * const actor = OptModel.create(gpu, OPT_PRESETS.tiny, { seed: 1 });
 * const reward = graderReward((_p, r) => (r.length > 2 ? 1 : 0), "long");
 * const cfg = { ...defaults(REJECTION_SAMPLING_SCHEMA), rounds: 1, promptsPerRound: 2, samplesPerPrompt: 2, stepsPerRound: 2, maxNewTokens: 4, minScore: -1 };
 * const t = new RejectionSamplingTrainer(actor, reward, new ByteTokenizer(), { prompts: ["Hi", "Yo"] }, cfg);
 * // the share of prompts whose best was kept: 0 here, as a random model's 4 tokens never end
 * // with EOS and cut responses are never kept
 * console.log((await t.step(true))!["rs/selected"]);
 * ```
 */
export class RejectionSamplingTrainer implements Trainer<RejectionSamplingState> {
  iteration = 0;
  /** Every sample of the last round with its score. */
  lastSamples: GroupSample[] = [];
  #examples: SftExample[] = [];
  #sft?: SftTrainer;
  #round: Metrics = {};

  /**
   * Creates the trainer (no GPU work until the first step).
   * @param actor the policy sampled from and fine-tuned
   * @param reward what scores the samples
   * @param tok the tokenizer
   * @param data prompts (and references for graders), taken `promptsPerRound` per round
   * @param cfg the `rs.` section
   * @param hooks extra metrics of each round's samples (e.g. the built-in task's gold)
   */
  constructor(
    readonly actor: OptModel,
    readonly reward: Reward,
    readonly tok: Tokenizer,
    readonly data: GroupData,
    readonly cfg: RejectionSamplingConfig,
    readonly hooks: { scoreRollout?: (samples: GroupSample[]) => Metrics } = {},
  ) {
    if (data.prompts.length === 0) throw new RangeError("RejectionSamplingTrainer: no prompts");
    if (data.references && data.references.length !== data.prompts.length) {
      throw new RangeError(
        `RejectionSamplingTrainer: ${data.references.length} references for ` +
          `${data.prompts.length} prompts`,
      );
    }
  }

  get total(): number {
    return this.cfg.rounds * this.cfg.stepsPerRound;
  }

  /** The round the next step belongs to (0-based). */
  get round(): number {
    return Math.floor(this.iteration / this.cfg.stepsPerRound);
  }

  /** One SFT step on the round's selection (sampled first at a round's first step). */
  async step(log: boolean): Promise<Metrics | undefined> {
    if (this.iteration % this.cfg.stepsPerRound === 0) await this.#newRound();
    const m = this.#sft ? await this.#sft.step(log) : (log ? {} : undefined);
    this.iteration++;
    if (!m) return undefined;
    const { step: _, ...rest } = m;
    return { step: this.iteration, ...this.#round, ...rest };
  }

  /** Samples the round: K per prompt, scored; each prompt's best kept when good enough. */
  async #newRound(): Promise<void> {
    const cfg = this.cfg, gpu = this.actor.gpu, round = this.round, n = this.data.prompts.length;
    const K = cfg.samplesPerPrompt, chunk = Math.max(1, Math.floor(64 / K));
    const picked: SftExample[] = [], all: GroupSample[] = [];
    let best = 0, mean = 0, cut = 0;
    for (let p0 = 0; p0 < cfg.promptsPerRound; p0 += chunk) {
      const ids = Array.from(
        { length: Math.min(chunk, cfg.promptsPerRound - p0) },
        (_, j) => (round * cfg.promptsPerRound + p0 + j) % n,
      );
      const prompts = ids.flatMap((i) => Array(K).fill(this.data.prompts[i]) as string[]);
      const refs = ids.flatMap((i) => Array(K).fill(this.data.references?.[i] ?? "") as string[]);
      const { texts, scores } = await gpu.scope(async () => {
        const r = await rollout(this.actor, this.tok, prompts, {
          maxNewTokens: cfg.maxNewTokens,
          maxPromptLength: cfg.maxPromptLength,
          temperature: cfg.temperature,
          greedy: cfg.temperature === 0,
          seed: rolloutSeed(deriveSeed(cfg.seed, "rejectionSampling"), round * 100_000 + p0),
        });
        return { texts: r.texts, scores: await this.reward.score(r, refs) };
      });
      texts.forEach((x, k) => all.push({ ...x, score: scores[k] }));
      ids.forEach((_, j) => {
        let b = -1;
        for (let k = j * K; k < (j + 1) * K; k++) {
          mean += scores[k];
          if (texts[k].truncated) cut++;
          else if (b < 0 || scores[k] > scores[b]) b = k;
        }
        if (b >= 0) best += scores[b];
        if (b >= 0 && scores[b] > cfg.minScore) {
          picked.push({ prompt: texts[b].prompt, completion: texts[b].response });
        }
      });
    }
    const P = cfg.promptsPerRound;
    this.lastSamples = all;
    this.#round = {
      "rs/round": round + 1,
      reward: mean / (P * K),
      "rs/selected": picked.length / P,
      "rs/best_score": best / P,
      "rs/mean_score": mean / (P * K),
      "rs/truncated": cut / (P * K),
      ...(this.hooks.scoreRollout?.(all) ?? {}),
    };
    this.#setRound(picked);
  }

  #setRound(examples: SftExample[], sft?: SupervisedTrainerState): void {
    const cfg = this.cfg;
    this.#examples = examples;
    this.#sft = examples.length === 0 ? undefined : new SftTrainer(this.actor, this.tok, examples, {
      steps: cfg.stepsPerRound,
      batchSize: cfg.batchSize,
      lr: cfg.lr,
      warmupRatio: cfg.warmupRatio,
      lrDecay: cfg.lrDecay,
      weightDecay: cfg.weightDecay,
      maxGradNorm: cfg.maxGradNorm,
      maxLength: cfg.maxLength,
      completionOnly: true,
      seed: deriveSeed(cfg.seed, "rejectionSampling") + this.round,
    }, "rs/model_state.safetensors");
    if (sft) this.#sft?.restore(sft);
  }

  /** The step count, the round's selection and its SFT state. */
  state(): RejectionSamplingState {
    return {
      iteration: this.iteration,
      examples: this.#examples,
      sft: this.#sft?.state(),
      round: this.#round,
    };
  }

  /** Restores {@link state}, checked field by field. */
  restore(s: RejectionSamplingState): void {
    const iteration = checkStateNumber("iteration", s?.iteration, { min: 0, max: this.total });
    if (!Array.isArray(s.examples)) throw new CheckpointError("examples: not an array");
    for (const [i, x] of s.examples.entries()) {
      if (typeof x?.prompt !== "string" || typeof x?.completion !== "string") {
        throw new CheckpointError(`examples[${i}]: not {prompt, completion}`);
      }
    }
    this.iteration = iteration;
    this.#round = s.round ?? {};
    this.#setRound(s.examples, s.sft);
  }

  /** The policy's store (its LoRA adapters when it has them). */
  stores(): StateFile[] {
    const a = this.actor;
    return [
      a.lora
        ? { name: "rs/actor_lora_state.safetensors", store: a.lora.store }
        : { name: "rs/actor_state.safetensors", store: a.store },
    ];
  }
}
