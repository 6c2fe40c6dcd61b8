/**
 * Float64 references of the RL kernels (same formulas as SPEC §7–8, plain loops).
 *
 * @module
 */

type Arr = ArrayLike<number>;

const logSigmoid = (x: number) => -(Math.max(-x, 0) + Math.log1p(Math.exp(-Math.abs(x))));
const sigmoid = (x: number) => 1 / (1 + Math.exp(-x));

/** Per-token KL estimate on masked tokens. */
export function klPenalty(
  logp: Arr,
  ref: Arr,
  mask: Arr,
  kind: "k1" | "abs" | "mse" | "k3",
): Float64Array {
  return Float64Array.from(logp, (lp, i) => {
    if (mask[i] === 0) return 0;
    const d = lp - ref[i];
    return kind === "k1"
      ? d
      : kind === "abs"
      ? Math.abs(d)
      : kind === "mse"
      ? d * d / 2
      : Math.exp(-d) - 1 + d;
  });
}

/** `−β·kl` on response tokens plus the clipped score at each row's last response token. */
export function shapedRewards(
  kl: Arr,
  scores: Arr,
  mask: Arr,
  T: number,
  beta: number,
  clip = Infinity,
): Float64Array {
  const r = Float64Array.from(kl, (k, i) => (mask[i] !== 0 ? -beta * k : 0));
  for (let b = 0; b < scores.length; b++) {
    let last = -1;
    for (let t = 0; t < T; t++) if (mask[b * T + t] !== 0) last = t;
    if (last >= 0) r[b * T + last] += Math.min(clip, Math.max(-clip, scores[b]));
  }
  return r;
}

/** GAE backwards over masked tokens with V = 0 past the last token. */
export function gae(
  r: Arr,
  v: Arr,
  mask: Arr,
  T: number,
  gamma: number,
  lambda: number,
): { advantages: Float64Array; returns: Float64Array } {
  const adv = new Float64Array(r.length), ret = new Float64Array(r.length);
  for (let b = 0; b < r.length / T; b++) {
    let nextV = 0, last = 0;
    for (let t = T - 1; t >= 0; t--) {
      const j = b * T + t;
      if (mask[j] === 0) continue;
      const delta = r[j] + gamma * nextV - v[j];
      last = delta + gamma * lambda * last;
      adv[j] = last;
      ret[j] = last + v[j];
      nextV = v[j];
    }
  }
  return { advantages: adv, returns: ret };
}

function maskedMeanVar(x: Arr, mask: Arr) {
  let s = 0, n = 0;
  for (let i = 0; i < x.length; i++) if (mask[i] !== 0) (s += x[i], n++);
  const mean = n > 0 ? s / n : 0;
  let q = 0;
  for (let i = 0; i < x.length; i++) if (mask[i] !== 0) q += (x[i] - mean) ** 2;
  return { mean, variance: n > 1 ? q / (n - 1) : 0, n };
}

/** TRL's masked whitening (unbiased variance). */
export function whiten(x: Arr, mask: Arr, shiftMean = true): Float64Array {
  const { mean, variance } = maskedMeanVar(x, mask);
  return Float64Array.from(x, (v, i) => {
    if (mask[i] === 0) return 0;
    const w = (v - mean) / Math.sqrt(variance + 1e-8);
    return shiftMean ? w : w + mean;
  });
}

/** PPO clipped policy loss (mean over valid tokens), its analytic gradient and statistics. */
export function ppoPolicyLoss(
  logp: Arr,
  old: Arr,
  adv: Arr,
  mask: Arr,
  clip: number,
): { loss: number; clipfrac: number; approxkl: number; dlogp: Float64Array } {
  let n = 0;
  for (let i = 0; i < mask.length; i++) if (mask[i] !== 0) n++;
  let loss = 0, clipped = 0, akl = 0;
  const dlogp = new Float64Array(logp.length);
  for (let i = 0; i < logp.length; i++) {
    if (mask[i] === 0) continue;
    const d = logp[i] - old[i], ratio = Math.exp(d);
    const pg1 = -adv[i] * ratio, pg2 = -adv[i] * Math.min(1 + clip, Math.max(1 - clip, ratio));
    const use2 = pg2 > pg1;
    loss += Math.max(pg1, pg2);
    clipped += use2 ? 1 : 0;
    akl += d * d / 2;
    const saturated = ratio < 1 - clip || ratio > 1 + clip;
    dlogp[i] = (use2 && saturated ? 0 : -adv[i] * ratio) / Math.max(n, 1);
  }
  const m = Math.max(n, 1);
  return { loss: loss / m, clipfrac: clipped / m, approxkl: akl / m, dlogp };
}

