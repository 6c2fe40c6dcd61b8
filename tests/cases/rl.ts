import * as k from "../../kernels/rl.ts";
import * as ref from "../../kernels/reference/rl.ts";
import { ShapeError } from "../../kernels/errors.ts";
import { assertClose, assertThrows } from "../assert.ts";
import { type Case, finiteDiff, randArray, rng } from "../_util.ts";

export const cases: Case[] = [];
const TOL = { atol: 1e-5, rtol: 1e-5 };

/** Response masks: row b has a prompt of (b mod 3) tokens, then a response, then pads. */
function responseMask(B: number, T: number, seed: number): Float32Array {
  const r = rng(seed);
  const m = new Float32Array(B * T);
  for (let b = 0; b < B; b++) {
    const start = b % 3, end = Math.max(start + 1, T - Math.floor(r() * 3));
    for (let t = start; t < Math.min(end, T); t++) m[b * T + t] = 1;
  }
  return m;
}

cases.push({
  name: "rl: hand-worked GAE, shaped rewards, policy and value loss examples",
  async run(gpu) {
    // GAE: r = [0, 0, 1], V = 0.5, γ = 1, λ = 0.95
    const g = k.gae(
      gpu,
      gpu.fromArray([0, 0, 1], [1, 3]),
      gpu.fromArray([0.5, 0.5, 0.5], [1, 3]),
      gpu.fromArray([1, 1, 1], [1, 3]),
      {
        gamma: 1,
        lambda: 0.95,
      },
    );
    assertClose(await gpu.readF32(g.advantages), [0.45125, 0.475, 0.5], TOL, "advantages");
    assertClose(await gpu.readF32(g.returns), [0.95125, 0.975, 1.0], TOL, "returns");
    // rewards: β = 0.1, score 7 clipped to 5 at the last response token
    const r = k.shapedRewards(
      gpu,
      gpu.fromArray([0.1, 0.2, 0.3], [1, 3]),
      gpu.fromArray([7]),
      gpu.fromArray([0, 1, 1], [1, 3]),
      {
        beta: 0.1,
        scoreClip: 5,
      },
    );
    assertClose(await gpu.readF32(r), [0, -0.02, 4.97], TOL, "shaped rewards");
    // policy: ratio 1.5, ε = 0.2; A = +1 → clipped branch (gradient 0); A = −1 → unclipped
    const lp = Math.log(1.5);
    const pl = k.ppoPolicyLoss(
      gpu,
      gpu.fromArray([lp, lp]),
      gpu.zeros([2]),
      gpu.fromArray([1, -1]),
      gpu.fromArray([1, 1]),
      { clip: 0.2 },
    );
    assertClose(
      (await gpu.readF32(pl.loss)).subarray(2, 3),
      [(-1.2 + 1.5) / 2],
      TOL,
      "policy loss",
    );
    assertClose((await gpu.readF32(pl.clipfrac)).subarray(2, 3), [0.5], TOL, "clip fraction");
    assertClose(await gpu.readF32(pl.dlogp), [0, 1.5 / 2], TOL, "policy gradient");
    // value: V = 1, V_old = 0.5, R = 0, ε = 0.2 → V_clip = 0.7; unclipped branch wins
    const vl = k.ppoValueLoss(
      gpu,
      gpu.fromArray([1]),
      gpu.fromArray([0.5]),
      gpu.zeros([1]),
      gpu.fromArray([1]),
      { clip: 0.2 },
    );
    assertClose((await gpu.readF32(vl.loss)).subarray(2, 3), [0.5], TOL, "value loss");
    assertClose(await gpu.readF32(vl.dvalues), [1], TOL, "value gradient");
  },
});

