/**
 * Causal self-attention with a key padding mask for `[B, H, T, Dh]` tensors, composed from the
 * fast batched {@link matmul} and one fused masked-softmax kernel:
 *
 * ```text
 * S = Q·Kᵀ                     (B·H, Tq, Tk)
 * P = softmax(scale·S + mask)  in place; masked keys get exactly 0, rows with no key are 0
 * O = P·V                      (B·H, Tq, Dh)
 * ```
 *
 * Query i sits at absolute position `i + Tk − Tq`, so the same kernels serve a full sequence
 * (Tq = Tk) and decoding against a KV cache (Tq = 1). `P` is saved for the backward:
 * `dP = dO·Vᵀ`, `dS = scale·P ⊙ (dP − rowsum(P ⊙ dP))`, `dQ = dS·K`, `dK = dSᵀ·Q`, `dV = Pᵀ·dO`.
 *
 * @module
 */

import { checkShape } from "./errors.ts";
import { groups, LINEAR_MAIN, wgsl } from "./_shader.ts";
import { matmul } from "./matmul.ts";
import { ROW_MAIN, ROW_WG, WG_REDUCE } from "./reduce.ts";
import { type Gpu, Params, type Tensor } from "./runtime.ts";

// Specialised at compile time for the causal and key-padding masks.
const maskedSoftmax = (causal: boolean, keyMask: boolean) =>
  wgsl`${WG_REDUCE}
struct P { rows: u32, Tq: u32, Tk: u32, H: u32, scale: f32 }
@group(0) @binding(0) var<storage, read_write> s: array<f32>;     // (B, H, Tq, Tk) scores → probs
@group(0) @binding(1) var<storage, read_write> kmask: array<f32>; // (B, Tk) 1 = valid key
@group(0) @binding(2) var<uniform> p: P;

fn allowed(b: u32, i: u32, j: u32) -> bool {
#if ${causal}
  if (j > i + p.Tk - p.Tq) { return false; }
#endif
#if ${keyMask}
  if (kmask[b * p.Tk + j] == 0.0) { return false; }
#endif
  return true;
}

${ROW_MAIN}
  let valid = row < p.rows;
  let i = row % p.Tq;
  let b = row / (p.Tq * p.H);
  let base = row * p.Tk;
  var m = -3.4e38;
  if (valid) {
    for (var j = lid; j < p.Tk; j += ${ROW_WG}u) {
      if (allowed(b, i, j)) { m = max(m, p.scale * s[base + j]); }
    }
  }
  m = wg_max(m, lid);
  var z = 0.0;
  if (valid) {
    for (var j = lid; j < p.Tk; j += ${ROW_WG}u) {
      if (allowed(b, i, j)) { z += exp(p.scale * s[base + j] - m); }
    }
  }
  z = wg_sum(z, lid);
  if (!valid) { return; }
  for (var j = lid; j < p.Tk; j += ${ROW_WG}u) {
    var v = 0.0;
    if (z > 0.0 && allowed(b, i, j)) { v = exp(p.scale * s[base + j] - m) / z; }
    s[base + j] = v;
  }
}`;

const variants = new Map<string, string>();
function variant(causal: boolean, keyMask: boolean): string {
  const key = `${causal}/${keyMask}`;
  const code = variants.get(key) ?? String(maskedSoftmax(causal, keyMask));
  variants.set(key, code);
  return code;
}

const SOFTMAX_BACKWARD = `${WG_REDUCE}
struct P { rows: u32, cols: u32, scale: f32 }
@group(0) @binding(0) var<storage, read_write> probs: array<f32>; // (rows, cols)
@group(0) @binding(1) var<storage, read_write> d: array<f32>;     // (rows, cols) dP → dS
@group(0) @binding(2) var<uniform> p: P;
${ROW_MAIN}
  let valid = row < p.rows;
  let base = row * p.cols;
  var acc = 0.0;
  if (valid) { for (var j = lid; j < p.cols; j += ${ROW_WG}u) { acc += probs[base + j] * d[base + j]; } }
  let dot = wg_sum(acc, lid);
  if (!valid) { return; }
  for (var j = lid; j < p.cols; j += ${ROW_WG}u) {
    d[base + j] = p.scale * probs[base + j] * (d[base + j] - dot);
  }
}`;

const SWAP12 = `
struct P { n: u32, X: u32, Y: u32, D: u32 }
@group(0) @binding(0) var<storage, read_write> x: array<f32>;   // (A, X, Y, D)
@group(0) @binding(1) var<storage, read_write> out: array<f32>; // (A, Y, X, D)
@group(0) @binding(2) var<uniform> p: P;
${LINEAR_MAIN}
  if (i >= p.n) { return; }
  let d = i % p.D;
  let xi = (i / p.D) % p.X;
  let yi = (i / (p.D * p.X)) % p.Y;
  let a = i / (p.D * p.X * p.Y);
  out[i] = x[((a * p.X + xi) * p.Y + yi) * p.D + d];
}`;

/**
 * Swaps axes 1 and 2 of a 4-D tensor: `[A, X, Y, D] → [A, Y, X, D]`. Splits heads
 * (`[B, T, H, Dh] → [B, H, T, Dh]`) and merges them back; each is the other's backward.
 *
 * @example
 * ```ts
 * import { Gpu, swapAxes12 } from "./mod.ts";
 * const gpu = await Gpu.create();
 * const x = gpu.zeros([2, 5, 4, 8]);          // (B, T, H, Dh)
 * const heads = swapAxes12(gpu, x);            // (B, H, T, Dh)
 * ```
 */
