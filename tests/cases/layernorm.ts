import * as k from "../../kernels/layernorm.ts";
import * as ref from "../../kernels/reference/layernorm.ts";
import { GpuLimitError, ShapeError } from "../../kernels/errors.ts";
import { assertClose, assertThrows } from "../assert.ts";
import type { Gpu } from "../../kernels/runtime.ts";
import { type Case, dot, finiteDiff, randArray } from "../_util.ts";

export const cases: Case[] = [];
// normalisation divides by std ≈ 1: f32 rounding of row sums over ≤ 1000 terms
const TOL = { atol: 2e-5, rtol: 2e-5 };

for (
  const [rows, C, variant] of [
    [1, 1, "row-thread"],
    [7, 33, "row-thread"],
    [3, 65, "row-thread"],
    [2, 1000, "row-thread"],
    [65, 7, "row-thread"],
    [300, 129, "row-thread"],
    [1, 1, "workgroup"],
    [7, 33, "workgroup"],
    [3, 65, "workgroup"],
    [2, 1000, "workgroup"],
    [65, 7, "workgroup"],
    [1, 1, "row-tree"],
    [7, 33, "row-tree"],
    [3, 65, "row-tree"],
    [2, 1000, "row-tree"],
    [300, 129, "row-tree"],
    [33, 68, "row-tree"], // four columns a load (C a multiple of 4)
    [33, 68, "workgroup"],
  ] as const
) {
  cases.push({
    name:
      `layernorm (${variant}): forward, saved stats and backward match reference (${rows}×${C})`,
    async run(gpu) {
      const x = randArray(rows * C, rows * C, -2, 3), w = randArray(C, 2, 0.5, 1.5);
      const b = randArray(C, 3), dy = randArray(rows * C, 4);
      const tx = gpu.fromArray(x, [rows, C]), tw = gpu.fromArray(w), tb = gpu.fromArray(b);
      const f = k.layernormForward(gpu, tx, tw, tb, { variant });
      const want = ref.layernormForward(x, w, b, C);
      assertClose(await gpu.readF32(f.y), want.y, TOL, "y");
      assertClose(await gpu.readF32(f.mean), want.mean, TOL, "mean");
      assertClose(await gpu.readF32(f.rstd), want.rstd, { atol: 1e-3, rtol: 1e-4 }, "rstd");
      const dw0 = randArray(C, 5), db0 = randArray(C, 6);
      const tdw = gpu.fromArray(dw0), tdb = gpu.fromArray(db0);
      const dx = k.layernormBackward(gpu, gpu.fromArray(dy, [rows, C]), tx, tw, f, tdw, tdb, {
        variant,
      });
      const g = ref.layernormBackward(dy, x, w, C);
      // dx subtracts two means of size-1 terms: allow atol 1e-4 for C=1000 rows
      assertClose(await gpu.readF32(dx), g.dx, { atol: 1e-4, rtol: 1e-4 }, "dx");
      assertClose(await gpu.readF32(tdw), g.dw.map((v, i) => v + dw0[i]), {
        atol: 1e-4,
        rtol: 1e-4,
      }, "dweight (accumulated)");
      assertClose(await gpu.readF32(tdb), g.db.map((v, i) => v + db0[i]), {
        atol: 1e-4,
        rtol: 1e-4,
      }, "dbias (accumulated)");
    },
  });
}

cases.push({
  name: "layernorm: weight and bias gradients over more rows than a software adapter runs in " +
    "one loop (130 001 rows; 2 columns, and 4 read as one vec4) match the reference",
  async run(gpu) {
    for (const C of [2, 4]) await manyRows(gpu, C);
  },
});

/** Layernorm parameter gradients over 130 001 rows of `C` columns against the reference. */
async function manyRows(gpu: Gpu, C: number): Promise<void> {
  const rows = 130001;
  const x = randArray(rows * C, 21, -2, 3), w = randArray(C, 22, 0.5, 1.5);
  const dy = randArray(rows * C, 23);
  const tx = gpu.fromArray(x, [rows, C]), tw = gpu.fromArray(w);
  const f = k.layernormForward(gpu, tx, tw, gpu.fromArray(randArray(C, 24)));
  const tdw = gpu.zeros([C]), tdb = gpu.zeros([C]);
  k.layernormBackward(gpu, gpu.fromArray(dy, [rows, C]), tx, tw, f, tdw, tdb);
  const g = ref.layernormBackward(dy, x, w, C);
  // f32 sums of 130 001 terms of magnitude ≤ 1 (x̂ = ±1 with two columns, ≤ √3 with four)
  const tol = { atol: 2e-3, rtol: 1e-4 };
  assertClose(await gpu.readF32(tdw), g.dw, tol, `dweight (C ${C})`);
  assertClose(await gpu.readF32(tdb), g.db, tol, `dbias (C ${C})`);
}

