import * as k from "../../kernels/softmax.ts";
import * as ref from "../../kernels/reference/softmax.ts";
import { ShapeError } from "../../kernels/errors.ts";
import { assert, assertClose, assertThrows } from "../assert.ts";
import { type Case, dot, finiteDiff, randArray, randInts } from "../_util.ts";

export const cases: Case[] = [];
// exp/log in f32 on logits of magnitude ≤ 8: a few ulp relative, plus log-sum-exp rounding
const TOL = { atol: 2e-6, rtol: 2e-5 };

for (const [rows, cols] of [[1, 1], [7, 33], [3, 65], [2, 1000], [65, 7]]) {
  cases.push({
    name: `softmax: softmax, log-softmax, token logprobs, entropy, cross-entropy (${rows}×${cols})`,
    async run(gpu) {
      const x = randArray(rows * cols, rows + 7 * cols, -8, 8);
      const tg = randInts(rows, cols, rows);
      if (rows > 2) tg[1] = -1; // an ignored row
      const tx = gpu.fromArray(x, [rows, cols]), tt = gpu.fromArray(tg);
      assertClose(await gpu.readF32(k.softmax(gpu, tx)), ref.softmax(x, cols), TOL, "softmax");
      assertClose(
        await gpu.readF32(k.logSoftmax(gpu, tx)),
        ref.softmax(x, cols, true),
        { atol: 1e-5, rtol: 1e-5 },
        "log-softmax",
      );
      const want = ref.tokenLogprobs(x, tg, cols);
      const got = k.tokenLogprobs(gpu, tx, tt);
      const lt = { atol: 1e-5, rtol: 1e-5 };
      assertClose(await gpu.readF32(got.logp), want.logp, lt, "logp");
      assertClose(await gpu.readF32(got.entropy), want.entropy, lt, "entropy");
      assertClose(await gpu.readF32(got.lse), want.lse, lt, "lse");
      const ce = k.crossEntropy(gpu, tx, tt);
      assertClose(await gpu.readF32(ce.loss), want.logp.map((v) => -v), lt, "cross-entropy");
    },
  });
}

// V a multiple of 4 (8, 68): four columns an invocation
for (const [rows, cols] of [[1, 3], [7, 33], [5, 65], [3, 8], [6, 68]]) {
  cases.push({
    name:
      `softmax: fused logits backward matches reference and finite differences (${rows}×${cols})`,
    async run(gpu) {
      const x = randArray(rows * cols, 40 + cols, -3, 3);
      const tg = randInts(rows, cols, 41);
      if (rows > 1) tg[0] = -1;
      const gl = randArray(rows, 42), gh = randArray(rows, 43);
      const tx = gpu.fromArray(x, [rows, cols]), tt = gpu.fromArray(tg);
      const fwd = k.tokenLogprobs(gpu, tx, tt);
      const tgl = gpu.fromArray(gl), tgh = gpu.fromArray(gh);
      const variants = [
        { dlogp: gl, dentropy: gh },
        { dlogp: gl, dentropy: undefined },
        { dlogp: undefined, dentropy: gh },
      ];
      for (const v of variants) {
        const got = k.logitsBackward(gpu, tx, tt, fwd.lse, {
          dlogp: v.dlogp ? tgl : undefined,
          dentropy: v.dentropy ? tgh : undefined,
          entropy: fwd.entropy,
        });
        const want = ref.logitsBackward(x, tg, cols, v.dlogp, v.dentropy);
        assertClose(await gpu.readF32(got), want, TOL, "dlogits vs reference");
        // reference gradient vs central differences of the float64 forward
        const fd = finiteDiff((z) => {
          const r = ref.tokenLogprobs(z, tg, cols);
          return (v.dlogp ? dot(v.dlogp, r.logp) : 0) +
            (v.dentropy ? dot(v.dentropy, r.entropy) : 0);
        }, x);
        assertClose(want, fd, { atol: 1e-8, rtol: 1e-6 }, "reference vs finite differences");
      }
      // cross-entropy gradient is the negated logp gradient
      const dce = k.crossEntropyBackward(gpu, tx, tt, fwd.lse, tgl);
      assertClose(
        await gpu.readF32(dce),
        ref.logitsBackward(x, tg, cols, Array.from(gl, (g) => -g)),
        TOL,
        "cross-entropy backward",
      );
    },
  });
}

cases.push({
  name: "softmax: token logprobs, entropy and log-sum-exp per row (row-tree) give the workgroup " +
    "form's bits and match float64 (odd shapes, an ignored target)",
  async run(gpu) {
    for (const [rows, cols] of [[1, 1], [7, 33], [3, 65], [2, 1000], [130, 64], [300, 261]]) {
      const x = randArray(rows * cols, 3 * rows + cols, -8, 8);
      const tg = randInts(rows, cols, rows + 1);
      if (rows > 2) tg[1] = -1; // an ignored row
      const tx = gpu.fromArray(x, [rows, cols]), tt = gpu.fromArray(tg);
      const got = k.tokenLogprobs(gpu, tx, tt, { reduction: "row-tree" });
      const wg = k.tokenLogprobs(gpu, tx, tt, { reduction: "workgroup" });
      for (const n of ["logp", "entropy", "lse"] as const) {
        const a = await gpu.readF32(got[n]), b = await gpu.readF32(wg[n]);
        assert(a.every((v, i) => Object.is(v, b[i])), `${rows}×${cols} ${n}: same bits`);
      }
      const want = ref.tokenLogprobs(x, tg, cols);
      assertClose(await gpu.readF32(got.logp), want.logp, TOL, `${rows}×${cols} logp`);
      assertClose(await gpu.readF32(got.entropy), want.entropy, TOL, `${rows}×${cols} entropy`);
    }
  },
});

cases.push({
  name: "softmax: extreme logits stay finite; wrong target dtype or count is a named error",
  async run(gpu) {
    const tx = gpu.fromArray([1000, -1000, 0, 80], [1, 4]);
    const p = await gpu.readF32(k.softmax(gpu, tx));
    assertClose(p, [1, 0, 0, 0], { atol: 1e-30, rtol: 0 }, "saturated softmax");
    const { logp } = k.tokenLogprobs(gpu, tx, gpu.fromArray(new Int32Array([1])));
    assertClose(await gpu.readF32(logp), [-2000], { atol: 0, rtol: 1e-6 }, "very negative logp");
    await assertThrows(
      () => k.tokenLogprobs(gpu, tx, gpu.fromArray([1])),
      ShapeError,
      "targets must be i32",
    );
    await assertThrows(
      () => k.tokenLogprobs(gpu, tx, gpu.fromArray(new Int32Array([1, 2]))),
      ShapeError,
      "2 targets for 1 rows",
    );
  },
});
