/**
 * Direct preference kernels (SPEC §9): masked sequence log-probabilities (sum or length-mean over
 * the response tokens) with their backward, the DPO family on sequence log-ratios
 * `ρ = ℓ_θ − ℓ_ref` (`sigmoid` with label smoothing — the conservative cDPO form —, `hinge`,
 * `ipo`, TRL's `robust`), SimPO (reference-free, length-normalised, margin γ) and KTO
 * (desirable / undesirable against a reference point `z`, which {@link ktoReferencePoint}
 * estimates on mismatched pairs).
 *
 * Losses, rewards and gradients stay on the GPU: each loss kernel writes the gradient of the
 * batch loss with respect to the policy's sequence log-probs (feed it to
 * {@link sequenceLogprobsBackward}, then the model's backward) and a small `metrics` tensor
 * that a trainer reads once per logged step.
 *
 * Layout: the 2B policy rows of a pair batch are `[chosen_0 … chosen_{B−1}, rejected_0 …
 * rejected_{B−1}]` (TRL's concatenated forward), and the reference's rows likewise.
 *
 * @module
 */

import { checkShape } from "./errors.ts";
import { groups, LINEAR_MAIN } from "./_shader.ts";
import { meanLastAxis, sumLastAxis } from "./reduce.ts";
import { type Gpu, Params, type Tensor } from "./runtime.ts";

// numerically stable log σ(x) and σ(x)
const SIGMOID_WGSL = `
fn log_sigmoid(x: f32) -> f32 { return -(max(-x, 0.0) + log(1.0 + exp(-abs(x)))); }
fn sigmoid(x: f32) -> f32 { return select(exp(x) / (1.0 + exp(x)), 1.0 / (1.0 + exp(-x)), x >= 0.0); }
`;

// ------------------------------------------------------------------ sequence log-probabilities

const SEQUENCE = `
struct P { rows: u32, T: u32, average: u32 }
@group(0) @binding(0) var<storage, read> logp: array<f32>;   // (rows, T) per-token log-probs
@group(0) @binding(1) var<storage, read> mask: array<f32>;   // (rows, T) 1 = response token
@group(0) @binding(2) var<storage, read_write> seq: array<f32>;  // (rows)
@group(0) @binding(3) var<uniform> p: P;
${LINEAR_MAIN}
  if (i >= p.rows) { return; }
  var s = 0.0;
  var n = 0.0;
  for (var t = 0u; t < p.T; t++) {
    let m = mask[i * p.T + t];
    s += select(0.0, logp[i * p.T + t], m != 0.0);
    n += select(0.0, 1.0, m != 0.0);
  }
  seq[i] = select(s, s / max(n, 1.0), p.average == 1u);
}`;

const SEQUENCE_BACKWARD = `
struct P { rows: u32, T: u32, average: u32 }
@group(0) @binding(0) var<storage, read> dseq: array<f32>;   // (rows)
@group(0) @binding(1) var<storage, read> mask: array<f32>;   // (rows, T)
@group(0) @binding(2) var<storage, read_write> dlogp: array<f32>;  // (rows, T)
@group(0) @binding(3) var<uniform> p: P;
${LINEAR_MAIN}
  if (i >= p.rows) { return; }
  var n = 0.0;
  for (var t = 0u; t < p.T; t++) { n += select(0.0, 1.0, mask[i * p.T + t] != 0.0); }
  let g = select(dseq[i], dseq[i] / max(n, 1.0), p.average == 1u);
  for (var t = 0u; t < p.T; t++) {
    dlogp[i * p.T + t] = select(0.0, g, mask[i * p.T + t] != 0.0);
  }
}`;

function checkRows(name: string, logp: Tensor, mask: Tensor): { rows: number; T: number } {
  checkShape(
    logp.dtype === "f32" && mask.dtype === "f32" && logp.shape.length === 2 &&
      mask.shape.length === 2 && logp.shape[0] === mask.shape[0] &&
      logp.shape[1] === mask.shape[1],
    `${name}: expects f32 (rows, T) log-probs and mask of one shape, got ` +
      `${logp.dtype} [${logp.shape}] and ${mask.dtype} [${mask.shape}]`,
  );
  return { rows: logp.shape[0], T: logp.shape[1] };
}

