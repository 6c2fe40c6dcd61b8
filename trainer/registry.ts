/**
 * Every pipeline and preset by name: the CLI and the demo look them up here, so a new
 * pipeline (a new method's stage list) or preset is registered with one line.
 *
 * @module
 */

import { BUILTIN_PIPELINE, PIPELINE_PRESETS } from "./builtin.ts";
import {
  grpoPipeline,
  reinforcePipeline,
  rejectionSamplingPipeline,
  rlooPipeline,
} from "./builtin_group.ts";
import { DPO_PIPELINE, KTO_PIPELINE, PREFERENCE_PRESETS } from "./builtin_preference.ts";
import { checkpointPreferencePipeline } from "./checkpoint_preference.ts";
import type { PipelineDefinition } from "./pipeline.ts";
import { type RecipeIo, recipePipeline } from "./recipe.ts";

/** A pipeline definition, given the reader of the files its config names. */
// deno-lint-ignore no-explicit-any
export type PipelineFactory = (io: RecipeIo) => PipelineDefinition<any, any>;

/** The pipelines, by name. */
export const PIPELINES: Record<string, PipelineFactory> = {
  builtin: () => BUILTIN_PIPELINE,
  "builtin-dpo": () => DPO_PIPELINE,
  "builtin-kto": () => KTO_PIPELINE,
  "builtin-grpo": grpoPipeline,
  "builtin-rloo": rlooPipeline,
  "builtin-reinforce": reinforcePipeline,
  "builtin-rs": rejectionSamplingPipeline,
  "checkpoint-dpo": (io) => checkpointPreferencePipeline(io, "dpo"),
  "checkpoint-kto": (io) => checkpointPreferencePipeline(io, "kto"),
  "simple-rlhf-tiny": recipePipeline,
};

/** A preset: the pipeline it runs and overrides of that pipeline's defaults. */
export interface Preset {
  /** The pipeline the preset configures. */
  pipeline: string;
  /** Dotted keys and values it sets. */
  overrides: Record<string, unknown>;
}

/** The presets, by name (`--preset=NAME`). */
export const PRESETS: Record<string, Preset> = {
  ...Object.fromEntries(
    Object.entries(PIPELINE_PRESETS).map(([k, v]) => [k, { pipeline: "builtin", overrides: v }]),
  ),
  ...PREFERENCE_PRESETS,
  // the same methods on your own checkpoint and data (`--method=X --data.policy=DIR`)
  ...Object.fromEntries(
    Object.entries(PREFERENCE_PRESETS).map(([k, v]) => [
      `checkpoint-${k}`,
      {
        pipeline: v.pipeline.replace("builtin-", "checkpoint-"),
        overrides: Object.fromEntries(
          Object.entries(v.overrides).filter(([key]) => key !== "run.name"),
        ),
      },
    ]),
  ),
  grpo: { pipeline: "builtin-grpo", overrides: {} },
  rloo: { pipeline: "builtin-rloo", overrides: {} },
  "reinforce++": { pipeline: "builtin-reinforce", overrides: {} },
  rs: { pipeline: "builtin-rs", overrides: {} },
  "simple-rlhf-tiny": { pipeline: "simple-rlhf-tiny", overrides: {} },
};

/** The pipeline a saved run config belongs to (its `pipeline` key; older runs by their sections). */
export function pipelineOf(saved: Record<string, unknown>): string {
  if (typeof saved.pipeline === "string" && saved.pipeline in PIPELINES) return saved.pipeline;
  return "data" in saved ? "simple-rlhf-tiny" : "builtin";
}
