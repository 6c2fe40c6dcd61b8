/**
 * Optimizer steps and learning-rate schedules of the trainers. One documented default per
 * trainer, set in its schema: SFT and the reward model decay with a cosine after warmup, PPO
 * linearly (as TRL and DeepSpeed-Chat do); weight decay is a field of each schema.
 *
 * @module
 */

import type { Tensor } from "../kernels/runtime.ts";
import type { ParamStore } from "../model/params.ts";

/** A learning-rate schedule: linear warmup, then decay to `minLrRatio·lr`. */
export interface LrSchedule {
  /** Peak learning rate. */
  lr: number;
  /** Total optimizer steps of the run. */
  totalSteps: number;
  /** Warmup steps (takes precedence over `warmupRatio`). */
  warmupSteps?: number;
  /** Warmup as a fraction of `totalSteps` (default 0). */
  warmupRatio?: number;
  /** `"cosine"` (default), `"linear"` or `"constant"` after warmup. */
  decay?: "cosine" | "linear" | "constant";
  /** Final learning rate as a fraction of `lr` (default 0). */
  minLrRatio?: number;
}

/**
 * Learning rate at 0-based `step`: `lr·(step+1)/warmup` during warmup, then cosine or linear
 * decay from `lr` to `minLrRatio·lr` at `totalSteps`.
 *
 * @example
 * ```ts
 * import { learningRate } from "../mod.ts";
 * const s = { lr: 1e-3, totalSteps: 100, warmupSteps: 10 };
 * console.log(learningRate(0, s), learningRate(9, s), learningRate(100, s)); // 1e-4 1e-3 0
 * ```
 */
export function learningRate(step: number, s: LrSchedule): number {
  const warm = s.warmupSteps ?? Math.round((s.warmupRatio ?? 0) * s.totalSteps);
  if (step < warm) return (s.lr * (step + 1)) / warm;
  const minLr = (s.minLrRatio ?? 0) * s.lr;
  const span = Math.max(1, s.totalSteps - warm);
  const t = Math.min(1, Math.max(0, (step - warm) / span));
  switch (s.decay ?? "cosine") {
    case "constant":
      return s.lr;
    case "linear":
      return s.lr - (s.lr - minLr) * t;
    default:
      return minLr + (s.lr - minLr) * 0.5 * (1 + Math.cos(Math.PI * t));
  }
}

/** What one optimizer step needs: the schedule's fields and the update's. */
export interface OptimizerSettings {
  /** Peak learning rate. */
  lr: number;
  /** Fraction of the run's steps with linear warmup. */
  warmupRatio: number;
  /** Decay after warmup. */
  lrDecay: "cosine" | "linear" | "constant";
  /** AdamW decoupled weight decay (on weight matrices only). */
  weightDecay: number;
  /** Global gradient-norm clip (0 = off; the norm is computed either way). */
  maxGradNorm: number;
}

/**
 * One optimizer step of `store` at 0-based `step` of `totalSteps`: clip the gradients to
 * `maxGradNorm`, then AdamW at the scheduled learning rate. Returns the norm statistics
 * (`[0]` = the pre-clip global norm) and the learning rate used.
 *
 * @example
 * ```ts
 * import { Gpu, OPT_PRESETS, OptModel, optimizerStep } from "../mod.ts";
 * const gpu = await Gpu.create();
 * const model = OptModel.create(gpu, OPT_PRESETS.tiny, { seed: 1 });
 * const o = { lr: 1e-3, warmupRatio: 0, lrDecay: "cosine", weightDecay: 0, maxGradNorm: 1 } as const;
 * model.store.zeroGrads();
 * const { lr } = optimizerStep(model.store, o, 0, 10);
 * console.log(lr); // 0.001
 * ```
 */
export function optimizerStep(
  store: ParamStore,
  o: OptimizerSettings,
  step: number,
  totalSteps: number,
): { norm: Tensor; lr: number } {
  // the clip coefficient is applied inside the AdamW pass (no scaling pass of its own)
  const clip = o.maxGradNorm > 0;
  const norm = store.gradNorm(clip ? o.maxGradNorm : undefined);
  const lr = learningRate(step, {
    lr: o.lr,
    totalSteps,
    warmupRatio: o.warmupRatio,
    decay: o.lrDecay,
  });
  store.adamw({ lr, weightDecay: o.weightDecay, clip: clip ? norm : undefined });
  return { norm, lr };
}
