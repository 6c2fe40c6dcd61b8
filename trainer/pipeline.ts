/**
 * The whole RLHF pipeline on the built-in task — SFT → reward model → PPO — as one
 * runtime-agnostic function: the CLI (`deno task train`) and the browser demo both call it and
 * supply I/O through hooks (metrics, progress, checkpoints). It reports both the learned
 * reward and the hidden **gold** score of fresh samples on held-out prompts before and after
 * PPO, so real improvement is told apart from reward hacking.
 *
 * @module
 */

import type { Gpu } from "../kernels/runtime.ts";
import { loadOptModel, saveOptModel } from "../model/checkpoint.ts";
import { OptModel } from "../model/opt.ts";
import { ByteTokenizer } from "../model/tokenizer.ts";
import {
  defaults,
  PPO_SCHEMA,
  type PpoConfig,
  resolveConfig,
  RM_SCHEMA,
  type RmConfig,
  type Schema,
  SFT_SCHEMA,
  type SftConfig,
} from "./config.ts";
import { labelComparisons, samplePolicy } from "./comparisons.ts";
import { describeVerdict, detectRewardHacking, type RewardHackingVerdict } from "./hacking.ts";
import { PpoTrainer, type RolloutSample } from "./ppo.ts";
import { runPpoLoop, sampleAndScore } from "./_stages.ts";
import { evaluateRewardModel, trainRewardModel } from "./rm.ts";
import { type Metrics, trainSft } from "./sft.ts";
import {
  type GoldParts,
  goldParts,
  goldScore,
  makeBuiltinTask,
  parseQuestion,
  TASK_MODEL_CONFIG,
  type TaskQuestion,
} from "./task.ts";

/** Run-level settings. */
export interface RunConfig {
  name: string;
  seed: number;
  evalTemperature: number;
  checkpointEvery: number;
}

/** The run-level schema. */
export const RUN_SCHEMA: Schema<RunConfig> = {
  name: { default: "builtin", doc: "run name (output under runs/<name>/)" },
  seed: { default: 1, doc: "seed of the task data and model initialisation", integer: true },
  evalTemperature: {
    default: 1.0,
    doc: "temperature of the fresh samples scored before/after PPO",
    min: 0,
  },
  checkpointEvery: {
    default: 10,
    doc: "PPO iterations between resumable state checkpoints",
    min: 1,
    integer: true,
  },
};

/** Settings of the built-in task's data. */
export interface TaskConfig {
  pairs: number;
  labelNoise: number;
  policyPrompts: number;
  samplesPerPrompt: number;
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
};

