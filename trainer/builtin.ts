/**
 * The built-in task's pipeline — SFT → reward model → PPO on a tiny from-scratch model — with
 * its config sections, defaults and presets. Next to the learned reward it reports the hidden
 * **gold** score of fresh samples on held-out prompts before and after PPO (and of every
 * rollout), so real improvement is told apart from reward hacking.
 *
 * @module
 */

import type { Gpu } from "../kernels/runtime.ts";
import { saveOptModel } from "../model/checkpoint.ts";
import { OptModel } from "../model/opt.ts";
import { ByteTokenizer } from "../model/tokenizer.ts";
import {
  type CheckpointConfig,
  checkpointFields,
  ConfigError,
  defaults,
  PPO_SCHEMA,
  type PpoConfig,
  resolveSections,
  RM_SCHEMA,
  type RmConfig,
  runNameField,
  type Schema,
  SFT_SCHEMA,
  type SftConfig,
} from "./config.ts";
import { labelComparisons, samplePolicy } from "./comparisons.ts";
import { describeVerdict, detectRewardHacking, goldSpread, type RolloutScores } from "./hacking.ts";
import {
  type PipelineDefinition,
  type PipelineHooks,
  type PipelineSummary,
  type ReportSample,
  type RunOptions,
  runPipeline,
  type Stage,
  type StageContext,
} from "./pipeline.ts";
import { type PpoModels, PpoTrainer, type RolloutSample } from "./ppo.ts";
import { deriveSeed, rolloutSeed } from "./random.ts";
import { evaluateRanking, evaluateRewardModel, RankingRewardTrainer, RewardTrainer } from "./rm.ts";
import { type RolloutScorer, sampleAndScore, type ScoredSample } from "./rollout.ts";
import type { RankedExample } from "./data.ts";
import { SftTrainer } from "./sft.ts";
import {
  type BuiltinTask,
  type GoldParts,
  goldParts,
  goldScore,
  makeBuiltinTask,
  makeRankedExamples,
  parseQuestion,
  TASK_MODEL_CONFIG,
  type TaskQuestion,
} from "./task.ts";
import type { Metrics } from "./types.ts";

/** Run-level settings. */
export interface RunConfig extends CheckpointConfig {
  /** run name (output under <out>/<name>/): letters, digits, '.', '_', '-' (default "builtin") */
  name: string;
  /** seed of the task data and model initialisation (default 1) */
  seed: number;
  /** temperature of the fresh samples scored before/after PPO (default 1) */
  evalTemperature: number;
  /**
   * samples per held-out prompt scored before/after PPO (64 prompts: 8 give 512 samples, a
   * correct-answer rate to ±0.02; one sample each is ±0.06, too coarse to see a fall) (default 8)
   */
  evalSamples: number;
}

/** The run-level schema. */
export const RUN_SCHEMA: Schema<RunConfig> = {
  name: runNameField("builtin"),
  seed: { default: 1, doc: "seed of the task data and model initialisation", integer: true },
  evalTemperature: {
    default: 1.0,
    doc: "temperature of the fresh samples scored before/after PPO",
    min: 0,
  },
  evalSamples: {
    default: 8,
    doc: "samples per held-out prompt scored before/after PPO (64 prompts: 8 give 512 samples, " +
      "a correct-answer rate to ±0.02; one sample each is ±0.06, too coarse to see a fall)",
    min: 1,
    integer: true,
  },
  ...checkpointFields(300, "SFT and reward-model"),
};

/** Settings of the built-in task's data. */
export interface TaskConfig {
  /**
   * fixed reward-model comparisons (noisy gold labels); enough that the RM sees each about once
   * (default 20000)
   */
  pairs: number;
  /** fraction of training comparisons whose gold label is flipped (default 0.1) */
  labelNoise: number;
  /**
   * prompts whose SFT-policy samples become reward-model comparisons (0 = fixed pairs only)
   * (default 0)
   */
  policyPrompts: number;
  /** policy samples per prompt; every two with different gold make a comparison (default 4) */
  samplesPerPrompt: number;
  /**
   * Llama 2's preference margin: a training comparison asks the reward model for a score gap of
   * at least pairMargin × the gold gap (0 = plain pairwise loss) (default 0)
   */
  pairMargin: number;
}

