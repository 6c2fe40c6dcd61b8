/**
 * The RLHF math as WGSL kernels (SPEC §7–8): per-token KL estimators, KL-shaped rewards, GAE as
 * a reverse scan, masked whitening, the PPO clipped policy and value losses with their
 * gradients and statistics, explained variance, and the reward-model losses (pairwise with
 * margin, K-wise ranking, token-level). Means over valid tokens use {@link maskedStats}, so
 * nothing here needs a readback; the trainer reads the handful of scalar statistics once per
 * iteration.
 *
 * All per-token tensors are `(B, T)` f32 with a `(B, T)` f32 mask (1 = response token).
 *
 * @module
 */

import { checkShape } from "./errors.ts";
import { groups, LINEAR_MAIN } from "./_shader.ts";
import { maskedStats } from "./reduce.ts";
import { type Gpu, Params, type Tensor } from "./runtime.ts";

/** KL estimators of SPEC §8 (`d = logp − logp_ref`). */
export type KlEstimator = "k1" | "abs" | "mse" | "k3";
const KL_KIND: Record<KlEstimator, number> = { k1: 0, abs: 1, mse: 2, k3: 3 };

// numerically stable log σ(x) and σ(x)
const SIGMOID_WGSL = `
fn log_sigmoid(x: f32) -> f32 { return -(max(-x, 0.0) + log(1.0 + exp(-abs(x)))); }
fn sigmoid(x: f32) -> f32 { return select(exp(x) / (1.0 + exp(x)), 1.0 / (1.0 + exp(-x)), x >= 0.0); }
`;

function same(name: string, ...ts: Tensor[]): void {
  for (const t of ts) {
    checkShape(
      t.dtype === "f32" && t.size === ts[0].size,
      `${name}: tensors must be f32 of one size, got ${t.dtype} [${t.shape}] vs [${ts[0].shape}]`,
    );
  }
}

const KL = `
struct P { n: u32, kind: u32 }
@group(0) @binding(0) var<storage, read> logp: array<f32>;
@group(0) @binding(1) var<storage, read> logp_ref: array<f32>;
@group(0) @binding(2) var<storage, read> mask: array<f32>;
@group(0) @binding(3) var<storage, read_write> kl: array<f32>;
@group(0) @binding(4) var<uniform> p: P;
${LINEAR_MAIN}
  if (i >= p.n) { return; }
  let d = logp[i] - logp_ref[i];
  var k = d;
  if (p.kind == 1u) { k = abs(d); } else if (p.kind == 2u) { k = 0.5 * d * d; } else if (p.kind == 3u) { k = exp(-d) - 1.0 + d; }
  kl[i] = select(0.0, k, mask[i] != 0.0);
}`;

/**
 * Per-token KL estimate `(B, T)` between the policy and the reference on masked tokens:
 * `k1 = d`, `abs = |d|`, `mse = d²/2`, `k3 = e^(−d) − 1 + d` with `d = logp − logp_ref`.
 *
 * @example
 * ```ts
 * import { Gpu, klPenalty } from "../mod.ts";
 * const gpu = await Gpu.create();
 * const kl = klPenalty(gpu, gpu.fromArray([-1, -2]), gpu.fromArray([-1.5, -2]),
 *   gpu.fromArray([1, 1]), "k1");
 * console.log(await gpu.read(kl)); // [0.5, 0]
 * ```
 */
export function klPenalty(
  gpu: Gpu,
  logp: Tensor,
  logpRef: Tensor,
  mask: Tensor,
  estimator: KlEstimator = "k1",
): Tensor {
  same("klPenalty", logp, logpRef, mask);
  checkShape(estimator in KL_KIND, `klPenalty: unknown estimator ${estimator}`);
  const out = gpu.empty(logp.shape);
  gpu.dispatch(
    gpu.pipeline(KL),
    [logp, logpRef, mask, out],
    gpu.grid(groups(out.size)),
    new Params().u32(out.size, KL_KIND[estimator]),
  );
  return out;
}

