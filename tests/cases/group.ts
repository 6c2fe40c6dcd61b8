import * as k from "../../kernels/group.ts";
import * as ref from "../../kernels/reference/group.ts";
import { ShapeError } from "../../kernels/errors.ts";
import { assertClose, assertThrows } from "../assert.ts";
import { type Case, finiteDiff, randArray, rng } from "../_util.ts";

export const cases: Case[] = [];
const TOL = { atol: 1e-5, rtol: 1e-5 };
const AGGREGATIONS = ["grpo", "bnpo", "dr_grpo", "dapo"] as const;

cases.push({
  name: "group: hand-worked GRPO and RLOO advantages and a clipped GRPO loss",
  async run(gpu) {
    // group 1: rewards 1, 0 → mean 0.5, unbiased std √0.5; group 2 ties
    const r = gpu.fromArray([1, 0, 0.5, 0.5]);
    const s = Math.SQRT1_2;
    const g = k.groupAdvantages(gpu, r, { groupSize: 2 });
    assertClose(
      await gpu.readF32(g.advantages),
      [0.5 / (s + 1e-4), -0.5 / (s + 1e-4), 0, 0],
      TOL,
      "group-scaled",
    );
    assertClose(await gpu.readF32(g.zeroStd), [0, 1], TOL, "ties");
    // batch std of [1, 0, .5, .5]: mean .5, Σd² = .5, unbiased var 1/6
    const b = k.groupAdvantages(gpu, r, { groupSize: 2, scale: "batch" });
    const bs = Math.sqrt(1 / 6) + 1e-4;
    assertClose(await gpu.readF32(b.advantages), [0.5 / bs, -0.5 / bs, 0, 0], TOL, "batch-scaled");
    const n = k.groupAdvantages(gpu, r, { groupSize: 2, scale: "none" });
    assertClose(await gpu.readF32(n.advantages), [0.5, -0.5, 0, 0], TOL, "Dr. GRPO");
    // RLOO, G = 3: rewards 3, 0, 0 → 3 − 0, 0 − 1.5, 0 − 1.5
    const l = k.groupAdvantages(gpu, gpu.fromArray([3, 0, 0]), {
      groupSize: 3,
      baseline: "leave-one-out",
    });
    assertClose(await gpu.readF32(l.advantages), [3, -1.5, -1.5], TOL, "leave-one-out");
    // loss: two sequences, A = +1 and −1; tokens with logp − old = 0.5 (ratio e^.5 ≈ 1.6487)
    // row 0: A = 1, ratio clipped at 1.2 → l = −1.2, no gradient (high clip)
    // row 1: A = −1 → min(−1.6487, −1.2·… ) picks −ratio·(−1)… : c1 = −1.6487, c2 = −1.2,
    //   l = 1.6487, gradient −A·ratio = 1.6487 (the unclipped branch)
    const e = Math.exp(0.5);
    const lp = gpu.fromArray([0.5, 0.5, 0.5, 0.5], [2, 2]);
    const old = gpu.zeros([2, 2]);
    const mask = gpu.fromArray([1, 1, 1, 0], [2, 2]);
    const opts = { epsilonLow: 0.2, epsilonHigh: 0.2, beta: 0 } as const;
    const adv = gpu.fromArray([1, -1]);
    // grpo: mean over rows of row means = (−1.2 + 1.6487) / 2
    const grpo = k.grpoLoss(gpu, lp, old, adv, mask, { ...opts, aggregation: "grpo" });
    assertClose([(await gpu.readF32(grpo.loss))[0]], [(-1.2 + e) / 2], TOL, "grpo loss");
    assertClose(await gpu.readF32(grpo.dlogp), [0, 0, e / 2, 0], TOL, "grpo gradient");
    assertClose([(await gpu.readF32(grpo.clipHigh))[2]], [2 / 3], TOL, "high clip");
    assertClose([(await gpu.readF32(grpo.clipLow))[2]], [0], TOL, "low clip");
    // bnpo: over 3 tokens; dr_grpo: over B·L = 2·4; dapo with 6 generation-batch tokens
    const bnpo = k.grpoLoss(gpu, lp, old, adv, mask, { ...opts, aggregation: "bnpo" });
    assertClose([(await gpu.readF32(bnpo.loss))[0]], [(-2.4 + e) / 3], TOL, "bnpo loss");
    const dr = k.grpoLoss(gpu, lp, old, adv, mask, {
      ...opts,
      aggregation: "dr_grpo",
      maxCompletionLength: 4,
    });
    assertClose([(await gpu.readF32(dr.loss))[0]], [(-2.4 + e) / 8], TOL, "dr_grpo loss");
    const dapo = k.grpoLoss(gpu, lp, old, adv, mask, {
      ...opts,
      aggregation: "dapo",
      tokenCount: 6,
    });
    assertClose([(await gpu.readF32(dapo.loss))[0]], [(-2.4 + e) / 6], TOL, "dapo loss");
    // clip-higher: ε_high = 0.7 lets ratio 1.6487 through for A > 0
    const hi = k.grpoLoss(gpu, lp, old, adv, mask, {
      ...opts,
      epsilonHigh: 0.7,
      aggregation: "bnpo",
    });
    assertClose([(await gpu.readF32(hi.loss))[0]], [(-2 * e + e) / 3], TOL, "clip-higher loss");
    assertClose(await gpu.readF32(hi.dlogp), [-e / 3, -e / 3, e / 3, 0], TOL, "clip-higher grad");
    // β·k3 with logp = ref: no KL, no KL gradient
    const kl0 = k.grpoLoss(gpu, lp, old, adv, mask, {
      ...opts,
      beta: 0.04,
      logpRef: lp,
      aggregation: "bnpo",
    });
    assertClose([(await gpu.readF32(kl0.kl))[2]], [0], TOL, "k3 at the reference");
    assertClose(await gpu.readF32(kl0.dlogp), await gpu.readF32(bnpo.dlogp), TOL, "no KL grad");
  },
});