/** The built-in task's schema. */
export const TASK_SCHEMA: Schema<TaskConfig> = {
  pairs: {
    default: 20000,
    doc:
      "fixed reward-model comparisons (noisy gold labels); enough that the RM sees each about once",
    min: 1,
    integer: true,
  },
  labelNoise: {
    default: 0.1,
    doc: "fraction of training comparisons whose gold label is flipped",
    min: 0,
    max: 0.5,
  },
  policyPrompts: {
    default: 0,
    doc: "prompts whose SFT-policy samples become reward-model comparisons (0 = fixed pairs only)",
    min: 0,
    integer: true,
  },
  samplesPerPrompt: {
    default: 4,
    doc: "policy samples per prompt; every two with different gold make a comparison",
    min: 2,
    integer: true,
  },
  pairMargin: {
    default: 0,
    doc: "Llama 2's preference margin: a training comparison asks the reward model for a score " +
      "gap of at least pairMargin × the gold gap (0 = plain pairwise loss)",
    min: 0,
  },
};

/** A complete pipeline configuration. */
export interface PipelineConfig {
  /** The `run.` section. */
  run: RunConfig;
  /** The `task.` section. */
  task: TaskConfig;
  /** The `sft.` section. */
  sft: SftConfig;
  /** The `rm.` section. */
  rm: RmConfig;
  /** The `ppo.` section. */
  ppo: PpoConfig;
}

/** Defaults of the built-in run, tuned to finish in minutes on a 2-core software adapter. */
export const BUILTIN_DEFAULTS: PipelineConfig = {
  run: defaults(RUN_SCHEMA),
  task: defaults(TASK_SCHEMA),
  // Measured on an AVX-512 machine where the former defaults reward-hacked (issue #15); the
  // runs and their figures are in the README's learning matrix.
  // SFT must make the sums likely, not only the argmax: after 600 steps at lr 1e-3 seed 3
  // answered 96 % correctly greedy but only 40 % at T = 1 (the demonstrations: 80 %); 900 steps
  // give 65 %, and the reward model it starts learns the arithmetic pairs better.
  sft: { ...defaults(SFT_SCHEMA), steps: 900, lr: 1e-3 },
  // The reward model's errors were the arithmetic pairs (style pairs ~98 % right): trained on
  // 600 steps of 32 noisy pairs, whether it learnt the sums was a transition around steps
  // 300–500 whose timing moved with seed and numerics — held-out accuracy 0.79–1.00 across RM
  // seeds, cells and every pairwise recipe measured (lower or constant rates, longer cosine,
  // Llama 2's margin, an LM-loss regulariser, weight decay, a mean ensemble, 64 pairs per step;
  // each fixed one cell and failed another, see the README's matrix section). InstructGPT's
  // K-wise loss on rankings of 4 (one answer per gold level, so every ranking holds four
  // right-vs-wrong comparisons; the same 20 000 comparisons, 16 rankings = 64 sequences per
  // step, the cost of 32 pairs) learns the sums by step 200 on the trajectories that failed
  // (seed 3 / Vulkan's SFT checkpoint, two RM seeds: 0.795 → 0.970 and 0.825 → 0.960) and
  // passes every cell of the learning matrix.
  rm: { ...defaults(RM_SCHEMA), steps: 600, batchSize: 16, lr: 1e-3, loss: "kwise" },
  // A response budget every demonstrated style fits in with its EOS (" 4, I am sure." is 14
  // bytes + EOS): with 8 tokens the most common style was always cut, and truncated responses —
  // which the reward model never saw in training and scored highest (2.4 vs 1.3 for " 7.") —
  // were what PPO exploited (" 2, sure sur"). Actor lr 1e-3 moved the policy to KL 4–10 in the
  // first iterations and lost the sums (correct 0.66 → 0.38 with gold still up by style alone);
  // 2e-4 with a 20 % warmup keeps KL near 1.5 and raises correct answers too.
  ppo: {
    ...defaults(PPO_SCHEMA),
    iterations: 30,
    maxNewTokens: 16,
    actorLr: 2e-4,
    warmupRatio: 0.2,
    missingEosPenalty: 1.0,
  },
};

