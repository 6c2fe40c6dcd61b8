/**
 * A pipeline is a list of stages (SFT, reward model, PPO, …) over a sectioned config. One
 * runtime-agnostic {@link runPipeline} runs them in order — the CLI (`deno task train`) and the
 * browser demo supply I/O through {@link PipelineHooks} (metrics, progress, checkpoints) — and
 * gives every stage the same services: its finished checkpoint when resuming, the one training
 * loop with checkpoints, and the run's summary. `--stage=X` runs the stages before X from their
 * checkpoints and stops after X.
 *
 * Pipelines: the built-in task (`trainer/builtin.ts`) and the checkpoint recipe
 * (`trainer/recipe.ts`), registered by name in `trainer/registry.ts`.
 *
 * @module
 */

import type { Gpu } from "../kernels/runtime.ts";
import { loadOptModel } from "../model/checkpoint.ts";
import type { OptModel } from "../model/opt.ts";
import { ConfigError, type SectionSchemas } from "./config.ts";
import type { RewardHackingVerdict } from "./hacking.ts";
import { type LoopOptions, runLoop } from "./loop.ts";
import type { Metrics, Trainer } from "./types.ts";

/** When samples were drawn (see {@link PipelineHooks.onSamples}). */
export type SamplePhase = "rm" | "ppo" | "rollout" | "before" | "after";

/** I/O supplied by the caller. */
export interface PipelineHooks {
  /** Every logged metric record, tagged with its stage. */
  onMetrics?: (stage: string, m: Metrics) => void | Promise<void>;
  /** Progress: `done` of `total` units of `stage`. */
  onProgress?: (stage: string, done: number, total: number, m?: Metrics) => void;
  /** A checkpoint of `stage` (HF layout) to persist. */
  saveCheckpoint?: (stage: string, files: { config: string; weights: Uint8Array }) => Promise<void>;
  /**
   * A LoRA run's adapter as a PEFT folder (`adapter_config.json` text, `adapter_model.safetensors`
   * bytes), saved beside the stage's merged checkpoint.
   */
  saveAdapter?: (stage: string, files: { config: string; weights: Uint8Array }) => Promise<void>;
  /** Free-form log lines. */
  log?: (line: string) => void;
  /**
   * Decoded samples with their reward-model (and, on the built-in task, gold) scores: every PPO
   * rollout (`"ppo"`), every rollout of another online method (`"rollout"`, e.g. GRPO's), the
   * reward model's probe (`"rm"`) and the evaluations `"before"` and `"after"` training.
   */
  onSamples?: (when: SamplePhase, samples: ReportSample[]) => void;
  /** Persists resumable training state (`name` like "ppo/actor_state.safetensors"). */
  saveState?: (name: string, data: Uint8Array | string) => Promise<void>;
  /** Loads what {@link saveState} wrote, or a finished stage's checkpoint; undefined if absent. */
  loadState?: (name: string) => Promise<Uint8Array | string | undefined>;
  /** Removes a superseded state folder (optional; without it old checkpoints stay). */
  removeState?: (name: string) => Promise<void>;
  /**
   * A resumed stage continues after step `iteration`: what was logged for it after that step
   * (and for later stages) by the interrupted process is stale and will be logged again.
   */
  onResume?: (stage: string, iteration: number) => void | Promise<void>;
}

/** A sample generation for the report. */
export interface ReportSample {
  /** The prompt. */
  prompt: string;
  /** The decoded response. */
  response: string;
  /** Gold score in [0, 1] (NaN where there is no gold function). */
  gold: number;
  /** Reward-model score. */
  score: number;
}