cases.push({
  name: "group: bad shapes and options are named errors",
  async run(gpu) {
    const r = gpu.fromArray([1, 2, 3]);
    await assertThrows(() => k.groupAdvantages(gpu, r, { groupSize: 2 }), ShapeError, "dividing");
    await assertThrows(() => k.groupAdvantages(gpu, r, { groupSize: 1 }), ShapeError, "≥ 2");
    const x = gpu.zeros([2, 3]), a = gpu.zeros([2]);
    const o = { epsilonLow: 0.2, epsilonHigh: 0.2, beta: 0, aggregation: "grpo" } as const;
    await assertThrows(() => k.grpoLoss(gpu, x, x, gpu.zeros([6]), x, o), ShapeError, "one per");
    await assertThrows(() => k.grpoLoss(gpu, x, gpu.zeros([5]), a, x, o), ShapeError, "logpOld");
    await assertThrows(
      () => k.grpoLoss(gpu, x, x, a, x, { ...o, beta: 0.1 }),
      ShapeError,
      "logpRef",
    );
    await assertThrows(
      () => k.grpoLoss(gpu, x, x, a, x, { ...o, aggregation: "dr_grpo" }),
      ShapeError,
      "maxCompletionLength",
    );
    await assertThrows(
      () => k.grpoLoss(gpu, x, x, a, x, { ...o, epsilonLow: 1 }),
      ShapeError,
      "epsilonLow",
    );
  },
});

/** Ragged response masks: row b keeps its first tokens, at least one. */
function ragged(B: number, T: number, seed: number): Float32Array {
  const r = rng(seed), m = new Float32Array(B * T);
  for (let b = 0; b < B; b++) {
    const start = b % 2, len = 1 + Math.floor(r() * (T - start));
    for (let t = start; t < start + len && t < T; t++) m[b * T + t] = 1;
  }
  return m;
}

