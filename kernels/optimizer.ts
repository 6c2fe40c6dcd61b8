/**
 * AdamW (decoupled weight decay, bias-corrected moments, as `torch.optim.AdamW`) in one
 * dispatch over a parameter range, optionally scaling gradients by a factor that stays on the
 * GPU (the clip coefficient of `clipGradNorm`/`globalNorm`), and the host-side learning-rate
 * schedule (linear warmup, then cosine or linear decay).
 *
 * @module
 */

import { checkShape } from "./errors.ts";
import { groups, LINEAR_MAIN } from "./_shader.ts";
import { type Gpu, Params, type Tensor } from "./runtime.ts";

/**
 * The AdamW kernel over elements of type `E`: `f32`, or `vec4f` for four parameters an
 * invocation when n is a multiple of 4 (`p.n` then counts vec4s; weight decay still stops at
 * element `p.decay_end`) — the same arithmetic per element, so the same bits, with a quarter of
 * the invocations and loads (what software adapters pay for, SPEC §11).
 */
const adamwShader = (E: "f32" | "vec4f") => `
struct P {
  n: u32, has_scale: u32, scale_index: u32, decay_end: u32,
  lr: f32, beta1: f32, beta2: f32, eps: f32,
  wd: f32, bc1: f32, bc2: f32,
}
@group(0) @binding(0) var<storage, read_write> param: array<${E}>; // (n)
@group(0) @binding(1) var<storage, read> grad: array<${E}>;  // (n)
@group(0) @binding(2) var<storage, read_write> m: array<${E}>;     // (n) first moment
@group(0) @binding(3) var<storage, read_write> v: array<${E}>;     // (n) second moment
@group(0) @binding(4) var<storage, read> gscale: array<f32>;
@group(0) @binding(5) var<uniform> p: P;
${LINEAR_MAIN}
  if (i >= p.n) { return; }
  var g = grad[i];
  if (p.has_scale == 1u) { g *= gscale[p.scale_index]; }
  let mi = p.beta1 * m[i] + (1.0 - p.beta1) * g;
  let vi = p.beta2 * v[i] + (1.0 - p.beta2) * g * g;
  m[i] = mi;
  v[i] = vi;
  let decays = ${
  E === "f32" ? "i < p.decay_end" : "4u * i + vec4u(0u, 1u, 2u, 3u) < vec4u(p.decay_end)"
};
  let w = param[i] * (1.0 - p.lr * select(${E}(0.0), ${E}(p.wd), decays));
  param[i] = w - p.lr * (mi / p.bc1) / (sqrt(vi / p.bc2) + p.eps);
}`;
const ADAMW = adamwShader("f32");
const ADAMW_VEC4 = adamwShader("vec4f");

/** Hyperparameters of one AdamW step. */
export interface AdamWOptions {
  /** Learning rate for this step (schedules: `learningRate` of `trainer/optim.ts`). */
  lr: number;
  /** Default 0.9. */
  beta1?: number;
  /** Default 0.999. */
  beta2?: number;
  /** Default 1e-8. */
  eps?: number;
  /** Decoupled weight decay, default 0. */
  weightDecay?: number;
  /** Weight decay only on elements before this index (default: all), e.g. not on biases. */
  weightDecayUntil?: number;
  /** 1-based step count, for bias correction. */
  step: number;
  /** Multiply gradients by `scale.tensor[scale.index]` first (e.g. the clip coefficient). */
  gradScale?: { tensor: Tensor; index: number };
}

/**
 * One AdamW update of `param` in place, with moments `m` and `v` (same size, start at zero).
 *
 * @example Clip, then step — no readback
 * ```ts
 * import { adamwStep, clipGradNorm, Gpu } from "../mod.ts";
 * const gpu = await Gpu.create();
 * const w = gpu.fromArray([1, 2]), g = gpu.fromArray([0.5, -0.5]);
 * const m = gpu.zeros([2]), v = gpu.zeros([2]);
 * clipGradNorm(gpu, [g], 1.0);
 * adamwStep(gpu, w, g, m, v, { lr: 1e-3, step: 1, weightDecay: 0.01 });
 * ```
 */
export function adamwStep(
  gpu: Gpu,
  param: Tensor,
  grad: Tensor,
  m: Tensor,
  v: Tensor,
  o: AdamWOptions,
): void {
  for (const [n, t] of [["grad", grad], ["m", m], ["v", v]] as const) {
    checkShape(
      t.size === param.size,
      `adamwStep: ${n} has ${t.size} elements, param ${param.size}`,
    );
  }
  checkShape(Number.isInteger(o.step) && o.step >= 1, `adamwStep: step must be ≥ 1, got ${o.step}`);
  checkShape(Number.isFinite(o.lr) && o.lr >= 0, `adamwStep: bad learning rate ${o.lr}`);
  const b1 = o.beta1 ?? 0.9, b2 = o.beta2 ?? 0.999;
  const s = o.gradScale;
  if (s) checkShape(s.index < s.tensor.size, "adamwStep: gradScale index out of range");
  const n = param.size % 4 === 0 ? param.size / 4 : param.size;
  gpu.dispatch(
    gpu.pipeline(n < param.size ? ADAMW_VEC4 : ADAMW),
    [param, grad, m, v, s?.tensor ?? gpu.placeholder()],
    gpu.grid(groups(n)),
    new Params().u32(n, s ? 1 : 0, s?.index ?? 0, o.weightDecayUntil ?? param.size).f32(
      o.lr,
      b1,
      b2,
      o.eps ?? 1e-8,
      o.weightDecay ?? 0,
      1 - b1 ** o.step,
      1 - b2 ** o.step,
    ),
  );
}