/**
 * Sequence log-probability per row: `ℓ = Σ_t mask·logp` over the response tokens, or with
 * `average` the length-mean `ℓ / Σ_t mask` (IPO, SimPO). A row without response tokens gives 0.
 *
 * @example The sum and the mean over a two-token response
 * ```ts
 * import { Gpu, sequenceLogprobs } from "../mod.ts";
 * const gpu = await Gpu.create();
 * const logp = gpu.fromArray([-9, -1, -2], [1, 3]), mask = gpu.fromArray([0, 1, 1], [1, 3]);
 * console.log(await gpu.read(sequenceLogprobs(gpu, logp, mask))); // [-3]
 * console.log(await gpu.read(sequenceLogprobs(gpu, logp, mask, { average: true }))); // [-1.5]
 * ```
 */
export function sequenceLogprobs(
  gpu: Gpu,
  logp: Tensor,
  mask: Tensor,
  o: { average?: boolean } = {},
): Tensor {
  const { rows, T } = checkRows("sequenceLogprobs", logp, mask);
  const seq = gpu.empty([rows]);
  gpu.dispatch(
    gpu.pipeline(SEQUENCE),
    [logp, mask, seq],
    gpu.grid(groups(rows)),
    new Params().u32(rows, T, o.average ? 1 : 0),
  );
  return seq;
}

/**
 * Backward of {@link sequenceLogprobs}: `dlogp[r, t] = mask[r, t]·dseq[r]` (divided by the
 * row's response length with `average`); `(rows, T)`.
 */
export function sequenceLogprobsBackward(
  gpu: Gpu,
  dseq: Tensor,
  mask: Tensor,
  o: { average?: boolean } = {},
): Tensor {
  const { rows, T } = checkRows("sequenceLogprobsBackward", mask, mask);
  checkShape(
    dseq.dtype === "f32" && dseq.size === rows,
    `sequenceLogprobsBackward: dseq must be f32 of ${rows} rows, got ${dseq.dtype} [${dseq.shape}]`,
  );
  const dlogp = gpu.empty([rows, T]);
  gpu.dispatch(
    gpu.pipeline(SEQUENCE_BACKWARD),
    [dseq, mask, dlogp],
    gpu.grid(groups(rows)),
    new Params().u32(rows, T, o.average ? 1 : 0),
  );
  return dlogp;
}

// ------------------------------------------------------------------------ DPO family and SimPO

/** Loss types of {@link preferenceLoss} (TRL's names). */
export type PreferenceLossType = "sigmoid" | "hinge" | "ipo" | "robust" | "simpo";
const LOSS_KIND: Record<PreferenceLossType, number> = {
  sigmoid: 0,
  hinge: 1,
  ipo: 2,
  robust: 3,
  simpo: 4,
};

/** Columns of {@link PreferenceLoss.metrics} (means over the pairs). */
export const PREFERENCE_METRIC = {
  loss: 0,
  rewardChosen: 1,
  rewardRejected: 2,
  accuracy: 3,
  margin: 4,
  logpChosen: 5,
  logpRejected: 6,
} as const;
const PREFERENCE_COLUMNS = 7;

