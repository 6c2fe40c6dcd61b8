/**
 * The direct preference methods on the built-in task: SFT (the same stage as the PPO pipeline),
 * then DPO / IPO / hinge / robust / SimPO (`builtin-dpo`) or KTO (`builtin-kto`) on preference
 * data built from the SFT policy's own samples, labelled by the gold function with the task's
 * label noise (`data.source: "policy"`, InstructGPT-style comparisons) — or the task's fixed
 * pairs (`data.source: "task"`). The gold view is PPO's: fresh samples scored by gold before and
 * after, the correct/period/concise split, KL to the SFT policy, and the reward-hacking verdict
 * over the training — with the method's implicit reward `β·(ℓ_θ − ℓ_SFT)` of fresh samples in
 * the place of PPO's reward-model score.
 *
 * @module
 */

import { saveOptModel } from "../model/checkpoint.ts";
import type { OptModel } from "../model/opt.ts";
import { ByteTokenizer } from "../model/tokenizer.ts";
import {
  BUILTIN_DEFAULTS,
  type BuiltinState,
  evaluate,
  type Evaluation,
  evaluationSummary,
  gold,
  RUN_SCHEMA,
  type RunConfig,
  SFT_STAGE,
} from "./builtin.ts";
import { labelComparisons, labelExamples, samplePolicy } from "./comparisons.ts";
import {
  ConfigError,
  defaults,
  resolveSections,
  type Schema,
  SFT_SCHEMA,
  type SftConfig,
} from "./config.ts";
import type { KtoExample, PairExample } from "./data.ts";
import { DPO_SCHEMA, type DpoConfig, DpoTrainer } from "./dpo.ts";
import { describeVerdict, detectRewardHacking, goldSpread, type RolloutScores } from "./hacking.ts";
import { KTO_SCHEMA, type KtoConfig, KtoTrainer } from "./kto.ts";
import { implicitReward } from "./logprobs.ts";
import type { PipelineDefinition, Stage, StageContext } from "./pipeline.ts";
import { deriveSeed, rolloutSeed } from "./random.ts";
import { type RolloutScorer, sampleAndScore } from "./rollout.ts";
import { type GoldParts, goldParts, makeBuiltinTask, parseQuestion } from "./task.ts";
import type { Trainer } from "./types.ts";

/** The built-in task's data for the preference methods. */
export interface PreferenceTaskConfig {
  /** the task's fixed pairs (used with data.source=task) (default 20000) */
  pairs: number;
  /** fraction of labels flipped (pairs swapped, KTO labels inverted) (default 0.1) */
  labelNoise: number;
}

/** How the preference data is built. */
export interface PreferenceDataConfig {
  /**
   * policy: the SFT policy's samples labelled by gold (with label noise); task: fixed pairs
   * (default "policy")
   */
  source: "policy" | "task";
  /** task prompts whose SFT samples make the data (source=policy) (default 1000) */
  prompts: number;
  /** SFT samples per prompt; every two with different gold make a pair (default 4) */
  samplesPerPrompt: number;
  /** token budget of samples (data and evaluation); cut ones keep no EOS (default 16) */
  maxNewTokens: number;
  /** sampling temperature of the data (default 1) */
  temperature: number;
  /**
   * KTO: a sample is desirable when its gold score reaches this (correct, and one style point)
   * (default 0.8)
   */
  desirableThreshold: number;
}

/** The task section of the preference pipelines. */
export const PREFERENCE_TASK_SCHEMA: Schema<PreferenceTaskConfig> = {
  pairs: {
    default: 20000,
    doc: "the task's fixed pairs (used with data.source=task)",
    min: 1,
    integer: true,
  },
  labelNoise: {
    default: 0.1,
    doc: "fraction of labels flipped (pairs swapped, KTO labels inverted)",
    min: 0,
    max: 0.5,
  },
};

