import { adamwStep } from "../../kernels/optimizer.ts";
import { learningRate } from "../../trainer/optim.ts";
import * as ref from "../../kernels/reference/optimizer.ts";
import { scale, sub } from "../../kernels/elementwise.ts";
import { globalNorm } from "../../kernels/reduce.ts";
import { ShapeError } from "../../kernels/errors.ts";
import { assert, assertClose, assertThrows } from "../assert.ts";
import { type Case, randArray } from "../_util.ts";
import type { Tensor } from "../../kernels/runtime.ts";
import { OPT_PRESETS } from "../../model/config.ts";
import { OptModel } from "../../model/opt.ts";

export const cases: Case[] = [];

// n a multiple of 4 takes the four-elements-an-invocation kernel; decay may stop inside a vec4
for (const [n, until] of [[1], [7], [65], [1000], [1000, 130], [68, 67]]) {
  cases.push({
    name: `optimizer: five AdamW steps with weight decay${
      until ? ` up to element ${until}` : ""
    } and a GPU-side clip factor (n=${n})`,
    async run(gpu) {
      const p0 = randArray(n, n), tp = gpu.fromArray(p0);
      const tm = gpu.zeros([n]), tv = gpu.zeros([n]);
      const rp = Float64Array.from(p0), rm = new Float64Array(n), rv = new Float64Array(n);
      for (let step = 1; step <= 5; step++) {
        const g = randArray(n, 100 * n + step, -3, 3);
        const tg = gpu.fromArray(g);
        const stats = globalNorm(gpu, [tg], 1.5);
        const coef = (await gpu.readF32(stats))[1];
        const o = { lr: 1e-2, weightDecay: 0.1, weightDecayUntil: until, step, beta2: 0.99 };
        adamwStep(gpu, tp, tg, tm, tv, { ...o, gradScale: { tensor: stats, index: 1 } });
        ref.adamwStep(rp, g, rm, rv, { ...o, gradScale: coef });
      }
      // f32 state over 5 steps; update magnitude ≈ lr
      const tol = { atol: 1e-6, rtol: 1e-5 };
      assertClose(await gpu.readF32(tp), rp, tol, "param");
      assertClose(await gpu.readF32(tm), rm, tol, "m");
      assertClose(await gpu.readF32(tv), rv, tol, "v");
    },
  });
}

cases.push({
  name: "optimizer: weight decay up to an index in one dispatch gives the bits of two ranges; " +
    "a parameter store's clip inside AdamW gives clip-then-AdamW's bits",
  async run(gpu) {
    const n = 200, d = 128; // views bind at 256-byte offsets: d a multiple of 64
    const p0 = randArray(n, 7), g0 = randArray(n, 8, -3, 3);
    const one = gpu.fromArray(p0), two = gpu.fromArray(p0);
    const state = () => [gpu.zeros([n]), gpu.zeros([n])];
    const [m1, v1] = state(), [m2, v2] = state();
    const g = gpu.fromArray(g0);
    for (let step = 1; step <= 3; step++) {
      const o = { lr: 1e-2, weightDecay: 0.1, step };
      adamwStep(gpu, one, g, m1, v1, { ...o, weightDecayUntil: d });
      const part = (t: Tensor, a: number, b: number) => t.view(a, [b - a]);
      adamwStep(gpu, part(two, 0, d), part(g, 0, d), part(m2, 0, d), part(v2, 0, d), o);
      adamwStep(gpu, part(two, d, n), part(g, d, n), part(m2, d, n), part(v2, d, n), {
        ...o,
        weightDecay: 0,
      });
    }
    const [a, b] = [await gpu.readF32(one), await gpu.readF32(two)];
    assert(a.every((x, i) => Object.is(x, b[i])), "one dispatch = two ranges");
    // a model's store: gradNorm + adamw({ clip }) against clipGradNorm + adamw
    const make = () => OptModel.create(gpu, OPT_PRESETS.tiny, { seed: 3 });
    const [x, y] = [make(), make()];
    for (const mdl of [x, y]) {
      gpu.write(mdl.store.grads, randArray(mdl.store.total, 9, -2, 2));
    }
    const clip = x.store.gradNorm(0.5);
    x.store.adamw({ lr: 1e-2, weightDecay: 0.1, clip });
    y.store.clipGradNorm(0.5);
    y.store.adamw({ lr: 1e-2, weightDecay: 0.1 });
    const [px, py] = [await gpu.readF32(x.store.params), await gpu.readF32(y.store.params)];
    assert(px.every((v, i) => Object.is(v, py[i])), "clip inside AdamW = clip, then AdamW");
    const fresh = make();
    const p0s = await gpu.readF32(fresh.store.params);
    assert(px.some((v, i) => v !== p0s[i]), "parameters moved");
    for (const mdl of [x, y, fresh]) mdl.store.dispose();
  },
});

cases.push({
  name: "optimizer: AdamW minimises a quadratic; learning-rate schedule values",
  async run(gpu) {
    const target = randArray(33, 1, -2, 2);
    const w = gpu.zeros([33]), m = gpu.zeros([33]), v = gpu.zeros([33]);
    const tt = gpu.fromArray(target), g = gpu.empty([33]);
    for (let step = 1; step <= 200; step++) {
      // gradient of Σ (w − target)², computed on the GPU: no readback inside the loop
      scale(gpu, sub(gpu, w, tt, g), 2, g);
      adamwStep(gpu, w, g, m, v, { lr: 0.05, step });
    }
    const wt = await gpu.readF32(w);
    const err = Math.max(...Array.from(wt, (x, i) => Math.abs(x - target[i])));
    assert(err < 0.05, `AdamW did not converge: max error ${err}`);
    const s = { lr: 1, totalSteps: 110, warmupSteps: 10 };
    assertClose(
      [0, 4, 9, 10, 60, 110, 200].map((t) => learningRate(t, s)),
      [0.1, 0.5, 1, 1, 0.5, 0, 0],
      { atol: 1e-12, rtol: 0 },
      "cosine schedule",
    );
    const lin = {
      lr: 2,
      totalSteps: 100,
      warmupRatio: 0,
      decay: "linear" as const,
      minLrRatio: 0.5,
    };
    assertClose([0, 50, 100].map((t) => learningRate(t, lin)), [2, 1.5, 1], {
      atol: 1e-12,
      rtol: 0,
    }, "linear");
    await assertThrows(
      () => adamwStep(gpu, w, gpu.zeros([3]), m, v, { lr: 1, step: 1 }),
      ShapeError,
      "grad has 3 elements",
    );
    await assertThrows(() => adamwStep(gpu, w, w, m, v, { lr: 1, step: 0 }), ShapeError, "step");
  },
});
