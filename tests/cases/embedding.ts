import * as k from "../../kernels/embedding.ts";
import * as ref from "../../kernels/reference/embedding.ts";
import { ShapeError } from "../../kernels/errors.ts";
import { assertClose, assertEquals, assertThrows } from "../assert.ts";
import type { Gpu } from "../../kernels/runtime.ts";
import { type Case, dot, finiteDiff, randArray, randInts } from "../_util.ts";

export const cases: Case[] = [];
const TOL = { atol: 1e-6, rtol: 1e-6 };

// C a multiple of 4 (12, 64, 8) takes the four-columns-an-invocation kernels; N a multiple of 4
// (40, 64: many duplicates) the four-ids-a-load chains
for (
  const [N, V, C] of [
    [1, 1, 1],
    [7, 5, 33],
    [65, 13, 7],
    [33, 300, 65],
    [9, 6, 12],
    [40, 300, 64],
    [
      64,
      5,
      8,
    ],
  ]
) {
  cases.push({
    name: `embedding: token + position forward and scatter-add backward (N=${N}, V=${V}, C=${C})`,
    async run(gpu) {
      const P = N + 2;
      const wte = randArray(V * C, N + V), wpe = randArray(P * C, C);
      const toks = randInts(N, V, N); // few distinct ids: many duplicates
      const positions = Int32Array.from({ length: N }, (_, i) => i);
      const tt = gpu.fromArray(toks), tp = gpu.fromArray(positions);
      const twte = gpu.fromArray(wte, [V, C]), twpe = gpu.fromArray(wpe, [P, C]);
      const out = k.embeddingForward(gpu, tt, twte, { positions: tp, wpe: twpe, offset: 2 });
      const want = ref.embeddingForward(toks, wte, C, { positions, wpe, offset: 2 });
      assertEquals(out.shape, [N, C], "output shape");
      assertClose(await gpu.readF32(out), want, TOL, "forward");
      const dout = randArray(N * C, 99);
      const dwte0 = randArray(V * C, 98), dwpe0 = randArray(P * C, 97);
      const dwte = gpu.fromArray(dwte0, [V, C]), dwpe = gpu.fromArray(dwpe0, [P, C]);
      k.embeddingBackward(gpu, gpu.fromArray(dout, [N, C]), tt, dwte, {
        positions: tp,
        dwpe,
        offset: 2,
      });
      // sums of up to N terms of magnitude 1
      const tol = { atol: 1e-5, rtol: 1e-5 };
      assertClose(await gpu.readF32(dwte), ref.scatterAddRows(toks, dout, dwte0, C), tol, "dwte");
      assertClose(
        await gpu.readF32(dwpe),
        ref.scatterAddRows(positions, dout, dwpe0, C, 2),
        tol,
        "dwpe",
      );
    },
  });
}

cases.push({
  name: "embedding: scatter-add of more rows than a software adapter loops over at once " +
    "(130 001 rows, one id in 90 %; 2 columns, and 4 as one vec4) matches the reference",
  async run(gpu) {
    // each invocation walks the chain of its id; Mesa's llvmpipe leaves loops after 65 535
    // iterations, and id 0 here has a chain of 117 000 rows
    for (const C of [2, 4]) await longChains(gpu, C);
  },
});

/** Scatter-add of 130 001 rows of `C` columns, mostly one id, against the reference. */
async function longChains(gpu: Gpu, C: number): Promise<void> {
  const N = 130001, V = 3;
  const toks = Int32Array.from(
    { length: N },
    (_, i) => i % 10 === 0 ? 1 + (i % 20 === 0 ? 1 : 0) : 0,
  );
  const dout = randArray(N * C, 9);
  const d = gpu.zeros([V, C]);
  k.scatterAddRows(gpu, gpu.fromArray(toks), gpu.fromArray(dout, [N, C]), d);
  const want = ref.scatterAddRows(toks, dout, new Float64Array(V * C), C);
  // f32 sums of up to 117 000 terms of magnitude ≤ 1
  assertClose(await gpu.readF32(d), want, { atol: 2e-3, rtol: 1e-4 }, `dwte (C ${C})`);
}

