/**
 * Float64 reference of AdamW (the `torch.optim.AdamW` update).
 *
 * @module
 */

/** One AdamW step in place on float64 arrays. */
export function adamwStep(
  param: Float64Array,
  grad: ArrayLike<number>,
  m: Float64Array,
  v: Float64Array,
  o: {
    lr: number;
    beta1?: number;
    beta2?: number;
    eps?: number;
    weightDecay?: number;
    /** Weight decay only on elements before this index (default: all). */
    weightDecayUntil?: number;
    step: number;
    gradScale?: number;
  },
): void {
  const b1 = o.beta1 ?? 0.9, b2 = o.beta2 ?? 0.999, eps = o.eps ?? 1e-8;
  for (let i = 0; i < param.length; i++) {
    const g = grad[i] * (o.gradScale ?? 1);
    m[i] = b1 * m[i] + (1 - b1) * g;
    v[i] = b2 * v[i] + (1 - b2) * g * g;
    const mh = m[i] / (1 - b1 ** o.step), vh = v[i] / (1 - b2 ** o.step);
    const wd = i < (o.weightDecayUntil ?? param.length) ? o.weightDecay ?? 0 : 0;
    param[i] = param[i] * (1 - o.lr * wd) - o.lr * mh / (Math.sqrt(vh) + eps);
  }
}