const REWARDS = `
struct P { B: u32, T: u32, beta: f32, clip: f32 }
@group(0) @binding(0) var<storage, read> kl: array<f32>;      // (B, T)
@group(0) @binding(1) var<storage, read> scores: array<f32>;  // (B)
@group(0) @binding(2) var<storage, read> mask: array<f32>;    // (B, T)
@group(0) @binding(3) var<storage, read> beta_t: array<f32>;  // (1) or dummy
@group(0) @binding(4) var<storage, read_write> r: array<f32>;       // (B, T)
@group(0) @binding(5) var<uniform> p: P;
${LINEAR_MAIN}
  if (i >= p.B) { return; }
  var beta = p.beta;
  if (beta < 0.0) { beta = beta_t[0]; }
  var last = -1;
  for (var t = 0u; t < p.T; t++) {
    let j = i * p.T + t;
    let m = mask[j] != 0.0;
    r[j] = select(0.0, -beta * kl[j], m);
    if (m) { last = i32(t); }
  }
  if (last >= 0) {
    let j = i * p.T + u32(last);
    r[j] = r[j] + clamp(scores[i], -p.clip, p.clip);
  }
}`;

/**
 * KL-shaped rewards `(B, T)`: `r_t = −β·kl_t` on response tokens, plus `clip(s, −c, c)` at each
 * row's last response token. `beta` may be a number or a GPU scalar (adaptive β).
 */
export function shapedRewards(
  gpu: Gpu,
  kl: Tensor,
  scores: Tensor,
  mask: Tensor,
  o: { beta: number | Tensor; scoreClip?: number },
): Tensor {
  same("shapedRewards", kl, mask);
  checkShape(kl.shape.length === 2, `shapedRewards: kl must be (B, T), got [${kl.shape}]`);
  const [B, T] = kl.shape;
  checkShape(
    scores.size === B && scores.dtype === "f32",
    `shapedRewards: scores must be f32 (${B})`,
  );
  const betaT = typeof o.beta === "number" ? null : o.beta;
  if (typeof o.beta === "number") checkShape(o.beta >= 0, "shapedRewards: β must be ≥ 0");
  const r = gpu.empty([B, T]);
  gpu.dispatch(
    gpu.pipeline(REWARDS),
    [kl, scores, mask, betaT ?? gpu.placeholder(), r],
    gpu.grid(groups(B)),
    new Params().u32(B, T).f32(betaT ? -1 : o.beta as number, o.scoreClip ?? Infinity),
  );
  return r;
}

const GAE = `
struct P { B: u32, T: u32, gamma: f32, lambda: f32 }
@group(0) @binding(0) var<storage, read> r: array<f32>;    // (B, T)
@group(0) @binding(1) var<storage, read> v: array<f32>;    // (B, T)
@group(0) @binding(2) var<storage, read> mask: array<f32>; // (B, T)
@group(0) @binding(3) var<storage, read_write> adv: array<f32>;  // (B, T)
@group(0) @binding(4) var<storage, read_write> ret: array<f32>;  // (B, T)
@group(0) @binding(5) var<uniform> p: P;
${LINEAR_MAIN}
  if (i >= p.B) { return; }
  var next_v = 0.0;
  var last = 0.0;
  for (var k = 0u; k < p.T; k++) {
    let j = i * p.T + (p.T - 1u - k);
    if (mask[j] == 0.0) { adv[j] = 0.0; ret[j] = 0.0; continue; }
    let delta = r[j] + p.gamma * next_v - v[j];
    last = delta + p.gamma * p.lambda * last;
    adv[j] = last;
    ret[j] = last + v[j];
    next_v = v[j];
  }
}`;

/**
 * Generalised advantage estimation over each row's masked tokens, backwards, with V = 0 past
 * the last token: `δ_t = r_t + γ·V_{t+1} − V_t`, `A_t = δ_t + γλ·A_{t+1}`, `R_t = A_t + V_t`.
 * Unmasked positions get 0.
 */
