/**
 * The critic-free group methods as WGSL kernels (SPEC §9): group-relative advantages (GRPO's
 * `(r − mean_g)/(std + 1e-4)` with group, batch or no scaling; RLOO's leave-one-out baseline)
 * and GRPO's clipped per-token objective with a `β·k3` KL term, DAPO's asymmetric clip and the
 * four loss aggregations of TRL (`grpo`, `bnpo`, `dr_grpo`, `dapo`), with its gradient and the
 * clip statistics — no readback.
 *
 * Sequences of one prompt are adjacent: rows `g·G … g·G + G − 1` form group g.
 *
 * @module
 */

import { checkShape } from "./errors.ts";
import { groups, LINEAR_MAIN } from "./_shader.ts";
import { maskedStats, sumLastAxis } from "./reduce.ts";
import { type Gpu, Params, type Tensor } from "./runtime.ts";

/**
 * How GRPO scales the centred rewards: by the group's standard deviation (`group`, the paper),
 * by the whole batch's (`batch`), or not at all (`none`, Dr. GRPO).
 */
export type RewardScaling = "group" | "batch" | "none";

/** The baseline of {@link groupAdvantages}: the group mean (GRPO) or leave-one-out (RLOO). */
export type GroupBaseline = "mean" | "leave-one-out";

const ADVANTAGES = `
struct P { n: u32, g: u32, mode: u32, loo: u32 }
@group(0) @binding(0) var<storage, read> r: array<f32>;          // (N) rewards
@group(0) @binding(1) var<storage, read> batch: array<f32>;      // maskedStats(r): [3] = var
@group(0) @binding(2) var<storage, read_write> adv: array<f32>;  // (N)
@group(0) @binding(3) var<storage, read_write> zero_std: array<f32>; // (N / G) 1 = rewards tie
@group(0) @binding(4) var<uniform> p: P;
${LINEAR_MAIN}
  if (i >= p.n) { return; }
  let g0 = (i / p.g) * p.g;
  let gf = f32(p.g);
  var s = 0.0;
  for (var j = 0u; j < p.g; j++) { s += r[g0 + j]; }
  let mean = s / gf;
  var ss = 0.0;
  for (var j = 0u; j < p.g; j++) { let d = r[g0 + j] - mean; ss += d * d; }
  let std_g = sqrt(ss / (gf - 1.0));  // unbiased, as torch.std
  if (i == g0) { zero_std[i / p.g] = select(0.0, 1.0, std_g <= 1e-8); }
  if (p.loo == 1u) {
    adv[i] = r[i] - (s - r[i]) / (gf - 1.0);
    return;
  }
  var a = r[i] - mean;
  if (p.mode == 0u) { a = a / (std_g + 1e-4); }
  else if (p.mode == 1u) { a = a / (sqrt(batch[3]) + 1e-4); }
  adv[i] = a;
}`;

/** Outputs of {@link groupAdvantages}. */
export interface GroupAdvantages {
  /** One advantage per sequence `(N)`. */
  advantages: Tensor;
  /** Per group `(N / G)`: 1 when its rewards all tie (std ≤ 1e-8), else 0. */
  zeroStd: Tensor;
}

/**
 * Group-relative advantages of `N = groups × G` sequence rewards (rows of one prompt
 * adjacent). GRPO (`baseline: "mean"`): `A_i = (r_i − mean_g) / (std + 1e-4)` with the group's
 * unbiased standard deviation (`scale: "group"`), the whole batch's (`"batch"`), or
 * `A_i = r_i − mean_g` (`"none"`, Dr. GRPO). RLOO (`"leave-one-out"`):
 * `A_i = r_i − mean_{j≠i} r_j` (`scale` ignored). `G ≥ 2`.
 *
 * @example Two groups of two
 * ```ts
 * import { Gpu, groupAdvantages } from "../mod.ts";
 * const gpu = await Gpu.create();
 * const a = groupAdvantages(gpu, gpu.fromArray([1, 0, 0.5, 0.5]), { groupSize: 2, scale: "none" });
 * console.log(await gpu.read(a.advantages), await gpu.read(a.zeroStd)); // [0.5, -0.5, 0, 0] [0, 1]
 * ```
 */
