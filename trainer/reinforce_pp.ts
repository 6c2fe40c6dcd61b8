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
import { type GroupSectionConfig, groupSectionFields } from "./grpo.ts";
import {
  columnMeans,
  gatherRows,
  type GroupData,
  type GroupHooks,
  GroupTrainer,
  type GroupTrainerState,
  type ScoredGroups,
} from "./group.ts";
import { modelLogprobs, referenceLogprobs } from "./logprobs.ts";
import { optimizerStep } from "./optim.ts";
import type { Reward } from "./reward.ts";
import { assertFiniteLosses, type Metrics } from "./types.ts";

/** REINFORCE++ hyperparameters (the `reinforce.` section). */
export interface ReinforcePpConfig extends GroupSectionConfig {
  /** samples per prompt, G ≥ 2 (default 4) */
  numGenerations: number;
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
}

/**
 * The REINFORCE++ schema: sampling and optimizer fields as GRPO's; β 0.01 (OpenRLHF's
 * `init_kl_coef` for REINFORCE++), k1 in the reward, ε 0.2, group baseline on.
 */
export const REINFORCE_PP_SCHEMA: Schema<ReinforcePpConfig> = {
  ...groupSectionFields(),
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
export type ReinforcePpHooks = GroupHooks;

/** The trainer's own resumable state. */
export type ReinforcePpTrainerState = GroupTrainerState;

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
export class ReinforcePpTrainer extends GroupTrainer<ReinforcePpConfig> {
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
    actor: OptModel,
    reference: OptModel | undefined,
    reward: Reward,
    tok: Tokenizer,
    data: GroupData,
    cfg: ReinforcePpConfig,
    hooks: ReinforcePpHooks = {},
  ) {
    super("ReinforcePpTrainer", "reinforce", actor, reference, reward, tok, data, cfg, hooks);
  }

  /** One iteration: group rollout, centred KL-shaped returns, whitening, PPO-clip updates. */
  step(_log = true): Promise<Metrics> {
    const gpu = this.actor.gpu, cfg = this.cfg;
    return gpu.scope(async () => {
      const g = await this.scoredRollout({
        maskTruncated: cfg.maskTruncatedCompletions,
        dropTied: false,
      });
      const { r, mask } = g, N = g.samples.length, T = r.length;
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
      const st = stats ? await gpu.readF32(stats) : new Float32Array(0);
      const [loss, clipfrac, approxKl, entropy] = columnMeans(st, MB_COLUMNS);
      assertFiniteLosses(`REINFORCE++ iteration ${this.iteration + 1}`, { loss });
      const kl = await gpu.readF32(adv.kl);
      const m: Metrics = {
        ...this.commonMetrics(g, stats !== undefined),
        kl: kl.subarray(0, N * T).reduce((a, v) => a + v, 0) / N,
        clip_ratio: clipfrac,
        approx_kl: approxKl,
        entropy,
        loss,
      };
      this.iteration++;
      this.lastSamples = g.samples;
      return m;
    });
  }

  /** `numIterations` passes over shuffled minibatches; statistics stay on the GPU. */
  #update(g: ScoredGroups, logpOld: Tensor, advantages: Tensor): Tensor {
    const gpu = this.actor.gpu, N = g.samples.length, T = g.r.length;
    const stats = gpu.zeros([this.minibatches(N) * MB_COLUMNS]);
    this.passes(N, (rows, k) => {
      const gather = (t: Tensor) => gatherRows(gpu, t, rows, T);
      this.#minibatch(
        gather(g.r.tokens),
        gather(g.r.attentionMask),
        gather(g.mask),
        gather(logpOld),
        gather(advantages),
        stats,
        k,
      );
    });
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
    this.store.zeroGrads();
    const acts = actor.forward(seq, am);
    const lp = actor.tokenLogprobs(acts);
    const pl = ppoPolicyLoss(gpu, lp.logp, logpOld, adv, act, { clip: cfg.clip });
    const dlogits = logitsBackward(gpu, lp.logits, lp.targets, lp.lse, {
      dlogp: pl.dlogp.reshape([B * T]),
    });
    actor.backward(acts, { dlogits });
    optimizerStep(this.store, cfg, this.iteration, cfg.iterations);
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
}
