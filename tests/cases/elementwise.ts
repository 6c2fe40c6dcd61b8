import * as ew from "../../kernels/elementwise.ts";
import * as ref from "../../kernels/reference/elementwise.ts";
import { randNormalRef, randUniformRef } from "../../kernels/reference/prng.ts";
import { randomNormal, randomUniform, randU32 } from "../../kernels/prng.ts";
import { ShapeError } from "../../kernels/errors.ts";
import { assert, assertClose, assertEquals, assertThrows } from "../assert.ts";
import { type Case, finiteDiff, randArray } from "../_util.ts";

// f32 rounding of one operation: relative 2^-23 of the result, plus tiny absolute slack.
const EXACT = { atol: 1e-6, rtol: 1e-6 };

export const cases: Case[] = [];
const SIZES = [1, 7, 33, 65, 1000];

for (const n of SIZES) {
  cases.push({
    name: `elementwise: add/sub/mul/axpy/scale/relu/gelu match float64 reference (n=${n})`,
    async run(gpu) {
      const a = randArray(n, 1 + n, -3, 3), b = randArray(n, 2 + n, -3, 3);
      const ta = gpu.fromArray(a), tb = gpu.fromArray(b);
      const checks: [string, Float64Array, ReturnType<typeof ew.add>][] = [
        ["add", ref.add(a, b), ew.add(gpu, ta, tb)],
        ["sub", ref.sub(a, b), ew.sub(gpu, ta, tb)],
        ["mul", ref.mul(a, b), ew.mul(gpu, ta, tb)],
        ["axpy", ref.axpy(0.5, a, b), ew.axpy(gpu, 0.5, ta, tb, gpu.empty([n]))],
        ["scale", ref.scale(a, -1.5), ew.scale(gpu, ta, -1.5)],
        ["relu", ref.relu(a), ew.relu(gpu, ta)],
        ["gelu", ref.gelu(a), ew.gelu(gpu, ta)],
        ["reluBackward", ref.reluBackward(b, a), ew.reluBackward(gpu, tb, ta)],
        ["geluBackward", ref.geluBackward(b, a), ew.geluBackward(gpu, tb, ta)],
      ];
      for (const [name, want, t] of checks) {
        // gelu uses exp/tanh: allow a few ulp of f32 on top
        const tol = name.startsWith("gelu") ? { atol: 2e-6, rtol: 2e-5 } : EXACT;
        assertClose(await gpu.readF32(t), want, tol, name);
        t.dispose();
      }
      ta.dispose();
      tb.dispose();
    },
  });
}

cases.push({
  name: "elementwise: relu and gelu backward equal central finite differences",
  run() {
    const n = 33;
    const x = randArray(n, 5, -2, 2), w = randArray(n, 6);
    // keep x away from ReLU's kink so the difference quotient is defined
    for (let i = 0; i < n; i++) if (Math.abs(x[i]) < 1e-3) x[i] = 0.5;
    for (const [f, b] of [[ref.relu, ref.reluBackward], [ref.gelu, ref.geluBackward]] as const) {
      const fd = finiteDiff(
        (xs) => {
          const y = f(xs);
          let s = 0;
          for (let i = 0; i < n; i++) s += w[i] * y[i];
          return s;
        },
        x,
        1e-6,
      );
      assertClose(b(w, x), fd, { atol: 1e-7, rtol: 1e-6 }, f.name + " gradient");
    }
  },
});

cases.push({
  name: "elementwise: in-place update, fill and shape errors",
  async run(gpu) {
    const y = gpu.fromArray([1, 2, 3]);
    ew.axpy(gpu, 2, gpu.fromArray([1, 1, 1]), y);
    assertEquals(await gpu.read(y), [3, 4, 5]);
    ew.fill(gpu, y, 7);
    assertEquals(await gpu.read(y), [7, 7, 7]);
    await assertThrows(() => ew.add(gpu, y, gpu.zeros([4])), ShapeError, "element counts differ");
  },
});