export function groupAdvantages(
  gpu: Gpu,
  rewards: Tensor,
  o: { groupSize: number; scale?: RewardScaling; baseline?: GroupBaseline },
): GroupAdvantages {
  const G = o.groupSize, N = rewards.size;
  checkShape(rewards.dtype === "f32", `groupAdvantages: rewards must be f32, got ${rewards.dtype}`);
  checkShape(
    Number.isInteger(G) && G >= 2 && N % G === 0,
    `groupAdvantages: groupSize must be an integer ≥ 2 dividing ${N} rewards, got ${G}`,
  );
  const scale = o.scale ?? "group";
  const mode = { group: 0, batch: 1, none: 2 }[scale];
  checkShape(mode !== undefined, `groupAdvantages: unknown scale "${scale}"`);
  const loo = (o.baseline ?? "mean") === "leave-one-out" ? 1 : 0;
  const batch = maskedStats(gpu, rewards, undefined, { unbiased: true });
  const advantages = gpu.empty([N]), zeroStd = gpu.empty([N / G]);
  gpu.dispatch(
    gpu.pipeline(ADVANTAGES),
    [rewards, batch, advantages, zeroStd],
    gpu.grid(groups(N)),
    new Params().u32(N, G, mode, loo),
  );
  batch.dispose();
  return { advantages, zeroStd };
}

/** How GRPO's per-token losses become one number (TRL's `loss_type`). */
export type LossAggregation = "grpo" | "bnpo" | "dr_grpo" | "dapo";

const AGGREGATION: Record<LossAggregation, number> = { grpo: 0, bnpo: 1, dr_grpo: 2, dapo: 3 };

// eight storage buffers at most (WebGPU's default maxStorageBuffersPerShaderStage): the four
// per-token outputs share one buffer as planes, the two counts one buffer
const LOSS = `
struct P { n: u32, t: u32, rows: u32, mode: u32, lo: f32, hi: f32, beta: f32, use_ref: u32,
           max_len: f32, tokens: f32 }
@group(0) @binding(0) var<storage, read> logp: array<f32>;      // (B, T)
@group(0) @binding(1) var<storage, read> logp_old: array<f32>;  // (B, T)
@group(0) @binding(2) var<storage, read> logp_ref: array<f32>;  // (B, T) or placeholder
@group(0) @binding(3) var<storage, read> adv: array<f32>;       // (B)
@group(0) @binding(4) var<storage, read> mask: array<f32>;      // (B, T)
@group(0) @binding(5) var<storage, read> counts: array<f32>;    // [0] Σ mask, [1 + b] Σ_t mask[b]
// (4, B·T): weighted per-token loss, clipped below (A < 0), clipped above (A > 0), k3
@group(0) @binding(6) var<storage, read_write> planes: array<f32>;
@group(0) @binding(7) var<storage, read_write> dlogp: array<f32>;
@group(0) @binding(8) var<uniform> p: P;
${LINEAR_MAIN}
  if (i >= p.n) { return; }
  let b = i / p.t;
  let m = mask[i] != 0.0;
  let a = adv[b];
  let ratio = exp(logp[i] - logp_old[i]);
  let c1 = ratio * a;
  let c2 = clamp(ratio, 1.0 - p.lo, 1.0 + p.hi) * a;
  var l = -min(c1, c2);
  // the unclipped branch carries the gradient −A·ratio; the clipped one is constant
  var g = select(0.0, -a * ratio, c1 <= c2);
  var k = 0.0;
  if (p.use_ref == 1u) {
    let d = logp_ref[i] - logp[i];
    k = exp(d) - d - 1.0;
    l += p.beta * k;
    g += p.beta * (1.0 - exp(d));
  }
  // weight of a token in the aggregated loss
  var w = 1.0 / max(counts[0], 1.0);                                       // bnpo
  if (p.mode == 0u) { w = 1.0 / (f32(p.rows) * max(counts[1u + b], 1.0)); }  // grpo
  else if (p.mode == 2u) { w = 1.0 / (f32(p.rows) * p.max_len); }          // dr_grpo
  else if (p.mode == 3u) { w = 1.0 / max(p.tokens, 1.0); }               // dapo
  planes[i] = select(0.0, w * l, m);
  planes[p.n + i] = select(0.0, 1.0, m && ratio < 1.0 - p.lo && a < 0.0);
  planes[2u * p.n + i] = select(0.0, 1.0, m && ratio > 1.0 + p.hi && a > 0.0);
  planes[3u * p.n + i] = select(0.0, k, m);
  dlogp[i] = select(0.0, w * g, m);
}`;