/** A complete pipeline configuration. */
export interface PipelineConfig {
  run: RunConfig;
  task: TaskConfig;
  sft: SftConfig;
  rm: RmConfig;
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
  // The reward model's errors are the arithmetic pairs (style pairs are ~98 % right): 600 steps
  // of 16 pairs reached held-out accuracy 0.83–0.925 depending on seed and CPU; twice the pairs
  // per step (or twice the steps) 0.90–0.97. Lower learning rates did not help (seed 3: 0.82 at
  // 5e-4, 0.73 at 3e-4); nor did the token-level loss (0.60–0.69).
  rm: { ...defaults(RM_SCHEMA), steps: 600, batchSize: 32, lr: 1e-3 },
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

/**
 * Builds a pipeline config from the defaults and nested overrides (`{sft: {steps: 10}}` or flat
 * dotted keys `{"sft.steps": 10}`); unknown sections or keys are errors naming them.
 */
export function resolvePipelineConfig(
  overrides: Record<string, unknown>,
  base: PipelineConfig = BUILTIN_DEFAULTS,
): PipelineConfig {
  const nested: Record<string, Record<string, unknown>> = {
    run: {},
    task: {},
    sft: {},
    rm: {},
    ppo: {},
  };
  for (const [k, v] of Object.entries(overrides)) {
    const dot = k.indexOf(".");
    if (dot > 0) {
      const sec = k.slice(0, dot);
      if (!(sec in nested)) {
        throw new Error(`unknown config section "${sec}" in "${k}" (run, task, sft, rm, ppo)`);
      }
      nested[sec][k.slice(dot + 1)] = v;
    } else if (k in nested && typeof v === "object" && v !== null) {
      Object.assign(nested[k], v);
    } else {
      throw new Error(`unknown config key "${k}": use a section (run., task., sft., rm., ppo.)`);
    }
  }
  return {
    run: resolveConfig(RUN_SCHEMA, nested.run, base.run),
    task: resolveConfig(TASK_SCHEMA, nested.task, base.task),
    sft: resolveConfig(SFT_SCHEMA, nested.sft, base.sft),
    rm: resolveConfig(RM_SCHEMA, nested.rm, base.rm),
    ppo: resolveConfig(PPO_SCHEMA, nested.ppo, base.ppo),
  };
}

/** Which stage(s) to run: one stage loads the checkpoints of the stages before it. */
export type PipelineStage = "all" | "sft" | "rm" | "ppo";

/** I/O supplied by the caller. */
export interface PipelineHooks {
  /** Every logged metric record, tagged with its stage. */
  onMetrics?: (stage: string, m: Metrics) => void | Promise<void>;
  /** Progress: `done` of `total` units of `stage`. */
  onProgress?: (stage: string, done: number, total: number, m?: Metrics) => void;
  /** A checkpoint of `stage` (HF layout) to persist. */
  saveCheckpoint?: (stage: string, files: { config: string; weights: Uint8Array }) => Promise<void>;
  /** Free-form log lines. */
  log?: (line: string) => void;
  /**
   * Decoded samples with their reward-model (and, on the built-in task, gold) scores: every PPO
   * rollout (`"ppo"`) and the evaluations `"before"` and `"after"` PPO.
   */
  onSamples?: (when: "rm" | "ppo" | "before" | "after", samples: ReportSample[]) => void;
  /** Persists resumable training state (`name` like "ppo/actor_state.safetensors"). */
  saveState?: (name: string, data: Uint8Array | string) => Promise<void>;
  /** Loads what {@link saveState} wrote, or a finished stage's checkpoint; undefined if absent. */
  loadState?: (name: string) => Promise<Uint8Array | string | undefined>;
}

/** A sample generation for the report. */
export interface ReportSample {
  prompt: string;
  response: string;
  gold: number;
  score: number;
}

/** The numbers the acceptance speaks of (written as `summary.json`). */
export interface PipelineSummary {
  wall_seconds: number;
  "sft/loss": number;
  "rm/accuracy": number;
  "rm/margin": number;
  "gold/before": number;
  "gold/after": number;
  "score/before": number;
  "score/after": number;
  "objective/kl": number;
  /** Reward-model accuracy on clean comparisons of the SFT policy's samples (held-out prompts). */
  "rm/policy_accuracy": number;
  /** Pearson correlation of reward-model score and gold over those samples. */
  "rm/policy_gold_corr": number;
  /** Share of fresh samples whose answer is correct, before and after PPO. */
  "gold/correct/before": number;
  "gold/correct/after": number;
  /** Share ending with a period, before and after PPO. */
  "gold/period/before": number;
  "gold/period/after": number;
  /** Share at most {@link CONCISE_CHARS} characters long, before and after PPO. */
  "gold/concise/before": number;
  "gold/concise/after": number;
  /**
   * The reward-hacking verdict over the PPO rollouts (see {@link detectRewardHacking}); null
   * where there is no gold score (checkpoint recipes) or PPO did not run.
   */
  reward_hacking: RewardHackingVerdict | null;
  samples_before: ReportSample[];
  samples_after: ReportSample[];
}

/** A summary whose numbers are all NaN (stages that did not run) and without samples. */
export function emptySummary(wallSeconds: number): PipelineSummary {
  return {
    wall_seconds: wallSeconds,
    "sft/loss": NaN,
    "rm/accuracy": NaN,
    "rm/margin": NaN,
    "gold/before": NaN,
    "gold/after": NaN,
    "score/before": NaN,
    "score/after": NaN,
    "objective/kl": NaN,
    "rm/policy_accuracy": NaN,
    "rm/policy_gold_corr": NaN,
    "gold/correct/before": NaN,
    "gold/correct/after": NaN,
    "gold/period/before": NaN,
    "gold/period/after": NaN,
    "gold/concise/before": NaN,
    "gold/concise/after": NaN,
    reward_hacking: null,
    samples_before: [],
    samples_after: [],
  };
}

/**
 * Samples responses to `questions` (temperature `T`, seeded), and scores them with the gold
 * function and the reward model.
 */
async function evaluate(
  gpu: Gpu,
  actor: OptModel,
  reward: OptModel,
  tok: ByteTokenizer,
  questions: TaskQuestion[],
  T: number,
  seed: number,
  maxNewTokens: number,
): Promise<{ gold: number; score: number; parts: GoldParts; samples: ReportSample[] }> {
  const scored = await sampleAndScore(gpu, actor, reward, tok, questions.map((q) => q.prompt), {
    temperature: T,
    seed,
    maxNewTokens,
    maxPromptLength: 256,
  });
  const samples = scored.map((s, i) => ({
    prompt: s.prompt,
    response: s.response,
    score: s.score,
    gold: goldScore(questions[i], s.response),
  }));
  const parts = scored.map((s, i) => goldParts(questions[i], s.response));
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
function rolloutGold(samples: readonly RolloutSample[]): Metrics {
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

/**
 * Runs SFT → RM → PPO on the built-in task and returns the summary. With `resume`, finished
 * stages load from their checkpoints and PPO continues from its last state checkpoint (models,
 * AdamW moments and step, trainer counters), reproducing the uninterrupted run's metrics.
 * `stopAfterIteration` ends PPO early (after checkpointing), e.g. to test resuming.
 *
 * @example A very short run
 * ```ts
 * import { Gpu, resolvePipelineConfig, runBuiltinPipeline } from "./mod.ts";
 * const gpu = await Gpu.create();
 * const cfg = resolvePipelineConfig({ "sft.steps": 5, "rm.steps": 5, "ppo.iterations": 1 });
 * const summary = await runBuiltinPipeline(gpu, cfg);
 * console.log(summary["gold/before"], summary["gold/after"]);
 * ```
 */
export async function runBuiltinPipeline(
  gpu: Gpu,
  cfg: PipelineConfig,
  hooks: PipelineHooks = {},
  opts: { resume?: boolean; stopAfterIteration?: number; stage?: PipelineStage } = {},
): Promise<PipelineSummary> {
  const t0 = performance.now();
  const tok = new ByteTokenizer();
  const task = makeBuiltinTask(cfg.run.seed, {
    pairs: cfg.task.pairs,
    labelNoise: cfg.task.labelNoise,
  });
  const gold = (prompt: string, response: string) => goldScore(parseQuestion(prompt)!, response);
  // policy samples (RM comparisons, evaluations) use PPO's rollout budget, so the reward model
  // is trained and tested on what PPO will show it
  const sampling = {
    maxNewTokens: cfg.ppo.maxNewTokens,
    maxPromptLength: cfg.ppo.maxPromptLength,
    temperature: cfg.ppo.temperature,
    samplesPerPrompt: cfg.task.samplesPerPrompt,
  };
  const seed = cfg.run.seed;
  const log = hooks.log ?? (() => {});
  const stageHooks = (stage: string, total: number) => ({
    logEvery: 10,
    onLog: async (m: Metrics) => {
      hooks.onProgress?.(stage, m.step ?? m.iteration, total, m);
      await hooks.onMetrics?.(stage, m);
    },
  });
  /** A finished stage's checkpoint, when resuming. */
  const only = opts.stage ?? "all";
  const stageOrder = ["sft", "rm", "ppo"];
  const partial = (m: Partial<PipelineSummary>): PipelineSummary => ({
    ...emptySummary((performance.now() - t0) / 1000),
    ...m,
  });

  const stored = async (stage: string): Promise<OptModel | undefined> => {
    // earlier stages of a single-stage run must exist; a resumed run loads what finished
    const required = only !== "all" && stageOrder.indexOf(stage) < stageOrder.indexOf(only);
    if ((!opts.resume && !required) || !hooks.loadState) {
      if (required) {
        throw new Error(`stage ${only} needs the ${stage} checkpoint: no state storage`);
      }
      return undefined;
    }
    const config = await hooks.loadState(`${stage}/config.json`);
    const weights = await hooks.loadState(`${stage}/model.safetensors`);
    if (typeof config !== "string" || !(weights instanceof Uint8Array)) {
      if (required) {
        throw new Error(`stage ${only} needs the ${stage} checkpoint (run --stage=${stage} first)`);
      }
      return undefined;
    }
    log(`resume: the ${stage} stage is loaded from its checkpoint`);
    return loadOptModel(gpu, config, weights).model;
  };
  // SFT
  let sft = await stored("sft");
  let sftLoss = NaN;
  if (!sft) {
    sft = OptModel.create(gpu, TASK_MODEL_CONFIG, { seed });
    const sftLogs = await trainSft(
      sft,
      tok,
      task.sft,
      { ...cfg.sft, seed: cfg.sft.seed + seed },
      stageHooks("sft", cfg.sft.steps),
    );
    sftLoss = sftLogs.at(-1)?.["sft/loss"] ?? NaN;
    await hooks.saveCheckpoint?.("sft", await saveOptModel(sft, { stage: "sft" }));
  }
  if (only === "sft") {
    sft.store.dispose();
    return partial({ "sft/loss": sftLoss });
  }
  // reward model, from the SFT weights
  let rm = await stored("rm");
  if (!rm) {
    rm = OptModel.create(gpu, TASK_MODEL_CONFIG, { seed: seed + 1, valueHead: true });
    rm.store.copyFrom(sft.store);
    let pairs = task.pairs;
    if (cfg.task.policyPrompts > 0) {
      // on-policy comparisons (InstructGPT): the SFT policy's own samples, truncated ones
      // included, labelled by the gold function with the task's label noise
      const groups = await samplePolicy(
        gpu,
        sft,
        tok,
        task.prompts.slice(0, cfg.task.policyPrompts).map((q) => q.prompt),
        { ...sampling, seed: seed + 200 },
      );
      const policyPairs = labelComparisons(groups, gold, {
        labelNoise: cfg.task.labelNoise,
        seed: seed + 201,
      });
      log(
        `reward-model data: ${task.pairs.length} fixed pairs + ${policyPairs.length} comparisons ` +
          `of SFT samples (${groups.length} prompts × ${cfg.task.samplesPerPrompt})`,
      );
      pairs = [...task.pairs, ...policyPairs];
    }
    await trainRewardModel(
      rm,
      tok,
      pairs,
      { ...cfg.rm, seed: cfg.rm.seed + seed },
      stageHooks("rm", cfg.rm.steps),
    );
    await hooks.saveCheckpoint?.("rm", await saveOptModel(rm, { stage: "rm" }));
  }
  const rmEval = await evaluateRewardModel(rm, tok, task.heldOutPairs, {
    maxLength: cfg.rm.maxLength,
  });
  // where PPO uses it: clean comparisons of the SFT policy's samples on held-out prompts
  const heldOut = await samplePolicy(
    gpu,
    sft,
    tok,
    task.policyEvalPrompts.map((q) => q.prompt),
    { ...sampling, seed: seed + 300, reward: rm },
  );
  const policyEval = await evaluateRewardModel(
    rm,
    tok,
    labelComparisons(heldOut, gold, { labelNoise: 0, seed: 0 }),
    { maxLength: cfg.rm.maxLength },
  );
  const flat = heldOut.flat();
  const rmStats = {
    "rm/accuracy": rmEval.accuracy,
    "rm/margin": rmEval.margin,
    "rm/policy_accuracy": policyEval.accuracy,
    "rm/policy_gold_corr": correlation(
      flat.map((x) => x.score),
      flat.map((x) => gold(x.prompt, x.response)),
    ),
  };
  await hooks.onMetrics?.("rm", rmStats);
  log(
    `reward model: held-out accuracy ${rmEval.accuracy.toFixed(3)} (margin ${
      rmEval.margin.toFixed(3)
    }); on SFT samples accuracy ${policyEval.accuracy.toFixed(3)}, score–gold correlation ${
      rmStats["rm/policy_gold_corr"].toFixed(3)
    }`,
  );
  hooks.onSamples?.("rm", flat.map((x) => ({ ...x, gold: gold(x.prompt, x.response) })));
  if (only === "rm") {
    for (const m of [sft, rm]) m.store.dispose();
    return partial(rmStats);
  }
  // PPO: actor and reference from SFT, critic from the reward model
  const actor = sft.copy(), reference = sft.copy({ frozen: true });
  const critic = OptModel.create(gpu, TASK_MODEL_CONFIG, { seed: seed + 2, valueHead: true });
  critic.store.copyFrom(rm.store);
  // the reference equals the actor before PPO (also when resuming mid-PPO)
  const before = await evaluate(
    gpu,
    reference,
    rm,
    tok,
    task.evalPrompts,
    cfg.run.evalTemperature,
    seed + 100,
    cfg.ppo.maxNewTokens,
  );
  log(`before PPO: gold ${before.gold.toFixed(3)}, reward-model score ${before.score.toFixed(3)}`);
  hooks.onSamples?.("before", before.samples);
  const trainer = new PpoTrainer(
    { actor, critic, reward: rm, reference },
    tok,
    task.prompts.map((q) => q.prompt),
    { ...cfg.ppo, seed: cfg.ppo.seed + seed },
    { scoreRollout: (s) => rolloutGold(s) },
  );
  const history: { iteration: number; score: number; gold: number }[] = [];
  const last = await runPpoLoop(
    trainer,
    [
      { name: "ppo/actor_state.safetensors", store: actor.store },
      { name: "ppo/critic_state.safetensors", store: critic.store },
    ],
    { iterations: cfg.ppo.iterations, checkpointEvery: cfg.run.checkpointEvery },
    {
      ...hooks,
      onMetrics: async (stage, m) => {
        if (stage === "ppo") {
          history.push({
            iteration: m.iteration,
            score: m["objective/scores"],
            gold: m["gold/rollout"],
          });
        }
        await hooks.onMetrics?.(stage, m);
      },
    },
    opts,
    (s) => gold(s.prompt, s.response),
  );
  await hooks.saveCheckpoint?.("ppo", await saveOptModel(actor, { stage: "ppo" }));
  const after = await evaluate(
    gpu,
    actor,
    rm,
    tok,
    task.evalPrompts,
    cfg.run.evalTemperature,
    seed + 100,
    cfg.ppo.maxNewTokens,
  );
  log(`after PPO: gold ${after.gold.toFixed(3)}, reward-model score ${after.score.toFixed(3)}`);
  hooks.onSamples?.("after", after.samples);
  const verdict = detectRewardHacking(history, {
    before: { score: before.score, gold: before.gold },
    after: { score: after.score, gold: after.gold },
  });
  log(describeVerdict(verdict));
  for (const m of [sft, rm, actor, reference, critic]) m.store.dispose();
  return {
    wall_seconds: (performance.now() - t0) / 1000,
    "sft/loss": sftLoss,
    "gold/before": before.gold,
    "gold/after": after.gold,
    "score/before": before.score,
    "score/after": after.score,
    "objective/kl": last["objective/kl"] ?? 0,
    ...rmStats,
    "gold/correct/before": before.parts.correct,
    "gold/correct/after": after.parts.correct,
    "gold/period/before": before.parts.period,
    "gold/period/after": after.parts.period,
    "gold/concise/before": before.parts.concise,
    "gold/concise/after": after.parts.concise,
    reward_hacking: verdict,
    samples_before: before.samples.slice(0, 8),
    samples_after: after.samples.slice(0, 8),
  };
}