const PREFERENCE = `${SIGMOID_WGSL}
struct P { B: u32, kind: u32, beta: f32, eps: f32, gamma: f32, scale: f32 }
@group(0) @binding(0) var<storage, read> pol: array<f32>;   // (2B) policy ℓ: chosen, rejected
@group(0) @binding(1) var<storage, read> lref: array<f32>;   // (2B) reference ℓ (unused by simpo)
@group(0) @binding(2) var<storage, read_write> dpol: array<f32>;  // (2B) scale·dL_i/dℓ
@group(0) @binding(3) var<storage, read_write> cols: array<f32>;  // (7, B) per-pair metrics
@group(0) @binding(4) var<uniform> p: P;
${LINEAR_MAIN}
  if (i >= p.B) { return; }
  let lw = pol[i];
  let ll = pol[p.B + i];
  let simpo = p.kind == 4u;
  let rw = select(lw - lref[i], lw, simpo);        // ρ_w (simpo: length-mean ℓ_w)
  let rl = select(ll - lref[p.B + i], ll, simpo);
  let h = rw - rl;
  var loss = 0.0;
  var dh = 0.0;                                   // dL/dh
  if (p.kind == 0u || p.kind == 4u) {             // sigmoid (cDPO) · simpo
    let x = select(p.beta * h, p.beta * h - p.gamma, simpo);
    loss = -(1.0 - p.eps) * log_sigmoid(x) - p.eps * log_sigmoid(-x);
    dh = p.beta * (-(1.0 - p.eps) * sigmoid(-x) + p.eps * sigmoid(x));
  } else if (p.kind == 1u) {                      // hinge
    loss = max(0.0, 1.0 - p.beta * h);
    dh = select(0.0, -p.beta, 1.0 - p.beta * h > 0.0);
  } else if (p.kind == 2u) {                      // ipo (length-mean ℓ)
    let d = h - 1.0 / (2.0 * p.beta);
    loss = d * d;
    dh = 2.0 * d;
  } else {                                        // robust
    let x = p.beta * h;
    loss = (-(1.0 - p.eps) * log_sigmoid(x) + p.eps * log_sigmoid(-x)) / (1.0 - 2.0 * p.eps);
    dh = p.beta * (-(1.0 - p.eps) * sigmoid(-x) - p.eps * sigmoid(x)) / (1.0 - 2.0 * p.eps);
  }
  dpol[i] = p.scale * dh;
  dpol[p.B + i] = -p.scale * dh;
  let gw = p.beta * rw;
  let gl = p.beta * rl;
  cols[i] = loss;
  cols[p.B + i] = gw;
  cols[2u * p.B + i] = gl;
  cols[3u * p.B + i] = select(0.0, 1.0, gw > gl);
  cols[4u * p.B + i] = gw - gl;
  cols[5u * p.B + i] = lw;
  cols[6u * p.B + i] = ll;
}`;

/** Options of {@link preferenceLoss}. */
export interface PreferenceLossOptions {
  /** Which loss of the DPO family (or SimPO) to apply. */
  lossType: PreferenceLossType;
  /** β: the KL strength (DPO family) or the reward scale (SimPO). */
  beta: number;
  /** ε of `sigmoid` (cDPO), `robust` and `simpo`: the assumed label-flip rate, in [0, 0.5). */
  labelSmoothing?: number;
  /** SimPO's target margin γ. */
  gamma?: number;
  /** Multiplies the gradient (default `1/B`: the gradient of the mean loss). */
  scale?: number;
}

/** Outputs of {@link preferenceLoss}. */
export interface PreferenceLoss {
  /** `(2B)`: `scale·dL/dℓ` for the policy rows (chosen, then rejected). */
  dpolicy: Tensor;
  /**
   * `(7)` means over the pairs, indexed by {@link PREFERENCE_METRIC}: loss, rewards of chosen
   * and rejected (`β·ρ`; SimPO `β·ℓ̄`), accuracy `[r_w > r_l]`, margin, and the policy ℓ of
   * chosen and rejected as given.
   */
  metrics: Tensor;
}

/**
 * The DPO family and SimPO on a batch of B pairs, from sequence log-probs of the policy and
 * (except SimPO) the reference, both `(2B)` as `[chosen…, rejected…]`. With `h = ρ_w − ρ_l`:
 * `sigmoid` `−(1−ε)·log σ(βh) − ε·log σ(−βh)`; `hinge` `max(0, 1 − βh)`; `ipo`
 * `(h − 1/(2β))²` (give length-mean ℓ); `robust` `((1−ε)·(−log σ(βh)) + ε·log σ(−βh))/(1−2ε)`;
 * `simpo` (length-mean ℓ, no reference) `−(1−ε)·log σ(β(ℓ̄_w − ℓ̄_l) − γ) − ε·log σ(−…)`.
 *
 * @example DPO at ρ = 0 costs log 2
 * ```ts
 * import { Gpu, PREFERENCE_METRIC, preferenceLoss } from "../mod.ts";
 * const gpu = await Gpu.create();
 * const same = gpu.fromArray([-3, -5]); // one pair: chosen ℓ −3, rejected ℓ −5
 * const { metrics } = preferenceLoss(gpu, same, same, { lossType: "sigmoid", beta: 0.1 });
 * console.log((await gpu.read(metrics))[PREFERENCE_METRIC.loss]); // 0.6931…
 * ```
 */
