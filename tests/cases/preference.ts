import * as k from "../../kernels/preference.ts";
import * as ref from "../../kernels/reference/preference.ts";
import { ShapeError } from "../../kernels/errors.ts";
import { assert, assertClose, assertThrows } from "../assert.ts";
import { type Case, finiteDiff, randArray } from "../_util.ts";

export const cases: Case[] = [];
const TOL = { atol: 1e-5, rtol: 1e-5 };
const FD_TOL = { atol: 1e-8, rtol: 1e-6 };

/** Response masks: row r skips (r mod 3) prompt tokens, then answers, then pads (row 0: none). */
function responseMask(rows: number, T: number): Float32Array {
  const m = new Float32Array(rows * T);
  for (let r = 0; r < rows; r++) {
    const start = r % 3, end = T - (r % 2);
    for (let t = start; t < end; t++) m[r * T + t] = 1;
  }
  if (rows > 2) m.fill(0, 0, T); // a row without response tokens gives 0 (and no NaN)
  return m;
}

for (const [rows, T] of [[1, 1], [7, 5], [33, 65]]) {
  cases.push({
    name:
      `preference: sequence log-probs (sum and mean) and their backward vs reference and FD (${rows}×${T})`,
    async run(gpu) {
      const logp = randArray(rows * T, rows + T, -6, 0), mask = responseMask(rows, T);
      const dseq = randArray(rows, 3 * rows + 1, -2, 2);
      const tl = gpu.fromArray(logp, [rows, T]), tm = gpu.fromArray(mask, [rows, T]);
      for (const average of [false, true]) {
        const what = average ? "mean" : "sum";
        assertClose(
          await gpu.readF32(k.sequenceLogprobs(gpu, tl, tm, { average })),
          ref.sequenceLogprobs(logp, mask, T, average),
          TOL,
          `sequence ${what}`,
        );
        const want = ref.sequenceLogprobsBackward(dseq, mask, T, average);
        assertClose(
          await gpu.readF32(k.sequenceLogprobsBackward(gpu, gpu.fromArray(dseq), tm, { average })),
          want,
          TOL,
          `sequence ${what} backward`,
        );
        // the backward is the gradient of Σ_r dseq_r·ℓ_r
        const f = (z: Float64Array) =>
          ref.sequenceLogprobs(z, mask, T, average).reduce((a, v, r) => a + v * dseq[r], 0);
        assertClose(want, finiteDiff(f, logp), FD_TOL, `sequence ${what} FD`);
      }
    },
  });
}

const TYPES = ["sigmoid", "hinge", "ipo", "robust", "simpo"] as const;
for (const B of [1, 7, 33]) {
  cases.push({
    name:
      `preference: DPO (sigmoid, hinge, IPO, robust) and SimPO losses, metrics and gradients vs reference and FD (B=${B})`,
    async run(gpu) {
      const pol = randArray(2 * B, 5 * B, -12, -1), rf = randArray(2 * B, 5 * B + 1, -12, -1);
      for (const lossType of TYPES) {
        const o = {
          lossType,
          beta: lossType === "simpo" ? 2 : 0.4,
          labelSmoothing: lossType === "hinge" || lossType === "ipo" ? 0 : 0.15,
          gamma: 0.5,
        };
        if (lossType === "hinge") {
          // keep every pair 1e-2 away from the hinge's kink (βh = 1), where FD is undefined
          for (let i = 0; i < B; i++) {
            const h = pol[i] - rf[i] - pol[B + i] + rf[B + i];
            if (Math.abs(o.beta * h - 1) < 1e-2) pol[i] += 0.1;
          }
        }
        const got = k.preferenceLoss(
          gpu,
          gpu.fromArray(pol),
          lossType === "simpo" ? undefined : gpu.fromArray(rf),
          o,
        );
        const want = ref.preferenceLoss(pol, rf, o);
        const M = k.PREFERENCE_METRIC, m = await gpu.readF32(got.metrics);
        assertClose(
          [
            M.loss,
            M.rewardChosen,
            M.rewardRejected,
            M.accuracy,
            M.margin,
            M.logpChosen,
            M.logpRejected,
          ]
            .map((c) => m[c]),
          [
            want.loss,
            want.rewardChosen,
            want.rewardRejected,
            want.accuracy,
            want.margin,
            want.logpChosen,
            want.logpRejected,
          ],
          TOL,
          `${lossType} metrics`,
        );
        assertClose(await gpu.readF32(got.dpolicy), want.dpolicy, TOL, `${lossType} dpolicy`);
        assertClose(
          want.dpolicy,
          finiteDiff((z) => ref.preferenceLoss(z, rf, o).loss, pol, 1e-6),
          { atol: 1e-7, rtol: 1e-5 },
          `${lossType} FD`,
        );
      }
    },
  });
}