/** The data section of the preference pipelines. */
export const PREFERENCE_DATA_SCHEMA: Schema<PreferenceDataConfig> = {
  source: {
    default: "policy",
    doc: "policy: the SFT policy's samples labelled by gold (with label noise); task: fixed pairs",
    choices: ["policy", "task"],
  },
  prompts: {
    default: 1000,
    doc: "task prompts whose SFT samples make the data (source=policy)",
    min: 1,
    integer: true,
  },
  samplesPerPrompt: {
    default: 4,
    doc: "SFT samples per prompt; every two with different gold make a pair",
    min: 2,
    integer: true,
  },
  maxNewTokens: {
    default: 16,
    doc: "token budget of samples (data and evaluation); cut ones keep no EOS",
    min: 1,
    integer: true,
  },
  temperature: { default: 1.0, doc: "sampling temperature of the data", min: 0 },
  desirableThreshold: {
    default: 0.8,
    doc:
      "KTO: a sample is desirable when its gold score reaches this (correct, and one style point)",
    min: 0,
    max: 1,
  },
};

/** A `builtin-dpo` config. */
export interface DpoPipelineConfig {
  /** The `run.` section. */
  run: RunConfig;
  /** The `task.` section. */
  task: PreferenceTaskConfig;
  /** The `data.` section (how preference data is built). */
  data: PreferenceDataConfig;
  /** The `sft.` section. */
  sft: SftConfig;
  /** The `dpo.` section. */
  dpo: DpoConfig;
}

/** A `builtin-kto` config. */
export interface KtoPipelineConfig {
  /** The `run.` section. */
  run: RunConfig;
  /** The `task.` section. */
  task: PreferenceTaskConfig;
  /** The `data.` section (how preference data is built). */
  data: PreferenceDataConfig;
  /** The `sft.` section. */
  sft: SftConfig;
  /** The `kto.` section. */
  kto: KtoConfig;
}

type AnyConfig = DpoPipelineConfig | KtoPipelineConfig;
type Ctx = StageContext<AnyConfig, BuiltinState>;

const COMMON_DEFAULTS = {
  run: { ...BUILTIN_DEFAULTS.run, name: "builtin-dpo" },
  task: defaults(PREFERENCE_TASK_SCHEMA),
  data: defaults(PREFERENCE_DATA_SCHEMA),
  sft: BUILTIN_DEFAULTS.sft,
};

/**
 * Defaults of `builtin-dpo` (the SFT stage is the PPO pipeline's). DPO and SimPO on the task
 * train with RPO's NLL term (α 1, Pang et al. 2024: for reasoning tasks the chosen answers'
 * likelihood must not sink) at lr 1e-4. Measured on the learning matrix (seeds 1–3 × GL/Vulkan,
 * README): without it DPO on seed 3/Vulkan gained gold +0.073 while correct answers fell (0.582 →
 * 0.547, KL 3.5; at lr 3e-5) and SimPO gained +0.068 / +0.099 on seeds 3 / 2; with it every cell
 * gains ≥ +0.114 gold and ≥ +0.08 correct answers at KL ≤ 0.7.
 */
export const DPO_PIPELINE_DEFAULTS: DpoPipelineConfig = {
  ...COMMON_DEFAULTS,
  dpo: { ...defaults(DPO_SCHEMA), steps: 300, batchSize: 16, lr: 1e-4, rpoAlpha: 1 },
};

/** Defaults of `builtin-kto`. */
export const KTO_PIPELINE_DEFAULTS: KtoPipelineConfig = {
  ...COMMON_DEFAULTS,
  run: { ...COMMON_DEFAULTS.run, name: "builtin-kto" },
  kto: { ...defaults(KTO_SCHEMA), steps: 300, batchSize: 16 },
};

const SECTIONS = {
  run: RUN_SCHEMA,
  task: PREFERENCE_TASK_SCHEMA,
  data: PREFERENCE_DATA_SCHEMA,
  sft: SFT_SCHEMA,
};