/**
 * Named presets for the built-in task. `tiny` (alias `builtin`) is the default: the tiny
 * from-scratch model on the built-in task with the defaults above; `trl` applies TRL's PPO
 * algorithm defaults (β = 0.05, rollout temperature 0.7, k1 KL, ε = ε_v = 0.2, γ = 1, λ = 0.95,
 * 4 epochs) while keeping learning rates sized for the tiny model.
 */
export const PIPELINE_PRESETS: Record<string, Record<string, unknown>> = {
  tiny: {},
  builtin: {},
  trl: {
    "ppo.klCoef": 0.05,
    "ppo.temperature": 0.7,
    "ppo.klEstimator": "k1",
    "ppo.clipRange": 0.2,
    "ppo.clipRangeValue": 0.2,
    "ppo.gamma": 1,
    "ppo.lambda": 0.95,
    "ppo.ppoEpochs": 4,
  },
};

/** The config sections of the built-in pipeline. */
export const BUILTIN_SECTIONS = {
  run: RUN_SCHEMA,
  task: TASK_SCHEMA,
  sft: SFT_SCHEMA,
  rm: RM_SCHEMA,
  ppo: PPO_SCHEMA,
} as unknown as Record<string, Schema<unknown>>;

/**
 * Builds a pipeline config from the defaults and nested overrides (`{sft: {steps: 10}}` or flat
 * dotted keys `{"sft.steps": 10}`); unknown sections or keys are `ConfigError`s naming them.
 */
export function resolvePipelineConfig(
  overrides: Record<string, unknown>,
  base: PipelineConfig = BUILTIN_DEFAULTS,
): PipelineConfig {
  return resolveSections(BUILTIN_SECTIONS, overrides, base);
}

/** What the built-in stages pass on: the task, its tokenizer, and the trained models. */
export interface BuiltinState {
  /** The byte-level tokenizer of the task's models. */
  tok: ByteTokenizer;
  /** The task's data for this seed. */
  task: BuiltinTask;
  /** The SFT policy, once its stage ran or was loaded. */
  sft?: OptModel;
  /** The reward model, once its stage ran or was loaded. */
  rm?: OptModel;
}

/** The gold score of a response to a task prompt. */
export function gold(prompt: string, response: string): number {
  return goldScore(parseQuestion(prompt)!, response);
}

/** How the policy is sampled for the reward model's comparisons and tests. */
export interface PolicySampling {
  /** Response tokens per sample. */
  maxNewTokens: number;
  /** Prompt tokens kept. */
  maxPromptLength: number;
  /** Sampling temperature. */
  temperature: number;
}

/**
 * Policy samples (RM comparisons, evaluations) use PPO's rollout budget, so the reward model
 * is trained and tested on what PPO will show it.
 */
function ppoSampling(cfg: PipelineConfig): PolicySampling {
  return {
    maxNewTokens: cfg.ppo.maxNewTokens,
    maxPromptLength: cfg.ppo.maxPromptLength,
    temperature: cfg.ppo.temperature,
  };
}

/** What the SFT stage reads of a built-in config (shared by the PPO, DPO and KTO pipelines). */
export type SftStageConfig = Pick<PipelineConfig, "run" | "sft">;