cases.push({
  name: "preference: DPO costs log 2 at ρ = 0 and tends to its Taylor limit log 2 − βh/2 as β → 0",
  async run(gpu) {
    const pol = gpu.fromArray([-3, -7, -5, -2]); // two pairs
    const zero = k.preferenceLoss(gpu, pol, pol, { lossType: "sigmoid", beta: 0.1 });
    const m = await gpu.readF32(zero.metrics);
    assertClose([m[k.PREFERENCE_METRIC.loss]], [Math.LN2], { atol: 1e-6, rtol: 0 }, "ρ = 0");
    assertClose(await gpu.readF32(zero.dpolicy), [-0.025, -0.025, 0.025, 0.025], TOL, "−β/4 each");
    // h = ρ_w − ρ_l per pair; at β = 1e-3 the remainder β²h²/8 is below 1e-5
    const p = [-3, -7, -5, -2], r = [-4, -6, -5.5, -2.5], beta = 1e-3;
    const got = k.preferenceLoss(gpu, gpu.fromArray(p), gpu.fromArray(r), {
      lossType: "sigmoid",
      beta,
    });
    const h = [p[0] - r[0] - (p[2] - r[2]), p[1] - r[1] - (p[3] - r[3])];
    const taylor = h.reduce((a, x) => a + Math.LN2 - beta * x / 2, 0) / 2;
    const loss = (await gpu.readF32(got.metrics))[k.PREFERENCE_METRIC.loss];
    assert(Math.abs(loss - taylor) < 2e-6, `loss ${loss} vs Taylor ${taylor}`);
  },
});

for (const n of [1, 7, 33]) {
  cases.push({
    name:
      `preference: KTO loss, sums and gradient vs reference and FD; reference point z ≥ 0 (n=${n})`,
    async run(gpu) {
      const pol = randArray(n, 7 * n, -10, -1), rf = randArray(n, 7 * n + 1, -10, -1);
      const label = Float32Array.from({ length: n }, (_, i) => (i % 3 === 1 ? 0 : 1));
      const o = { beta: 0.5, desirableWeight: 1.5, undesirableWeight: 0.7 };
      const z = k.ktoReferencePoint(gpu, gpu.fromArray(pol), gpu.fromArray(rf));
      const zw = ref.ktoReferencePoint(pol, rf);
      assertClose(await gpu.readF32(z), [zw], TOL, "z");
      // a negative mean log-ratio is clipped to 0
      const neg = k.ktoReferencePoint(gpu, gpu.fromArray([-5]), gpu.fromArray([-1]));
      assertClose(await gpu.readF32(neg), [0], { atol: 0, rtol: 0 }, "z clipped");
      const got = k.ktoLoss(gpu, gpu.fromArray(pol), gpu.fromArray(rf), gpu.fromArray(label), z, o);
      const want = ref.ktoLoss(pol, rf, label, zw, o);
      assertClose(await gpu.readF32(got.sums), want.sums, TOL, "KTO sums");
      assertClose(await gpu.readF32(got.dpolicy), want.dpolicy, TOL, "KTO dpolicy");
      assertClose(
        want.dpolicy,
        finiteDiff((x) => ref.ktoLoss(x, rf, label, zw, o).loss, pol, 1e-6),
        { atol: 1e-8, rtol: 1e-5 },
        "KTO FD",
      );
    },
  });
}

cases.push({
  name: "preference: bad arguments are named errors",
  async run(gpu) {
    const a = gpu.zeros([4]);
    await assertThrows(
      () => k.preferenceLoss(gpu, a, undefined, { lossType: "sigmoid", beta: 0.1 }),
      ShapeError,
      "needs reference log-probs",
    );
    await assertThrows(
      () => k.preferenceLoss(gpu, gpu.zeros([3]), undefined, { lossType: "simpo", beta: 2 }),
      ShapeError,
      "(2B)",
    );
    await assertThrows(
      () => k.preferenceLoss(gpu, a, a, { lossType: "robust", beta: 0.1, labelSmoothing: 0.5 }),
      ShapeError,
      "[0, 0.5)",
    );
    await assertThrows(
      () => k.sequenceLogprobs(gpu, gpu.zeros([2, 3]), gpu.zeros([3, 2])),
      ShapeError,
      "one shape",
    );
    await assertThrows(
      () => k.ktoLoss(gpu, a, a, gpu.zeros([3]), gpu.zeros([1]), { beta: 0.1 }),
      ShapeError,
      "ktoLoss",
    );
  },
});