for (const [B, T] of [[1, 1], [3, 7], [5, 33], [2, 65]]) {
  cases.push({
    name:
      `rl: KL estimators, rewards, GAE, whitening, explained variance match the reference (${B}×${T})`,
    async run(gpu) {
      const n = B * T, mask = responseMask(B, T, n);
      const lp = randArray(n, 1 + n, -3, 0), lr = randArray(n, 2 + n, -3, 0);
      const tm = gpu.fromArray(mask, [B, T]);
      for (const kind of ["k1", "abs", "mse", "k3"] as const) {
        const got = k.klPenalty(
          gpu,
          gpu.fromArray(lp, [B, T]),
          gpu.fromArray(lr, [B, T]),
          tm,
          kind,
        );
        assertClose(await gpu.readF32(got), ref.klPenalty(lp, lr, mask, kind), TOL, `kl ${kind}`);
      }
      const kl = ref.klPenalty(lp, lr, mask, "k3"), scores = randArray(B, 3, -8, 8);
      const beta = gpu.fromArray([0.05]);
      const rw = k.shapedRewards(
        gpu,
        gpu.fromArray(Float32Array.from(kl), [B, T]),
        gpu.fromArray(scores),
        tm,
        {
          beta,
          scoreClip: 5,
        },
      );
      const rwant = ref.shapedRewards(Float32Array.from(kl), scores, mask, T, 0.05, 5);
      assertClose(await gpu.readF32(rw), rwant, TOL, "rewards (β on the GPU)");
      const v = randArray(n, 4);
      const ga = k.gae(
        gpu,
        gpu.fromArray(Float32Array.from(rwant), [B, T]),
        gpu.fromArray(v, [B, T]),
        tm,
        { gamma: 0.99, lambda: 0.9 },
      );
      const gw = ref.gae(Float32Array.from(rwant), v, mask, T, 0.99, 0.9);
      assertClose(
        await gpu.readF32(ga.advantages),
        gw.advantages,
        { atol: 1e-4, rtol: 1e-5 },
        "advantages",
      );
      assertClose(await gpu.readF32(ga.returns), gw.returns, { atol: 1e-4, rtol: 1e-5 }, "returns");
      const x = randArray(n, 5, -2, 6);
      for (const shiftMean of [true, false]) {
        const w = await gpu.readF32(k.whiten(gpu, gpu.fromArray(x, [B, T]), tm, { shiftMean }));
        assertClose(
          w,
          ref.whiten(x, mask, shiftMean),
          { atol: 1e-4, rtol: 1e-4 },
          `whiten shift=${shiftMean}`,
        );
      }
      const ev = await gpu.readF32(
        k.explainedVariance(gpu, gpu.fromArray(v, [B, T]), gpu.fromArray(x, [B, T]), tm),
      );
      assertClose(
        ev,
        [ref.explainedVariance(v, x, mask)],
        { atol: 1e-4, rtol: 1e-4 },
        "explained variance",
      );
    },
  });

  cases.push({
    name:
      `rl: PPO policy and value losses, gradients and statistics vs reference and finite differences (${B}×${T})`,
    async run(gpu) {
      const n = B * T, mask = responseMask(B, T, 7 * n);
      const old = randArray(n, 11, -3, -0.5),
        lp = Float32Array.from(old, (o, i) => o + 0.4 * Math.sin(i + 1));
      const adv = randArray(n, 12, -2, 2);
      const tm = gpu.fromArray(mask, [B, T]);
      const got = k.ppoPolicyLoss(
        gpu,
        gpu.fromArray(lp, [B, T]),
        gpu.fromArray(old, [B, T]),
        gpu.fromArray(adv, [B, T]),
        tm,
        { clip: 0.2 },
      );
      const want = ref.ppoPolicyLoss(lp, old, adv, mask, 0.2);
      assertClose([(await gpu.readF32(got.loss))[2]], [want.loss], TOL, "policy loss");
      assertClose([(await gpu.readF32(got.clipfrac))[2]], [want.clipfrac], TOL, "clip fraction");
      assertClose([(await gpu.readF32(got.approxkl))[2]], [want.approxkl], TOL, "approx KL");
      assertClose(await gpu.readF32(got.dlogp), want.dlogp, TOL, "dlogp");
      // FD of the float64 loss (the clip boundary is avoided: |ratio − 1 ± ε| > 1e-3 here)
      const fd = finiteDiff((z) => ref.ppoPolicyLoss(z, old, adv, mask, 0.2).loss, lp, 1e-7);
      assertClose(want.dlogp, fd, { atol: 1e-6, rtol: 1e-5 }, "policy gradient vs FD");
      const vOld = randArray(n, 13),
        vNew = Float32Array.from(vOld, (o, i) => o + 0.5 * Math.cos(i)),
        ret = randArray(n, 14);
      const vg = k.ppoValueLoss(
        gpu,
        gpu.fromArray(vNew, [B, T]),
        gpu.fromArray(vOld, [B, T]),
        gpu.fromArray(ret, [B, T]),
        tm,
        { clip: 0.2 },
      );
      const vw = ref.ppoValueLoss(vNew, vOld, ret, mask, 0.2);
      assertClose([(await gpu.readF32(vg.loss))[2]], [vw.loss], TOL, "value loss");
      assertClose([(await gpu.readF32(vg.clipfrac))[2]], [vw.clipfrac], TOL, "value clip fraction");
      assertClose(await gpu.readF32(vg.dvalues), vw.dvalues, TOL, "dvalues");
      const fdv = finiteDiff((z) => ref.ppoValueLoss(z, vOld, ret, mask, 0.2).loss, vNew, 1e-7);
      assertClose(vw.dvalues, fdv, { atol: 1e-6, rtol: 1e-5 }, "value gradient vs FD");
    },
  });
}