/** SFT of a fresh task model on the task's demonstrations. */
export const SFT_STAGE: Stage<SftStageConfig, BuiltinState> = {
  name: "sft",
  doc: "supervised fine-tuning on the demonstrations",
  async run(ctx) {
    const { gpu, cfg, state } = ctx, seed = cfg.run.seed;
    let sft = await ctx.finished();
    if (!sft) {
      sft = OptModel.create(gpu, TASK_MODEL_CONFIG, { seed });
      const last = await ctx.train(
        new SftTrainer(sft, state.tok, state.task.sft, { ...cfg.sft, seed: cfg.sft.seed + seed }),
        { logEvery: 10, checkpointEvery: cfg.run.stepCheckpointEvery },
      );
      ctx.summary["sft/loss"] = last["sft/loss"] ?? NaN;
      await ctx.hooks.saveCheckpoint?.("sft", await saveOptModel(sft, { stage: "sft" }));
    }
    ctx.own(sft);
    state.sft = sft;
  },
};

/** What the reward-model stage reads of a config. */
export type RewardModelStageConfig = Pick<PipelineConfig, "run" | "task" | "rm">;

type RewardModelContext = StageContext<RewardModelStageConfig, BuiltinState>;

/**
 * The reward-model stage: from the SFT weights, on the fixed comparisons plus (with
 * `task.policyPrompts`) comparisons of the SFT policy's own samples; then its held-out tests.
 * `sampling` is the rollout budget of the method that will use it (the comparisons and the
 * on-policy test show the reward model what that method will); where `enabled` says no, the
 * stage does nothing (a group method with a grader).
 */
export function rewardModelStage<C extends RewardModelStageConfig>(o: {
  sampling(cfg: C): PolicySampling;
  enabled?(cfg: C): boolean;
  doc?: string;
}): Stage<C, BuiltinState> {
  return {
    name: "rm",
    doc: o.doc ?? "reward model on gold-labelled comparisons (fixed and of SFT samples)",
    async run(ctx) {
      const { gpu, cfg, state } = ctx, seed = cfg.run.seed, sft = state.sft!;
      if (o.enabled && !o.enabled(cfg)) {
        if (ctx.opts.stage === "rm") {
          throw new ConfigError("--stage=rm: this run uses no reward model (set reward.source=rm)");
        }
        return;
      }
      const sampling = { ...o.sampling(cfg), samplesPerPrompt: cfg.task.samplesPerPrompt };
      let rm = await ctx.finished();
      const trained = !rm;
      if (!rm) {
        rm = OptModel.create(gpu, TASK_MODEL_CONFIG, {
          seed: deriveSeed(seed, "rewardInit"),
          valueHead: true,
        });
        rm.store.copyFrom(sft.store);
        ctx.own(rm);
        const rmCfg = { ...cfg.rm, seed: cfg.rm.seed + seed };
        await ctx.train(
          cfg.rm.loss === "kwise"
            ? new RankingRewardTrainer(rm, state.tok, rankedData(cfg), rmCfg)
            : new RewardTrainer(rm, state.tok, await rewardPairs(ctx, sampling), rmCfg),
          { logEvery: 10, checkpointEvery: cfg.run.stepCheckpointEvery },
        );
        await ctx.hooks.saveCheckpoint?.("rm", await saveOptModel(rm, { stage: "rm" }));
      } else ctx.own(rm);
      state.rm = rm;
      await testRewardModel(ctx, rm, trained, sampling);
    },
  };
}

/** PPO's reward model: trained and tested on samples of PPO's rollout budget. */
const RM_STAGE = rewardModelStage<PipelineConfig>({ sampling: ppoSampling });

/**
 * The ranked variant of the task for `rm.loss=kwise`: as many examples as make `task.pairs`
 * comparisons (each ranking of 4 holds 6).
 */
function rankedData(cfg: RewardModelStageConfig): RankedExample[] {
  return makeRankedExamples(cfg.run.seed, Math.ceil(cfg.task.pairs / 6), {
    labelNoise: cfg.task.labelNoise,
  });
}

