/**
 * REINFORCE++ with a group baseline (Hu 2025; OpenRLHF's `reinforce_baseline`): no critic. One
 * {@link ReinforcePpTrainer.step}:
 *
 * 1. the group rollout and its rewards (`trainer/group.ts`); each reward minus its group's
 *    mean (`groupBaseline`, `kernels/group.ts` with no scaling);
 * 2. per-token KL-shaped rewards `−β·kl_t` plus the centred reward at the last response token,
 *    returns `G_t = Σ_{s ≥ t} r_s` (γ = 1, no critic: GAE with V = 0, λ = 1), whitened over the
 *    whole batch's response tokens (`trainer/advantages.ts`);
 * 3. `numIterations` passes of PPO's clipped token objective over shuffled minibatches.
 *
 * Metrics: the rollout's (`reward`, `reward_std`, …), `kl` (mean summed per-token KL per
 * sequence), `clip_ratio`, `approx_kl`, `entropy`, `loss`.
 *
 * @module
 */

import { groupAdvantages } from "../kernels/group.ts";
import { maskedStats, STAT } from "../kernels/reduce.ts";
import { type KlEstimator, ppoPolicyLoss } from "../kernels/rl.ts";
import type { Tensor } from "../kernels/runtime.ts";
import { logitsBackward } from "../kernels/softmax.ts";
import type { OptModel } from "../model/opt.ts";
import type { Tokenizer } from "../model/tokenizer.ts";
import { gaeAdvantages } from "./advantages.ts";
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

/** REINFORCE++ hyperparameters (the `reinforce.` section). */
export interface ReinforcePpConfig {
  /** rollout + update iterations (default 100) */
  iterations: number;
  /** prompts per iteration (default 16) */
  promptsPerIteration: number;
  /** samples per prompt, G ≥ 2 (default 4) */
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
  /** β of the per-token KL in the rewards (0 = no reference model) (default 0.01) */
  beta: number;
  /** KL estimator of the per-token penalty: k1 · abs · mse · k3 (default "k1") */
  klEstimator: KlEstimator;
  /** subtract each group's mean reward (REINFORCE++-baseline) (default true) */
  groupBaseline: boolean;
  /** the (centred) reward is clipped to ±scoreClip (default 5) */
  scoreClip: number;
  /** ratio clip ε (default 0.2) */
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
 * The REINFORCE++ schema: sampling and optimizer fields as GRPO's; β 0.01 (OpenRLHF's
 * `init_kl_coef` for REINFORCE++), k1 in the reward, ε 0.2, group baseline on.
 */
export const REINFORCE_PP_SCHEMA: Schema<ReinforcePpConfig> = {
  ...Object.fromEntries(SHARED.map((k) => [k, GRPO_SCHEMA[k]])) as Pick<
    Schema<ReinforcePpConfig>,
    typeof SHARED[number]
  >,
  numGenerations: { default: 4, doc: "samples per prompt, G ≥ 2", min: 2, integer: true },
  beta: {
    default: 0.01,
    doc: "β of the per-token KL in the rewards (0 = no reference model)",
    min: 0,
  },
  klEstimator: {
    default: "k1",
    doc: "KL estimator of the per-token penalty: k1 · abs · mse · k3",
    choices: ["k1", "abs", "mse", "k3"],
  },
  groupBaseline: {
    default: true,
    doc: "subtract each group's mean reward (REINFORCE++-baseline)",
  },
  scoreClip: { default: 5, doc: "the (centred) reward is clipped to ±scoreClip", min: 0 },
  clip: { default: 0.2, doc: "ratio clip ε", min: 0 },
};

/** Callbacks of {@link ReinforcePpTrainer}. */
export interface ReinforcePpHooks {
  /** Extra per-iteration metrics from the decoded rollout (e.g. the built-in task's gold). */
  scoreRollout?: (samples: GroupSample[]) => Metrics;
}

