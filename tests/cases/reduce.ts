import * as k from "../../kernels/reduce.ts";
import * as ref from "../../kernels/reference/reduce.ts";
import { ShapeError } from "../../kernels/errors.ts";
import { assertClose, assertThrows } from "../assert.ts";
import { type Case, randArray, rng } from "../_util.ts";

export const cases: Case[] = [];

// f32 sums of n terms of magnitude ≤ 1 in tree/strided order: error ≲ n·2^-24·|terms|.
const TOL = { atol: 1e-5, rtol: 1e-5 };

for (const [rows, cols] of [[1, 1], [7, 33], [3, 65], [5, 1000], [65, 7]]) {
  cases.push({
    name: `reduce: sum/mean/max along the last axis and column sums (${rows}×${cols})`,
    async run(gpu) {
      const x = randArray(rows * cols, rows * 100 + cols, -2, 2);
      const t = gpu.fromArray(x, [rows, cols]);
      assertClose(await gpu.readF32(k.sumLastAxis(gpu, t)), ref.sumLastAxis(x, cols), TOL, "sum");
      assertClose(
        await gpu.readF32(k.meanLastAxis(gpu, t)),
        ref.meanLastAxis(x, cols),
        TOL,
        "mean",
      );
      assertClose(await gpu.readF32(k.maxLastAxis(gpu, t)), ref.maxLastAxis(x, cols), TOL, "max");
      const acc = randArray(cols, 9);
      const out = gpu.fromArray(acc);
      k.sumColumns(gpu, t, { out, accumulate: true });
      const want = ref.sumColumns(x, cols).map((v, i) => v + acc[i]);
      assertClose(await gpu.readF32(out), want, TOL, "sumColumns accumulate");
    },
  });
}

cases.push({
  name: "reduce: column sums over more rows than a software adapter runs in one loop " +
    "(130 001 rows) are the exact in-order f32 sums",
  async run(gpu) {
    // Mesa's llvmpipe/lavapipe leave every loop of an invocation after 65 535 iterations: the
    // column kernel goes over the rows in ranges, carrying its running sums between them
    const rows = 130001, cols = 3;
    const x = randArray(rows * cols, 93, -2, 2), acc = randArray(cols, 94);
    const out = gpu.fromArray(acc);
    k.sumColumns(gpu, gpu.fromArray(x, [rows, cols]), { out, accumulate: true });
    const want = Array.from({ length: cols }, (_, c) => {
      let s = 0;
      for (let r = 0; r < rows; r++) s = Math.fround(s + x[r * cols + c]);
      return Math.fround(acc[c] + s);
    });
    assertClose(await gpu.readF32(out), want, { atol: 0, rtol: 0 }, "in-order sums");
  },
});

cases.push({
  name: "reduce: column sums into spaced segments (accumulated) equal the plain column sums; " +
    "overlapping segments are named",
  async run(gpu) {
    const rows = 37, width = 5, stride = 8, cols = 3 * width;
    const x = randArray(rows * cols, 91, -2, 2), acc = randArray(2 * stride + width, 92);
    const t = gpu.fromArray(x, [rows, cols]);
    const out = gpu.fromArray(acc);
    k.sumColumns(gpu, t, { out, accumulate: true, outSegments: { width, stride } });
    const plain = await gpu.readF32(k.sumColumns(gpu, t));
    const got = await gpu.readF32(out);
    for (let c = 0; c < cols; c++) {
      const o = Math.floor(c / width) * stride + c % width;
      const want = Math.fround(acc[o] + plain[c]);
      assertClose([got[o]], [want], { atol: 0, rtol: 0 }, `column ${c} at ${o}`);
    }
    for (const gap of [5, 6, 7]) assertClose([got[gap]], [acc[gap]], { atol: 0, rtol: 0 }, "gap");
    await assertThrows(
      () => k.sumColumns(gpu, t, { outSegments: { width, stride: width - 1 } }),
      ShapeError,
      "outSegments",
    );
  },
});

for (const n of [1, 7, 65, 4097, 20000]) {
  cases.push({
    name: `reduce: masked sum/mean/var and global L2 norm over ${n} elements`,
    async run(gpu) {
      const x = randArray(n, n, -3, 5);
      const r = rng(n + 1);
      const mask = Float32Array.from({ length: n }, (_, i) => (i === 0 || r() < 0.6 ? 1 : 0));
      const tx = gpu.fromArray(x), tm = gpu.fromArray(mask);
      // sums over up to 20000 terms: atol scales with n
      const tol = { atol: 1e-6 * n, rtol: 2e-5 };
      for (const unbiased of [true, false]) {
        const s = await gpu.readF32(k.maskedStats(gpu, tx, tm, { unbiased }));
        assertClose(
          s,
          ref.maskedStats(x, mask, unbiased),
          tol,
          `masked stats (unbiased=${unbiased})`,
        );
      }
      const s = await gpu.readF32(k.maskedStats(gpu, tx));
      assertClose(s, ref.maskedStats(x), tol, "unmasked stats");
      const y = randArray(33, 3);
      const norm = await gpu.readF32(k.globalNorm(gpu, [tx, gpu.fromArray(y)], 2));
      assertClose(norm.subarray(0, 2), ref.globalNorm([x, y], 2), tol, "global norm");
    },
  });
}

cases.push({
  name: "reduce: clipGradNorm scales all gradients by min(1, maxNorm/norm) on the GPU",
  async run(gpu) {
    const a = randArray(65, 1, -1, 1), b = randArray(7, 2, -1, 1);
    const ta = gpu.fromArray(a), tb = gpu.fromArray(b);
    const stats = k.clipGradNorm(gpu, [ta, tb], 0.5);
    const [norm, coef] = ref.globalNorm([a, b], 0.5);
    assertClose((await gpu.readF32(stats)).subarray(0, 2), [norm, coef], TOL, "norm, coef");
    assertClose(await gpu.readF32(ta), Array.from(a, (v) => v * coef), TOL, "clipped a");
    assertClose(await gpu.readF32(tb), Array.from(b, (v) => v * coef), TOL, "clipped b");
    // below the threshold nothing changes
    const tc = gpu.fromArray([0.1, 0.2]);
    k.clipGradNorm(gpu, [tc], 10);
    assertClose(await gpu.readF32(tc), [0.1, 0.2], { atol: 0, rtol: 1e-7 }, "unclipped");
    await assertThrows(() => k.clipGradNorm(gpu, [tc], 0), ShapeError, "maxNorm");
    await assertThrows(
      () => k.maskedStats(gpu, tc, gpu.zeros([3])),
      ShapeError,
      "does not match",
    );
  },
});

cases.push({
  name: "reduce: an all-zero mask gives count 0, mean 0 and variance 0 (no NaN)",
  async run(gpu) {
    const s = await gpu.readF32(k.maskedStats(gpu, gpu.fromArray([1, 2]), gpu.zeros([2])));
    assertClose(s, [0, 0, 0, 0], { atol: 0, rtol: 0 }, "empty mask");
  },
});
