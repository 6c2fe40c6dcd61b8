/**
 * Float64 references of the group-method kernels (`kernels/group.ts`), plain loops.
 *
 * @module
 */

type Arr = ArrayLike<number>;

/** GRPO / RLOO advantages and the per-group tie indicator. */
export function groupAdvantages(
  r: Arr,
  G: number,
  scale: "group" | "batch" | "none",
  baseline: "mean" | "leave-one-out" = "mean",
): { advantages: Float64Array; zeroStd: Float64Array } {
  const N = r.length, advantages = new Float64Array(N), zeroStd = new Float64Array(N / G);
  let bm = 0;
  for (let i = 0; i < N; i++) bm += r[i] / N;
  let bv = 0;
  for (let i = 0; i < N; i++) bv += (r[i] - bm) ** 2 / (N - 1);
  for (let g = 0; g < N / G; g++) {
    let s = 0;
    for (let j = 0; j < G; j++) s += r[g * G + j];
    const mean = s / G;
    let ss = 0;
    for (let j = 0; j < G; j++) ss += (r[g * G + j] - mean) ** 2;
    const std = Math.sqrt(ss / (G - 1));
    zeroStd[g] = std <= 1e-8 ? 1 : 0;
    for (let j = 0; j < G; j++) {
      const i = g * G + j;
      if (baseline === "leave-one-out") advantages[i] = r[i] - (s - r[i]) / (G - 1);
      else if (scale === "group") advantages[i] = (r[i] - mean) / (std + 1e-4);
      else if (scale === "batch") advantages[i] = (r[i] - mean) / (Math.sqrt(bv) + 1e-4);
      else advantages[i] = r[i] - mean;
    }
  }
  return { advantages, zeroStd };
}

/** GRPO's aggregated loss, its gradient and statistics (see `grpoLoss`). */
export function grpoLoss(
  logp: Arr,
  old: Arr,
  adv: Arr,
  mask: Arr,
  T: number,
  o: {
    epsilonLow: number;
    epsilonHigh: number;
    beta: number;
    logpRef?: Arr;
    aggregation: "grpo" | "bnpo" | "dr_grpo" | "dapo";
    maxCompletionLength?: number;
    tokenCount?: number;
  },
): {
  loss: number;
  dlogp: Float64Array;
  clipLow: number;
  clipHigh: number;
  kl: number;
} {
  const n = logp.length, B = n / T;
  let total = 0;
  const rows = new Float64Array(B);
  for (let i = 0; i < n; i++) {
    total += mask[i];
    rows[Math.floor(i / T)] += mask[i];
  }
  const dlogp = new Float64Array(n);
  let loss = 0, low = 0, high = 0, kl = 0;
  for (let i = 0; i < n; i++) {
    if (mask[i] === 0) continue;
    const b = Math.floor(i / T), a = adv[b];
    const ratio = Math.exp(logp[i] - old[i]);
    const c1 = ratio * a;
    const c2 = Math.min(1 + o.epsilonHigh, Math.max(1 - o.epsilonLow, ratio)) * a;
    let l = -Math.min(c1, c2);
    let g = c1 <= c2 ? -a * ratio : 0;
    if (o.logpRef) {
      const d = o.logpRef[i] - logp[i];
      const k = Math.exp(d) - d - 1;
      l += o.beta * k;
      g += o.beta * (1 - Math.exp(d));
      kl += k;
    }
    const w = o.aggregation === "grpo"
      ? 1 / (B * Math.max(rows[b], 1))
      : o.aggregation === "dr_grpo"
      ? 1 / (B * o.maxCompletionLength!)
      : o.aggregation === "dapo" && o.tokenCount !== undefined
      ? 1 / Math.max(o.tokenCount, 1)
      : 1 / Math.max(total, 1);
    loss += w * l;
    dlogp[i] = w * g;
    if (ratio < 1 - o.epsilonLow && a < 0) low++;
    if (ratio > 1 + o.epsilonHigh && a > 0) high++;
  }
  const c = Math.max(total, 1);
  return { loss, dlogp, clipLow: low / c, clipHigh: high / c, kl: kl / c };
}