/** Options of {@link grpoLoss}. */
export interface GrpoLossOptions {
  /** Lower clip ε: the ratio is clipped below at `1 − epsilonLow`. */
  epsilonLow: number;
  /** Upper clip ε (DAPO's clip-higher when > `epsilonLow`). */
  epsilonHigh: number;
  /** Weight of the per-token `k3` KL to the reference (needs `logpRef` when > 0). */
  beta: number;
  /** Reference log-probs `(B, T)`: the KL term and its statistic. */
  logpRef?: Tensor;
  /** How per-token losses are combined. */
  aggregation: LossAggregation;
  /** `dr_grpo`: the constant normaliser is `B × maxCompletionLength`. */
  maxCompletionLength?: number;
  /**
   * `dapo`: the response tokens of the whole generation batch this minibatch belongs to (the
   * normaliser; default: this minibatch's).
   */
  tokenCount?: number;
}

/** Outputs of {@link grpoLoss}: the gradient and `[4]` {@link maskedStats}-style statistics. */
export interface GrpoLoss {
  /** Gradient of the aggregated loss with respect to `logp` `(B, T)`. */
  dlogp: Tensor;
  /** Stats of the weighted per-token loss: the aggregated loss is `[0]` (the sum). */
  loss: Tensor;
  /** Fraction of response tokens clipped below with a negative advantage: `[2]`. */
  clipLow: Tensor;
  /** Fraction clipped above with a positive advantage: `[2]`. */
  clipHigh: Tensor;
  /** Mean per-token `k3` KL over response tokens: `[2]` (zeros without `logpRef`). */
  kl: Tensor;
}

/**
 * GRPO's objective per token, `l = −min(ρ·A, clip(ρ, 1 − ε_low, 1 + ε_high)·A) + β·k3` with
 * `ρ = exp(logp − logp_old)`, sequence advantages `A` `(B)` and
 * `k3 = exp(ref − logp) − (ref − logp) − 1`, aggregated as
 * `grpo` `mean_b (Σ_t l / |o_b|)`, `bnpo` `Σ l / Σ|o|` (this minibatch), `dr_grpo`
 * `Σ l / (B·maxCompletionLength)` or `dapo` `Σ l / tokenCount` (the generation batch); with its
 * gradient with respect to `logp` and the clip/KL statistics — all on the GPU.
 *
 * @example One token, advantage 1, ratio e^0.5 clipped at 1.2
 * ```ts
 * import { Gpu, grpoLoss } from "../mod.ts";
 * const gpu = await Gpu.create();
 * const l = grpoLoss(gpu, gpu.fromArray([0.5], [1, 1]), gpu.zeros([1, 1]), gpu.fromArray([1]),
 *   gpu.fromArray([1], [1, 1]), { epsilonLow: 0.2, epsilonHigh: 0.2, beta: 0, aggregation: "grpo" });
 * console.log((await gpu.read(l.loss))[0], (await gpu.read(l.clipHigh))[2]); // ≈ -1.2, 1
 * ```
 */