/** The fixed comparisons, plus on-policy ones when `task.policyPrompts > 0`. */
async function rewardPairs(
  ctx: RewardModelContext,
  sampling: PolicySampling & { samplesPerPrompt: number },
) {
  const { cfg, state } = ctx, seed = cfg.run.seed, task = state.task;
  if (cfg.task.policyPrompts === 0) return task.pairs;
  // on-policy comparisons (InstructGPT): the SFT policy's own samples, truncated ones included,
  // labelled by the gold function with the task's label noise
  const groups = await samplePolicy(
    state.sft!,
    state.tok,
    task.prompts.slice(0, cfg.task.policyPrompts).map((q) => q.prompt),
    { ...sampling, seed: deriveSeed(seed, "comparisonSamples") },
  );
  const policyPairs = labelComparisons(groups, gold, {
    labelNoise: cfg.task.labelNoise,
    seed: deriveSeed(seed, "comparisonLabels"),
    margin: cfg.task.pairMargin,
  });
  ctx.log(
    `reward-model data: ${task.pairs.length} fixed pairs + ${policyPairs.length} comparisons ` +
      `of SFT samples (${groups.length} prompts × ${cfg.task.samplesPerPrompt})`,
  );
  return [...task.pairs, ...policyPairs];
}

/**
 * Held-out accuracy on clean pairs, and where PPO uses it: accuracy and score–gold correlation
 * on clean comparisons of the SFT policy's samples on held-out prompts.
 */
async function testRewardModel(
  ctx: RewardModelContext,
  rm: OptModel,
  /** Trained in this process (else its test was logged when it was trained). */
  trained: boolean,
  sampling: PolicySampling & { samplesPerPrompt: number },
): Promise<void> {
  const { cfg, state } = ctx, tok = state.tok;
  const rmEval = await evaluateRewardModel(rm, tok, state.task.heldOutPairs, {
    maxLength: cfg.rm.maxLength,
  });
  const heldOut = await samplePolicy(
    state.sft!,
    tok,
    state.task.policyEvalPrompts.map((q) => q.prompt),
    { ...sampling, seed: deriveSeed(cfg.run.seed, "rewardModelProbe"), reward: rm },
  );
  const policyEval = await evaluateRewardModel(
    rm,
    tok,
    labelComparisons(heldOut, gold, { labelNoise: 0, seed: 0 }),
    { maxLength: cfg.rm.maxLength },
  );
  const flat = heldOut.flat();
  const kwise: Metrics = cfg.rm.loss === "kwise"
    ? {
      "rm/kwise_accuracy": (await evaluateRanking(
        rm,
        tok,
        makeRankedExamples(cfg.run.seed, 200, { labelNoise: 0, stream: 1 }),
        { maxLength: cfg.rm.maxLength },
      )).accuracy,
    }
    : {};
  const rmStats: Metrics = {
    ...kwise,
    "rm/accuracy": rmEval.accuracy,
    "rm/margin": rmEval.margin,
    "rm/policy_accuracy": policyEval.accuracy,
    "rm/policy_gold_corr": correlation(
      flat.map((x) => x.score),
      flat.map((x) => gold(x.prompt, x.response)),
    ),
  };
  if (trained) await ctx.hooks.onMetrics?.("rm", rmStats);
  ctx.log(
    `reward model: held-out accuracy ${rmEval.accuracy.toFixed(3)} (margin ${
      rmEval.margin.toFixed(3)
    }); on SFT samples accuracy ${policyEval.accuracy.toFixed(3)}, score–gold correlation ${
      rmStats["rm/policy_gold_corr"].toFixed(3)
    }` +
      ("rm/kwise_accuracy" in kwise
        ? `; K-wise accuracy ${kwise["rm/kwise_accuracy"].toFixed(3)} (all pairs of 4)`
        : ""),
  );
  ctx.hooks.onSamples?.("rm", flat.map((x) => ({ ...x, gold: gold(x.prompt, x.response) })));
  Object.assign(ctx.summary, rmStats);
}

type BuiltinContext = StageContext<PipelineConfig, BuiltinState>;

