/**
 * Float64 reference of {@link import("../matmul.ts").matmul}.
 *
 * @module
 */

type Arr = ArrayLike<number>;

/** Shape and options of a reference matmul (mirrors `MatmulOptions`). */
export interface MatmulRefArgs {
  /** Batch count (default 1). */
  batch?: number;
  /** Rows of C. */
  M: number;
  /** Columns of C. */
  N: number;
  /** Inner dimension. */
  K: number;
  /** A is stored `[K, M]` and used transposed. */
  transA?: boolean;
  /** B is stored `[N, K]` and used transposed. */
  transB?: boolean;
  /** B has a single matrix shared by all batches. */
  shareB?: boolean;
  /** Bias of length N added to every row. */
  bias?: Arr;
  /** Residual of the shape of C, added after the bias. */
  residual?: Arr;
  /** Apply ReLU last. */
  relu?: boolean;
  /** Existing C to accumulate into. */
  accumulate?: Arr;
  /** Scale of the product (default 1). */
  alpha?: number;
}

/** `C = relu?(α·op(A)·op(B) + bias + residual + C_old)`, batched, in float64. */
export function matmul(a: Arr, b: Arr, o: MatmulRefArgs): Float64Array {
  const { M, N, K } = o;
  const batch = o.batch ?? 1;
  const c = new Float64Array(batch * M * N);
  for (let bi = 0; bi < batch; bi++) {
    const ab = bi * M * K, bb = o.shareB ? 0 : bi * K * N, cb = bi * M * N;
    for (let m = 0; m < M; m++) {
      for (let n = 0; n < N; n++) {
        let s = 0;
        for (let k = 0; k < K; k++) {
          const av = a[ab + (o.transA ? k * M + m : m * K + k)];
          const bv = b[bb + (o.transB ? n * K + k : k * N + n)];
          s += av * bv;
        }
        s *= o.alpha ?? 1;
        if (o.bias) s += o.bias[n];
        if (o.residual) s += o.residual[cb + m * N + n];
        if (o.accumulate) s += o.accumulate[cb + m * N + n];
        if (o.relu) s = Math.max(s, 0);
        c[cb + m * N + n] = s;
      }
    }
  }
  return c;
}
