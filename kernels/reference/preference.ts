/**
 * Float64 references of the direct preference kernels (SPEC §9, plain loops): sequence
 * log-probs and their backward, the DPO family and SimPO, KTO and its reference point.
 *
 * @module
 */

type Arr = ArrayLike<number>;

const logSigmoid = (x: number) => -(Math.max(-x, 0) + Math.log1p(Math.exp(-Math.abs(x))));
const sigmoid = (x: number) => 1 / (1 + Math.exp(-x));

/** Masked sum (or length-mean) of `(rows, T)` log-probs per row. */
export function sequenceLogprobs(logp: Arr, mask: Arr, T: number, average = false): Float64Array {
  const rows = logp.length / T, out = new Float64Array(rows);
  for (let r = 0; r < rows; r++) {
    let s = 0, n = 0;
    for (let t = 0; t < T; t++) {
      if (mask[r * T + t] !== 0) {
        s += logp[r * T + t];
        n++;
      }
    }
    out[r] = average ? s / Math.max(n, 1) : s;
  }
  return out;
}

/** Backward of {@link sequenceLogprobs}. */
export function sequenceLogprobsBackward(
  dseq: Arr,
  mask: Arr,
  T: number,
  average = false,
): Float64Array {
  const rows = dseq.length, out = new Float64Array(rows * T);
  for (let r = 0; r < rows; r++) {
    let n = 0;
    for (let t = 0; t < T; t++) n += mask[r * T + t] !== 0 ? 1 : 0;
    for (let t = 0; t < T; t++) {
      if (mask[r * T + t] !== 0) out[r * T + t] = average ? dseq[r] / Math.max(n, 1) : dseq[r];
    }
  }
  return out;
}

/** Options of {@link preferenceLoss} (as the kernel's). */
export interface PreferenceOptions {
  /** Which loss of the DPO family (or SimPO). */
  lossType: "sigmoid" | "hinge" | "ipo" | "robust" | "simpo";
  /** Inverse temperature β. */
  beta: number;
  /** cDPO label smoothing ε (sigmoid and robust losses). */
  labelSmoothing?: number;
  /** SimPO's target margin γ. */
  gamma?: number;
}

/**
 * The DPO family and SimPO over B pairs (`policy`, `reference` as `[chosen…, rejected…]`):
 * mean loss, its gradient with respect to the policy ℓ, and the mean metrics.
 */
export function preferenceLoss(policy: Arr, reference: Arr | undefined, o: PreferenceOptions): {
  loss: number;
  dpolicy: Float64Array;
  rewardChosen: number;
  rewardRejected: number;
  accuracy: number;
  margin: number;
  logpChosen: number;
  logpRejected: number;
} {
  const B = policy.length / 2, eps = o.labelSmoothing ?? 0, beta = o.beta;
  const dpolicy = new Float64Array(2 * B);
  let loss = 0, rc = 0, rr = 0, acc = 0, lc = 0, lr = 0;
  for (let i = 0; i < B; i++) {
    const simpo = o.lossType === "simpo";
    const rw = simpo ? policy[i] : policy[i] - reference![i];
    const rl = simpo ? policy[B + i] : policy[B + i] - reference![B + i];
    const h = rw - rl;
    let l: number, dh: number;
    if (o.lossType === "sigmoid" || simpo) {
      const x = simpo ? beta * h - (o.gamma ?? 0) : beta * h;
      l = -(1 - eps) * logSigmoid(x) - eps * logSigmoid(-x);
      dh = beta * (-(1 - eps) * sigmoid(-x) + eps * sigmoid(x));
    } else if (o.lossType === "hinge") {
      l = Math.max(0, 1 - beta * h);
      dh = 1 - beta * h > 0 ? -beta : 0;
    } else if (o.lossType === "ipo") {
      const d = h - 1 / (2 * beta);
      l = d * d;
      dh = 2 * d;
    } else {
      const x = beta * h;
      l = (-(1 - eps) * logSigmoid(x) + eps * logSigmoid(-x)) / (1 - 2 * eps);
      dh = beta * (-(1 - eps) * sigmoid(-x) - eps * sigmoid(x)) / (1 - 2 * eps);
    }
    loss += l;
    dpolicy[i] = dh / B;
    dpolicy[B + i] = -dh / B;
    rc += beta * rw;
    rr += beta * rl;
    acc += beta * rw > beta * rl ? 1 : 0;
    lc += policy[i];
    lr += policy[B + i];
  }
  return {
    loss: loss / B,
    dpolicy,
    rewardChosen: rc / B,
    rewardRejected: rr / B,
    accuracy: acc / B,
    margin: (rc - rr) / B,
    logpChosen: lc / B,
    logpRejected: lr / B,
  };
}

/** KTO's reference point `max(0, mean(policy − reference))`. */
export function ktoReferencePoint(policy: Arr, reference: Arr): number {
  let s = 0;
  for (let i = 0; i < policy.length; i++) s += policy[i] - reference[i];
  return Math.max(0, s / policy.length);
}

/** KTO over n examples: mean loss, its gradient, and the per-kind sums. */
export function ktoLoss(
  policy: Arr,
  reference: Arr,
  desirable: Arr,
  z: number,
  o: { beta: number; desirableWeight?: number; undesirableWeight?: number },
): { loss: number; dpolicy: Float64Array; sums: Float64Array } {
  const n = policy.length, b = o.beta, wd = o.desirableWeight ?? 1, wu = o.undesirableWeight ?? 1;
  const dpolicy = new Float64Array(n), sums = new Float64Array(7);
  for (let i = 0; i < n; i++) {
    const rho = policy[i] - reference[i], d = desirable[i] !== 0;
    const s = sigmoid(d ? b * (rho - z) : b * (z - rho));
    const l = (d ? wd : wu) * (1 - s);
    dpolicy[i] = (d ? -wd : wu) * b * s * (1 - s) / n;
    sums[0] += l;
    const k = d ? 1 : 4;
    sums[k] += 1;
    sums[k + 1] += b * rho;
    sums[k + 2] += policy[i];
  }
  return { loss: sums[0] / n, dpolicy, sums };
}
