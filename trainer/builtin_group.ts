/**
 * The online group methods on the built-in task: SFT (the PPO pipeline's stage), then GRPO with
 * a grader — by default `grader:math`, which rewards the correct sum itself, where PPO against a
 * learned reward model mostly taught style. The gold view is PPO's: fresh samples scored by gold
 * before and after, the correct/period/concise split, the KL to the SFT policy, and the
 * reward-hacking verdict over the training rollouts (grader score against gold).
 *
 * @module
 */

import { saveOptModel } from "../model/checkpoint.ts";
import type { OptModel } from "../model/opt.ts";
import { ByteTokenizer } from "../model/tokenizer.ts";
import {
  BUILTIN_DEFAULTS,
  type BuiltinState,
  checkTaskModelConfig,
  evaluate,
  type Evaluation,
  evaluationSummary,
  gold,
  type PolicySampling,
  rewardModelStage,
  rolloutGold,
  RUN_SCHEMA,
  type RunConfig,
  SFT_STAGE,
  TASK_SCHEMA,
  type TaskConfig,
} from "./builtin.ts";
import {
  defaults,
  resolveSections,
  RM_SCHEMA,
  type RmConfig,
  type Schema,
  SFT_SCHEMA,
  type SftConfig,
} from "./config.ts";
import { graderFromSpec } from "./graders.ts";
import { GRPO_SCHEMA, type GrpoConfig, GrpoTrainer } from "./grpo.ts";
import type { GroupData, GroupSample } from "./group.ts";
import { RLOO_SCHEMA, type RlooConfig, RlooTrainer } from "./rloo.ts";
import {
  REJECTION_SAMPLING_SCHEMA,
  type RejectionSamplingConfig,
  RejectionSamplingTrainer,
} from "./rejection_sampling.ts";
import { REINFORCE_PP_SCHEMA, type ReinforcePpConfig, ReinforcePpTrainer } from "./reinforce_pp.ts";
import type { Metrics } from "./types.ts";
import { describeVerdict, detectRewardHacking, goldSpread, type RolloutScores } from "./hacking.ts";
import { implicitReward } from "./logprobs.ts";
import type { PipelineDefinition, Stage, StageContext } from "./pipeline.ts";
import { deriveSeed } from "./random.ts";
import type { RecipeIo } from "./recipe.ts";
import { graderReward, modelReward, type Reward } from "./reward.ts";
import type { Rollout } from "./rollout.ts";
import { makeBuiltinTask, parseQuestion } from "./task.ts";

/** The reward of the group methods on the built-in task. */
export interface GroupRewardConfig {
  /**
   * grader:exact · grader:contains · grader:similarity · grader:math · a module path exporting
   * grade(prompt, response, reference) · rm (a reward model trained in the run: the PPO
   * pipeline's rm stage, sections task. and rm.) (default "grader:math")
   */
  source: string;
}

/** The `reward.` section (`--reward=X` is `--reward.source=X`). */
export const GROUP_REWARD_SCHEMA: Schema<GroupRewardConfig> = {
  source: {
    default: "grader:math",
    doc: "grader:exact · grader:contains · grader:similarity · grader:math · a module path " +
      "exporting grade(prompt, response, reference) · rm (a reward model trained in the run: " +
      "the PPO pipeline's rm stage, sections task. and rm.)",
    pattern: {
      regex: /^(rm|grader:[a-z]+|.*\.(ts|js|mjs)|[a-z]+:\/\/.+)$/,
      doc: "rm, grader:NAME, or a .ts/.js module path or URL",
    },
  },
};

/** The sections every group pipeline has. */
export interface GroupPipelineBase {
  /** The `run.` section. */
  run: RunConfig;
  /** The `reward.` section. */
  reward: GroupRewardConfig;
  /** The `task.` section (the reward model's comparisons with `reward.source=rm`). */
  task: TaskConfig;
  /** The `sft.` section. */
  sft: SftConfig;
  /** The `rm.` section (used with `reward.source=rm`). */
  rm: RmConfig;
}

/** The shared sections' defaults: the PPO pipeline's task, SFT and reward model; grader:math. */
const GROUP_BASE_DEFAULTS = {
  reward: defaults(GROUP_REWARD_SCHEMA),
  task: BUILTIN_DEFAULTS.task,
  sft: BUILTIN_DEFAULTS.sft,
  rm: BUILTIN_DEFAULTS.rm,
};