/** PPO: actor and reference from SFT, critic from the reward model; gold before and after. */
const PPO_STAGE: Stage<PipelineConfig, BuiltinState> = {
  name: "ppo",
  doc: "PPO of the SFT policy against the reward model, with the gold view",
  async run(ctx) {
    const { gpu, cfg, state } = ctx, sft = state.sft!, rm = state.rm!;
    const actor = sft.copy(), reference = sft.copy({ frozen: true });
    const critic = OptModel.create(gpu, TASK_MODEL_CONFIG, {
      seed: deriveSeed(cfg.run.seed, "criticInit"),
      valueHead: true,
    });
    critic.store.copyFrom(rm.store);
    ctx.own(actor, reference, critic);
    const evaluation = (policy: OptModel) =>
      evaluate(policy, rm, state.tok, state.task.evalPrompts, {
        temperature: cfg.run.evalTemperature,
        seed: deriveSeed(cfg.run.seed, "evaluation"),
        maxNewTokens: cfg.ppo.maxNewTokens,
        samplesPerPrompt: cfg.run.evalSamples,
      });
    // the reference equals the actor before PPO (also when resuming mid-PPO)
    const before = await evaluation(reference);
    ctx.log(
      `before PPO: gold ${before.gold.toFixed(3)}, reward-model score ${before.score.toFixed(3)}`,
    );
    ctx.hooks.onSamples?.("before", before.samples);
    const { last, history } = await trainPpo(ctx, { actor, critic, reward: rm, reference });
    await ctx.hooks.saveCheckpoint?.("ppo", await saveOptModel(actor, { stage: "ppo" }));
    const after = await evaluation(actor);
    ctx.log(
      `after PPO: gold ${after.gold.toFixed(3)}, reward-model score ${after.score.toFixed(3)}`,
    );
    ctx.hooks.onSamples?.("after", after.samples);
    const spread = (e: Evaluation) => ({ ...e, ...goldSpread(e.samples.map((x) => x.gold)) });
    const verdict = detectRewardHacking(history, { before: spread(before), after: spread(after) });
    ctx.log(describeVerdict(verdict));
    Object.assign(ctx.summary, evaluationSummary(before, after), {
      "objective/kl": last["objective/kl"] ?? 0,
      reward_hacking: verdict,
    });
  },
};

/** The PPO loop, with every rollout's gold score (metrics, samples, the hacking history). */
async function trainPpo(
  ctx: BuiltinContext,
  models: PpoModels,
): Promise<{ last: Metrics; history: RolloutScores[] }> {
  const { cfg, state } = ctx;
  const trainer = new PpoTrainer(
    models,
    state.tok,
    { prompts: state.task.prompts.map((q) => q.prompt) },
    { ...cfg.ppo, seed: cfg.ppo.seed + cfg.run.seed },
    { scoreRollout: (s) => rolloutGold(s) },
  );
  const history: RolloutScores[] = [];
  const last = await ctx.train(trainer, {
    unit: "iteration",
    logEvery: 1,
    checkpointEvery: cfg.run.checkpointEvery,
    stopAfter: ctx.opts.stopAfterIteration,
    afterLog: (m) => {
      const golds = trainer.lastSamples.map((s) => gold(s.prompt, s.response));
      ctx.hooks.onSamples?.("ppo", trainer.lastSamples.map((s, i) => ({ ...s, gold: golds[i] })));
      history.push({
        iteration: m.iteration,
        score: m["objective/scores"],
        gold: m["gold/rollout"],
        ...goldSpread(golds),
      });
    },
  });
  return { last, history };
}

/** The summary's before/after numbers and samples. */
export function evaluationSummary(before: Evaluation, after: Evaluation): Partial<PipelineSummary> {
  return {
    "gold/before": before.gold,
    "gold/after": after.gold,
    "score/before": before.score,
    "score/after": after.score,
    "gold/samples": before.samples.length,
    "gold/correct/before": before.parts.correct,
    "gold/correct/after": after.parts.correct,
    "gold/period/before": before.parts.period,
    "gold/period/after": after.parts.period,
    "gold/concise/before": before.parts.concise,
    "gold/concise/after": after.parts.concise,
    samples_before: before.samples.slice(0, 8),
    samples_after: after.samples.slice(0, 8),
  };
}