for (const [P, K, T] of [[1, 2, 1], [7, 3, 5], [33, 4, 9]]) {
  cases.push({
    name:
      `rl: pairwise (margin), K-wise ranking and token-level RM losses with gradients (P=${P}, K=${K}, T=${T})`,
    async run(gpu) {
      const rw = randArray(P, P, -3, 3),
        rl = randArray(P, P + 1, -3, 3),
        m = randArray(P, P + 2, 0, 1);
      const got = k.pairwiseRewardLoss(gpu, gpu.fromArray(rw), gpu.fromArray(rl), gpu.fromArray(m));
      const want = ref.pairwiseRewardLoss(rw, rl, m);
      assertClose([(await gpu.readF32(got.loss))[2]], [want.loss], TOL, "pairwise loss");
      assertClose([(await gpu.readF32(got.accuracy))[2]], [want.accuracy], TOL, "accuracy");
      assertClose([(await gpu.readF32(got.margin))[2]], [want.margin], TOL, "mean margin");
      assertClose(await gpu.readF32(got.dchosen), want.drw, TOL, "d chosen");
      assertClose(await gpu.readF32(got.drejected), want.drl, TOL, "d rejected");
      const tol = { atol: 1e-8, rtol: 1e-6 };
      assertClose(
        want.drw,
        finiteDiff((z) => ref.pairwiseRewardLoss(z, rl, m).loss, rw),
        tol,
        "pairwise FD",
      );
      const s = randArray(P * K, 3 * P, -2, 2);
      const rk = k.rankingRewardLoss(gpu, gpu.fromArray(s, [P, K]));
      const rkw = ref.rankingRewardLoss(s, P, K);
      assertClose([(await gpu.readF32(rk.loss))[2]], [rkw.loss], TOL, "ranking loss");
      assertClose([(await gpu.readF32(rk.accuracy))[2]], [rkw.accuracy], TOL, "ranking accuracy");
      assertClose(await gpu.readF32(rk.dscores), rkw.ds, TOL, "d scores");
      assertClose(
        rkw.ds,
        finiteDiff((z) => ref.rankingRewardLoss(z, P, K).loss, s),
        tol,
        "ranking FD",
      );
      const vw = randArray(P * T, 5), vl = randArray(P * T, 6);
      const span = Float32Array.from(
        { length: P * T },
        (_, i) => (i % T) >= (i % 3 === 0 ? 1 : 0) ? 1 : 0,
      );
      if (P > 1) span.fill(0, 0, T); // a pair without a span contributes nothing
      const tp = k.tokenPairRewardLoss(
        gpu,
        gpu.fromArray(vw, [P, T]),
        gpu.fromArray(vl, [P, T]),
        gpu.fromArray(span, [P, T]),
      );
      const tpw = ref.tokenPairRewardLoss(vw, vl, span, P, T);
      assertClose([(await gpu.readF32(tp.loss))[2]], [tpw.loss], TOL, "token-level loss");
      assertClose(await gpu.readF32(tp.dchosen), tpw.dw, TOL, "token-level d chosen");
      assertClose(
        tpw.dw,
        finiteDiff((z) => ref.tokenPairRewardLoss(z, vl, span, P, T).loss, vw),
        tol,
        "token-level FD",
      );
    },
  });
}

cases.push({
  name: "rl: bad arguments are named errors",
  async run(gpu) {
    const a = gpu.zeros([2, 3]);
    await assertThrows(
      () => k.ppoPolicyLoss(gpu, a, a, a, gpu.zeros([5]), { clip: 0.2 }),
      ShapeError,
      "one size",
    );
    await assertThrows(
      () => k.ppoValueLoss(gpu, a, a, a, a, { clip: 0 }),
      ShapeError,
      "clip must be > 0",
    );
    await assertThrows(() => k.rankingRewardLoss(gpu, gpu.zeros([3, 1])), ShapeError, "K ≥ 2");
    await assertThrows(
      () => k.shapedRewards(gpu, a, gpu.zeros([3]), a, { beta: 0.1 }),
      ShapeError,
      "scores must be f32 (2)",
    );
  },
});