export function preferenceLoss(
  gpu: Gpu,
  policy: Tensor,
  reference: Tensor | undefined,
  o: PreferenceLossOptions,
): PreferenceLoss {
  const kind = LOSS_KIND[o.lossType];
  checkShape(kind !== undefined, `preferenceLoss: unknown loss type ${o.lossType}`);
  checkShape(
    policy.dtype === "f32" && policy.size % 2 === 0 && policy.size > 0,
    `preferenceLoss: policy must be f32 (2B) log-probs, got ${policy.dtype} [${policy.shape}]`,
  );
  const simpo = o.lossType === "simpo";
  checkShape(
    simpo || (reference?.dtype === "f32" && reference.size === policy.size),
    `preferenceLoss: ${o.lossType} needs reference log-probs shaped like the policy's ` +
      `[${policy.shape}], got ${reference ? `[${reference.shape}]` : "none"}`,
  );
  const eps = o.labelSmoothing ?? 0;
  checkShape(o.beta > 0, `preferenceLoss: beta must be > 0, got ${o.beta}`);
  checkShape(eps >= 0 && eps < 0.5, `preferenceLoss: labelSmoothing must be in [0, 0.5)`);
  const B = policy.size / 2;
  const dpolicy = gpu.empty([2 * B]), cols = gpu.empty([PREFERENCE_COLUMNS, B]);
  gpu.dispatch(
    gpu.pipeline(PREFERENCE),
    [policy, simpo ? policy : reference!, dpolicy, cols],
    gpu.grid(groups(B)),
    new Params().u32(B, kind).f32(o.beta, eps, o.gamma ?? 0, o.scale ?? 1 / B),
  );
  const metrics = meanLastAxis(gpu, cols);
  cols.dispose();
  return { dpolicy, metrics };
}

// ------------------------------------------------------------------------------------------ KTO

const KTO_Z = `
struct P { n: u32 }
@group(0) @binding(0) var<storage, read> pol: array<f32>;   // (n) policy ℓ of mismatched pairs
@group(0) @binding(1) var<storage, read> lref: array<f32>;   // (n) reference ℓ of the same
@group(0) @binding(2) var<storage, read_write> z: array<f32>;  // (1)
@group(0) @binding(3) var<uniform> p: P;
${LINEAR_MAIN}
  if (i > 0u) { return; }
  var s = 0.0;
  for (var j = 0u; j < p.n; j++) { s += pol[j] - lref[j]; }
  z[0] = max(0.0, s / f32(p.n));
}`;

/**
 * KTO's reference point `z = max(0, mean(ℓ_θ(y'|x) − ℓ_ref(y'|x)))` over mismatched pairs (each
 * prompt with another example's completion), `(1)`; no gradient flows through it.
 */
export function ktoReferencePoint(gpu: Gpu, policy: Tensor, reference: Tensor): Tensor {
  checkShape(
    policy.dtype === "f32" && reference.dtype === "f32" && policy.size === reference.size &&
      policy.size > 0,
    `ktoReferencePoint: expects two f32 (n) log-prob vectors of one size, got ` +
      `[${policy.shape}] and [${reference.shape}]`,
  );
  const z = gpu.empty([1]);
  gpu.dispatch(gpu.pipeline(KTO_Z), [policy, reference, z], [1], new Params().u32(policy.size));
  return z;
}

/** Columns of {@link KtoLoss.sums} (sums over the batch). */
export const KTO_SUM = {
  loss: 0,
  desirable: 1,
  rewardDesirable: 2,
  logpDesirable: 3,
  undesirable: 4,
  rewardUndesirable: 5,
  logpUndesirable: 6,
} as const;
const KTO_COLUMNS = 7;

