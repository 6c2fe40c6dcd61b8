/**
 * RLOO (Ahmadian et al. 2024, "Back to Basics"; SPEC §9): REINFORCE with a leave-one-out
 * baseline over G ≥ 2 samples per prompt, no critic. One {@link RlooTrainer.step}:
 *
 * 1. the group rollout and its rewards (`trainer/group.ts`);
 * 2. the KL-shaped sequence reward `r'_i = r_i − β·Σ_t (logp_old − logp_ref)` (k1 summed over
 *    the response) and the advantage `A_i = r'_i − mean_{j≠i} r'_j` (`kernels/group.ts`);
 * 3. `numIterations` passes over shuffled minibatches of the clipped objective on the
 *    **sequence** ratio `exp(ℓ_θ − ℓ_old)` (TRL's RLOO), mean over sequences, clip + AdamW.
 *
 * Metrics: the rollout's (`reward`, `reward_std`, …), `kl` (mean summed k1 per sequence),
 * `rlhf_reward` (mean r'), `clip_ratio` (fraction of clipped sequences), `loss`.
 *
 * @module
 */

import { sub } from "../kernels/elementwise.ts";
import { groupAdvantages } from "../kernels/group.ts";
import { sequenceLogprobs, sequenceLogprobsBackward } from "../kernels/preference.ts";
import { STAT } from "../kernels/reduce.ts";
import { ppoPolicyLoss } from "../kernels/rl.ts";
import type { Tensor } from "../kernels/runtime.ts";
import { logitsBackward } from "../kernels/softmax.ts";
import type { OptModel } from "../model/opt.ts";
import type { Tokenizer } from "../model/tokenizer.ts";
import type { Schema } from "./config.ts";
import { GRPO_SCHEMA } from "./grpo.ts";
import {
  checkGroupSetup,
  gatherRows,
  type GroupData,
  groupMetrics,
  type GroupSample,
  scoredGroupRollout,
  type ScoredGroups,
} from "./group.ts";
import { modelLogprobs, referenceLogprobs } from "./logprobs.ts";
import { learningRate, optimizerStep } from "./optim.ts";
import { epochSeed, mulberry32, permutation } from "./random.ts";
import type { Reward } from "./reward.ts";
import {
  assertFiniteLosses,
  checkStateNumber,
  type Metrics,
  type StateFile,
  type Trainer,
} from "./types.ts";

/** RLOO hyperparameters (the `rloo.` section). */
export interface RlooConfig {
  /** rollout + update iterations (default 100) */
  iterations: number;
  /** prompts per iteration (default 16) */
  promptsPerIteration: number;
  /** samples per prompt, k ≥ 2 (default 4) */
  numGenerations: number;
  /** sequences per optimizer step (default 32) */
  miniBatchSize: number;
  /** passes over each rollout (default 1) */
  numIterations: number;
  /** response tokens sampled per prompt (default 16) */
  maxNewTokens: number;
  /** prompt tokens kept (longer prompts lose tokens on the left, after BOS) (default 256) */
  maxPromptLength: number;
  /** rollout sampling temperature (default 1) */
  temperature: number;
  /** rollout top-k (0 = off) (default 0) */
  topK: number;
  /** rollout top-p (1 = off) (default 1) */
  topP: number;
  /** peak learning rate (default 1e-6) */
  lr: number;
  /** fraction of iterations with linear warmup (default 0) */
  warmupRatio: number;
  /** decay after warmup (default "linear") */
  lrDecay: "cosine" | "linear" | "constant";
  /** AdamW weight decay (default 0) */
  weightDecay: number;
  /** global gradient-norm clip (0 = off) (default 1) */
  maxGradNorm: number;
  /** β of the summed k1 KL subtracted from each sequence's reward (default 0.05) */
  beta: number;
  /** sequence-ratio clip ε (default 0.2) */
  clip: number;
  /** completions without EOS take no part in the loss (default false) */
  maskTruncatedCompletions: boolean;
  /** rollout sampling and minibatch order seed (default 0) */
  seed: number;
}

const SHARED = [
  "iterations",
  "promptsPerIteration",
  "miniBatchSize",
  "numIterations",
  "maxNewTokens",
  "maxPromptLength",
  "temperature",
  "topK",
  "topP",
  "lr",
  "warmupRatio",
  "lrDecay",
  "weightDecay",
  "maxGradNorm",
  "maskTruncatedCompletions",
  "seed",
] as const;

/**
 * The RLOO schema: the sampling and optimizer fields as GRPO's, k = 4 samples per prompt (the
 * paper's best trade-off), β 0.05 and ε 0.2 as TRL's RLOO documents them.
 */
