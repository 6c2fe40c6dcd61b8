/**
 * GRPO (DeepSeekMath; SPEC §9): the critic-free group method. One {@link GrpoTrainer.step} is
 * one iteration:
 *
 * 1. **rollout** — `numGenerations` (G) samples of each of `promptsPerIteration` prompts in one
 *    batched KV-cache generation, the G samples of a prompt adjacent (`trainer/rollout.ts`);
 * 2. **rewards** — a {@link Reward}: a grader against each prompt's reference, or a reward
 *    model; group-relative advantages `A_i = (r_i − mean_g)/(std + 1e-4)` (`scaleRewards`
 *    `group` | `batch` | `none` = Dr. GRPO), optionally dropping groups whose rewards all tie
 *    and masking truncated completions;
 * 3. **update** — `numIterations` passes over shuffled minibatches of sequences: the clipped
 *    ratio objective against `logp_old` (DAPO's clip-higher with `epsilonHigh`) plus `β·k3` to
 *    the reference per token, aggregated as `lossType` (`kernels/group.ts`), clip + AdamW.
 *
 * The statistics stay on the GPU and are read back once per iteration. Metrics carry TRL's
 * names: `reward`, `reward_std`, `frac_reward_zero_std`, `kl`, `entropy`,
 * `clip_ratio/low_mean`, `clip_ratio/high_mean`, `clip_ratio/region_mean`,
 * `completions/mean_length`, `completions/clipped_ratio`, `loss`.
 *
 * @module
 */

import {
  groupAdvantages,
  grpoLoss,
  type LossAggregation,
  type RewardScaling,
} from "../kernels/group.ts";
import { maskedStats, STAT } from "../kernels/reduce.ts";
import type { Tensor } from "../kernels/runtime.ts";
import { logitsBackward } from "../kernels/softmax.ts";
import type { OptModel } from "../model/opt.ts";
import type { Tokenizer } from "../model/tokenizer.ts";
import type { Schema } from "./config.ts";
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

/** GRPO hyperparameters (the `grpo.` section). */
export interface GrpoConfig {
  /** rollout + update iterations (default 100) */
  iterations: number;
  /** prompts per iteration (default 16) */
  promptsPerIteration: number;
  /** samples per prompt, G ≥ 2 (default 8) */
  numGenerations: number;
  /** sequences per optimizer step (default 32) */
  miniBatchSize: number;
  /** passes over each rollout (μ; > 1 reuses it with logp_old) (default 1) */
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
  /** β of the per-token k3 KL to the reference (0 = no reference model) (default 0.04) */
  beta: number;
  /** lower ratio clip ε (default 0.2) */
  epsilonLow: number;
  /** upper ratio clip ε (DAPO's clip-higher when larger, e.g. 0.28) (default 0.2) */
  epsilonHigh: number;
  /** group: by the group's reward std · batch: the batch's · none: Dr. GRPO (default "group") */
  scaleRewards: RewardScaling;
  /** grpo · bnpo · dr_grpo · dapo (token-level over the generation batch) (default "dapo") */
  lossType: LossAggregation;
  /** completions without EOS take no part in the loss (default false) */
  maskTruncatedCompletions: boolean;
  /** groups whose rewards all tie take no part in the loss (DAPO's filter) (default false) */
  dropTiedGroups: boolean;
  /** rollout sampling and minibatch order seed (default 0) */
  seed: number;
}

/**
 * The GRPO schema. Defaults as TRL documents them (G 8, ε 0.2, `scale_rewards` `group`,
 * `loss_type` `dapo`, μ 1, lr 1e-6 for billion-parameter models), except β: 0.04 here (the
 * DeepSeekMath value; TRL now defaults to 0), so the policy stays near the reference unless
 * asked otherwise. The built-in task's pipeline overrides the learning rate for its tiny model.
 */