/** The numbers the acceptance speaks of (written as `summary.json`). */
export interface PipelineSummary {
  /** Seconds the run took. */
  wall_seconds: number;
  /** Last SFT loss. */
  "sft/loss": number;
  /** Reward model's accuracy on held-out comparisons. */
  "rm/accuracy": number;
  /** Reward model's mean held-out margin r_chosen − r_rejected. */
  "rm/margin": number;
  /** Mean gold score of fresh samples before the method. */
  "gold/before": number;
  /** Mean gold score of fresh samples after the method. */
  "gold/after": number;
  /** Mean reward-model score of fresh samples before the method. */
  "score/before": number;
  /** Mean reward-model score of fresh samples after the method. */
  "score/after": number;
  /** KL to the reference at the end of training. */
  "objective/kl": number;
  /** Reward-model accuracy on clean comparisons of the SFT policy's samples (held-out prompts). */
  "rm/policy_accuracy": number;
  /** Pearson correlation of reward-model score and gold over those samples. */
  "rm/policy_gold_corr": number;
  /** Fresh samples scored before (and as many after) PPO: the `gold/*` rates' sample size. */
  "gold/samples": number;
  /** Share of fresh samples whose answer is correct, before and after PPO. */
  "gold/correct/before": number;
  /** Share of fresh samples with the correct answer, after. */
  "gold/correct/after": number;
  /** Share ending with a period, before and after PPO. */
  "gold/period/before": number;
  /** Share of fresh samples that end with a period, after. */
  "gold/period/after": number;
  /** Share at most `CONCISE_CHARS` characters long, before and after PPO. */
  "gold/concise/before": number;
  /** Share of fresh samples without extra words, after. */
  "gold/concise/after": number;
  /**
   * The reward-hacking verdict over the PPO rollouts (see `detectRewardHacking`); null where
   * there is no gold score (checkpoint recipes) or PPO did not run.
   */
  reward_hacking: RewardHackingVerdict | null;
  /** A few fresh samples before the method. */
  samples_before: ReportSample[];
  /** A few fresh samples after the method. */
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
    "gold/samples": 0,
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

/** How a pipeline runs: resume, one stage, an early PPO stop. */
export interface RunOptions {
  /** Finished stages load from their checkpoints; a stage's loop continues after its last state. */
  resume?: boolean;
  /** End the PPO loop after this iteration (after checkpointing), e.g. to test resuming. */
  stopAfterIteration?: number;
  /** Run only up to this stage (earlier ones load from their checkpoints); default "all". */
  stage?: string;
}

/** What a stage sees: the run, the values earlier stages left (`state`), and services. */
export interface StageContext<C, S> {
  /** The device. */
  readonly gpu: Gpu;
  /** The resolved config. */
  readonly cfg: C;
  /** The host's hooks (checkpoints, metrics, logs). */
  readonly hooks: PipelineHooks;
  /** Resume, stage and stop options of this run. */
  readonly opts: RunOptions;
  /** Values earlier stages left for later ones (models, data). */
  readonly state: S;
  /** The run's summary so far; stages add their numbers. */
  readonly summary: Partial<PipelineSummary>;
  /** Writes a log line through the host. */
  log(line: string): void;
  /**
   * This stage's finished checkpoint: loaded when resuming (undefined if there is none, so the
   * stage trains), and required when a later stage runs alone.
   */
  finished(load?: { valueHead?: boolean }): Promise<OptModel | undefined>;
  /** Runs `trainer` through the one loop, tagged with this stage, hooks and resume flag. */
  train(trainer: Trainer, o: Omit<LoopOptions, "stage" | "resume">): Promise<Metrics>;
  /** Frees the models' parameters when the pipeline ends. */
  own(...models: OptModel[]): void;
}

/** One stage of a pipeline. */
export interface Stage<C, S> {
  /** Its name: `--stage=<name>`, metric tag and checkpoint folder. */
  name: string;
  /** One line for `--help` and the docs. */
  doc: string;
  /** Runs the stage (or loads its finished checkpoint). */
  run(ctx: StageContext<C, S>): Promise<void>;
}

/** A named pipeline: its config sections, defaults, presets, stages and starting state. */
export interface PipelineDefinition<C extends { run: { name: string } }, S> {
  /** Name (`--pipeline` / registry key). */
  name: string;
  /** What it trains, in one line. */
  doc: string;
  /** Config sections and their schemas. */
  sections: SectionSchemas;
  /** The default config. */
  defaults: C;
  /** The stages, in order. */
  stages: readonly Stage<C, S>[];
  /** The state the first stage starts from (data, tokenizer), built from the config. */
  init(gpu: Gpu, cfg: C): Promise<S>;
  /** Checks across fields that a schema cannot express; throws `ConfigError`. */
  validate?(cfg: C): void;
}

/**
 * Runs a pipeline's stages in order (up to `opts.stage`) and returns the summary; every model
 * a stage `own`s is freed at the end, also when a stage throws.
 */
export async function runPipeline<C extends { run: { name: string } }, S>(
  def: PipelineDefinition<C, S>,
  gpu: Gpu,
  cfg: C,
  hooks: PipelineHooks = {},
  opts: RunOptions = {},
): Promise<PipelineSummary> {
  const t0 = performance.now();
  const names = def.stages.map((s) => s.name);
  const only = opts.stage ?? "all";
  const upto = only === "all" ? names.length : names.indexOf(only) + 1;
  if (upto === 0) {
    throw new ConfigError(
      `the ${def.name} pipeline has no stage "${only}" (stages: ${names.join(", ")})`,
    );
  }
  def.validate?.(cfg);
  const owned: OptModel[] = [];
  const summary: Partial<PipelineSummary> = {};
  const log = hooks.log ?? (() => {});
  try {
    const state = await def.init(gpu, cfg);
    for (const [i, stage] of def.stages.slice(0, upto).entries()) {
      const required = i < upto - 1 && only !== "all";
      await stage.run({
        gpu,
        cfg,
        hooks,
        opts,
        state,
        summary,
        log,
        finished: (load) => finishedStage(gpu, stage.name, only, required, hooks, opts, log, load),
        train: (trainer, o) =>
          runLoop(trainer, { ...o, stage: stage.name, resume: opts.resume }, hooks),
        own: (...models) => void owned.push(...models),
      });
    }
  } finally {
    for (const m of owned) m.store.dispose();
  }
  return { ...emptySummary((performance.now() - t0) / 1000), ...summary };
}

async function finishedStage(
  gpu: Gpu,
  stage: string,
  only: string,
  required: boolean,
  hooks: PipelineHooks,
  opts: RunOptions,
  log: (line: string) => void,
  load?: { valueHead?: boolean },
): Promise<OptModel | undefined> {
  if ((!opts.resume && !required) || !hooks.loadState) {
    if (required) throw new Error(`stage ${only} needs the ${stage} checkpoint: no state storage`);
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
  return loadOptModel(gpu, config, weights, load).model;
}