/** Sequence lengths the task model can hold (and combinations), checked before anything trains. */
function checkBuiltinLengths(cfg: PipelineConfig): void {
  checkTaskModelConfig(cfg, cfg.ppo, "ppo");
}

/**
 * Checks of a built-in task config with SFT, the reward model's sections and a method that
 * samples with `rollout` (its section named `section`): sequence lengths the task model can
 * hold, and combinations that cannot work; throws `ConfigError`.
 */
export function checkTaskModelConfig(
  cfg: Pick<PipelineConfig, "run" | "task" | "sft" | "rm">,
  rollout: Pick<PolicySampling, "maxNewTokens" | "maxPromptLength">,
  section: string,
): void {
  if (cfg.rm.loss === "kwise" && cfg.task.policyPrompts > 0) {
    throw new ConfigError(
      "rm.loss=kwise trains on the task's rankings of 4; the on-policy comparisons " +
        "(task.policyPrompts) are pairs: set task.policyPrompts=0, or rm.loss=pairwise with them",
    );
  }
  if (cfg.rm.loss === "kwise" && cfg.task.pairMargin > 0) {
    throw new ConfigError(
      "task.pairMargin is a margin of the pairwise loss; rm.loss=kwise ranks without margins: " +
        "set rm.loss=pairwise with it",
    );
  }
  const max = TASK_MODEL_CONFIG.max_position_embeddings;
  for (
    const [key, v] of [["sft.maxLength", cfg.sft.maxLength], ["rm.maxLength", cfg.rm.maxLength]]
  ) {
    if ((v as number) > max) {
      throw new ConfigError(`${key} ${v} exceeds the task model's ${max} positions`);
    }
  }
  // task prompts are at most ~40 tokens; the rollout holds prompt + response
  const longest = Math.max(
    ...makeBuiltinTask(cfg.run.seed, { pairs: 1 }).evalPrompts.map((q) => q.prompt.length + 1),
  );
  const need = Math.min(longest, rollout.maxPromptLength) + rollout.maxNewTokens;
  if (need > max) {
    throw new ConfigError(
      `${section}.maxNewTokens ${rollout.maxNewTokens} + the task's prompts (up to ${longest} ` +
        `tokens) exceed the task model's ${max} positions`,
    );
  }
}

/** The built-in pipeline: SFT → reward model → PPO on the arithmetic task. */
export const BUILTIN_PIPELINE: PipelineDefinition<PipelineConfig, BuiltinState> = {
  name: "builtin",
  doc: "SFT → reward model → PPO of a tiny from-scratch model on the built-in arithmetic task",
  sections: BUILTIN_SECTIONS,
  defaults: BUILTIN_DEFAULTS,
  stages: [SFT_STAGE, RM_STAGE, PPO_STAGE],
  validate: checkBuiltinLengths,
  init: (_gpu, cfg) =>
    Promise.resolve({
      tok: new ByteTokenizer(),
      task: makeBuiltinTask(cfg.run.seed, {
        pairs: cfg.task.pairs,
        labelNoise: cfg.task.labelNoise,
        pairMargin: cfg.task.pairMargin,
      }),
    }),
};

/**
 * Runs SFT → RM → PPO on the built-in task and returns the summary. With `resume`, finished
 * stages load from their checkpoints and a stage's loop continues from its last state
 * checkpoint (models, AdamW moments and step, trainer counters), reproducing the uninterrupted
 * run's metrics. `stopAfterIteration` ends PPO early (after checkpointing), e.g. to test
 * resuming; `stage` runs the stages up to that one.
 *
 * @example A very short run
 * ```ts
 * import { Gpu, resolvePipelineConfig, runBuiltinPipeline } from "../mod.ts";
 * const gpu = await Gpu.create();
 * const cfg = resolvePipelineConfig({ "sft.steps": 5, "rm.steps": 5, "ppo.iterations": 1 });
 * const summary = await runBuiltinPipeline(gpu, cfg);
 * console.log(summary["gold/before"], summary["gold/after"]);
 * ```
 */