/** The SFT policy's samples on the first `data.prompts` task prompts, grouped by prompt. */
function policySamples(ctx: Ctx) {
  const { cfg, state } = ctx;
  return samplePolicy(
    state.sft!,
    state.tok,
    state.task.prompts.slice(0, cfg.data.prompts).map((q) => q.prompt),
    {
      samplesPerPrompt: cfg.data.samplesPerPrompt,
      maxNewTokens: cfg.data.maxNewTokens,
      maxPromptLength: 64,
      temperature: cfg.data.temperature,
      seed: deriveSeed(cfg.run.seed, "comparisonSamples"),
    },
  );
}

/** DPO's pairs: gold-labelled comparisons of SFT samples, or the task's fixed pairs. */
async function preferencePairs(ctx: Ctx): Promise<PairExample[]> {
  const { cfg, state } = ctx;
  if (cfg.data.source === "task") return state.task.pairs;
  const groups = await policySamples(ctx);
  const pairs = labelComparisons(groups, gold, {
    labelNoise: cfg.task.labelNoise,
    seed: deriveSeed(cfg.run.seed, "comparisonLabels"),
  });
  ctx.log(`preference data: ${pairs.length} pairs of SFT samples (${groups.length} prompts)`);
  if (pairs.length === 0) {
    throw new ConfigError(
      `preference data: the SFT policy's ${cfg.data.samplesPerPrompt} samples of each of ` +
        `${groups.length} prompts never differ in gold, so there is no pair to train on: raise ` +
        `data.prompts or data.samplesPerPrompt (or use --data.source=task)`,
    );
  }
  return pairs;
}

/** KTO's examples: gold-thresholded SFT samples, or both sides of the task's fixed pairs. */
async function ktoExamples(ctx: Ctx): Promise<KtoExample[]> {
  const { cfg, state } = ctx;
  if (cfg.data.source === "task") {
    return state.task.pairs.flatMap((p) => [
      { prompt: p.prompt, completion: p.chosen, label: true },
      { prompt: p.prompt, completion: p.rejected, label: false },
    ]);
  }
  const groups = await policySamples(ctx);
  const xs = labelExamples(groups, gold, {
    threshold: cfg.data.desirableThreshold,
    labelNoise: cfg.task.labelNoise,
    seed: deriveSeed(cfg.run.seed, "comparisonLabels"),
  });
  const good = xs.filter((x) => x.label).length;
  ctx.log(`KTO data: ${xs.length} SFT samples, ${good} desirable, ${xs.length - good} not`);
  return xs;
}

/** What a preference stage needs beyond the shared flow. */
interface MethodSpec {
  name: "dpo" | "kto";
  beta: number;
  trainer(ctx: Ctx, policy: OptModel, reference: OptModel | undefined): Promise<Trainer>;
}

/**
 * The shared flow of a preference stage: copy the SFT policy, evaluate gold before, train with
 * a gold/implicit-reward probe every 20 steps (the hacking history), evaluate after, summarise.
 */
async function runMethod(ctx: Ctx, spec: MethodSpec): Promise<void> {
  const { cfg, state } = ctx, sft = state.sft!;
  const policy = sft.copy();
  ctx.own(policy);
  const scorer = implicitReward(policy, sft, spec.beta);
  const evaluation = (m: OptModel) =>
    evaluate(m, scorer, state.tok, state.task.evalPrompts, {
      temperature: cfg.run.evalTemperature,
      seed: deriveSeed(cfg.run.seed, "evaluation"),
      maxNewTokens: cfg.data.maxNewTokens,
      samplesPerPrompt: cfg.run.evalSamples,
    });
  const before = await evaluation(sft);
  ctx.log(`before ${spec.name}: gold ${before.gold.toFixed(3)}`);
  ctx.hooks.onSamples?.("before", before.samples);
  const history: RolloutScores[] = [];
  const trainer = await spec.trainer(ctx, policy, sft);
  const last = await ctx.train(trainer, {
    logEvery: 10,
    checkpointEvery: cfg.run.stepCheckpointEvery,
    afterLog: async (m) => {
      if (m.step % 20 !== 0 && m.step !== trainer.total) return;
      const probe = await probeGold(ctx, policy, scorer, m.step);
      Object.assign(m, {
        "gold/rollout": probe.scores.gold,
        "gold/correct": probe.parts.correct,
        "gold/period": probe.parts.period,
        "gold/concise": probe.parts.concise,
        "objective/scores": probe.scores.score,
        "objective/kl": probe.scores.score / spec.beta,
      });
      history.push(probe.scores);
    },
  });
  await ctx.hooks.saveCheckpoint?.(spec.name, await saveOptModel(policy, { stage: spec.name }));
  const after = await evaluation(policy);
  ctx.log(`after ${spec.name}: gold ${after.gold.toFixed(3)}`);
  ctx.hooks.onSamples?.("after", after.samples);
  const spread = (e: Evaluation) => ({ ...e, ...goldSpread(e.samples.map((x) => x.gold)) });
  const verdict = detectRewardHacking(history, {
    before: spread(before),
    after: spread(after),
    method: spec.name.toUpperCase(),
    reward: "implicit reward",
  });
  ctx.log(describeVerdict(verdict));
  Object.assign(ctx.summary, evaluationSummary(before, after), {
    "objective/kl": after.score / spec.beta,
    reward_hacking: verdict,
    [`${spec.name}/loss`]: last[`${spec.name}/loss`] ?? last["simpo/loss"] ?? NaN,
  });
}