/** PPO clipped value loss (mean over valid tokens), its gradient and clip fraction. */
export function ppoValueLoss(
  v: Arr,
  vOld: Arr,
  ret: Arr,
  mask: Arr,
  clip: number,
): { loss: number; clipfrac: number; dvalues: Float64Array } {
  let n = 0;
  for (let i = 0; i < mask.length; i++) if (mask[i] !== 0) n++;
  const m = Math.max(n, 1);
  let loss = 0, clipped = 0;
  const dv = new Float64Array(v.length);
  for (let i = 0; i < v.length; i++) {
    if (mask[i] === 0) continue;
    const delta = v[i] - vOld[i];
    const vc = Math.abs(delta) > clip ? vOld[i] + Math.min(clip, Math.max(-clip, delta)) : v[i];
    const l1 = (v[i] - ret[i]) ** 2, l2 = (vc - ret[i]) ** 2;
    const use2 = l2 > l1;
    loss += 0.5 * Math.max(l1, l2);
    clipped += use2 ? 1 : 0;
    dv[i] = (use2 ? (Math.abs(delta) > clip ? 0 : vc - ret[i]) : v[i] - ret[i]) / m;
  }
  return { loss: loss / m, clipfrac: clipped / m, dvalues: dv };
}

/** `1 − Var(R − V)/Var(R)` over valid tokens (unbiased variances). */
export function explainedVariance(v: Arr, ret: Arr, mask: Arr): number {
  const vr = maskedMeanVar(ret, mask).variance;
  const vd = maskedMeanVar(Float64Array.from(ret, (r, i) => r - v[i]), mask).variance;
  return vr > 0 ? 1 - vd / vr : 0;
}

/** Pairwise RM loss with optional margins. */
export function pairwiseRewardLoss(
  rw: Arr,
  rl: Arr,
  margin?: Arr,
): { loss: number; accuracy: number; margin: number; drw: Float64Array; drl: Float64Array } {
  const n = rw.length;
  let loss = 0, acc = 0, gap = 0;
  const drw = new Float64Array(n), drl = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    const x = rw[i] - rl[i] - (margin ? margin[i] : 0);
    loss -= logSigmoid(x);
    acc += rw[i] > rl[i] ? 1 : 0;
    gap += rw[i] - rl[i];
    drw[i] = -sigmoid(-x) / n;
    drl[i] = -drw[i];
  }
  return { loss: loss / n, accuracy: acc / n, margin: gap / n, drw, drl };
}

/** K-wise ranking loss over `(P, K)` scores ordered best to worst. */
export function rankingRewardLoss(
  s: Arr,
  P: number,
  K: number,
): { loss: number; accuracy: number; ds: Float64Array } {
  const pairs = K * (K - 1) / 2;
  let loss = 0, acc = 0;
  const ds = new Float64Array(P * K);
  for (let p = 0; p < P; p++) {
    for (let a = 0; a < K; a++) {
      for (let b = a + 1; b < K; b++) {
        const x = s[p * K + a] - s[p * K + b];
        loss -= logSigmoid(x) / pairs;
        acc += (x > 0 ? 1 : 0) / pairs;
        const g = -sigmoid(-x) / (pairs * P);
        ds[p * K + a] += g;
        ds[p * K + b] -= g;
      }
    }
  }
  return { loss: loss / P, accuracy: acc / P, ds };
}

/** Token-level RM loss: per pair the mean over its span, averaged over pairs. */
export function tokenPairRewardLoss(
  vw: Arr,
  vl: Arr,
  span: Arr,
  P: number,
  T: number,
): { loss: number; dw: Float64Array; dl: Float64Array } {
  let loss = 0;
  const dw = new Float64Array(P * T), dl = new Float64Array(P * T);
  for (let p = 0; p < P; p++) {
    let n = 0;
    for (let t = 0; t < T; t++) if (span[p * T + t] !== 0) n++;
    if (n === 0) continue;
    for (let t = 0; t < T; t++) {
      const j = p * T + t;
      if (span[j] === 0) continue;
      const x = vw[j] - vl[j];
      loss -= logSigmoid(x) / n / P;
      dw[j] = -sigmoid(-x) / (n * P);
      dl[j] = -dw[j];
    }
  }
  return { loss, dw, dl };
}