const KTO = `${SIGMOID_WGSL}
struct P { n: u32, beta: f32, wd: f32, wu: f32, scale: f32 }
@group(0) @binding(0) var<storage, read> pol: array<f32>;    // (n) policy ℓ
@group(0) @binding(1) var<storage, read> lref: array<f32>;    // (n) reference ℓ
@group(0) @binding(2) var<storage, read> desire: array<f32>;  // (n) 1 desirable, 0 undesirable
@group(0) @binding(3) var<storage, read> z: array<f32>;      // (1) reference point
@group(0) @binding(4) var<storage, read_write> dpol: array<f32>;  // (n)
@group(0) @binding(5) var<storage, read_write> cols: array<f32>;  // (7, n)
@group(0) @binding(6) var<uniform> p: P;
${LINEAR_MAIN}
  if (i >= p.n) { return; }
  let rho = pol[i] - lref[i];
  let d = desire[i] != 0.0;
  var loss = 0.0;
  var g = 0.0;
  if (d) {
    let s = sigmoid(p.beta * (rho - z[0]));
    loss = p.wd * (1.0 - s);
    g = -p.wd * p.beta * s * (1.0 - s);
  } else {
    let s = sigmoid(p.beta * (z[0] - rho));
    loss = p.wu * (1.0 - s);
    g = p.wu * p.beta * s * (1.0 - s);
  }
  dpol[i] = p.scale * g;
  let fd = select(0.0, 1.0, d);
  cols[i] = loss;
  cols[p.n + i] = fd;
  cols[2u * p.n + i] = fd * p.beta * rho;
  cols[3u * p.n + i] = fd * pol[i];
  cols[4u * p.n + i] = 1.0 - fd;
  cols[5u * p.n + i] = (1.0 - fd) * p.beta * rho;
  cols[6u * p.n + i] = (1.0 - fd) * pol[i];
}`;

/** Options of {@link ktoLoss} (TRL's defaults: β 0.1, both weights 1). */
export interface KtoLossOptions {
  /** KTO's β: the scale of the log-ratio inside the sigmoid. */
  beta: number;
  /** λ_D. */
  desirableWeight?: number;
  /** λ_U. */
  undesirableWeight?: number;
  /** Multiplies the gradient (default `1/n`: the gradient of the mean loss). */
  scale?: number;
}

/** Outputs of {@link ktoLoss}. */
export interface KtoLoss {
  /** `(n)`: `scale·dL/dℓ`. */
  dpolicy: Tensor;
  /**
   * `(7)` sums over the batch, indexed by {@link KTO_SUM}: loss; count, reward `β·ρ` and ℓ of
   * the desirable examples; the same of the undesirable ones (divide on the host: a batch may
   * hold one kind only).
   */
  sums: Tensor;
}

/**
 * KTO on n examples: desirable `λ_D·(1 − σ(β(ρ − z)))`, undesirable `λ_U·(1 − σ(β(z − ρ)))`,
 * with `ρ = ℓ_θ − ℓ_ref` and the reference point `z` from {@link ktoReferencePoint}.
 *
 * @example At ρ = z every example costs λ/2
 * ```ts
 * import { Gpu, KTO_SUM, ktoLoss } from "../mod.ts";
 * const gpu = await Gpu.create();
 * const l = gpu.fromArray([-4, -6]), label = gpu.fromArray([1, 0]), z = gpu.fromArray([0]);
 * const { sums } = ktoLoss(gpu, l, l, label, z, { beta: 0.1 });
 * console.log((await gpu.read(sums))[KTO_SUM.loss]); // 1 (two examples × 0.5)
 * ```
 */
export function ktoLoss(
  gpu: Gpu,
  policy: Tensor,
  reference: Tensor,
  desirable: Tensor,
  z: Tensor,
  o: KtoLossOptions,
): KtoLoss {
  const n = policy.size;
  checkShape(
    n > 0 && [policy, reference, desirable].every((t) => t.dtype === "f32" && t.size === n) &&
      z.dtype === "f32" && z.size === 1,
    `ktoLoss: expects f32 (n) policy, reference and labels and a (1) reference point, got ` +
      `[${policy.shape}], [${reference.shape}], [${desirable.shape}], [${z.shape}]`,
  );
  checkShape(o.beta > 0, `ktoLoss: beta must be > 0, got ${o.beta}`);
  const dpolicy = gpu.empty([n]), cols = gpu.empty([KTO_COLUMNS, n]);
  gpu.dispatch(
    gpu.pipeline(KTO),
    [policy, reference, desirable, z, dpolicy, cols],
    gpu.grid(groups(n)),
    new Params().u32(n).f32(
      o.beta,
      o.desirableWeight ?? 1,
      o.undesirableWeight ?? 1,
      o.scale ?? 1 / n,
    ),
  );
  const sums = sumLastAxis(gpu, cols);
  cols.dispose();
  return { dpolicy, sums };
}