/** Gold and implicit reward of 32 fresh samples on training prompts (one hacking-history point). */
async function probeGold(
  ctx: Ctx,
  policy: OptModel,
  scorer: RolloutScorer,
  step: number,
): Promise<{ scores: RolloutScores; parts: GoldParts }> {
  const { cfg, state } = ctx, n = state.task.prompts.length;
  const prompts = Array.from({ length: 32 }, (_, i) => state.task.prompts[(step + i) % n].prompt);
  const samples = await sampleAndScore(policy, scorer, state.tok, prompts, {
    temperature: cfg.data.temperature,
    seed: rolloutSeed(deriveSeed(cfg.run.seed, "goldProbe"), step),
    maxNewTokens: cfg.data.maxNewTokens,
    maxPromptLength: 64,
  });
  const golds = samples.map((s) => gold(s.prompt, s.response));
  const parts = samples.map((s) => goldParts(parseQuestion(s.prompt)!, s.response));
  const mean = (xs: number[]) => xs.reduce((a, v) => a + v, 0) / xs.length;
  return {
    scores: {
      iteration: step,
      score: mean(samples.map((s) => s.score)),
      gold: mean(golds),
      ...goldSpread(golds),
    },
    parts: {
      correct: mean(parts.map((p) => p.correct)),
      period: mean(parts.map((p) => p.period)),
      concise: mean(parts.map((p) => p.concise)),
    },
  };
}

/** DPO (any loss type) from the SFT policy; the SFT model is the frozen reference. */
const DPO_STAGE: Stage<DpoPipelineConfig, BuiltinState> = {
  name: "dpo",
  doc: "DPO / IPO / hinge / robust / SimPO on gold-labelled comparisons of SFT samples",
  run: (ctx) =>
    runMethod(ctx as Ctx, {
      name: "dpo",
      beta: ctx.cfg.dpo.beta,
      trainer: async (c, policy, sft) => {
        const d = ctx.cfg.dpo, seed = ctx.cfg.run.seed;
        const simpo = d.lossType === "simpo";
        return new DpoTrainer(
          policy,
          simpo ? undefined : sft,
          c.state.tok,
          await preferencePairs(c),
          {
            ...d,
            seed: d.seed + seed,
          },
        );
      },
    }),
};

/** KTO from the SFT policy; the SFT model is the frozen reference. */
const KTO_STAGE: Stage<KtoPipelineConfig, BuiltinState> = {
  name: "kto",
  doc: "KTO on gold-thresholded (desirable / undesirable) SFT samples",
  run: (ctx) =>
    runMethod(ctx as Ctx, {
      name: "kto",
      beta: ctx.cfg.kto.beta,
      trainer: async (c, policy, sft) => {
        const t = new KtoTrainer(policy, sft, c.state.tok, await ktoExamples(c), {
          ...ctx.cfg.kto,
          seed: ctx.cfg.kto.seed + ctx.cfg.run.seed,
        });
        for (const w of t.warnings) c.log(`warning: ${w}`);
        return t;
      },
    }),
};