export const GRPO_SCHEMA: Schema<GrpoConfig> = {
  iterations: { default: 100, doc: "rollout + update iterations", min: 1, integer: true },
  promptsPerIteration: { default: 16, doc: "prompts per iteration", min: 1, integer: true },
  numGenerations: { default: 8, doc: "samples per prompt, G ≥ 2", min: 2, integer: true },
  miniBatchSize: { default: 32, doc: "sequences per optimizer step", min: 1, integer: true },
  numIterations: {
    default: 1,
    doc: "passes over each rollout (μ; > 1 reuses it with logp_old)",
    min: 1,
    integer: true,
  },
  maxNewTokens: { default: 16, doc: "response tokens sampled per prompt", min: 1, integer: true },
  maxPromptLength: {
    default: 256,
    doc: "prompt tokens kept (longer prompts lose tokens on the left, after BOS)",
    min: 2,
    integer: true,
  },
  temperature: { default: 1.0, doc: "rollout sampling temperature", min: 0 },
  topK: { default: 0, doc: "rollout top-k (0 = off)", min: 0, integer: true },
  topP: { default: 1.0, doc: "rollout top-p (1 = off)", min: 0, max: 1 },
  lr: { default: 1e-6, doc: "peak learning rate", min: 0 },
  warmupRatio: { default: 0, doc: "fraction of iterations with linear warmup", min: 0, max: 1 },
  lrDecay: {
    default: "linear",
    doc: "decay after warmup",
    choices: ["cosine", "linear", "constant"],
  },
  weightDecay: { default: 0, doc: "AdamW weight decay", min: 0 },
  maxGradNorm: { default: 1.0, doc: "global gradient-norm clip (0 = off)", min: 0 },
  beta: {
    default: 0.04,
    doc: "β of the per-token k3 KL to the reference (0 = no reference model)",
    min: 0,
  },
  epsilonLow: { default: 0.2, doc: "lower ratio clip ε", min: 0, max: 1 },
  epsilonHigh: {
    default: 0.2,
    doc: "upper ratio clip ε (DAPO's clip-higher when larger, e.g. 0.28)",
    min: 0,
  },
  scaleRewards: {
    default: "group",
    doc: "group: by the group's reward std · batch: the batch's · none: Dr. GRPO",
    choices: ["group", "batch", "none"],
  },
  lossType: {
    default: "dapo",
    doc: "grpo · bnpo · dr_grpo · dapo (token-level over the generation batch)",
    choices: ["grpo", "bnpo", "dr_grpo", "dapo"],
  },
  maskTruncatedCompletions: {
    default: false,
    doc: "completions without EOS take no part in the loss",
  },
  dropTiedGroups: {
    default: false,
    doc: "groups whose rewards all tie take no part in the loss (DAPO's filter)",
  },
  seed: { default: 0, doc: "rollout sampling and minibatch order seed", integer: true },
};

