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
import { PpoTrainer } from "./ppo.ts";
import { runPpoLoop, sampleAndScore } from "./_stages.ts";
import { evaluateRewardModel, trainRewardModel } from "./rm.ts";
import { type Metrics, trainSft } from "./sft.ts";
import {
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

/** A complete pipeline configuration. */
export interface PipelineConfig {
  run: RunConfig;
  sft: SftConfig;
  rm: RmConfig;
  ppo: PpoConfig;
}

/** Defaults of the built-in run, tuned to finish in minutes on a 2-core software adapter. */
export const BUILTIN_DEFAULTS: PipelineConfig = {
  run: defaults(RUN_SCHEMA),
  // SFT must learn the sums, not only the styles: the former 300 steps at lr 3e-3 answered the
  // held-out prompts 19 % correctly at T = 1 (at that lr, greedy answers were 22 % correct after
  // 300 steps and 97 % after 900); 600 steps at lr 1e-3 give 97 % greedy, 66 % at T = 1 (the
  // demonstrations' share of correct answers is 80 %).
  sft: { ...defaults(SFT_SCHEMA), steps: 600, lr: 1e-3 },
  // An RM started from an SFT model that knows the sums ranks the arithmetic pairs too: held-out
  // accuracy 0.745 / 0.870 / 0.990 after 100 / 300 / 600 steps at lr 1e-3 (from the 300-step
  // SFT model, which did not know them, it stalled at 0.75–0.86).
  rm: { ...defaults(RM_SCHEMA), steps: 600, lr: 1e-3 },
  // a stronger RM is exploitable by truncated responses (" 5, I am s…" scored 2.1 with gold 0):
  // penalise responses that never emit EOS, as TRL's missing_eos_penalty does
  ppo: { ...defaults(PPO_SCHEMA), iterations: 30, missingEosPenalty: 1.0 },
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
  const nested: Record<string, Record<string, unknown>> = { run: {}, sft: {}, rm: {}, ppo: {} };
  for (const [k, v] of Object.entries(overrides)) {
    const dot = k.indexOf(".");
    if (dot > 0) {
      const sec = k.slice(0, dot);
      if (!(sec in nested)) {
        throw new Error(`unknown config section "${sec}" in "${k}" (run, sft, rm, ppo)`);
      }
      nested[sec][k.slice(dot + 1)] = v;
    } else if (k in nested && typeof v === "object" && v !== null) {
      Object.assign(nested[k], v);
    } else {
      throw new Error(`unknown config key "${k}": use a section (run., sft., rm., ppo.)`);
    }
  }
  return {
    run: resolveConfig(RUN_SCHEMA, nested.run, base.run),
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
  onSamples?: (when: "ppo" | "before" | "after", samples: ReportSample[]) => void;
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
  samples_before: ReportSample[];
  samples_after: ReportSample[];
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
): Promise<{ gold: number; score: number; samples: ReportSample[] }> {
  const scored = await sampleAndScore(gpu, actor, reward, tok, questions.map((q) => q.prompt), {
    temperature: T,
    seed,
    maxNewTokens: 12,
    maxPromptLength: 256,
  });
  const samples = scored.map((s, i) => ({ ...s, gold: goldScore(questions[i], s.response) }));
  const mean = (f: (s: ReportSample) => number) =>
    samples.reduce((a, s) => a + f(s), 0) / samples.length;
  return { gold: mean((s) => s.gold), score: mean((s) => s.score), samples };
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
  const task = makeBuiltinTask(cfg.run.seed);
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
    wall_seconds: (performance.now() - t0) / 1000,
    "sft/loss": NaN,
    "rm/accuracy": NaN,
    "rm/margin": NaN,
    "gold/before": NaN,
    "gold/after": NaN,
    "score/before": NaN,
    "score/after": NaN,
    "objective/kl": NaN,
    samples_before: [],
    samples_after: [],
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
    await trainRewardModel(
      rm,
      tok,
      task.pairs,
      { ...cfg.rm, seed: cfg.rm.seed + seed },
      stageHooks("rm", cfg.rm.steps),
    );
    await hooks.saveCheckpoint?.("rm", await saveOptModel(rm, { stage: "rm" }));
  }
  const rmEval = await evaluateRewardModel(rm, tok, task.heldOutPairs, {
    maxLength: cfg.rm.maxLength,
  });
  await hooks.onMetrics?.("rm", { "rm/accuracy": rmEval.accuracy, "rm/margin": rmEval.margin });
  log(
    `reward model held-out accuracy ${rmEval.accuracy.toFixed(3)}, margin ${
      rmEval.margin.toFixed(3)
    }`,
  );
  if (only === "rm") {
    for (const m of [sft, rm]) m.store.dispose();
    return partial({ "rm/accuracy": rmEval.accuracy, "rm/margin": rmEval.margin });
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
  );
  log(`before PPO: gold ${before.gold.toFixed(3)}, reward-model score ${before.score.toFixed(3)}`);
  hooks.onSamples?.("before", before.samples);
  const trainer = new PpoTrainer(
    { actor, critic, reward: rm, reference },
    tok,
    task.prompts.map((q) => q.prompt),
    { ...cfg.ppo, seed: cfg.ppo.seed + seed },
    {
      scoreRollout: (s) => ({
        "gold/rollout": s.reduce((a, x) => a + goldScore(parseQuestion(x.prompt)!, x.response), 0) /
          s.length,
      }),
    },
  );
  const last = await runPpoLoop(
    trainer,
    [
      { name: "ppo/actor_state.safetensors", store: actor.store },
      { name: "ppo/critic_state.safetensors", store: critic.store },
    ],
    { iterations: cfg.ppo.iterations, checkpointEvery: cfg.run.checkpointEvery },
    hooks,
    opts,
    (s) => goldScore(parseQuestion(s.prompt)!, s.response),
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
  );
  log(`after PPO: gold ${after.gold.toFixed(3)}, reward-model score ${after.score.toFixed(3)}`);
  hooks.onSamples?.("after", after.samples);
  for (const m of [sft, rm, actor, reference, critic]) m.store.dispose();
  return {
    wall_seconds: (performance.now() - t0) / 1000,
    "sft/loss": sftLoss,
    "rm/accuracy": rmEval.accuracy,
    "rm/margin": rmEval.margin,
    "gold/before": before.gold,
    "gold/after": after.gold,
    "score/before": before.score,
    "score/after": after.score,
    "objective/kl": last["objective/kl"] ?? 0,
    samples_before: before.samples.slice(0, 8),
    samples_after: after.samples.slice(0, 8),
  };
}