function init(_gpu: unknown, cfg: AnyConfig): Promise<BuiltinState> {
  return Promise.resolve({
    tok: new ByteTokenizer(),
    task: makeBuiltinTask(cfg.run.seed, {
      // the same draws as the PPO pipeline's task: the same SFT data, prompts and eval prompts
      pairs: cfg.task.pairs,
      labelNoise: cfg.task.labelNoise,
    }),
  });
}

/** SFT → DPO (or IPO, hinge, robust, SimPO) on the built-in task, with the gold view. */
export const DPO_PIPELINE: PipelineDefinition<DpoPipelineConfig, BuiltinState> = {
  name: "builtin-dpo",
  doc: "SFT → DPO (sigmoid / ipo / hinge / robust / simpo) on the built-in arithmetic task",
  sections: { ...SECTIONS, dpo: DPO_SCHEMA } as unknown as Record<string, Schema<unknown>>,
  defaults: DPO_PIPELINE_DEFAULTS,
  stages: [SFT_STAGE, DPO_STAGE],
  init,
};

/** SFT → KTO on the built-in task, with the gold view. */
export const KTO_PIPELINE: PipelineDefinition<KtoPipelineConfig, BuiltinState> = {
  name: "builtin-kto",
  doc: "SFT → KTO on the built-in arithmetic task",
  sections: { ...SECTIONS, kto: KTO_SCHEMA } as unknown as Record<string, Schema<unknown>>,
  defaults: KTO_PIPELINE_DEFAULTS,
  stages: [SFT_STAGE, KTO_STAGE],
  init,
};

/**
 * IPO, hinge and robust keep the schema's plain settings (lr 3e-5, no RPO term): IPO was
 * measured with them (seed 1: gold 0.677 → 0.824, correct 0.686 → 0.742), while the DPO/SimPO
 * defaults (RPO, lr 1e-4) over-push IPO's fixed target margin `1/(2β)` (seed 1, 2048 completions:
 * correct 0.686 → 0.658, KL 3.9). Hinge and robust are not measured on the task.
 */
const PLAIN = { "dpo.lr": 3e-5, "dpo.rpoAlpha": 0 };

/**
 * Presets of the preference pipelines: `--method=dpo|ipo|hinge|robust|simpo` select
 * `builtin-dpo` with that loss (SimPO with its paper's β 2.0), `--method=kto` `builtin-kto`.
 */
export const PREFERENCE_PRESETS: Record<
  string,
  { pipeline: string; overrides: Record<string, unknown> }
> = {
  dpo: { pipeline: "builtin-dpo", overrides: {} },
  ipo: {
    pipeline: "builtin-dpo",
    overrides: { ...PLAIN, "dpo.lossType": "ipo", "run.name": "builtin-ipo" },
  },
  hinge: {
    pipeline: "builtin-dpo",
    overrides: { ...PLAIN, "dpo.lossType": "hinge", "run.name": "builtin-hinge" },
  },
  robust: {
    pipeline: "builtin-dpo",
    overrides: {
      ...PLAIN,
      "dpo.lossType": "robust",
      "dpo.labelSmoothing": 0.1,
      "run.name": "builtin-robust",
    },
  },
  simpo: {
    pipeline: "builtin-dpo",
    overrides: {
      "dpo.lossType": "simpo",
      "dpo.beta": 2.0,
      "run.name": "builtin-simpo",
    },
  },
  kto: { pipeline: "builtin-kto", overrides: {} },
};

/** Resolves a `builtin-dpo` config from overrides (unknown keys are `ConfigError`s). */
export function resolveDpoConfig(overrides: Record<string, unknown>): DpoPipelineConfig {
  return resolveSections(DPO_PIPELINE.sections, overrides, DPO_PIPELINE_DEFAULTS);
}