cases.push({
  name: "elementwise: f16 casts round-trip and match IEEE half encodings",
  async run(gpu) {
    const vals = [0, 1, -2, 0.5, 65504, 1 / 3, -0.1];
    const packed = ew.castF32ToF16(gpu, gpu.fromArray(vals));
    const words = await gpu.read(packed) as Uint32Array;
    assertEquals(words[0], 0x3c00_0000 >>> 0, "f16 of (0, 1)");
    assertEquals(words[3], 0x0000_ae66, "f16 of (-0.1, pad 0)");
    const back = await gpu.readF32(ew.castF16ToF32(gpu, packed, [7]));
    assertClose(back, vals, { atol: 0, rtol: 2 ** -11 }, "half round trip");
  },
});

for (const n of [1, 33, 4097]) {
  cases.push({
    name: `prng: uniform is bit-exact with the host twin and normal matches its reference (n=${n})`,
    async run(gpu) {
      const u = await gpu.readF32(randomUniform(gpu, [n], { seed: 1234, stream: 7 }));
      assertEquals(u, Float32Array.from(randUniformRef(n, 1234, 7)), "uniform");
      const z = await gpu.readF32(randomNormal(gpu, [n], { seed: 99, stream: 3, mean: 1, std: 2 }));
      assertClose(z, randNormalRef(n, 99, 3, 1, 2), { atol: 2e-5, rtol: 2e-5 }, "normal");
      assert(randU32(1, 0, 0) !== randU32(2, 0, 0), "seeds differ");
    },
  });
}

cases.push({
  name: "prng: uniform and normal have the right moments",
  async run(gpu) {
    const n = 1 << 16;
    const u = await gpu.readF32(randomUniform(gpu, [n], { seed: 5, lo: -1, hi: 3 }));
    const z = await gpu.readF32(randomNormal(gpu, [n], { seed: 6, mean: 0, std: 1 }));
    const mean = (a: Float32Array) => a.reduce((s, v) => s + v, 0) / a.length;
    const varr = (a: Float32Array, m: number) => a.reduce((s, v) => s + (v - m) ** 2, 0) / a.length;
    // uniform(-1, 3): mean 1, var 16/12; tolerance ≈ 5 standard errors
    assert(Math.abs(mean(u) - 1) < 0.03, `uniform mean ${mean(u)}`);
    assert(Math.abs(varr(u, 1) - 4 / 3) < 0.03, `uniform var ${varr(u, 1)}`);
    assert(Math.abs(mean(z)) < 0.02, `normal mean ${mean(z)}`);
    assert(Math.abs(varr(z, 0) - 1) < 0.03, `normal var ${varr(z, 0)}`);
    assert(Math.min(...u) >= -1 && Math.max(...u) < 3, "uniform range");
  },
});

cases.push({
  name: "elementwise: concatColumns joins rows of f32 and i32 tensors (odd widths, empty side)",
  async run(gpu) {
    for (const [B, Ta, Tb] of [[1, 1, 1], [3, 7, 5], [2, 0, 33], [5, 65, 0]]) {
      const a = randArray(B * Ta, Ta + 1), b = randArray(B * Tb, Tb + 2);
      const got = ew.concatColumns(gpu, gpu.fromArray(a, [B, Ta]), gpu.fromArray(b, [B, Tb]));
      assertEquals(got.shape, [B, Ta + Tb]);
      assertClose(
        await gpu.readF32(got),
        ref.concatColumns(a, b, B),
        { atol: 0, rtol: 0 },
        `f32 ${B}×${Ta}+${Tb}`,
      );
    }
    const ia = new Int32Array([1, -2, 3, 4]), ib = new Int32Array([7, 8]);
    const gi = ew.concatColumns(gpu, gpu.fromArray(ia, [2, 2]), gpu.fromArray(ib, [2, 1]));
    assertEquals(await gpu.read(gi), [1, -2, 7, 3, 4, 8], "i32 bits copied exactly");
    await assertThrows(
      () => ew.concatColumns(gpu, gpu.zeros([2, 3]), gpu.zeros([3, 3])),
      ShapeError,
      "concatColumns",
    );
  },
});