cases.push({
  name: "layernorm: a one-invocation-per-row form forced past a software adapter's loop cap " +
    "is a named error",
  async run(gpu) {
    if (!gpu.isFallbackAdapter) return; // no cap to pass on a hardware adapter
    const C = 60000, x = gpu.zeros([1, C]), w = gpu.zeros([C]), b = gpu.zeros([C]);
    for (const variant of ["row-tree", "row-thread"] as const) {
      await assertThrows(
        () => k.layernormForward(gpu, x, w, b, { variant }),
        GpuLimitError,
        "loop iterations per invocation",
      );
    }
  },
});

cases.push({
  name: "layernorm: reference gradients equal central finite differences; accumulateDx adds",
  async run(gpu) {
    const rows = 3, C = 7;
    const x = randArray(rows * C, 11, -2, 2), w = randArray(C, 12), b = randArray(C, 13);
    const dy = randArray(rows * C, 14);
    const g = ref.layernormBackward(dy, x, w, C);
    const fdx = finiteDiff((z) => dot(dy, ref.layernormForward(z, w, b, C).y), x);
    const fdw = finiteDiff((z) => dot(dy, ref.layernormForward(x, z, b, C).y), w);
    const fdb = finiteDiff((z) => dot(dy, ref.layernormForward(x, w, z, C).y), b);
    const tol = { atol: 1e-7, rtol: 1e-6 };
    assertClose(g.dx, fdx, tol, "dx vs fd");
    assertClose(g.dw, fdw, tol, "dw vs fd");
    assertClose(g.db, fdb, tol, "db vs fd");
    const tx = gpu.fromArray(x, [rows, C]), tw = gpu.fromArray(w);
    for (const variant of ["row-thread", "workgroup", "row-tree"] as const) {
      const f = k.layernormForward(gpu, tx, tw, gpu.fromArray(b), { variant });
      const base = randArray(rows * C, 15);
      const dx = gpu.fromArray(base, [rows, C]);
      const dyT = gpu.fromArray(dy, [rows, C]);
      k.layernormBackward(gpu, dyT, tx, tw, f, gpu.zeros([C]), gpu.zeros([C]), {
        dx,
        accumulateDx: true,
        variant,
      });
      assertClose(await gpu.readF32(dx), g.dx.map((v, i) => v + base[i]), TOL, variant);
    }
    await assertThrows(
      () => k.layernormForward(gpu, tx, gpu.zeros([6]), gpu.zeros([7])),
      ShapeError,
      "weight has 6 elements",
    );
  },
});

cases.push({
  name: "layernorm: the row-tree form gives the workgroup form's bits (forward, saved stats, " +
    "dx, accumulated dx, dweight, dbias), so the default may pick either by shape and adapter",
  async run(gpu) {
    // C 64, 200 and 256: rows of vec4s unrolled (several terms per lane partial past 64); 768:
    // the vec4 loop; 5, 65, 129, 3000: the scalar loop
    const shapes = [[1, 1], [3, 5], [17, 64], [9, 200], [4, 256], [5, 65], [300, 129], [7, 768], [
      2,
      3000,
    ]];
    for (const [rows, C] of shapes) {
      const tx = gpu.fromArray(randArray(rows * C, 21, -3, 3), [rows, C]);
      const tw = gpu.fromArray(randArray(C, 22)), tb = gpu.fromArray(randArray(C, 23));
      const dy = gpu.fromArray(randArray(rows * C, 24), [rows, C]);
      const bits: Record<string, Float32Array[]> = {};
      for (const variant of ["workgroup", "row-tree"] as const) {
        const f = k.layernormForward(gpu, tx, tw, tb, { variant });
        const dw = gpu.zeros([C]), db = gpu.zeros([C]);
        const dx = k.layernormBackward(gpu, dy, tx, tw, f, dw, db, { variant });
        const acc = gpu.fromArray(randArray(rows * C, 25), [rows, C]);
        k.layernormBackward(gpu, dy, tx, tw, f, null, null, {
          variant,
          dx: acc,
          accumulateDx: true,
        });
        bits[variant] = await Promise.all(
          [f.y, f.mean, f.rstd, dx, acc, dw, db].map(gpu.readF32, gpu),
        );
      }
      bits.workgroup.forEach((a, j) => {
        const i = a.findIndex((v, i) => !Object.is(v, bits["row-tree"][j][i]));
        if (i >= 0) {
          throw new Error(
            `${rows}×${C} output ${j}[${i}]: workgroup ${a[i]} vs row-tree ${
              bits["row-tree"][j][i]
            }`,
          );
        }
      });
    }
  },
});