/** A `builtin-grpo` config. */
export interface GrpoPipelineConfig extends GroupPipelineBase {
  /** The `grpo.` section. */
  grpo: GrpoConfig;
}

/** A `builtin-rloo` config. */
export interface RlooPipelineConfig extends GroupPipelineBase {
  /** The `rloo.` section. */
  rloo: RlooConfig;
}

/**
 * Defaults of `builtin-grpo` (the SFT stage is the PPO pipeline's). The learning rate suits the
 * tiny model (TRL's 1e-6 is for billion-parameter models): on seed 1, 40 iterations of
 * 16 prompts × 8 samples raised the correct-answer rate at T = 1 from 0.705 to 0.783 at lr 1e-4,
 * 0.824 at 5e-4 and 0.855 at 1e-3 (KL to SFT 0.1, 0.47, 0.46). With 16 prompts per iteration
 * the gain sat on the +0.15 bar on seed 1 (+0.150 to +0.176 over kernels and backends; clip-
 * higher, G 16, Dr. GRPO, β 0 and 80 iterations at lr 5e-4 all stayed within 0.14–0.16); 32
 * prompts per iteration (8 optimizer steps of 32 sequences each, twice the samples) lifted every
 * measured cell (seed 1/GL +0.176 → +0.203 with gold +0.078 → +0.143; seed 2/Vulkan +0.213 →
 * +0.246; the README has the matrix).
 */
export const GRPO_PIPELINE_DEFAULTS: GrpoPipelineConfig = {
  run: { ...BUILTIN_DEFAULTS.run, name: "builtin-grpo" },
  ...GROUP_BASE_DEFAULTS,
  grpo: {
    ...defaults(GRPO_SCHEMA),
    iterations: 40,
    promptsPerIteration: 32,
    lr: 1e-3,
    warmupRatio: 0.1,
  },
};

/** Defaults of `builtin-rloo`: GRPO's budget of sampled tokens (40 × 32 prompts × 4 samples). */
export const RLOO_PIPELINE_DEFAULTS: RlooPipelineConfig = {
  run: { ...BUILTIN_DEFAULTS.run, name: "builtin-rloo" },
  ...GROUP_BASE_DEFAULTS,
  rloo: {
    ...defaults(RLOO_SCHEMA),
    iterations: 40,
    promptsPerIteration: 32,
    lr: 1e-3,
    warmupRatio: 0.1,
  },
};

/** A `builtin-reinforce` config. */
export interface ReinforcePipelineConfig extends GroupPipelineBase {
  /** The `reinforce.` section. */
  reinforce: ReinforcePpConfig;
}

/** Defaults of `builtin-reinforce`: RLOO's budget (40 × 32 prompts × 4 samples). */
export const REINFORCE_PIPELINE_DEFAULTS: ReinforcePipelineConfig = {
  run: { ...BUILTIN_DEFAULTS.run, name: "builtin-reinforce" },
  ...GROUP_BASE_DEFAULTS,
  reinforce: {
    ...defaults(REINFORCE_PP_SCHEMA),
    iterations: 40,
    promptsPerIteration: 32,
    lr: 1e-3,
    warmupRatio: 0.1,
  },
};

/** A `builtin-rs` config. */
export interface RejectionSamplingPipelineConfig extends GroupPipelineBase {
  /** The `rs.` section. */
  rs: RejectionSamplingConfig;
}

/** Defaults of `builtin-rs`: 3 rounds of best-of-8 on 256 prompts, 60 SFT steps each. */
export const RS_PIPELINE_DEFAULTS: RejectionSamplingPipelineConfig = {
  run: { ...BUILTIN_DEFAULTS.run, name: "builtin-rs" },
  ...GROUP_BASE_DEFAULTS,
  rs: { ...defaults(REJECTION_SAMPLING_SCHEMA), promptsPerRound: 256 },
};

/** The sections every group pipeline has, before its method's own. */
const GROUP_BASE_SECTIONS = {
  run: RUN_SCHEMA,
  reward: GROUP_REWARD_SCHEMA,
  task: TASK_SCHEMA,
  sft: SFT_SCHEMA,
  rm: RM_SCHEMA,
};

type AnyConfig =
  | GrpoPipelineConfig
  | RlooPipelineConfig
  | ReinforcePipelineConfig
  | RejectionSamplingPipelineConfig;
type Ctx = StageContext<AnyConfig, BuiltinState>;