export const RLOO_SCHEMA: Schema<RlooConfig> = {
  ...Object.fromEntries(SHARED.map((k) => [k, GRPO_SCHEMA[k]])) as Pick<
    Schema<RlooConfig>,
    typeof SHARED[number]
  >,
  numGenerations: { default: 4, doc: "samples per prompt, k ≥ 2", min: 2, integer: true },
  beta: {
    default: 0.05,
    doc: "β of the summed k1 KL subtracted from each sequence's reward",
    min: 0,
  },
  clip: { default: 0.2, doc: "sequence-ratio clip ε", min: 0 },
};

/** Callbacks of {@link RlooTrainer}. */
export interface RlooHooks {
  /** Extra per-iteration metrics from the decoded rollout (e.g. the built-in task's gold). */
  scoreRollout?: (samples: GroupSample[]) => Metrics;
}

/** The trainer's own resumable state. */
export interface RlooTrainerState {
  /** Iterations done. */
  iteration: number;
  /** Counter of the minibatch-order seeds. */
  orderSeed: number;
}

const MB = { loss: 0, clipfrac: 1 } as const;
const MB_COLUMNS = Object.keys(MB).length;

/**
 * An RLOO trainer. The reference is `reference`, or the actor with its LoRA adapters off; with
 * `beta: 0` neither is needed.
 *
 * @example Two iterations with the math grader on a tiny random model
 * ```ts
 * import { ByteTokenizer, defaults, Gpu, graderByName, graderReward, OPT_PRESETS, OptModel, RLOO_SCHEMA, RlooTrainer } from "../mod.ts";
 * const gpu = await Gpu.create();
 * const actor = OptModel.create(gpu, OPT_PRESETS.tiny, { seed: 1 });
 * const cfg = { ...defaults(RLOO_SCHEMA), iterations: 2, promptsPerIteration: 2, numGenerations: 2, maxNewTokens: 4, beta: 0 };
 * const reward = graderReward(graderByName("math"), "grader:math");
 * const t = new RlooTrainer(actor, undefined, reward, new ByteTokenizer(), { prompts: ["1+1=", "2+2="], references: ["2", "4"] }, cfg);
 * console.log((await t.step()).reward); // 0: a random model answers nothing right
 * ```
 */
export class RlooTrainer implements Trainer<RlooTrainerState> {
  iteration = 0;
  /** The decoded samples of the last rollout. */
  lastSamples: GroupSample[] = [];
  #orderSeed: number;

  /**
   * Creates the trainer (no GPU work until the first step).
   * @param actor the policy trained (its LoRA adapters when it has them)
   * @param reference the frozen reference (optional with LoRA or `beta: 0`)
   * @param reward what scores the samples
   * @param tok the tokenizer
   * @param data prompts (and references)
   * @param cfg the `rloo.` section
   * @param hooks extra per-iteration metrics
   */
  constructor(
    readonly actor: OptModel,
    readonly reference: OptModel | undefined,
    readonly reward: Reward,
    readonly tok: Tokenizer,
    readonly data: GroupData,
    readonly cfg: RlooConfig,
    readonly hooks: RlooHooks = {},
  ) {
    if (cfg.beta > 0 && !reference && !actor.lora) {
      throw new RangeError("RlooTrainer: beta > 0 needs a reference model or LoRA adapters");
    }
    checkGroupSetup("RlooTrainer", data, cfg.numGenerations);
    this.#orderSeed = cfg.seed;
  }

  get total(): number {
    return this.cfg.iterations;
  }

  /** One iteration: group rollout, KL-shaped rewards, leave-one-out advantages, updates. */
  step(_log = true): Promise<Metrics> {
    const gpu = this.actor.gpu;
    return gpu.scope(async () => {
      const cfg = this.cfg;
      const g = await scoredGroupRollout(
        this.actor,
        this.tok,
        this.reward,
        this.data,
        cfg,
        this.iteration,
        { maskTruncated: cfg.maskTruncatedCompletions, dropTied: false },
      );
      const { r, mask } = g;
      const logpOld = modelLogprobs(this.actor, r.tokens, r.attentionMask);
      const seqOld = sequenceLogprobs(gpu, logpOld, mask);
      // k1 summed over the response: ℓ_old − ℓ_ref
      const kl = cfg.beta > 0
        ? sub(
          gpu,
          seqOld,
          sequenceLogprobs(
            gpu,
            referenceLogprobs(this.actor, this.reference, r.tokens, r.attentionMask),
            mask,
          ),
        )
        : undefined;
      const klHost = kl ? await gpu.readF32(kl) : new Float32Array(g.rewards.length);
      const shaped = Float32Array.from(g.rewards, (x, i) => x - cfg.beta * klHost[i]);
      const advantages = groupAdvantages(gpu, gpu.fromArray(shaped), {
        groupSize: cfg.numGenerations,
        baseline: "leave-one-out",
      }).advantages;
      const stats = g.tokens > 0 ? this.#update(g, seqOld, advantages) : undefined;
      const m = await this.#metrics(g, stats, klHost, shaped);
      this.iteration++;
      this.lastSamples = g.samples;
      return m;
    });
  }