for (const [groupsN, G, T] of [[1, 2, 1], [3, 5, 7], [7, 4, 33]]) {
  const B = groupsN * G, n = B * T;
  cases.push({
    name: `group: advantages (3 scalings, RLOO) and the GRPO loss in 4 aggregations match the ` +
      `reference, gradients match finite differences (${groupsN} groups × ${G}, T ${T})`,
    async run(gpu) {
      // rewards in [0, 1] with ties (a grader's) and a tied group
      const r = rng(B);
      const rew = Float32Array.from({ length: B }, () => Math.round(r() * 4) / 4);
      for (let j = 0; j < G; j++) rew[j] = 0.5;
      const rt = gpu.fromArray(rew);
      for (const scale of ["group", "batch", "none"] as const) {
        const got = k.groupAdvantages(gpu, rt, { groupSize: G, scale });
        const want = ref.groupAdvantages(rew, G, scale);
        assertClose(await gpu.readF32(got.advantages), want.advantages, TOL, `${scale} advantages`);
        assertClose(await gpu.readF32(got.zeroStd), want.zeroStd, TOL, "zero std");
      }
      const loo = k.groupAdvantages(gpu, rt, { groupSize: G, baseline: "leave-one-out" });
      assertClose(
        await gpu.readF32(loo.advantages),
        ref.groupAdvantages(rew, G, "none", "leave-one-out").advantages,
        TOL,
        "RLOO advantages",
      );
      const mask = ragged(B, T, n + 3);
      const old = randArray(n, n + 1, -3, -0.1);
      // ratios spread across both clip boundaries, away from them by > 1e-3 (FD)
      const lp = Float32Array.from(old, (o, i) => {
        let d = 0.6 * Math.sin(1.7 * i + 0.3);
        for (const edge of [Math.log(0.8), Math.log(1.28)]) {
          if (Math.abs(d - edge) < 2e-3) d += 5e-3;
        }
        return o + d;
      });
      const lref = Float32Array.from(old, (o, i) => o + 0.3 * Math.cos(i));
      const adv = randArray(B, B + 7, -1.5, 1.5);
      const tl = gpu.fromArray(lp, [B, T]), tm = gpu.fromArray(mask, [B, T]);
      const to = gpu.fromArray(old, [B, T]), tr = gpu.fromArray(lref, [B, T]);
      const ta = gpu.fromArray(adv);
      for (const aggregation of AGGREGATIONS) {
        const o = {
          epsilonLow: 0.2,
          epsilonHigh: 0.28,
          beta: 0.04,
          logpRef: lref,
          aggregation,
          maxCompletionLength: T + 2,
          tokenCount: aggregation === "dapo" ? 3 * n : undefined,
        };
        const got = k.grpoLoss(gpu, tl, to, ta, tm, { ...o, logpRef: tr });
        const want = ref.grpoLoss(lp, old, adv, mask, T, o);
        assertClose([(await gpu.readF32(got.loss))[0]], [want.loss], TOL, `${aggregation} loss`);
        assertClose(await gpu.readF32(got.dlogp), want.dlogp, TOL, `${aggregation} dlogp`);
        assertClose([(await gpu.readF32(got.clipLow))[2]], [want.clipLow], TOL, "clip low");
        assertClose([(await gpu.readF32(got.clipHigh))[2]], [want.clipHigh], TOL, "clip high");
        assertClose([(await gpu.readF32(got.kl))[2]], [want.kl], TOL, "mean k3");
        const fd = finiteDiff((z) => ref.grpoLoss(z, old, adv, mask, T, o).loss, lp, 1e-7);
        assertClose(want.dlogp, fd, { atol: 1e-6, rtol: 1e-5 }, `${aggregation} gradient vs FD`);
      }
    },
  });
}
