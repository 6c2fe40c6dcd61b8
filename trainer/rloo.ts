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

/** RLOO hyperparameters (the `rloo.` section). */
export interface RlooConfig extends GroupSectionConfig {
  /** samples per prompt, k ≥ 2 (default 4) */
  numGenerations: number;
  /** β of the summed k1 KL subtracted from each sequence's reward (default 0.05) */
  beta: number;
  /** sequence-ratio clip ε (default 0.2) */
  clip: number;
}

/**
 * The RLOO schema: the sampling and optimizer fields as GRPO's, k = 4 samples per prompt (the
 * paper's best trade-off), β 0.05 and ε 0.2 as TRL's RLOO documents them.
 */
export const RLOO_SCHEMA: Schema<RlooConfig> = {
  ...groupSectionFields(),
  numGenerations: { default: 4, doc: "samples per prompt, k ≥ 2", min: 2, integer: true },
  beta: {
    default: 0.05,
    doc: "β of the summed k1 KL subtracted from each sequence's reward",
    min: 0,
  },
  clip: { default: 0.2, doc: "sequence-ratio clip ε", min: 0 },
};

/** Callbacks of {@link RlooTrainer}. */
export type RlooHooks = GroupHooks;

/** The trainer's own resumable state. */
export type RlooTrainerState = GroupTrainerState;

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
export class RlooTrainer extends GroupTrainer<RlooConfig> {
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
    actor: OptModel,
    reference: OptModel | undefined,
    reward: Reward,
    tok: Tokenizer,
    data: GroupData,
    cfg: RlooConfig,
    hooks: RlooHooks = {},
  ) {
    super("RlooTrainer", "rloo", actor, reference, reward, tok, data, cfg, hooks);
  }

  /** One iteration: group rollout, KL-shaped rewards, leave-one-out advantages, updates. */
  step(_log = true): Promise<Metrics> {
    const gpu = this.actor.gpu, cfg = this.cfg;
    return gpu.scope(async () => {
      const g = await this.scoredRollout({
        maskTruncated: cfg.maskTruncatedCompletions,
        dropTied: false,
      });
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
      const st = stats ? await gpu.readF32(stats) : new Float32Array(0);
      const [loss, clipfrac] = columnMeans(st, MB_COLUMNS);
      assertFiniteLosses(`RLOO iteration ${this.iteration + 1}`, { loss });
      const mean = (xs: Float32Array) => xs.reduce((a, v) => a + v, 0) / xs.length;
      const m: Metrics = {
        ...this.commonMetrics(g, stats !== undefined),
        kl: mean(klHost),
        rlhf_reward: mean(shaped),
        clip_ratio: clipfrac,
        loss,
      };
      this.iteration++;
      this.lastSamples = g.samples;
      return m;
    });
  }

  /** `numIterations` passes over shuffled minibatches; statistics stay on the GPU. */
  #update(g: ScoredGroups, seqOld: Tensor, advantages: Tensor): Tensor {
    const gpu = this.actor.gpu, N = g.samples.length, T = g.r.length;
    const stats = gpu.zeros([this.minibatches(N) * MB_COLUMNS]);
    this.passes(N, (rows, k) => {
      const gather = (t: Tensor, width = T) => gatherRows(gpu, t, rows, width);
      this.#minibatch(
        gather(g.r.tokens),
        gather(g.r.attentionMask),
        gather(g.mask),
        gather(seqOld, 1),
        gather(advantages, 1),
        // rows without response tokens (left out) carry no loss
        gpu.fromArray(rows.map((row) => (g.rowTokens[row] > 0 ? 1 : 0))),
        stats,
        k,
      );
    });
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
    this.store.zeroGrads();
    const acts = actor.forward(seq, am);
    const lp = actor.tokenLogprobs(acts);
    const seqLp = sequenceLogprobs(gpu, lp.logp, act);
    const pl = ppoPolicyLoss(gpu, seqLp, seqOld, adv, rowMask, { clip: cfg.clip });
    const dlogp = sequenceLogprobsBackward(gpu, pl.dlogp, act);
    const dlogits = logitsBackward(gpu, lp.logits, lp.targets, lp.lse, {
      dlogp: dlogp.reshape([B * T]),
    });
    actor.backward(acts, { dlogits });
    optimizerStep(this.store, cfg, this.iteration, cfg.iterations);
    gpu.copyRange(pl.loss, STAT.mean, stats, MB_COLUMNS * k + MB.loss, 1);
    gpu.copyRange(pl.clipfrac, STAT.mean, stats, MB_COLUMNS * k + MB.clipfrac, 1);
  }
}