export function gae(
  gpu: Gpu,
  rewards: Tensor,
  values: Tensor,
  mask: Tensor,
  o: { gamma: number; lambda: number },
): { advantages: Tensor; returns: Tensor } {
  same("gae", rewards, values, mask);
  checkShape(rewards.shape.length === 2, `gae: rewards must be (B, T), got [${rewards.shape}]`);
  const [B, T] = rewards.shape;
  const advantages = gpu.empty([B, T]), returns = gpu.empty([B, T]);
  gpu.dispatch(
    gpu.pipeline(GAE),
    [rewards, values, mask, advantages, returns],
    gpu.grid(groups(B)),
    new Params().u32(B, T).f32(o.gamma, o.lambda),
  );
  return { advantages, returns };
}

const WHITEN = `
struct P { n: u32, shift_mean: u32 }
@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> mask: array<f32>;
@group(0) @binding(2) var<storage, read> stats: array<f32>; // (sum, count, mean, var)
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
@group(0) @binding(4) var<uniform> p: P;
${LINEAR_MAIN}
  if (i >= p.n) { return; }
  var w = (x[i] - stats[2]) * inverseSqrt(stats[3] + 1e-8);
  if (p.shift_mean == 0u) { w += stats[2]; }
  out[i] = select(0.0, w, mask[i] != 0.0);
}`;

/**
 * Masked whitening (TRL's `masked_whiten`): `(x − mean)/sqrt(var + 1e-8)` over the valid
 * tokens (unbiased variance), keeping the mean when `shiftMean` is false; 0 elsewhere.
 */
export function whiten(gpu: Gpu, x: Tensor, mask: Tensor, o: { shiftMean?: boolean } = {}): Tensor {
  same("whiten", x, mask);
  const stats = maskedStats(gpu, x, mask);
  const out = gpu.empty(x.shape);
  gpu.dispatch(
    gpu.pipeline(WHITEN),
    [x, mask, stats, out],
    gpu.grid(groups(x.size)),
    new Params().u32(x.size, o.shiftMean === false ? 0 : 1),
  );
  stats.dispose();
  return out;
}

const POLICY = `
struct P { n: u32, clip: f32 }
@group(0) @binding(0) var<storage, read> logp: array<f32>;
@group(0) @binding(1) var<storage, read> logp_old: array<f32>;
@group(0) @binding(2) var<storage, read> adv: array<f32>;
@group(0) @binding(3) var<storage, read> mask: array<f32>;
@group(0) @binding(4) var<storage, read> count: array<f32>;  // maskedStats(mask): [0] = Σ mask
// (3, n): per-token loss, clipped indicator, ½ (logp − logp_old)² — one buffer, so the kernel
// stays within WebGPU's default eight storage buffers per stage
@group(0) @binding(5) var<storage, read_write> planes: array<f32>;
@group(0) @binding(6) var<storage, read_write> dlogp: array<f32>;
@group(0) @binding(7) var<uniform> p: P;
${LINEAR_MAIN}
  if (i >= p.n) { return; }
  let m = mask[i] != 0.0;
  let d = logp[i] - logp_old[i];
  let ratio = exp(d);
  let a = adv[i];
  let pg1 = -a * ratio;
  let rc = clamp(ratio, 1.0 - p.clip, 1.0 + p.clip);
  let pg2 = -a * rc;
  let use2 = pg2 > pg1;
  planes[i] = select(0.0, max(pg1, pg2), m);
  planes[p.n + i] = select(0.0, select(0.0, 1.0, use2), m);
  planes[2u * p.n + i] = select(0.0, 0.5 * d * d, m);
  // d(pg)/d(logp): −a·ratio on the active branch unless the clip is saturated
  var g = -a * ratio;
  if (use2 && (ratio < 1.0 - p.clip || ratio > 1.0 + p.clip)) { g = 0.0; }
  let c = max(count[0], 1.0);
  dlogp[i] = select(0.0, g / c, m);
}`;