export function swapAxes12(gpu: Gpu, x: Tensor, out?: Tensor): Tensor {
  checkShape(x.shape.length === 4, `swapAxes12: needs a 4-D tensor, got [${x.shape}]`);
  const [A, X, Y, D] = x.shape;
  const y = out ?? gpu.empty([A, Y, X, D]);
  checkShape(y.size === x.size, "swapAxes12: out size differs");
  gpu.dispatch(
    gpu.pipeline(SWAP12),
    [x, y],
    gpu.grid(groups(x.size)),
    new Params().u32(x.size, X, Y, D),
  );
  return y;
}

/** Options of {@link attentionForward}. */
export interface AttentionOptions {
  /** `[B, Tk]` f32, 1 for real keys and 0 for padding. */
  keyMask?: Tensor;
  /** Mask future keys (default true). */
  causal?: boolean;
  /** Score scale (default `Dh^-1/2`). Pass 1 when q is pre-scaled (as OPT does). */
  scale?: number;
}

interface Dims {
  B: number;
  H: number;
  Tq: number;
  Tk: number;
  Dh: number;
}

function dims(q: Tensor, k: Tensor, v: Tensor): Dims {
  for (const [n, t] of [["q", q], ["k", k], ["v", v]] as const) {
    checkShape(t.shape.length === 4, `attention: ${n} must be [B, H, T, Dh], got [${t.shape}]`);
    checkShape(t.dtype === "f32", `attention: ${n} must be f32`);
  }
  const [B, H, Tq, Dh] = q.shape;
  const Tk = k.shape[2];
  checkShape(
    k.shape.join() === [B, H, Tk, Dh].join() && v.shape.join() === k.shape.join(),
    `attention: k [${k.shape}] and v [${v.shape}] must be [${B}, ${H}, Tk, ${Dh}]`,
  );
  checkShape(Tk >= Tq, `attention: ${Tq} queries but only ${Tk} keys`);
  return { B, H, Tq, Tk, Dh };
}

/** Saved state of {@link attentionForward} for {@link attentionBackward}. */
export interface AttentionSaved {
  /** Attention probabilities `[B, H, Tq, Tk]` (0 on masked keys). */
  probs: Tensor;
  scale: number;
}

/**
 * Scaled dot-product attention with causal and key-padding masks.
 *
 * @example
 * ```ts
 * import { attentionForward, Gpu } from "./mod.ts";
 * const gpu = await Gpu.create();
 * const q = gpu.zeros([1, 2, 5, 8]), k = gpu.zeros([1, 2, 5, 8]), v = gpu.zeros([1, 2, 5, 8]);
 * const keyMask = gpu.fromArray([0, 1, 1, 1, 1], [1, 5]); // left padding
 * const { out, probs } = attentionForward(gpu, q, k, v, { keyMask });
 * ```
 */
export function attentionForward(
  gpu: Gpu,
  q: Tensor,
  k: Tensor,
  v: Tensor,
  opts: AttentionOptions = {},
): { out: Tensor } & AttentionSaved {
  const { B, H, Tq, Tk, Dh } = dims(q, k, v);
  if (opts.keyMask) {
    checkShape(
      opts.keyMask.size === B * Tk && opts.keyMask.dtype === "f32",
      `attention: keyMask [${opts.keyMask.shape}] must be f32 [${B}, ${Tk}]`,
    );
  }
  const scale = opts.scale ?? 1 / Math.sqrt(Dh);
  const BH = B * H;
  const probs = matmul(gpu, q.reshape([BH, Tq, Dh]), k.reshape([BH, Tk, Dh]), { transB: true });
  const rows = BH * Tq;
  gpu.dispatch(
    gpu.pipeline(variant(opts.causal !== false, opts.keyMask !== undefined)),
    [probs, opts.keyMask ?? null],
    gpu.grid(rows),
    new Params().u32(rows, Tq, Tk, H).f32(scale),
  );
  const out = matmul(gpu, probs, v.reshape([BH, Tk, Dh]));
  return { out: out.intoShape([B, H, Tq, Dh]), probs: probs.intoShape([B, H, Tq, Tk]), scale };
}

/**
 * Backward of {@link attentionForward}: gradients for q, k and v. Masked keys and empty rows
 * get zero gradient.
 */
export function attentionBackward(
  gpu: Gpu,
  dout: Tensor,
  q: Tensor,
  k: Tensor,
  v: Tensor,
  saved: AttentionSaved,
): { dq: Tensor; dk: Tensor; dv: Tensor } {
  const { B, H, Tq, Tk, Dh } = dims(q, k, v);
  checkShape(dout.size === q.size, `attentionBackward: dout [${dout.shape}] vs q [${q.shape}]`);
  const BH = B * H;
  const P = saved.probs.reshape([BH, Tq, Tk]);
  const dO = dout.reshape([BH, Tq, Dh]);
  const dS = matmul(gpu, dO, v.reshape([BH, Tk, Dh]), { transB: true });
  gpu.dispatch(
    gpu.pipeline(SOFTMAX_BACKWARD),
    [P, dS],
    gpu.grid(BH * Tq),
    new Params().u32(BH * Tq, Tk).f32(saved.scale),
  );
  const dq = matmul(gpu, dS, k.reshape([BH, Tk, Dh]));
  const dk = matmul(gpu, dS, q.reshape([BH, Tq, Dh]), { transA: true });
  const dv = matmul(gpu, P, dO, { transA: true });
  dS.dispose();
  return {
    dq: dq.intoShape([B, H, Tq, Dh]),
    dk: dk.intoShape([B, H, Tk, Dh]),
    dv: dv.intoShape([B, H, Tk, Dh]),
  };
}