/** The fields every group method's section shares with GRPO's (sampling, optimizer, masking). */
export const GROUP_SECTION_KEYS = [
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

/** A group method's section fields shared with GRPO's (their docs and defaults are GRPO's). */
export type GroupSectionConfig = Pick<GrpoConfig, typeof GROUP_SECTION_KEYS[number]>;

/** GRPO's schema entries of {@link GROUP_SECTION_KEYS}, for another group method's schema. */
export function groupSectionFields(): Schema<GroupSectionConfig> {
  return Object.fromEntries(
    GROUP_SECTION_KEYS.map((k) => [k, GRPO_SCHEMA[k]]),
  ) as unknown as Schema<GroupSectionConfig>;
}

/** What GRPO trains on (see {@link GroupData}). */
export type GrpoData = GroupData;

/** Callbacks of {@link GrpoTrainer}. */
export type GrpoHooks = GroupHooks;

/** The trainer's own resumable state. */
export type GrpoTrainerState = GroupTrainerState;

/** Columns of the per-minibatch statistics. */
const MB = { loss: 0, clipLow: 1, clipHigh: 2, kl: 3, entropy: 4 } as const;
const MB_COLUMNS = Object.keys(MB).length;

/**
 * A GRPO trainer. The reference is `reference`, or the actor with its LoRA adapters off; with
 * `beta: 0` neither is needed.
 *
 * @example Two iterations with the math grader on a tiny random model
 * ```ts
 * import { ByteTokenizer, defaults, Gpu, graderByName, graderReward, GRPO_SCHEMA, GrpoTrainer, OPT_PRESETS, OptModel } from "../mod.ts";
 * const gpu = await Gpu.create();
 * const actor = OptModel.create(gpu, OPT_PRESETS.tiny, { seed: 1 });
 * const cfg = { ...defaults(GRPO_SCHEMA), iterations: 2, promptsPerIteration: 2, numGenerations: 2, maxNewTokens: 4, beta: 0 };
 * const reward = graderReward(graderByName("math"), "grader:math");
 * const t = new GrpoTrainer(actor, undefined, reward, new ByteTokenizer(), { prompts: ["1+1=", "2+2="], references: ["2", "4"] }, cfg);
 * console.log((await t.step())["frac_reward_zero_std"]); // 1: a random model answers nothing right
 * ```
 */
export class GrpoTrainer extends GroupTrainer<GrpoConfig> {
  /**
   * Creates the trainer (no GPU work until the first step).
   * @param actor the policy trained (its LoRA adapters when it has them)
   * @param reference the frozen reference (optional with LoRA or `beta: 0`)
   * @param reward what scores the samples
   * @param tok the tokenizer
   * @param data prompts (and references)
   * @param cfg the `grpo.` section
   * @param hooks extra per-iteration metrics
   */
  constructor(
    actor: OptModel,
    reference: OptModel | undefined,
    reward: Reward,
    tok: Tokenizer,
    data: GrpoData,
    cfg: GrpoConfig,
    hooks: GrpoHooks = {},
  ) {
    super("GrpoTrainer", "grpo", actor, reference, reward, tok, data, cfg, hooks);
  }

  /** One iteration: group rollout, rewards and advantages, `numIterations` of updates, metrics. */
  step(_log = true): Promise<Metrics> {
    const gpu = this.actor.gpu, cfg = this.cfg;
    return gpu.scope(async () => {
      const g = await this.scoredRollout({
        maskTruncated: cfg.maskTruncatedCompletions,
        dropTied: cfg.dropTiedGroups,
      });
      const advantages = groupAdvantages(gpu, gpu.fromArray(g.rewards), {
        groupSize: cfg.numGenerations,
        scale: cfg.scaleRewards,
      }).advantages;
      const stats = g.tokens > 0 ? this.#update(g, advantages) : undefined;
      const m = await this.#metrics(g, stats);
      this.iteration++;
      this.lastSamples = g.samples;
      return m;
    });
  }

  /** `numIterations` passes over shuffled minibatches; statistics stay on the GPU. */
  #update(g: ScoredGroups, advantages: Tensor): Tensor {
    const gpu = this.actor.gpu, cfg = this.cfg, r = g.r, N = g.samples.length, T = r.length;
    const logpOld = modelLogprobs(this.actor, r.tokens, r.attentionMask);
    const logpRef = cfg.beta > 0
      ? referenceLogprobs(this.actor, this.reference, r.tokens, r.attentionMask)
      : undefined;
    const stats = gpu.zeros([this.minibatches(N) * MB_COLUMNS]);
    this.passes(N, (rows, k) => {
      const gather = (t: Tensor, width = T) => gatherRows(gpu, t, rows, width);
      this.#minibatch(
        {
          seq: gather(r.tokens),
          am: gather(r.attentionMask),
          act: gather(g.mask),
          logpOld: gather(logpOld),
          logpRef: logpRef && gather(logpRef),
          adv: gather(advantages, 1),
          // dapo: every token of the generation batch weighs the same in every minibatch
          tokenCount: (g.tokens * rows.length) / N,
        },
        stats,
        k,
      );
    });
    return stats;
  }

  /** One optimizer step on a minibatch; its statistics go to row `k` of `stats`. */
  #minibatch(
    mb: {
      seq: Tensor;
      am: Tensor;
      act: Tensor;
      logpOld: Tensor;
      logpRef?: Tensor;
      adv: Tensor;
      tokenCount: number;
    },
    stats: Tensor,
    k: number,
  ): void {
    const { actor, cfg } = this, gpu = actor.gpu, [B, T] = mb.seq.shape;
    this.store.zeroGrads();
    const acts = actor.forward(mb.seq, mb.am);
    const lp = actor.tokenLogprobs(acts);
    const l = grpoLoss(gpu, lp.logp, mb.logpOld, mb.adv, mb.act, {
      epsilonLow: cfg.epsilonLow,
      epsilonHigh: cfg.epsilonHigh,
      beta: cfg.beta,
      logpRef: mb.logpRef,
      aggregation: cfg.lossType,
      maxCompletionLength: cfg.maxNewTokens,
      tokenCount: mb.tokenCount,
    });
    const dlogits = logitsBackward(gpu, lp.logits, lp.targets, lp.lse, {
      dlogp: l.dlogp.reshape([B * T]),
    });
    actor.backward(acts, { dlogits });
    optimizerStep(this.store, cfg, this.iteration, cfg.iterations);
    const entropy = maskedStats(gpu, lp.entropy, mb.act);
    const columns: [keyof typeof MB, Tensor, number][] = [
      ["loss", l.loss, STAT.sum],
      ["clipLow", l.clipLow, STAT.mean],
      ["clipHigh", l.clipHigh, STAT.mean],
      ["kl", l.kl, STAT.mean],
      ["entropy", entropy, STAT.mean],
    ];
    for (const [name, t, at] of columns) gpu.copyRange(t, at, stats, MB_COLUMNS * k + MB[name], 1);
  }

  /** The iteration's metrics: one readback of the statistics. */
  async #metrics(g: ScoredGroups, stats: Tensor | undefined): Promise<Metrics> {
    const st = stats ? await this.actor.gpu.readF32(stats) : new Float32Array(0);
    const [loss, low, high, kl, entropy] = columnMeans(st, MB_COLUMNS);
    assertFiniteLosses(`GRPO iteration ${this.iteration + 1}`, { loss });
    return {
      ...this.commonMetrics(g, stats !== undefined),
      kl,
      entropy,
      "clip_ratio/low_mean": low,
      "clip_ratio/high_mean": high,
      "clip_ratio/region_mean": low + high,
      loss,
    };
  }
}