/** Outputs of {@link ppoPolicyLoss}. */
export interface PolicyLoss {
  /** Gradient of the mean loss with respect to `logp` (per token). */
  dlogp: Tensor;
  /** `[4]` stats (Σ, count, mean, var) of the per-token loss: `loss = stats[2]`. */
  loss: Tensor;
  /** Stats of the clipped indicator: clip fraction = `[2]`. */
  clipfrac: Tensor;
  /** Stats of `½(logp − logp_old)²`: approx-KL = `[2]`. */
  approxkl: Tensor;
}

/**
 * PPO's clipped surrogate `L = mean_valid max(−A·ratio, −A·clip(ratio, 1−ε, 1+ε))` with
 * `ratio = exp(logp − logp_old)`, its gradient with respect to `logp`, the clip fraction and
 * approx-KL `mean(½(logp − logp_old)²)` — all on the GPU.
 */
export function ppoPolicyLoss(
  gpu: Gpu,
  logp: Tensor,
  logpOld: Tensor,
  advantages: Tensor,
  mask: Tensor,
  o: { clip: number },
): PolicyLoss {
  same("ppoPolicyLoss", logp, logpOld, advantages, mask);
  checkShape(o.clip > 0, `ppoPolicyLoss: clip must be > 0, got ${o.clip}`);
  const count = maskedStats(gpu, mask), n = logp.size;
  const planes = gpu.empty([3, n]), dlogp = gpu.empty(logp.shape);
  gpu.dispatch(
    gpu.pipeline(POLICY),
    [logp, logpOld, advantages, mask, count, planes, dlogp],
    gpu.grid(groups(n)),
    new Params().u32(n).f32(o.clip),
  );
  const [loss, clipped, akl] = [0, 1, 2].map((k) => {
    const t = gpu.empty(logp.shape);
    gpu.copyRange(planes, k * n, t, 0, n);
    return t;
  });
  const out = {
    dlogp,
    loss: maskedStats(gpu, loss, mask),
    clipfrac: maskedStats(gpu, clipped, mask),
    approxkl: maskedStats(gpu, akl, mask),
  };
  for (const t of [count, planes, loss, clipped, akl]) t.dispose();
  return out;
}

const VALUE = `
struct P { n: u32, clip: f32 }
@group(0) @binding(0) var<storage, read> v: array<f32>;
@group(0) @binding(1) var<storage, read> v_old: array<f32>;
@group(0) @binding(2) var<storage, read> ret: array<f32>;
@group(0) @binding(3) var<storage, read> mask: array<f32>;
@group(0) @binding(4) var<storage, read> count: array<f32>;
@group(0) @binding(5) var<storage, read_write> loss: array<f32>;
@group(0) @binding(6) var<storage, read_write> clipped: array<f32>;
@group(0) @binding(7) var<storage, read_write> dv: array<f32>;
@group(0) @binding(8) var<uniform> p: P;
${LINEAR_MAIN}
  if (i >= p.n) { return; }
  let m = mask[i] != 0.0;
  let delta = v[i] - v_old[i];
  // V itself when within the clip range (v_old + (v − v_old) would round differently)
  let vc = select(v[i], v_old[i] + clamp(delta, -p.clip, p.clip), abs(delta) > p.clip);
  let l1 = (v[i] - ret[i]) * (v[i] - ret[i]);
  let l2 = (vc - ret[i]) * (vc - ret[i]);
  let use2 = l2 > l1;
  loss[i] = select(0.0, 0.5 * max(l1, l2), m);
  clipped[i] = select(0.0, select(0.0, 1.0, use2), m);
  var g = v[i] - ret[i];
  if (use2) { g = select(vc - ret[i], 0.0, delta < -p.clip || delta > p.clip); }
  dv[i] = select(0.0, g / max(count[0], 1.0), m);
}`;

