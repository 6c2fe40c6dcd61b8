/**
 * Float64 reference of the embedding kernels.
 *
 * @module
 */

type Arr = ArrayLike<number>;

/** `out[i] = wte[tok[i]] + wpe[pos[i] + offset]` (out-of-range ids read zeros). */
export function embeddingForward(
  tokens: Arr,
  wte: Arr,
  C: number,
  pos?: { positions: Arr; wpe: Arr; offset?: number },
): Float64Array {
  const V = wte.length / C, N = tokens.length;
  const out = new Float64Array(N * C);
  for (let i = 0; i < N; i++) {
    for (let c = 0; c < C; c++) {
      const t = tokens[i];
      let v = t >= 0 && t < V ? wte[t * C + c] : 0;
      if (pos) {
        const q = pos.positions[i] + (pos.offset ?? 0);
        if (q >= 0 && q < pos.wpe.length / C) v += pos.wpe[q * C + c];
      }
      out[i * C + c] = v;
    }
  }
  return out;
}

/** `table[ids[i] + offset] += dout[i]` for every i (out-of-range rows skipped). */
export function scatterAddRows(
  ids: Arr,
  dout: Arr,
  table: Arr,
  C: number,
  offset = 0,
): Float64Array {
  const out = Float64Array.from(table);
  const R = table.length / C;
  for (let i = 0; i < ids.length; i++) {
    const r = ids[i] + offset;
    if (r < 0 || r >= R) continue;
    for (let c = 0; c < C; c++) out[r * C + c] += dout[i * C + c];
  }
  return out;
}

/** `(cumsum(mask)·mask − 1) + offset` per row of a (B × T) mask. */
export function positionsFromMask(mask: Arr, T: number, offset = 0): Int32Array {
  const out = new Int32Array(mask.length);
  for (let b = 0; b < mask.length / T; b++) {
    let c = 0;
    for (let t = 0; t < T; t++) {
      const m = mask[b * T + t] !== 0;
      if (m) c++;
      out[b * T + t] = (m ? c : 0) - 1 + offset;
    }
  }
  return out;
}

/** `tokens[b, t + 1]` where its mask is 1, else −1. */
export function nextTokenTargets(tokens: Arr, mask: Arr, T: number): Int32Array {
  return Int32Array.from(
    tokens,
    (_, i) => (i % T) + 1 < T && mask[i + 1] !== 0 ? tokens[i + 1] : -1,
  );
}

/** Value at each row's last masked position (0 and −1 when none). */
export function lastMaskedValues(
  values: Arr,
  mask: Arr,
  T: number,
): { values: Float64Array; index: Int32Array } {
  const B = values.length / T;
  const out = new Float64Array(B), index = new Int32Array(B).fill(-1);
  for (let b = 0; b < B; b++) {
    for (let t = 0; t < T; t++) if (mask[b * T + t] !== 0) index[b] = t;
    out[b] = index[b] >= 0 ? values[b * T + index[b]] : 0;
  }
  return { values: out, index };
}

/** Backward of {@link lastMaskedValues}: `dv[b, index[b]] = dscore[b]`, 0 elsewhere. */
export function lastMaskedValuesBackward(dscore: Arr, index: Arr, T: number): Float64Array {
  const dv = new Float64Array(dscore.length * T);
  for (let b = 0; b < dscore.length; b++) if (index[b] >= 0) dv[b * T + index[b]] = dscore[b];
  return dv;
}