/** What a group stage needs beyond the shared flow. */
interface GroupMethod {
  name: "grpo" | "rloo" | "reinforce" | "rs";
  label: string;
  /** What one trainer step is (default: an iteration). */
  unit?: "step" | "iteration";
  /** Log every this many steps (default 1). */
  logEvery?: number;
  /** Checkpoint every this many steps (default `run.checkpointEvery`). */
  checkpointEvery?: (cfg: AnyConfig) => number;
  /** The method's rollout budget (its section's maxNewTokens, maxPromptLength, temperature). */
  sampling(cfg: AnyConfig): PolicySampling;
  trainer(
    ctx: Ctx,
    policy: OptModel,
    reward: Reward,
    data: GroupData,
    hooks: { scoreRollout: (s: GroupSample[]) => Metrics },
  ): GrpoTrainer | RlooTrainer | ReinforcePpTrainer | RejectionSamplingTrainer;
}

function samplingOf(c: PolicySampling): PolicySampling {
  return {
    maxNewTokens: c.maxNewTokens,
    maxPromptLength: c.maxPromptLength,
    temperature: c.temperature,
  };
}

const GRPO_METHOD: GroupMethod = {
  name: "grpo",
  label: "GRPO",
  sampling: (cfg) => samplingOf((cfg as GrpoPipelineConfig).grpo),
  trainer(ctx, policy, reward, data, hooks) {
    const c = (ctx.cfg as GrpoPipelineConfig).grpo, sft = ctx.state.sft!;
    return new GrpoTrainer(policy, c.beta > 0 ? sft : undefined, reward, ctx.state.tok, data, {
      ...c,
      seed: c.seed + ctx.cfg.run.seed,
    }, hooks);
  },
};

const REINFORCE_METHOD: GroupMethod = {
  name: "reinforce",
  label: "REINFORCE++",
  sampling: (cfg) => samplingOf((cfg as ReinforcePipelineConfig).reinforce),
  trainer(ctx, policy, reward, data, hooks) {
    const c = (ctx.cfg as ReinforcePipelineConfig).reinforce, sft = ctx.state.sft!;
    return new ReinforcePpTrainer(
      policy,
      c.beta > 0 ? sft : undefined,
      reward,
      ctx.state.tok,
      data,
      { ...c, seed: c.seed + ctx.cfg.run.seed },
      hooks,
    );
  },
};

const RS_METHOD: GroupMethod = {
  name: "rs",
  label: "rejection sampling",
  unit: "step",
  logEvery: 10,
  checkpointEvery: (cfg) => (cfg as RejectionSamplingPipelineConfig).rs.stepsPerRound,
  sampling: (cfg) => samplingOf((cfg as RejectionSamplingPipelineConfig).rs),
  trainer(ctx, policy, reward, data, hooks) {
    const c = (ctx.cfg as RejectionSamplingPipelineConfig).rs;
    return new RejectionSamplingTrainer(policy, reward, ctx.state.tok, data, {
      ...c,
      seed: c.seed + ctx.cfg.run.seed,
    }, hooks);
  },
};

const RLOO_METHOD: GroupMethod = {
  name: "rloo",
  label: "RLOO",
  sampling: (cfg) => samplingOf((cfg as RlooPipelineConfig).rloo),
  trainer(ctx, policy, reward, data, hooks) {
    const c = (ctx.cfg as RlooPipelineConfig).rloo, sft = ctx.state.sft!;
    return new RlooTrainer(policy, c.beta > 0 ? sft : undefined, reward, ctx.state.tok, data, {
      ...c,
      seed: c.seed + ctx.cfg.run.seed,
    }, hooks);
  },
};

/** The built-in task's answer to each prompt, as the graders' reference. */
function answerOf(prompt: string): string {
  const q = parseQuestion(prompt);
  if (!q) throw new RangeError(`not a prompt of the built-in task: ${JSON.stringify(prompt)}`);
  return String(q.answer);
}

