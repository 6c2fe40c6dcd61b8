import { sampleTokens } from "../../kernels/sampling.ts";
import { allowedTokens, sampleRef } from "../../kernels/reference/sampling.ts";
import { GpuLimitError, ShapeError } from "../../kernels/errors.ts";
import type { Gpu } from "../../kernels/runtime.ts";
import { assert, assertClose, assertEquals, assertThrows } from "../assert.ts";
import { type Case, randArray } from "../_util.ts";

export const cases: Case[] = [];

function targets(gpu: Gpu, B: number, Tcap: number) {
  return {
    tokens: gpu.zeros([B, Tcap], "i32"),
    logprobs: gpu.zeros([B, Tcap]),
    responseMask: gpu.zeros([B, Tcap]),
    finished: gpu.zeros([B], "u32"),
  };
}

const SETTINGS = [
  { temperature: 0, topK: 0, topP: 1, label: "greedy" },
  { temperature: 0.7, topK: 0, topP: 1, label: "temperature" },
  { temperature: 1, topK: 5, topP: 1, label: "top-k" },
  { temperature: 1, topK: 0, topP: 0.8, label: "top-p" },
  { temperature: 1.3, topK: 10, topP: 0.9, label: "top-k + top-p" },
];

// 4100: with top-k the row form's loops would exceed a software adapter's loop cap (see
// SOFTWARE_LOOP_BUDGET), so the default must take the workgroup form there
for (const V of [1, 7, 33, 300, 4100, 50272]) {
  cases.push({
    name: `sampling: greedy/temperature/top-k/top-p draws equal the reference (V=${V})`,
    async run(gpu) {
      const B = 9, Tcap = 3;
      const z = randArray(B * V, V, -4, 4);
      const logits = gpu.fromArray(z, [B, V]);
      let compared = 0, skipped = 0;
      for (const [si, s] of SETTINGS.entries()) {
        const out = targets(gpu, B, Tcap);
        const step = 17 + si;
        sampleTokens(gpu, logits, out, 1, { ...s, seed: 99 }, { eos: -1, pad: 0, step });
        const toks = await gpu.read(out.tokens), lps = await gpu.readF32(out.logprobs);
        const mask = await gpu.readF32(out.responseMask);
        for (let b = 0; b < B; b++) {
          const want = sampleRef(z.subarray(b * V, (b + 1) * V), b, { ...s, seed: 99, step });
          assertEquals(mask[b * Tcap + 1], 1, "response mask");
          // the GPU compares f32 keys: skip rows whose two best keys are closer than f32 error
          if (want.margin < 1e-4) {
            skipped++;
            continue;
          }
          compared++;
          assertEquals(toks[b * Tcap + 1], want.token, `${s.label} row ${b}`);
          assertClose([lps[b * Tcap + 1]], [want.logp], { atol: 1e-5, rtol: 1e-5 }, "logprob");
        }
      }
      assert(compared >= 40 && skipped <= 5, `compared ${compared}, skipped ${skipped}`);
    },
  });
}

for (const V of [1, 37, 300, 1000]) {
  cases.push({
    name: `sampling: the one-invocation-per-row form gives the workgroup form's tokens, ` +
      `log-probs and finished flags bit for bit (V=${V})`,
    async run(gpu) {
      const B = 11, Tcap = 4;
      const logits = gpu.fromArray(randArray(B * V, V + 1, -6, 6), [B, V]);
      const eos = Math.min(V - 1, 3);
      for (const [si, s] of SETTINGS.entries()) {
        const got = [];
        for (const form of ["workgroup", "row"] as const) {
          const out = targets(gpu, B, Tcap);
          gpu.write(out.finished, Uint32Array.from({ length: B }, (_, b) => b % 5 === 4 ? 1 : 0));
          for (let t = 0; t < Tcap; t++) {
            sampleTokens(
              gpu,
              logits,
              out,
              t,
              { ...s, seed: 5 },
              { eos, pad: 1, step: si + t },
              form,
            );
          }
          got.push([
            ...await gpu.read(out.tokens),
            ...new Uint32Array((await gpu.readF32(out.logprobs)).buffer),
            ...await gpu.read(out.responseMask),
            ...await gpu.read(out.finished),
          ]);
        }
        assertEquals(got[1], got[0], `${s.label}: row form against workgroup form`);
      }
    },
  });
}

cases.push({
  name: "sampling: frequencies follow the renormalised top-k/top-p distribution",
  async run(gpu) {
    const V = 8, B = 6000;
    const row = [2.0, 1.5, 1.0, 0.5, 0.0, -0.5, -1.0, 3.0];
    const logits = gpu.fromArray(Float32Array.from({ length: B * V }, (_, i) => row[i % V]), [
      B,
      V,
    ]);
    for (
      const s of [{ temperature: 1, topK: 4, topP: 1 }, { temperature: 0.8, topK: 0, topP: 0.7 }]
    ) {
      const out = targets(gpu, B, 1);
      sampleTokens(gpu, logits, out, 0, { ...s, seed: 3 }, { eos: -1, pad: 0, step: 0 });
      const toks = await gpu.read(out.tokens);
      const allowed = allowedTokens(row, s.temperature, s.topK, s.topP);
      const w = allowed.map((i) => Math.exp(row[i] / s.temperature));
      const total = w.reduce((a, b) => a + b, 0);
      const counts = new Array(V).fill(0);
      for (const t of toks) counts[t]++;
      for (let i = 0; i < V; i++) {
        const k = allowed.indexOf(i);
        const p = k < 0 ? 0 : w[k] / total;
        const f = counts[i] / B;
        // 5 standard errors of a binomial frequency
        assert(
          Math.abs(f - p) <= 5 * Math.sqrt(p * (1 - p) / B) + 1e-9,
          `token ${i}: freq ${f}, p ${p} (${JSON.stringify(s)})`,
        );
      }
    }
  },
});

cases.push({
  name: "sampling: EOS finishes a row; finished rows get pad with mask 0; bad options are named",
  async run(gpu) {
    const V = 5, Tcap = 3;
    // row 0 greedily emits token 2 (= EOS), row 1 emits token 4
    const logits = gpu.fromArray([0, 0, 9, 0, 0, 0, 0, 0, 0, 9], [2, V]);
    const out = targets(gpu, 2, Tcap);
    for (let t = 0; t < Tcap; t++) {
      sampleTokens(gpu, logits, out, t, { greedy: true }, { eos: 2, pad: 1, step: t });
    }
    assertEquals(await gpu.read(out.tokens), [2, 1, 1, 4, 4, 4]);
    assertEquals(await gpu.read(out.responseMask), [1, 0, 0, 1, 1, 1]);
    assertEquals(await gpu.read(out.finished), [1, 0]);
    await assertThrows(
      () => sampleTokens(gpu, logits, out, 0, { topP: 0 }, { eos: 2, pad: 1, step: 0 }),
      ShapeError,
      "topP must be in (0, 1]",
    );
    await assertThrows(
      () => sampleTokens(gpu, logits, out, 3, {}, { eos: 2, pad: 1, step: 0 }),
      ShapeError,
      "column 3 outside",
    );
    // the row form forced past a software adapter's loop cap is a named error, not token 0
    if (gpu.isFallbackAdapter) {
      const V = 50272, wide = gpu.zeros([2, V]);
      await assertThrows(
        () => sampleTokens(gpu, wide, out, 0, { topK: 50 }, { eos: 2, pad: 1, step: 0 }, "row"),
        GpuLimitError,
        "loop iterations per invocation",
      );
    }
  },
});