/** The trainer's own resumable state. */
export interface ReinforcePpTrainerState {
  /** Iterations done. */
  iteration: number;
  /** Counter of the minibatch-order seeds. */
  orderSeed: number;
}

const MB = { loss: 0, clipfrac: 1, approxKl: 2, entropy: 3 } as const;
const MB_COLUMNS = Object.keys(MB).length;

/**
 * A REINFORCE++ trainer. The reference is `reference`, or the actor with its LoRA adapters
 * off; with `beta: 0` neither is needed.
 *
 * @example Two iterations with the math grader on a tiny random model
 * ```ts
 * import { ByteTokenizer, defaults, Gpu, graderByName, graderReward, OPT_PRESETS, OptModel, REINFORCE_PP_SCHEMA, ReinforcePpTrainer } from "../mod.ts";
 * const gpu = await Gpu.create();
 * const actor = OptModel.create(gpu, OPT_PRESETS.tiny, { seed: 1 });
 * const cfg = { ...defaults(REINFORCE_PP_SCHEMA), iterations: 2, promptsPerIteration: 2, numGenerations: 2, maxNewTokens: 4, beta: 0 };
 * const reward = graderReward(graderByName("math"), "grader:math");
 * const t = new ReinforcePpTrainer(actor, undefined, reward, new ByteTokenizer(), { prompts: ["1+1=", "2+2="], references: ["2", "4"] }, cfg);
 * console.log((await t.step()).reward); // 0: a random model answers nothing right
 * ```
 */
export class ReinforcePpTrainer implements Trainer<ReinforcePpTrainerState> {
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
   * @param cfg the `reinforce.` section
   * @param hooks extra per-iteration metrics
   */
  constructor(
    readonly actor: OptModel,
    readonly reference: OptModel | undefined,
    readonly reward: Reward,
    readonly tok: Tokenizer,
    readonly data: GroupData,
    readonly cfg: ReinforcePpConfig,
    readonly hooks: ReinforcePpHooks = {},
  ) {
    if (cfg.beta > 0 && !reference && !actor.lora) {
      throw new RangeError("ReinforcePpTrainer: beta > 0 needs a reference model or LoRA adapters");
    }
    checkGroupSetup("ReinforcePpTrainer", data, cfg.numGenerations);
    this.#orderSeed = cfg.seed;
  }

  get total(): number {
    return this.cfg.iterations;
  }