/** A group method from the SFT policy; the SFT model is the frozen reference. */
function groupStage(io: RecipeIo, method: GroupMethod): Stage<AnyConfig, BuiltinState> {
  const { name, label } = method;
  return {
    name,
    doc: `${label} of the SFT policy with a grader (default grader:math) or the reward model, ` +
      "with the gold view",
    async run(ctx: Ctx) {
      const { cfg, state } = ctx, sft = state.sft!;
      const reward: Reward = cfg.reward.source === "rm"
        ? modelReward(state.rm!)
        : graderReward(await graderFromSpec(cfg.reward.source, io), cfg.reward.source);
      const policy = sft.copy();
      ctx.own(policy);
      // evaluation: the reward of fresh samples, and their log-ratio to the SFT policy (KL)
      let kl: number[] = [];
      const scorer = (m: OptModel) => async (r: Rollout) => {
        kl.push(...await m.gpu.readF32(implicitReward(m, sft, 1)(r)));
        return reward.score(r, r.texts.map((t) => answerOf(t.prompt)));
      };
      const evaluation = async (m: OptModel) => {
        kl = [];
        const e = await evaluate(m, scorer(m), state.tok, state.task.evalPrompts, {
          temperature: cfg.run.evalTemperature,
          seed: deriveSeed(cfg.run.seed, "evaluation"),
          maxNewTokens: method.sampling(cfg).maxNewTokens,
          samplesPerPrompt: cfg.run.evalSamples,
        });
        return { e, kl: kl.reduce((a, v) => a + v, 0) / kl.length };
      };
      const before = await evaluation(sft);
      ctx.log(
        `before ${label}: gold ${before.e.gold.toFixed(3)}, ${reward.name} ${
          before.e.score.toFixed(3)
        }`,
      );
      ctx.hooks.onSamples?.("before", before.e.samples);
      const prompts = state.task.prompts.map((q) => q.prompt);
      const trainer = method.trainer(
        ctx,
        policy,
        reward,
        { prompts, references: prompts.map(answerOf) },
        { scoreRollout: (s) => rolloutGold(s) },
      );
      const history: RolloutScores[] = [];
      let lastRound = 0;
      await ctx.train(trainer, {
        unit: method.unit ?? "iteration",
        logEvery: method.logEvery ?? 1,
        checkpointEvery: method.checkpointEvery?.(cfg) ?? cfg.run.checkpointEvery,
        stopAfter: ctx.opts.stopAfterIteration,
        afterLog: (m) => {
          // rejection sampling samples once per round: one history point per round
          if ("rs/round" in m) {
            if (m["rs/round"] === lastRound) return;
            lastRound = m["rs/round"];
          }
          const golds = trainer.lastSamples.map((s) => gold(s.prompt, s.response));
          ctx.hooks.onSamples?.(
            "rollout",
            trainer.lastSamples.map((s, i) => ({ ...s, gold: golds[i] })),
          );
          history.push({
            iteration: m.iteration ?? m.step,
            score: m.reward,
            gold: m["gold/rollout"],
            ...goldSpread(golds),
          });
        },
      });
      await ctx.hooks.saveCheckpoint?.(name, await saveOptModel(policy, { stage: name }));
      const after = await evaluation(policy);
      ctx.log(
        `after ${label}: gold ${after.e.gold.toFixed(3)}, ${reward.name} ${
          after.e.score.toFixed(3)
        }`,
      );
      ctx.hooks.onSamples?.("after", after.e.samples);
      const spread = (e: Evaluation) => ({ ...e, ...goldSpread(e.samples.map((x) => x.gold)) });
      const verdict = detectRewardHacking(history, {
        before: spread(before.e),
        after: spread(after.e),
        method: label,
        reward: reward.range === "raw" ? "reward-model score" : `${reward.name} score`,
      });
      ctx.log(describeVerdict(verdict));
      Object.assign(ctx.summary, evaluationSummary(before.e, after.e), {
        "objective/kl": after.kl,
        reward_hacking: verdict,
      });
    },
  };
}

/**
 * With `reward.source=rm`, the PPO pipeline's reward-model stage (sections `task.`, `rm.`),
 * its comparisons and on-policy test drawn with the method's rollout budget; else nothing.
 */
function groupRewardModelStage(method: GroupMethod): Stage<AnyConfig, BuiltinState> {
  return rewardModelStage<AnyConfig>({
    sampling: (cfg) => method.sampling(cfg),
    enabled: (cfg) => cfg.reward.source === "rm",
    doc: `with reward.source=rm: the reward model ${method.label} optimises`,
  });
}

const init = (_gpu: unknown, cfg: AnyConfig): Promise<BuiltinState> =>
  Promise.resolve({
    tok: new ByteTokenizer(),
    // the PPO pipeline's task draws: the same SFT data, prompts and evaluation prompts
    task: makeBuiltinTask(cfg.run.seed, {
      pairs: cfg.task.pairs,
      labelNoise: cfg.task.labelNoise,
      pairMargin: cfg.task.pairMargin,
    }),
  });