export function grpoLoss(
  gpu: Gpu,
  logp: Tensor,
  logpOld: Tensor,
  advantages: Tensor,
  mask: Tensor,
  o: GrpoLossOptions,
): GrpoLoss {
  checkShape(logp.shape.length === 2, `grpoLoss: logp must be (B, T), got [${logp.shape}]`);
  const [B, T] = logp.shape;
  for (const [name, t] of [["logpOld", logpOld], ["mask", mask], ["logpRef", o.logpRef]] as const) {
    if (!t) continue;
    checkShape(
      t.dtype === "f32" && t.size === B * T,
      `grpoLoss: ${name} must be f32 (${B}, ${T}), got ${t.dtype} [${t.shape}]`,
    );
  }
  checkShape(
    advantages.dtype === "f32" && advantages.size === B,
    `grpoLoss: advantages must be f32 (${B}), one per sequence, got [${advantages.shape}]`,
  );
  checkShape(
    o.epsilonLow > 0 && o.epsilonLow < 1 && o.epsilonHigh > 0,
    `grpoLoss: need 0 < epsilonLow < 1 and epsilonHigh > 0, got ${o.epsilonLow}, ${o.epsilonHigh}`,
  );
  checkShape(o.beta >= 0, `grpoLoss: beta must be ≥ 0, got ${o.beta}`);
  checkShape(o.beta === 0 || o.logpRef !== undefined, "grpoLoss: beta > 0 needs logpRef");
  const mode = AGGREGATION[o.aggregation];
  checkShape(mode !== undefined, `grpoLoss: unknown aggregation "${o.aggregation}"`);
  const maxLen = o.maxCompletionLength ?? 0;
  checkShape(
    o.aggregation !== "dr_grpo" || maxLen >= 1,
    "grpoLoss: dr_grpo needs maxCompletionLength ≥ 1",
  );
  checkShape(
    o.tokenCount === undefined || o.tokenCount >= 0,
    `grpoLoss: tokenCount must be ≥ 0, got ${o.tokenCount}`,
  );
  const N = B * T;
  const rowCount = sumLastAxis(gpu, mask.reshape([B, T]));
  const total = maskedStats(gpu, mask);
  const counts = gpu.empty([B + 1]);
  gpu.copyRange(total, 0, counts, 0, 1);
  gpu.copyRange(rowCount, 0, counts, 1, B);
  const planes = gpu.empty([4, N]), dlogp = gpu.empty([B, T]);
  // dapo without a generation-batch count normalises by this minibatch's tokens (bnpo)
  const tokens = o.tokenCount;
  gpu.dispatch(
    gpu.pipeline(LOSS),
    [logp, logpOld, o.logpRef ?? gpu.placeholder(), advantages, mask, counts, planes, dlogp],
    gpu.grid(groups(N)),
    new Params()
      .u32(N, T, B, o.aggregation === "dapo" && tokens === undefined ? 1 : mode)
      .f32(o.epsilonLow, o.epsilonHigh, o.beta)
      .u32(o.logpRef ? 1 : 0)
      .f32(maxLen, tokens ?? 0),
  );
  const plane = (k: number) => {
    const t = gpu.empty([B, T]);
    gpu.copyRange(planes, k * N, t, 0, N);
    return t;
  };
  const [loss, low, high, kl] = [0, 1, 2, 3].map(plane);
  const out = {
    dlogp,
    loss: maskedStats(gpu, loss, mask),
    clipLow: maskedStats(gpu, low, mask),
    clipHigh: maskedStats(gpu, high, mask),
    kl: maskedStats(gpu, kl, mask),
  };
  for (const t of [rowCount, total, counts, planes, loss, low, high, kl]) t.dispose();
  return out;
}