/** Outputs of {@link ppoValueLoss}. */
export interface ValueLoss {
  /** Gradient of the mean loss with respect to the values (per token). */
  dvalues: Tensor;
  /** Stats of the per-token loss: `loss = [2]`. */
  loss: Tensor;
  /** Stats of the value-clip indicator: clip fraction = `[2]`. */
  clipfrac: Tensor;
}

/**
 * PPO's clipped value loss `½·mean_valid max((V − R)², (V_clip − R)²)` with
 * `V_clip = V_old + clip(V − V_old, −ε_v, ε_v)`, its gradient and the value-clip fraction.
 */
export function ppoValueLoss(
  gpu: Gpu,
  values: Tensor,
  valuesOld: Tensor,
  returns: Tensor,
  mask: Tensor,
  o: { clip: number },
): ValueLoss {
  same("ppoValueLoss", values, valuesOld, returns, mask);
  checkShape(o.clip > 0, `ppoValueLoss: clip must be > 0, got ${o.clip}`);
  const count = maskedStats(gpu, mask);
  const loss = gpu.empty(values.shape), clipped = gpu.empty(values.shape);
  const dvalues = gpu.empty(values.shape);
  gpu.dispatch(
    gpu.pipeline(VALUE),
    [values, valuesOld, returns, mask, count, loss, clipped, dvalues],
    gpu.grid(groups(values.size)),
    new Params().u32(values.size).f32(o.clip),
  );
  const out = {
    dvalues,
    loss: maskedStats(gpu, loss, mask),
    clipfrac: maskedStats(gpu, clipped, mask),
  };
  for (const t of [count, loss, clipped]) t.dispose();
  return out;
}

const DIFF = `
struct P { n: u32 }
@group(0) @binding(0) var<storage, read> a: array<f32>;
@group(0) @binding(1) var<storage, read> b: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
@group(0) @binding(3) var<uniform> p: P;
${LINEAR_MAIN}
  if (i >= p.n) { return; }
  out[i] = a[i] - b[i];
}`;

const EXPLAINED = `
@group(0) @binding(0) var<storage, read> sr: array<f32>;  // stats of R
@group(0) @binding(1) var<storage, read> sd: array<f32>;  // stats of R − V
@group(0) @binding(2) var<storage, read_write> out: array<f32>; // (1)
@compute @workgroup_size(1)
fn main() { out[0] = select(0.0, 1.0 - sd[3] / sr[3], sr[3] > 0.0); }`;

/** Explained variance `1 − Var(R − V)/Var(R)` over valid tokens, as a GPU scalar `[1]`. */
export function explainedVariance(gpu: Gpu, values: Tensor, returns: Tensor, mask: Tensor): Tensor {
  same("explainedVariance", values, returns, mask);
  const diff = gpu.empty(values.shape);
  gpu.dispatch(
    gpu.pipeline(DIFF),
    [returns, values, diff],
    gpu.grid(groups(diff.size)),
    new Params().u32(diff.size),
  );
  const sr = maskedStats(gpu, returns, mask), sd = maskedStats(gpu, diff, mask);
  const out = gpu.empty([1]);
  gpu.dispatch(gpu.pipeline(EXPLAINED), [sr, sd, out], [1]);
  for (const t of [diff, sr, sd]) t.dispose();
  return out;
}

// ------------------------------------------------------------------------- reward-model losses