export function runBuiltinPipeline(
  gpu: Gpu,
  cfg: PipelineConfig,
  hooks: PipelineHooks = {},
  opts: RunOptions = {},
): Promise<PipelineSummary> {
  return runPipeline(BUILTIN_PIPELINE, gpu, cfg, hooks, opts);
}

/** Fresh samples on held-out prompts, scored by the gold function and the reward model. */
export interface Evaluation {
  gold: number;
  score: number;
  parts: GoldParts;
  samples: ReportSample[];
}

/**
 * Samples `samplesPerPrompt` responses to each of `questions` (round k seeded `seed` for k = 0,
 * else `rolloutSeed(seed, k)`), and scores them with the gold function and the reward model.
 */
export async function evaluate(
  policy: OptModel,
  reward: OptModel | RolloutScorer,
  tok: ByteTokenizer,
  questions: TaskQuestion[],
  o: { temperature: number; seed: number; maxNewTokens: number; samplesPerPrompt: number },
): Promise<Evaluation> {
  const scored: ScoredSample[] = [], asked: TaskQuestion[] = [];
  for (let k = 0; k < o.samplesPerPrompt; k++) {
    scored.push(
      ...await sampleAndScore(policy, reward, tok, questions.map((q) => q.prompt), {
        temperature: o.temperature,
        seed: k === 0 ? o.seed : rolloutSeed(o.seed, k),
        maxNewTokens: o.maxNewTokens,
        maxPromptLength: 256,
      }),
    );
    asked.push(...questions);
  }
  const samples = scored.map((s, i) => ({
    prompt: s.prompt,
    response: s.response,
    score: s.score,
    gold: goldScore(asked[i], s.response),
  }));
  const parts = scored.map((s, i) => goldParts(asked[i], s.response));
  const mean = <X>(xs: X[], f: (x: X) => number) => xs.reduce((a, x) => a + f(x), 0) / xs.length;
  return {
    gold: mean(samples, (s) => s.gold),
    score: mean(samples, (s) => s.score),
    parts: {
      correct: mean(parts, (p) => p.correct),
      period: mean(parts, (p) => p.period),
      concise: mean(parts, (p) => p.concise),
    },
    samples,
  };
}

/** Per-rollout gold metrics: the mean gold score and the share of each of its parts. */
export function rolloutGold(
  samples: readonly Pick<RolloutSample, "prompt" | "response">[],
): Metrics {
  const parts = samples.map((s) => goldParts(parseQuestion(s.prompt)!, s.response));
  const mean = (f: (p: GoldParts) => number) => parts.reduce((a, p) => a + f(p), 0) / parts.length;
  return {
    "gold/rollout": samples.reduce(
      (a, s) => a + goldScore(parseQuestion(s.prompt)!, s.response),
      0,
    ) / samples.length,
    "gold/correct": mean((p) => p.correct),
    "gold/period": mean((p) => p.period),
    "gold/concise": mean((p) => p.concise),
  };
}

/** Pearson correlation of two equally long series (NaN when either is constant). */
function correlation(x: readonly number[], y: readonly number[]): number {
  const n = x.length, mx = x.reduce((a, v) => a + v, 0) / n, my = y.reduce((a, v) => a + v, 0) / n;
  let sxy = 0, sxx = 0, syy = 0;
  for (let i = 0; i < n; i++) {
    sxy += (x[i] - mx) * (y[i] - my);
    sxx += (x[i] - mx) ** 2;
    syy += (y[i] - my) ** 2;
  }
  return sxy / Math.sqrt(sxx * syy);
}
