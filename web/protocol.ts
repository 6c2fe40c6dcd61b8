/**
 * Messages between the demo page (`app.ts`) and its training worker (`worker.ts`).
 *
 * @module
 */

import type { Metrics, PipelineSummary, ReportSample } from "../mod.ts";

/** Page → worker. */
export type ToWorker =
  /**
   * Start a run of `method` (ppo, dpo, simpo, kto) with pipeline overrides
   * (`{"ppo.iterations": 10}`), or resume the saved run.
   */
  | { type: "start"; method: string; overrides: Record<string, unknown>; resume: boolean }
  | { type: "pause" }
  | { type: "continue" }
  /** Send a stage's saved checkpoint files back (for download). */
  | { type: "download"; stage: string }
  /** Sample from an uploaded checkpoint. */
  | { type: "try"; config: string; weights: ArrayBuffer; prompts: string[] };

/** Worker → page. */
export type FromWorker =
  | {
    type: "adapter";
    description: string;
    matmulPath: string;
    limits: Record<string, number>;
    storage: string;
  }
  | { type: "config"; config: unknown }
  | { type: "metrics"; stage: string; m: Metrics }
  | { type: "progress"; stage: string; done: number; total: number }
  | {
    type: "samples";
    when: "rm" | "ppo" | "rollout" | "before" | "after";
    samples: ReportSample[];
  }
  | { type: "log"; line: string }
  | { type: "checkpoint"; stage: string; bytes: number }
  | { type: "paused" }
  | { type: "continued" }
  | { type: "done"; summary: Omit<PipelineSummary, "samples_before" | "samples_after"> }
  | { type: "file"; stage: string; config: string; weights: ArrayBuffer }
  | { type: "tried"; samples: { prompt: string; response: string }[] }
  | { type: "error"; name: string; message: string };