const PAIRWISE = `${SIGMOID_WGSL}
struct P { n: u32, has_margin: u32 }
@group(0) @binding(0) var<storage, read> rw: array<f32>;
@group(0) @binding(1) var<storage, read> rl: array<f32>;
@group(0) @binding(2) var<storage, read> margin: array<f32>;
@group(0) @binding(3) var<storage, read_write> loss: array<f32>;
@group(0) @binding(4) var<storage, read_write> correct: array<f32>;
@group(0) @binding(5) var<storage, read_write> gap: array<f32>;
@group(0) @binding(6) var<storage, read_write> drw: array<f32>;
@group(0) @binding(7) var<storage, read_write> drl: array<f32>;
@group(0) @binding(8) var<uniform> p: P;
${LINEAR_MAIN}
  if (i >= p.n) { return; }
  let m = select(0.0, margin[i], p.has_margin == 1u);
  let x = rw[i] - rl[i] - m;
  loss[i] = -log_sigmoid(x);
  correct[i] = select(0.0, 1.0, rw[i] > rl[i]);
  gap[i] = rw[i] - rl[i];
  let g = -sigmoid(-x) / f32(p.n);   // d(mean loss)/dx
  drw[i] = g;
  drl[i] = -g;
}`;

/** Outputs of the reward-model losses: mean loss, accuracy and mean margin as `[4]` stats. */
export interface RewardLoss {
  /** Stats of the per-pair loss: mean = `[2]`. */
  loss: Tensor;
  /** Stats of `[r_w > r_l]`: accuracy = `[2]`. */
  accuracy: Tensor;
  /** Stats of `r_w − r_l`: mean margin = `[2]`. */
  margin: Tensor;
}

/**
 * Pairwise reward-model loss `mean −log σ(r_w − r_l − m)` (Llama 2's margin optional) with
 * gradients for both scores, held-out accuracy `P(r_w > r_l)` and mean margin.
 */
export function pairwiseRewardLoss(
  gpu: Gpu,
  chosen: Tensor,
  rejected: Tensor,
  margin?: Tensor,
): RewardLoss & { dchosen: Tensor; drejected: Tensor } {
  same("pairwiseRewardLoss", chosen, rejected, ...(margin ? [margin] : []));
  const n = chosen.size;
  const loss = gpu.empty([n]), correct = gpu.empty([n]), gap = gpu.empty([n]);
  const dchosen = gpu.empty([n]), drejected = gpu.empty([n]);
  gpu.dispatch(
    gpu.pipeline(PAIRWISE),
    [chosen, rejected, margin ?? gpu.placeholder(), loss, correct, gap, dchosen, drejected],
    gpu.grid(groups(n)),
    new Params().u32(n, margin ? 1 : 0),
  );
  const out = {
    loss: maskedStats(gpu, loss),
    accuracy: maskedStats(gpu, correct),
    margin: maskedStats(gpu, gap),
    dchosen,
    drejected,
  };
  for (const t of [loss, correct, gap]) t.dispose();
  return out;
}

const RANKING = `${SIGMOID_WGSL}
struct P { P: u32, K: u32 }
@group(0) @binding(0) var<storage, read> s: array<f32>;     // (P, K) best → worst
@group(0) @binding(1) var<storage, read_write> loss: array<f32>;  // (P)
@group(0) @binding(2) var<storage, read_write> acc: array<f32>;   // (P) fraction of ordered pairs
@group(0) @binding(3) var<storage, read_write> ds: array<f32>;    // (P, K)
@group(0) @binding(4) var<uniform> p: P;
${LINEAR_MAIN}
  if (i >= p.P) { return; }
  let pairs = f32(p.K * (p.K - 1u) / 2u);
  var l = 0.0;
  var c = 0.0;
  for (var k = 0u; k < p.K; k++) { ds[i * p.K + k] = 0.0; }
  for (var a = 0u; a < p.K; a++) {
    for (var b = a + 1u; b < p.K; b++) {
      let x = s[i * p.K + a] - s[i * p.K + b];
      l -= log_sigmoid(x);
      c += select(0.0, 1.0, x > 0.0);
      let g = -sigmoid(-x) / (pairs * f32(p.P));
      ds[i * p.K + a] += g;
      ds[i * p.K + b] -= g;
    }
  }
  loss[i] = l / pairs;
  acc[i] = c / pairs;
}`;

