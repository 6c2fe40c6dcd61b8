/**
 * Float64 references of the softmax family.
 *
 * @module
 */

type Arr = ArrayLike<number>;

function lseOf(x: Arr, base: number, cols: number): number {
  let m = -Infinity;
  for (let c = 0; c < cols; c++) m = Math.max(m, x[base + c]);
  let s = 0;
  for (let c = 0; c < cols; c++) s += Math.exp(x[base + c] - m);
  return m + Math.log(s);
}

/** Softmax (or log-softmax) over rows of `cols`. */
export function softmax(x: Arr, cols: number, log = false): Float64Array {
  const out = new Float64Array(x.length);
  for (let b = 0; b < x.length; b += cols) {
    const l = lseOf(x, b, cols);
    for (let c = 0; c < cols; c++) out[b + c] = log ? x[b + c] - l : Math.exp(x[b + c] - l);
  }
  return out;
}

/** Per-row target log-prob (0 for targets < 0), entropy and log-sum-exp. */
export function tokenLogprobs(
  logits: Arr,
  targets: Arr,
  cols: number,
): { logp: Float64Array; entropy: Float64Array; lse: Float64Array } {
  const rows = targets.length;
  const logp = new Float64Array(rows), entropy = new Float64Array(rows);
  const lse = new Float64Array(rows);
  for (let r = 0; r < rows; r++) {
    const b = r * cols, l = lseOf(logits, b, cols);
    lse[r] = l;
    const t = targets[r];
    logp[r] = t >= 0 ? logits[b + t] - l : 0;
    let h = 0;
    for (let c = 0; c < cols; c++) {
      const lp = logits[b + c] - l;
      h -= Math.exp(lp) * lp;
    }
    entropy[r] = h;
  }
  return { logp, entropy, lse };
}

/** `dz = dlogp·(onehot − p) − dH·p·(log p + H)` per row. */
export function logitsBackward(
  logits: Arr,
  targets: Arr,
  cols: number,
  dlogp?: Arr,
  dentropy?: Arr,
): Float64Array {
  const { entropy, lse } = tokenLogprobs(logits, targets, cols);
  const out = new Float64Array(logits.length);
  for (let r = 0; r < targets.length; r++) {
    for (let c = 0; c < cols; c++) {
      const i = r * cols + c;
      const lq = logits[i] - lse[r], q = Math.exp(lq);
      let d = 0;
      if (dlogp && targets[r] >= 0) d += dlogp[r] * ((targets[r] === c ? 1 : 0) - q);
      if (dentropy) d -= dentropy[r] * q * (lq + entropy[r]);
      out[i] = d;
    }
  }
  return out;
}