  /** `numIterations` passes over shuffled minibatches; statistics stay on the GPU. */
  #update(g: ScoredGroups, seqOld: Tensor, advantages: Tensor): Tensor {
    const gpu = this.actor.gpu, cfg = this.cfg, N = g.samples.length, T = g.r.length;
    const perPass = Math.ceil(N / cfg.miniBatchSize);
    const stats = gpu.zeros([cfg.numIterations * perPass * MB_COLUMNS]);
    let k = 0;
    for (let pass = 0; pass < cfg.numIterations; pass++) {
      const order = permutation(N, mulberry32(epochSeed(this.#orderSeed++, pass)));
      for (let s = 0; s < N; s += cfg.miniBatchSize) {
        const rows = order.slice(s, s + cfg.miniBatchSize);
        const gather = (t: Tensor, width = T) => gatherRows(gpu, t, rows, width);
        gpu.scope(() =>
          this.#minibatch(
            gather(g.r.tokens),
            gather(g.r.attentionMask),
            gather(g.mask),
            gather(seqOld, 1),
            gather(advantages, 1),
            // rows without response tokens (left out) carry no loss
            gpu.fromArray(rows.map((row) => (g.rowTokens[row] > 0 ? 1 : 0))),
            stats,
            k++,
          )
        );
      }
    }
    return stats;
  }

  /** One optimizer step: the clipped sequence-ratio objective, spread back over the tokens. */
  #minibatch(
    seq: Tensor,
    am: Tensor,
    act: Tensor,
    seqOld: Tensor,
    adv: Tensor,
    rowMask: Tensor,
    stats: Tensor,
    k: number,
  ): void {
    const { actor, cfg } = this, gpu = actor.gpu, [B, T] = seq.shape;
    const store = actor.lora?.store ?? actor.store;
    store.zeroGrads();
    const acts = actor.forward(seq, am);
    const lp = actor.tokenLogprobs(acts);
    const seqLp = sequenceLogprobs(gpu, lp.logp, act);
    const pl = ppoPolicyLoss(gpu, seqLp, seqOld, adv, rowMask, { clip: cfg.clip });
    const dlogp = sequenceLogprobsBackward(gpu, pl.dlogp, act);
    const dlogits = logitsBackward(gpu, lp.logits, lp.targets, lp.lse, {
      dlogp: dlogp.reshape([B * T]),
    });
    actor.backward(acts, { dlogits });
    optimizerStep(store, cfg, this.iteration, cfg.iterations);
    gpu.copyRange(pl.loss, STAT.mean, stats, MB_COLUMNS * k + MB.loss, 1);
    gpu.copyRange(pl.clipfrac, STAT.mean, stats, MB_COLUMNS * k + MB.clipfrac, 1);
  }

  /** The iteration's metrics: one readback of the statistics. */
  async #metrics(
    g: ScoredGroups,
    stats: Tensor | undefined,
    kl: Float32Array,
    shaped: Float32Array,
  ): Promise<Metrics> {
    const cfg = this.cfg;
    const st = stats ? await this.actor.gpu.readF32(stats) : new Float32Array(0);
    const k = st.length / MB_COLUMNS;
    const avg = (c: keyof typeof MB) => {
      let a = 0;
      for (let i = 0; i < k; i++) a += st[MB_COLUMNS * i + MB[c]];
      return k ? a / k : 0;
    };
    const loss = avg("loss");
    assertFiniteLosses(`RLOO iteration ${this.iteration + 1}`, { loss });
    const mean = (xs: Float32Array) => xs.reduce((a, v) => a + v, 0) / xs.length;
    return {
      iteration: this.iteration + 1,
      ...groupMetrics(g, cfg.numGenerations),
      kl: mean(kl),
      rlhf_reward: mean(shaped),
      clip_ratio: avg("clipfrac"),
      loss,
      "train/updated": stats ? 1 : 0,
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
  state(): RlooTrainerState {
    return { iteration: this.iteration, orderSeed: this.#orderSeed };
  }

  /** Restores {@link state}, checked field by field. */
  restore(s: RlooTrainerState): void {
    const iteration = checkStateNumber("iteration", s?.iteration, { min: 0, max: this.total });
    const orderSeed = checkStateNumber("orderSeed", s.orderSeed);
    [this.iteration, this.#orderSeed] = [iteration, orderSeed];
  }

  /** The actor's trained store (its LoRA adapters when it has them). */
  stores(): StateFile[] {
    const a = this.actor;
    return [
      a.lora
        ? { name: "rloo/actor_lora_state.safetensors", store: a.lora.store }
        : { name: "rloo/actor_state.safetensors", store: a.store },
    ];
  }
}
