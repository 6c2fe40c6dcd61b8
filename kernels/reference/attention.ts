/**
 * Float64 reference of masked scaled dot-product attention.
 *
 * @module
 */

type Arr = ArrayLike<number>;

/** Dimensions and masks of a reference attention call. */
export interface AttentionRefArgs {
  /** Batch size. */
  B: number;
  /** Heads. */
  H: number;
  /** Query positions. */
  Tq: number;
  /** Key positions. */
  Tk: number;
  /** Head size. */
  Dh: number;
  /** Key mask `(B, Tk)`, 1 = valid key. */
  keyMask?: Arr;
  /** Mask keys after each query (queries aligned to the last keys). */
  causal?: boolean;
  /** Score scale (default 1/√Dh). */
  scale?: number;
}

/**
 * Forward: returns out `[B,H,Tq,Dh]`, probs `[B,H,Tq,Tk]` and the log-sum-exp of each row's
 * scaled scores `[B,H,Tq]` (−Infinity for a row with no visible key).
 */
export function attentionForward(
  q: Arr,
  k: Arr,
  v: Arr,
  a: AttentionRefArgs,
): { out: Float64Array; probs: Float64Array; lse: Float64Array } {
  const { B, H, Tq, Tk, Dh } = a;
  const scale = a.scale ?? 1 / Math.sqrt(Dh);
  const probs = new Float64Array(B * H * Tq * Tk), out = new Float64Array(B * H * Tq * Dh);
  const lse = new Float64Array(B * H * Tq);
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < H; h++) {
      const bh = b * H + h;
      for (let i = 0; i < Tq; i++) {
        const ok = (j: number) =>
          !(a.causal !== false && j > i + Tk - Tq) && !(a.keyMask && a.keyMask[b * Tk + j] === 0);
        const s = new Float64Array(Tk);
        let m = -Infinity;
        for (let j = 0; j < Tk; j++) {
          if (!ok(j)) continue;
          let d = 0;
          for (let e = 0; e < Dh; e++) d += q[(bh * Tq + i) * Dh + e] * k[(bh * Tk + j) * Dh + e];
          s[j] = scale * d;
          m = Math.max(m, s[j]);
        }
        let z = 0;
        for (let j = 0; j < Tk; j++) if (ok(j)) z += Math.exp(s[j] - m);
        lse[bh * Tq + i] = z > 0 ? m + Math.log(z) : -Infinity;
        for (let j = 0; j < Tk; j++) {
          const pr = ok(j) && z > 0 ? Math.exp(s[j] - m) / z : 0;
          probs[(bh * Tq + i) * Tk + j] = pr;
          for (let e = 0; e < Dh; e++) {
            out[(bh * Tq + i) * Dh + e] += pr * v[(bh * Tk + j) * Dh + e];
          }
        }
      }
    }
  }
  return { out, probs, lse };
}

/** Backward: dq, dk, dv for upstream `dout`. */
export function attentionBackward(
  dout: Arr,
  q: Arr,
  k: Arr,
  v: Arr,
  a: AttentionRefArgs,
): { dq: Float64Array; dk: Float64Array; dv: Float64Array } {
  const { B, H, Tq, Tk, Dh } = a;
  const scale = a.scale ?? 1 / Math.sqrt(Dh);
  const { probs } = attentionForward(q, k, v, a);
  const dq = new Float64Array(q.length), dk = new Float64Array(k.length);
  const dv = new Float64Array(v.length);
  for (let bh = 0; bh < B * H; bh++) {
    for (let i = 0; i < Tq; i++) {
      const dp = new Float64Array(Tk);
      let dot = 0;
      for (let j = 0; j < Tk; j++) {
        const pr = probs[(bh * Tq + i) * Tk + j];
        for (let e = 0; e < Dh; e++) {
          dp[j] += dout[(bh * Tq + i) * Dh + e] * v[(bh * Tk + j) * Dh + e];
          dv[(bh * Tk + j) * Dh + e] += pr * dout[(bh * Tq + i) * Dh + e];
        }
        dot += pr * dp[j];
      }
      for (let j = 0; j < Tk; j++) {
        const ds = scale * probs[(bh * Tq + i) * Tk + j] * (dp[j] - dot);
        for (let e = 0; e < Dh; e++) {
          dq[(bh * Tq + i) * Dh + e] += ds * k[(bh * Tk + j) * Dh + e];
          dk[(bh * Tk + j) * Dh + e] += ds * q[(bh * Tq + i) * Dh + e];
        }
      }
    }
  }
  return { dq, dk, dv };
}