/** SFT → GRPO on the built-in task with a grader, and the gold view. */
export function grpoPipeline(
  io: RecipeIo,
): PipelineDefinition<GrpoPipelineConfig, BuiltinState> {
  return {
    name: "builtin-grpo",
    doc: "SFT → GRPO with a grader (default grader:math) on the built-in arithmetic task",
    sections: {
      ...GROUP_BASE_SECTIONS,
      grpo: GRPO_SCHEMA,
    } as unknown as Record<string, Schema<unknown>>,
    defaults: GRPO_PIPELINE_DEFAULTS,
    stages: [
      SFT_STAGE,
      groupRewardModelStage(GRPO_METHOD),
      groupStage(io, GRPO_METHOD),
    ] as PipelineDefinition<
      GrpoPipelineConfig,
      BuiltinState
    >["stages"],
    validate: (cfg) => checkTaskModelConfig(cfg, GRPO_METHOD.sampling(cfg), GRPO_METHOD.name),
    init,
  };
}

/** SFT → REINFORCE++ (group baseline) on the built-in task with a grader, and the gold view. */
export function reinforcePipeline(
  io: RecipeIo,
): PipelineDefinition<ReinforcePipelineConfig, BuiltinState> {
  return {
    name: "builtin-reinforce",
    doc: "SFT → REINFORCE++ with a grader (default grader:math) on the built-in arithmetic task",
    sections: {
      ...GROUP_BASE_SECTIONS,
      reinforce: REINFORCE_PP_SCHEMA,
    } as unknown as Record<string, Schema<unknown>>,
    defaults: REINFORCE_PIPELINE_DEFAULTS,
    stages: [
      SFT_STAGE,
      groupRewardModelStage(REINFORCE_METHOD),
      groupStage(io, REINFORCE_METHOD),
    ] as PipelineDefinition<
      ReinforcePipelineConfig,
      BuiltinState
    >["stages"],
    validate: (cfg) =>
      checkTaskModelConfig(cfg, REINFORCE_METHOD.sampling(cfg), REINFORCE_METHOD.name),
    init,
  };
}

/** SFT → rejection-sampling fine-tuning on the built-in task with a grader, and the gold view. */
export function rejectionSamplingPipeline(
  io: RecipeIo,
): PipelineDefinition<RejectionSamplingPipelineConfig, BuiltinState> {
  return {
    name: "builtin-rs",
    doc: "SFT → rejection sampling (best of K, fine-tuned) with a grader on the built-in task",
    sections: {
      ...GROUP_BASE_SECTIONS,
      rs: REJECTION_SAMPLING_SCHEMA,
    } as unknown as Record<string, Schema<unknown>>,
    defaults: RS_PIPELINE_DEFAULTS,
    stages: [
      SFT_STAGE,
      groupRewardModelStage(RS_METHOD),
      groupStage(io, RS_METHOD),
    ] as PipelineDefinition<
      RejectionSamplingPipelineConfig,
      BuiltinState
    >["stages"],
    validate: (cfg) => checkTaskModelConfig(cfg, RS_METHOD.sampling(cfg), RS_METHOD.name),
    init,
  };
}

/** SFT → RLOO on the built-in task with a grader, and the gold view. */
export function rlooPipeline(
  io: RecipeIo,
): PipelineDefinition<RlooPipelineConfig, BuiltinState> {
  return {
    name: "builtin-rloo",
    doc: "SFT → RLOO with a grader (default grader:math) on the built-in arithmetic task",
    sections: {
      ...GROUP_BASE_SECTIONS,
      rloo: RLOO_SCHEMA,
    } as unknown as Record<string, Schema<unknown>>,
    defaults: RLOO_PIPELINE_DEFAULTS,
    stages: [
      SFT_STAGE,
      groupRewardModelStage(RLOO_METHOD),
      groupStage(io, RLOO_METHOD),
    ] as PipelineDefinition<
      RlooPipelineConfig,
      BuiltinState
    >["stages"],
    validate: (cfg) => checkTaskModelConfig(cfg, RLOO_METHOD.sampling(cfg), RLOO_METHOD.name),
    init,
  };
}

/** Resolves a `builtin-grpo` config from overrides (unknown keys are `ConfigError`s). */
export function resolveGrpoConfig(overrides: Record<string, unknown>): GrpoPipelineConfig {
  return resolveSections(
    grpoPipeline({ read: () => Promise.reject(new Error("no files")) }).sections,
    overrides,
    GRPO_PIPELINE_DEFAULTS,
  );
}