  /** One iteration: group rollout, centred KL-shaped returns, whitening, PPO-clip updates. */
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
      const logpRef = cfg.beta > 0
        ? referenceLogprobs(this.actor, this.reference, r.tokens, r.attentionMask)
        : logpOld;
      const rewards = gpu.fromArray(g.rewards);
      const scores = cfg.groupBaseline
        ? groupAdvantages(gpu, rewards, { groupSize: cfg.numGenerations, scale: "none" })
          .advantages
        : rewards;
      const adv = gaeAdvantages(
        gpu,
        {
          logpOld,
          logpRef,
          values: gpu.zeros(r.tokens.shape),
          scores,
          actionMask: mask,
        },
        cfg.beta,
        {
          klEstimator: cfg.klEstimator,
          scoreClip: cfg.scoreClip,
          gamma: 1,
          lambda: 1,
          whitenAdvantages: true,
        },
      );
      const stats = g.tokens > 0 ? this.#update(g, logpOld, adv.advantages) : undefined;
      const m = await this.#metrics(g, stats, await gpu.readF32(adv.kl));
      this.iteration++;
      this.lastSamples = g.samples;
      return m;
    });
  }

  /** `numIterations` passes over shuffled minibatches; statistics stay on the GPU. */
  #update(g: ScoredGroups, logpOld: Tensor, advantages: Tensor): Tensor {
    const gpu = this.actor.gpu, cfg = this.cfg, N = g.samples.length, T = g.r.length;
    const perPass = Math.ceil(N / cfg.miniBatchSize);
    const stats = gpu.zeros([cfg.numIterations * perPass * MB_COLUMNS]);
    let k = 0;
    for (let pass = 0; pass < cfg.numIterations; pass++) {
      const order = permutation(N, mulberry32(epochSeed(this.#orderSeed++, pass)));
      for (let s = 0; s < N; s += cfg.miniBatchSize) {
        const rows = order.slice(s, s + cfg.miniBatchSize);
        const gather = (t: Tensor) => gatherRows(gpu, t, rows, T);
        gpu.scope(() =>
          this.#minibatch(
            gather(g.r.tokens),
            gather(g.r.attentionMask),
            gather(g.mask),
            gather(logpOld),
            gather(advantages),
            stats,
            k++,
          )
        );
      }
    }
    return stats;
  }

  /** One optimizer step of PPO's clipped token objective. */
  #minibatch(
    seq: Tensor,
    am: Tensor,
    act: Tensor,
    logpOld: Tensor,
    adv: Tensor,
    stats: Tensor,
    k: number,
  ): void {
    const { actor, cfg } = this, gpu = actor.gpu, [B, T] = seq.shape;
    const store = actor.lora?.store ?? actor.store;
    store.zeroGrads();
    const acts = actor.forward(seq, am);
    const lp = actor.tokenLogprobs(acts);
    const pl = ppoPolicyLoss(gpu, lp.logp, logpOld, adv, act, { clip: cfg.clip });
    const dlogits = logitsBackward(gpu, lp.logits, lp.targets, lp.lse, {
      dlogp: pl.dlogp.reshape([B * T]),
    });
    actor.backward(acts, { dlogits });
    optimizerStep(store, cfg, this.iteration, cfg.iterations);
    const columns: [keyof typeof MB, Tensor][] = [
      ["loss", pl.loss],
      ["clipfrac", pl.clipfrac],
      ["approxKl", pl.approxkl],
      ["entropy", maskedStats(gpu, lp.entropy, act)],
    ];
    for (const [name, t] of columns) {
      gpu.copyRange(t, STAT.mean, stats, MB_COLUMNS * k + MB[name], 1);
    }
  }

  /** The iteration's metrics: one readback of the statistics. */
  async #metrics(g: ScoredGroups, stats: Tensor | undefined, kl: Float32Array): Promise<Metrics> {
    const cfg = this.cfg, N = g.samples.length, T = g.r.length;
    const st = stats ? await this.actor.gpu.readF32(stats) : new Float32Array(0);
    const k = st.length / MB_COLUMNS;
    const avg = (c: keyof typeof MB) => {
      let a = 0;
      for (let i = 0; i < k; i++) a += st[MB_COLUMNS * i + MB[c]];
      return k ? a / k : 0;
    };
    const loss = avg("loss");
    assertFiniteLosses(`REINFORCE++ iteration ${this.iteration + 1}`, { loss });
    let klSum = 0;
    for (let i = 0; i < N * T; i++) klSum += kl[i];
    return {
      iteration: this.iteration + 1,
      ...groupMetrics(g, cfg.numGenerations),
      kl: klSum / N,
      clip_ratio: avg("clipfrac"),
      approx_kl: avg("approxKl"),
      entropy: avg("entropy"),
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
  state(): ReinforcePpTrainerState {
    return { iteration: this.iteration, orderSeed: this.#orderSeed };
  }

  /** Restores {@link state}, checked field by field. */
  restore(s: ReinforcePpTrainerState): void {
    const iteration = checkStateNumber("iteration", s?.iteration, { min: 0, max: this.total });
    const orderSeed = checkStateNumber("orderSeed", s.orderSeed);
    [this.iteration, this.#orderSeed] = [iteration, orderSeed];
  }

  /** The actor's trained store (its LoRA adapters when it has them). */
  stores(): StateFile[] {
    const a = this.actor;
    return [
      a.lora
        ? { name: "reinforce/actor_lora_state.safetensors", store: a.lora.store }
        : { name: "reinforce/actor_state.safetensors", store: a.store },
    ];
  }
}