cases.push({
  name: "embedding: reference backward equals finite differences; results are bit-reproducible",
  async run(gpu) {
    const N = 9, V = 4, C = 3;
    const toks = randInts(N, V, 5), wte = randArray(V * C, 6), w = randArray(N * C, 7);
    const grad = ref.scatterAddRows(toks, w, new Float64Array(V * C), C);
    const fd = finiteDiff((z) => dot(w, ref.embeddingForward(toks, z, C)), wte);
    assertClose(grad, fd, { atol: 1e-8, rtol: 1e-6 }, "dwte vs fd");
    const run = async () => {
      const d = gpu.zeros([V, C]);
      k.scatterAddRows(gpu, gpu.fromArray(toks), gpu.fromArray(w, [N, C]), d);
      return await gpu.readF32(d);
    };
    assertEquals(await run(), await run(), "two runs");
    await assertThrows(
      () => k.embeddingForward(gpu, gpu.fromArray([1, 2]), gpu.zeros([4, 3])),
      ShapeError,
      "tokens must be i32",
    );
  },
});

cases.push({
  name: "embedding: positions from a left-padded attention mask follow HF OPT (offset 2)",
  async run(gpu) {
    const B = 3, T = 7;
    const mask = Float32Array.from(
      { length: B * T },
      (_, i) => (i % T) >= Math.floor(i / T) * 2 ? 1 : 0,
    );
    mask[2 * T + 6] = 0; // a right pad too
    const got = await gpu.read(k.positionsFromMask(gpu, gpu.fromArray(mask, [B, T]), 2));
    assertEquals(got, ref.positionsFromMask(mask, T, 2));
    assertEquals(
      Array.from(got.subarray(T, 2 * T)),
      [1, 1, 2, 3, 4, 5, 6],
      "row 1: two pads then 0..4 (+2)",
    );
  },
});

cases.push({
  name:
    "embedding: next-token targets and last-masked values (sequence scores) match the reference",
  async run(gpu) {
    for (const [B, T] of [[1, 1], [3, 7], [5, 33]]) {
      const toks = randInts(B * T, 50, B + T);
      const mask = Float32Array.from({ length: B * T }, (_, i) => ((i * 7) % 5 === 0 ? 0 : 1));
      if (B > 1) mask.fill(0, T, 2 * T); // a row with no real token
      const vals = randArray(B * T, 3);
      const tt = gpu.fromArray(toks, [B, T]), tm = gpu.fromArray(mask, [B, T]);
      assertEquals(
        await gpu.read(k.nextTokenTargets(gpu, tt, tm)),
        ref.nextTokenTargets(toks, mask, T),
      );
      const got = k.lastMaskedValues(gpu, gpu.fromArray(vals, [B, T]), tm);
      const want = ref.lastMaskedValues(vals, mask, T);
      assertEquals(await gpu.read(got.index), want.index, "index");
      assertClose(await gpu.readF32(got.values), want.values, { atol: 0, rtol: 0 }, "values");
    }
  },
});

cases.push({
  name:
    "embedding: lastMaskedValues backward scatters the score gradient (reference + finite differences)",
  async run(gpu) {
    const B = 5, T = 7;
    const mask = Float32Array.from({ length: B * T }, (_, i) => ((i * 3) % 4 === 0 ? 0 : 1));
    mask.fill(0, 2 * T, 3 * T); // a row with no real token: index −1, no gradient
    const vals = randArray(B * T, 11), w = randArray(B, 12);
    const fwd = k.lastMaskedValues(gpu, gpu.fromArray(vals, [B, T]), gpu.fromArray(mask, [B, T]));
    const dv = k.lastMaskedValuesBackward(gpu, gpu.fromArray(w), fwd.index, T);
    const index = await gpu.read(fwd.index);
    const want = ref.lastMaskedValuesBackward(w, index, T);
    assertClose(await gpu.readF32(dv), want, { atol: 0, rtol: 0 }, "dvalues");
    const fd = finiteDiff((v) => dot(w, ref.lastMaskedValues(v, mask, T).values), vals);
    assertClose(want, fd, { atol: 1e-8, rtol: 1e-6 }, "reference vs finite differences");
  },
});