/**
 * InstructGPT's K-wise ranking loss: scores `(P, K)` ordered best to worst; each prompt's
 * `C(K,2)` pairs form one element, `L = −(1/C(K,2)) Σ log σ(s_w − s_l)`, averaged over prompts.
 */
export function rankingRewardLoss(
  gpu: Gpu,
  scores: Tensor,
): { loss: Tensor; accuracy: Tensor; dscores: Tensor } {
  checkShape(
    scores.shape.length === 2 && scores.dtype === "f32",
    `rankingRewardLoss: scores must be f32 (P, K)`,
  );
  const [P, K] = scores.shape;
  checkShape(K >= 2, `rankingRewardLoss: need K ≥ 2 responses per prompt, got ${K}`);
  const loss = gpu.empty([P]), acc = gpu.empty([P]), dscores = gpu.empty([P, K]);
  gpu.dispatch(
    gpu.pipeline(RANKING),
    [scores, loss, acc, dscores],
    gpu.grid(groups(P)),
    new Params().u32(P, K),
  );
  const out = { loss: maskedStats(gpu, loss), accuracy: maskedStats(gpu, acc), dscores };
  loss.dispose();
  acc.dispose();
  return out;
}

const TOKEN_PAIR = `${SIGMOID_WGSL}
struct P { P: u32, T: u32 }
@group(0) @binding(0) var<storage, read> vw: array<f32>;    // (P, T)
@group(0) @binding(1) var<storage, read> vl: array<f32>;    // (P, T)
@group(0) @binding(2) var<storage, read> span: array<f32>;  // (P, T)
@group(0) @binding(3) var<storage, read_write> loss: array<f32>;  // (P)
@group(0) @binding(4) var<storage, read_write> dvw: array<f32>;   // (P, T)
@group(0) @binding(5) var<storage, read_write> dvl: array<f32>;   // (P, T)
@group(0) @binding(6) var<uniform> p: P;
${LINEAR_MAIN}
  if (i >= p.P) { return; }
  var n = 0.0;
  for (var t = 0u; t < p.T; t++) { n += select(0.0, 1.0, span[i * p.T + t] != 0.0); }
  var l = 0.0;
  for (var t = 0u; t < p.T; t++) {
    let j = i * p.T + t;
    let m = span[j] != 0.0 && n > 0.0;
    let x = vw[j] - vl[j];
    if (m) { l -= log_sigmoid(x); }
    let g = select(0.0, -sigmoid(-x) / (n * f32(p.P)), m);
    dvw[j] = g;
    dvl[j] = -g;
  }
  loss[i] = select(0.0, l / n, n > 0.0);
}`;

/**
 * Token-level reward-model loss (DeepSpeed-Chat / Simple_RLHF_tiny): for each pair, over the
 * `span` positions (from the first token where chosen and rejected differ to the later of
 * their ends), `−mean log σ(v_w[t] − v_l[t])`, averaged over pairs; with gradients for both
 * value sequences `(P, T)`.
 */
export function tokenPairRewardLoss(
  gpu: Gpu,
  valuesChosen: Tensor,
  valuesRejected: Tensor,
  span: Tensor,
): { loss: Tensor; dchosen: Tensor; drejected: Tensor } {
  same("tokenPairRewardLoss", valuesChosen, valuesRejected, span);
  checkShape(
    span.shape.length === 2,
    `tokenPairRewardLoss: span must be (P, T), got [${span.shape}]`,
  );
  const [P, T] = span.shape;
  const loss = gpu.empty([P]), dchosen = gpu.empty([P, T]), drejected = gpu.empty([P, T]);
  gpu.dispatch(
    gpu.pipeline(TOKEN_PAIR),
    [valuesChosen, valuesRejected, span, loss, dchosen, drejected],
    gpu.grid(groups(P)),
    new Params().u32(P, T),
  );
  const out = { loss: maskedStats(gpu, loss), dchosen, drejected };
  loss.dispose();
  return out;
}
