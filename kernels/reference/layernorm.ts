/**
 * Float64 reference of layer normalisation.
 *
 * @module
 */

type Arr = ArrayLike<number>;

/** Forward: returns y, mean and rstd per row. */
export function layernormForward(
  x: Arr,
  w: Arr,
  b: Arr,
  C: number,
  eps = 1e-5,
): { y: Float64Array; mean: Float64Array; rstd: Float64Array } {
  const rows = x.length / C;
  const y = new Float64Array(x.length), mean = new Float64Array(rows);
  const rstd = new Float64Array(rows);
  for (let r = 0; r < rows; r++) {
    let m = 0;
    for (let c = 0; c < C; c++) m += x[r * C + c];
    m /= C;
    let v = 0;
    for (let c = 0; c < C; c++) v += (x[r * C + c] - m) ** 2;
    const s = 1 / Math.sqrt(v / C + eps);
    for (let c = 0; c < C; c++) y[r * C + c] = (x[r * C + c] - m) * s * w[c] + b[c];
    mean[r] = m;
    rstd[r] = s;
  }
  return { y, mean, rstd };
}

/** Backward: dx, dweight, dbias for upstream `dy`. */
export function layernormBackward(
  dy: Arr,
  x: Arr,
  w: Arr,
  C: number,
  eps = 1e-5,
): { dx: Float64Array; dw: Float64Array; db: Float64Array } {
  const rows = x.length / C;
  const { mean, rstd } = layernormForward(x, w, new Float64Array(C), C, eps);
  const dx = new Float64Array(x.length), dw = new Float64Array(C), db = new Float64Array(C);
  for (let r = 0; r < rows; r++) {
    let mg = 0, mgx = 0;
    for (let c = 0; c < C; c++) {
      const i = r * C + c, xh = (x[i] - mean[r]) * rstd[r];
      mg += dy[i] * w[c];
      mgx += dy[i] * w[c] * xh;
      dw[c] += dy[i] * xh;
      db[c] += dy[i];
    }
    mg /= C;
    mgx /= C;
    for (let c = 0; c < C; c++) {
      const i = r * C + c, xh = (x[i] - mean[r]) * rstd[r];
      dx[i] = rstd[r] * (dy[i] * w[c] - mg - xh * mgx);
    }
  }
  return { dx, dw, db };
}
