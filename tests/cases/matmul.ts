import { KvCache, swapAxes12 } from "../../kernels/attention.ts";
import { add, reluBackward } from "../../kernels/elementwise.ts";
import {
  matmul,
  matmulLayernorm,
  TEXTURE_TILING,
  TEXTURE_TILING_CANDIDATES,
  tuneTextureTiling,
} from "../../kernels/matmul.ts";
import { layernormForward } from "../../kernels/layernorm.ts";
import { sumColumns } from "../../kernels/reduce.ts";
import * as ref from "../../kernels/reference/matmul.ts";
import { Gpu } from "../../kernels/runtime.ts";
import { GpuValidationError, ShapeError } from "../../kernels/errors.ts";
import { assert, assertClose, assertEquals, assertThrows } from "../assert.ts";
import { type Case, dot, finiteDiff, randArray } from "../_util.ts";

// f32 accumulation over K terms of magnitude ≤ 1: error grows like K·2^-24; these shapes have
// K ≤ 130, so 1e-5 absolute + 1e-5 relative bounds them with margin.
const TOL = { atol: 1e-5, rtol: 1e-5 };
const PATHS = ["texture", "buffer"] as const;
const SHAPES: [number, number, number][] = [[1, 1, 1], [7, 33, 65], [65, 7, 33], [33, 130, 1], [
  5,
  3,
  17,
]];

export const cases: Case[] = [];

for (const path of PATHS) {
  cases.push({
    name: `matmul (${path} path): NN/NT/TN/TT on odd shapes match float64 reference`,
    async run(gpu) {
      let seed = 1;
      for (const [M, K, N] of SHAPES) {
        for (const transA of [false, true]) {
          for (const transB of [false, true]) {
            const a = randArray(M * K, seed++), b = randArray(K * N, seed++);
            const ta = gpu.fromArray(a, transA ? [K, M] : [M, K]);
            const tb = gpu.fromArray(b, transB ? [N, K] : [K, N]);
            const c = matmul(gpu, ta, tb, { transA, transB, path });
            const want = ref.matmul(a, b, { M, N, K, transA, transB });
            assertClose(
              await gpu.readF32(c),
              want,
              TOL,
              `C (${M}×${K}×${N} tA=${transA} tB=${transB})`,
            );
            for (const t of [ta, tb, c]) t.dispose();
          }
        }
      }
    },
  });

  cases.push({
    name: `matmul (${path} path): batched, shared B, fused bias + ReLU, accumulate`,
    async run(gpu) {
      const batch = 3, M = 9, K = 21, N = 19;
      const a = randArray(batch * M * K, 11), b = randArray(batch * K * N, 12);
      const bias = randArray(N, 13), c0 = randArray(batch * M * N, 14);
      const ta = gpu.fromArray(a, [batch, M, K]);
      // per-batch B, transposed, with bias and relu
      const tb = gpu.fromArray(b, [batch, N, K]);
      const tbias = gpu.fromArray(bias);
      const c = matmul(gpu, ta, tb, { transB: true, bias: tbias, relu: true, path });
      assertClose(
        await gpu.readF32(c),
        ref.matmul(a, b, { batch, M, N, K, transB: true, bias, relu: true }),
        TOL,
        "batched bias relu",
      );
      // alpha with accumulate and relu: C = relu(α·A·Bᵀ + bias + C_old)
      const acc = gpu.fromArray(c0, [batch, M, N]);
      matmul(gpu, ta, tb, {
        transB: true,
        bias: tbias,
        relu: true,
        alpha: -0.75,
        out: acc,
        accumulate: true,
        path,
      });
      assertClose(
        await gpu.readF32(acc),
        ref.matmul(a, b, {
          batch,
          M,
          N,
          K,
          transB: true,
          bias,
          relu: true,
          alpha: -0.75,
          accumulate: c0,
        }),
        TOL,
        "alpha + accumulate + relu",
      );
      // shared B (2-D), accumulate into existing C
      const b2 = b.subarray(0, K * N);
      const out = gpu.fromArray(c0, [batch, M, N]);
      matmul(gpu, ta, gpu.fromArray(b2, [K, N]), { out, accumulate: true, path });
      assertClose(
        await gpu.readF32(out),
        ref.matmul(a, b2, { batch, M, N, K, shareB: true, accumulate: c0 }),
        TOL,
        "shared B accumulate",
      );
    },
  });

  cases.push({
    name: `matmul (${path} path): rowSums (a bias gradient with the weight gradient) gives ` +
      "sumColumns' bits, in segments, accumulated; the product keeps its bits; misuse is named",
    async run(gpu) {
      for (const [M, N, K] of [[13, 12, 23], [12, 11, 40], [5, 64, 7], [8, 64, 16]]) {
        const a = gpu.fromArray(randArray(K * M, 91 + N), [K, M]); // dY: (rows K, outputs M)
        // [8, 64, 16] on the texture path: B is a plain copy, its ones column a second copy
        const b = gpu.fromArray(randArray(K * N, 92 + N), [K, N]); // x: (rows K, inputs N)
        // the first product on fresh copies of the operands: each call packs its own
        const [a0, b0] = [
          gpu.fromArray(await gpu.read(a), [K, M]),
          gpu.fromArray(await gpu.read(b), [K, N]),
        ];
        const d0 = gpu.stats.dispatches;
        const plain = await gpu.readF32(matmul(gpu, a0, b0, { transA: true, path }));
        const d1 = gpu.stats.dispatches, sums = gpu.zeros([M]);
        const c = await gpu.readF32(
          matmul(gpu, a, b, { transA: true, rowSums: { out: sums }, path }),
        );
        assertEquals(gpu.stats.dispatches - d1, d1 - d0, "no dispatch of their own");
        assert(c.every((v, i) => Object.is(v, plain[i])), `${M}×${N}×${K}: product unchanged`);
        const want = await gpu.readF32(sumColumns(gpu, a));
        const got = await gpu.readF32(sums);
        assert(got.every((v, i) => Object.is(v, want[i])), `${M}×${N}×${K}: = sumColumns`);
        // accumulated into spaced segments (the q, k, v bias gradients of a parameter store)
        if (M % 4 === 0) {
          const width = M / 4, stride = width + 3, acc0 = randArray(3 * stride + width, 93);
          const seg = gpu.fromArray(acc0), segWant = gpu.fromArray(acc0);
          const out = gpu.fromArray(randArray(M * N, 94), [M, N]);
          matmul(gpu, a, b, {
            transA: true,
            out,
            accumulate: true,
            rowSums: { out: seg, segments: { width, stride } },
            path,
          });
          sumColumns(gpu, a, { out: segWant, accumulate: true, outSegments: { width, stride } });
          const [g, w] = [await gpu.readF32(seg), await gpu.readF32(segWant)];
          assert(g.every((v, i) => Object.is(v, w[i])), `${M}×${N}×${K}: segments, accumulated`);
        }
      }
      const a = gpu.zeros([3, 4]), b = gpu.zeros([3, 5]);
      await assertThrows(
        () =>
          matmul(gpu, a.reshape([4, 3]), b.reshape([3, 5]), {
            rowSums: { out: gpu.zeros([4]) },
            path,
          }),
        ShapeError,
        "rowSums needs transA",
      );
      await assertThrows(
        () => matmul(gpu, a, b, { transA: true, rowSums: { out: gpu.zeros([5]) }, path }),
        ShapeError,
        "rowSums",
      );
    },
  });

  cases.push({
    name: `matmulLayernorm (${path} path): the product and its layernorm have the bits of ` +
      "matmul + layernormForward (odd and decode shapes, scalar and vec4 stores, wide rows)",
    async run(gpu) {
      for (const [M, N, K] of [[13, 64, 23], [16, 64, 64], [7, 12, 9], [45, 200, 33], [3, 1, 5]]) {
        const x = gpu.fromArray(randArray(M * K, 101 + N), [M, K]);
        const w = gpu.fromArray(randArray(N * K, 102 + N), [N, K]);
        const bias = gpu.fromArray(randArray(N, 103));
        const res = gpu.fromArray(randArray(M * N, 104), [M, N]);
        const g = gpu.fromArray(randArray(N, 105, 0.5, 1.5)),
          beta = gpu.fromArray(randArray(N, 106));
        const opts = { transB: true, bias, residual: res, path };
        const d0 = gpu.stats.dispatches;
        const fused = matmulLayernorm(gpu, x, w, opts, { weight: g, bias: beta });
        // the unfused pair on fresh copies of the operands (packed anew, as the fused call)
        const [x2, w2] = [
          gpu.fromArray(await gpu.read(x), [M, K]),
          gpu.fromArray(await gpu.read(w), [N, K]),
        ];
        const d1 = gpu.stats.dispatches;
        const out = matmul(gpu, x2, w2, opts);
        const want = layernormForward(gpu, out, g, beta);
        if (path === "texture") {
          assertEquals(d1 - d0, gpu.stats.dispatches - d1 - 1, `${M}×${N}: one dispatch less`);
        }
        for (
          const [got, exp, what] of [
            [fused.out, out, "product"],
            [fused.ln.y, want.y, "y"],
            [fused.ln.mean, want.mean, "mean"],
            [fused.ln.rstd, want.rstd, "rstd"],
          ] as const
        ) {
          const [a, b] = [await gpu.readF32(got), await gpu.readF32(exp)];
          assert(a.every((v, i) => Object.is(v, b[i])), `${M}×${N}×${K}: ${what}`);
        }
      }
    },
  });

  cases.push({
    name: `matmul (${path} path): reluBackwardOf gives reluBackward(matmul)'s bits (scalar and ` +
      "vec4 stores, with accumulate); a wrong-sized input is named",
    async run(gpu) {
      for (const N of [11, 12]) {
        const M = 13, K = 23;
        const a = gpu.fromArray(randArray(M * K, 81), [M, K]);
        const b = gpu.fromArray(randArray(N * K, 82), [N, K]);
        const h = gpu.fromArray(randArray(M * N, 83, -1, 1), [M, N]);
        const c0 = randArray(M * N, 84);
        const fused = await gpu.readF32(
          matmul(gpu, a, b, { transB: true, reluBackwardOf: h, path }),
        );
        const plain = await gpu.readF32(
          reluBackward(gpu, matmul(gpu, a, b, { transB: true, path }), h),
        );
        assert(fused.some((v) => v === 0) && fused.some((v) => v !== 0), "some masked, some not");
        assert(fused.every((v, i) => Object.is(v, plain[i])), `N ${N}: fused = reluBackward`);
        const acc = gpu.fromArray(c0, [M, N]), accPlain = gpu.fromArray(c0, [M, N]);
        matmul(gpu, a, b, { transB: true, out: acc, accumulate: true, reluBackwardOf: h, path });
        matmul(gpu, a, b, { transB: true, out: accPlain, accumulate: true, path });
        const want = await gpu.readF32(reluBackward(gpu, accPlain, h));
        const got = await gpu.readF32(acc);
        assert(got.every((v, i) => Object.is(v, want[i])), `N ${N}: accumulated, then masked`);
        await assertThrows(
          () => matmul(gpu, a, b, { transB: true, reluBackwardOf: gpu.zeros([M, N + 1]), path }),
          ShapeError,
          "reluBackwardOf",
        );
      }
    },
  });

  cases.push({
    name: `matmul (${path} path): a residual epilogue (bias, residual, accumulate, ReLU) matches ` +
      "float64 and gives add(residual, matmul)'s bits; a wrong-sized or aliased residual is named",
    async run(gpu) {
      const batch = 2, M = 13, K = 23, N = 11;
      const a = randArray(batch * M * K, 31), b = randArray(K * N, 32);
      const bias = randArray(N, 33), r = randArray(batch * M * N, 34), c0 = randArray(M * N, 35);
      const ta = gpu.fromArray(a, [batch, M, K]), tb = gpu.fromArray(b, [K, N]);
      const tbias = gpu.fromArray(bias), tr = gpu.fromArray(r, [batch, M, N]);
      const y = matmul(gpu, ta, tb, { bias: tbias, residual: tr, relu: true, path });
      const args = { batch, M, N, K, shareB: true, bias, residual: r, relu: true };
      assertClose(await gpu.readF32(y), ref.matmul(a, b, args), TOL, "residual + relu");
      // a residual connection x + (x·W + b), fused or not: the same bits
      const fused = await gpu.readF32(matmul(gpu, ta, tb, { bias: tbias, residual: tr, path }));
      const plain = await gpu.readF32(add(gpu, tr, matmul(gpu, ta, tb, { bias: tbias, path })));
      assert(fused.every((v, i) => Object.is(v, plain[i])), "fused residual = add(x, matmul)");
      // with accumulate: C = A·Bᵀ + residual + C_old (one batch)
      const acc = gpu.fromArray(c0, [M, N]);
      const a1 = a.subarray(0, M * K), r1 = r.subarray(0, M * N);
      matmul(gpu, gpu.fromArray(a1, [M, K]), tb, {
        residual: gpu.fromArray(r1, [M, N]),
        out: acc,
        accumulate: true,
        path,
      });
      assertClose(
        await gpu.readF32(acc),
        ref.matmul(a1, b, { M, N, K, residual: r1, accumulate: c0 }),
        TOL,
        "residual + accumulate",
      );
      await assertThrows(
        () => matmul(gpu, ta, tb, { residual: gpu.zeros([M, N]), path }),
        ShapeError,
        "residual",
      );
      const out = gpu.zeros([batch, M, N]);
      await assertThrows(
        () => matmul(gpu, ta, tb, { residual: out, out, path }),
        GpuValidationError,
        "same buffer",
      );
    },
  });

  cases.push({
    name: `matmul (${path} path): a fused q/k/v projection split into heads, with segmented ` +
      "biases, gives the bits of three projections and their head splits",
    async run(gpu) {
      const B = 3, T = 5, K = 23, H = 2, Dh = 3, C = H * Dh, stride = 8;
      const x = randArray(B * T * K, 41), w = randArray(3 * C * K, 42);
      const bias = randArray(2 * stride + C, 43);
      const tx = gpu.fromArray(x, [B * T, K]), tw = gpu.fromArray(w, [3 * C, K]);
      const y = matmul(gpu, tx, tw, {
        transB: true,
        bias: gpu.fromArray(bias),
        biasSegments: { width: C, stride },
        splitHeads: { T, H, Dh },
        path,
      });
      assert(y.shape.join() === [3, B, H, T, Dh].join(), `split shape [${y.shape}]`);
      const got = await gpu.readF32(y);
      for (let part = 0; part < 3; part++) {
        const wp = gpu.fromArray(w.subarray(part * C * K, (part + 1) * C * K), [C, K]);
        const bp = gpu.fromArray(bias.subarray(part * stride, part * stride + C));
        const plain = matmul(gpu, tx, wp, { transB: true, bias: bp, path });
        const heads = await gpu.readF32(swapAxes12(gpu, plain.reshape([B, T, H, Dh])));
        const slice = got.subarray(part * heads.length, (part + 1) * heads.length);
        assert(
          slice.every((v, i) => Object.is(v, heads[i])),
          `part ${part}: the bits of matmul + swapAxes12`,
        );
      }
      // parts spaced apart (aligned for binding): the same values at part·partStride
      const part = B * T * C, partStride = part + 5;
      const spaced = await gpu.readF32(matmul(gpu, tx, tw, {
        transB: true,
        bias: gpu.fromArray(bias),
        biasSegments: { width: C, stride },
        splitHeads: { T, H, Dh, partStride },
        path,
      }));
      assert(spaced.length === 2 * partStride + part, `spaced length ${spaced.length}`);
      for (let p = 0; p < 3; p++) {
        const a = spaced.subarray(p * partStride, p * partStride + part);
        const b = got.subarray(p * part, (p + 1) * part);
        assert(a.every((v, i) => Object.is(v, b[i])), `spaced part ${p}`);
      }
      await assertThrows(
        () => matmul(gpu, tx, tw, { transB: true, splitHeads: { T: 4, H, Dh }, path }),
        ShapeError,
        "splitHeads",
      );
      await assertThrows(
        () =>
          matmul(gpu, tx, tw, {
            transB: true,
            bias: gpu.fromArray(bias),
            biasSegments: { width: C, stride: C - 1 },
            path,
          }),
        ShapeError,
        "biasSegments",
      );
    },
  });

  cases.push({
    name: `matmul (${path} path): a head split with Dh a multiple of 4 (whole-vec4 stores) ` +
      "gives the bits of matmul + swapAxes12, parts spaced apart",
    async run(gpu) {
      const B = 2, T = 7, K = 19, H = 3, Dh = 8, C = H * Dh;
      const x = randArray(B * T * K, 45), w = randArray(3 * C * K, 46), bias = randArray(3 * C, 47);
      const tx = gpu.fromArray(x, [B * T, K]), tw = gpu.fromArray(w, [3 * C, K]);
      const part = B * T * C, partStride = part + 4;
      const got = await gpu.readF32(matmul(gpu, tx, tw, {
        transB: true,
        bias: gpu.fromArray(bias),
        splitHeads: { T, H, Dh, partStride },
        path,
      }));
      for (let p = 0; p < 3; p++) {
        const wp = gpu.fromArray(w.subarray(p * C * K, (p + 1) * C * K), [C, K]);
        const bp = gpu.fromArray(bias.subarray(p * C, (p + 1) * C));
        const plain = matmul(gpu, tx, wp, { transB: true, bias: bp, path });
        const heads = await gpu.readF32(swapAxes12(gpu, plain.reshape([B, T, H, Dh])));
        const slice = got.subarray(p * partStride, p * partStride + part);
        assert(slice.every((v, i) => Object.is(v, heads[i])), `part ${p}: matmul + swapAxes12`);
      }
    },
  });

  cases.push({
    name: `matmul (${path} path): a q/k/v split with kvCache fills the cache as KvCache.write ` +
      "of its k and v parts (attention over both caches: the same bits); misuse is named",
    async run(gpu) {
      const B = 2, T = 3, K = 11, H = 2, Dh = 8, C = H * Dh, cap = 9, row = 4;
      const x = randArray(B * T * K, 55), w = randArray(3 * C * K, 56), bias = randArray(3 * C, 57);
      const tx = gpu.fromArray(x, [B * T, K]), tw = gpu.fromArray(w, [3 * C, K]);
      const tb = gpu.fromArray(bias);
      const fused = new KvCache(gpu, B, H, cap, Dh), plain = new KvCache(gpu, B, H, cap, Dh);
      const part = B * H * T * Dh, partStride = 128; // parts bindable as views (256-byte offsets)
      const split = { T, H, Dh, partStride };
      const y = matmul(gpu, tx, tw, {
        transB: true,
        bias: tb,
        splitHeads: split,
        kvCache: { k: fused.k, v: fused.v, row },
        path,
      });
      const ref = matmul(gpu, tx, tw, { transB: true, bias: tb, splitHeads: split, path });
      const [a, b] = [await gpu.readF32(y), await gpu.readF32(ref)];
      assert(a.every((v, i) => Object.is(v, b[i])), "the split output is unchanged");
      const [tk, tv] = [1, 2].map((i) => ref.view(i * partStride, [B, H, T, Dh]));
      assert(part <= partStride, "parts fit their stride");
      plain.write(tk, tv, row);
      const q = gpu.fromArray(randArray(B * H * T * Dh, 58), [B, H, T, Dh]);
      const got = await gpu.readF32(fused.attend(q, row + T, {}));
      const want = await gpu.readF32(plain.attend(q, row + T, {}));
      assert(got.every((v, i) => Object.is(v, want[i])), "attention over the fused-written cache");
      assert(got.some((v) => v !== 0), "the cache holds the written keys and values");
      await assertThrows(
        () => matmul(gpu, tx, tw, { transB: true, kvCache: { k: fused.k, v: fused.v, row }, path }),
        ShapeError,
        "kvCache needs",
      );
      await assertThrows(
        () =>
          matmul(gpu, tx, tw, {
            transB: true,
            splitHeads: split,
            kvCache: { k: fused.k, v: fused.v, row: 30 },
            path,
          }),
        ShapeError,
        "do not fit",
      );
    },
  });

  cases.push({
    name: `matmul (${path} path): K in segments gives the bits of one matmul per segment ` +
      "accumulated in order (texture path also chunked), and a bad segment length is named",
    async run(gpu) {
      const small = await Gpu.create({ maxTextureSide: 16, matmulPath: "texture" });
      try {
        for (const g of path === "texture" ? [gpu, small] : [gpu]) {
          for (const [seg, P, N] of [[12, 3, 20], [8, 4, 21], [4, 3, 7]]) {
            const M = 37, K = seg * P;
            const a = randArray(M * K, 81 + seg), b = randArray(K * N, 82 + seg);
            const fused = matmul(g, g.fromArray(a, [M, K]), g.fromArray(b, [K, N]), {
              kSegments: seg,
              path,
            });
            let acc: ReturnType<typeof matmul> | undefined;
            for (let i = 0; i < P; i++) {
              const ai = Float32Array.from(
                { length: M * seg },
                (_, e) => a[Math.floor(e / seg) * K + i * seg + e % seg],
              );
              const bi = b.subarray(i * seg * N, (i + 1) * seg * N);
              const ta = g.fromArray(ai, [M, seg]), tb = g.fromArray(bi, [seg, N]);
              if (!acc) acc = matmul(g, ta, tb, { path });
              else matmul(g, ta, tb, { out: acc, accumulate: true, path });
            }
            const got = await g.readF32(fused), want = await g.readF32(acc!);
            assert(
              got.every((v, i) => Object.is(v, want[i])),
              `segments of ${seg} (N ${N}, side ${g.textureSide}): the bits of ${P} accumulated matmuls`,
            );
            assertClose(got, ref.matmul(a, b, { M, N, K }), TOL, `segments of ${seg}`);
          }
        }
        const x = gpu.zeros([5, 12]), w = gpu.zeros([12, 3]);
        for (const bad of [5, 6, 0, 16]) {
          await assertThrows(
            () => matmul(gpu, x, w, { kSegments: bad, path }),
            ShapeError,
            "kSegments",
          );
        }
      } finally {
        small.destroy();
      }
    },
  });

  cases.push({
    name: `matmul (${path} path): backward (dA = dC·Bᵀ, dB = Aᵀ·dC) equals finite differences`,
    async run(gpu) {
      const M = 7, K = 5, N = 9;
      const a = randArray(M * K, 21), b = randArray(K * N, 22), w = randArray(M * N, 23);
      const ta = gpu.fromArray(a, [M, K]), tb = gpu.fromArray(b, [K, N]);
      const dc = gpu.fromArray(w, [M, N]); // loss = Σ w ⊙ C, so dC = w
      const da = matmul(gpu, dc, tb, { transB: true, path });
      const db = matmul(gpu, ta, dc, { transA: true, path });
      const loss = (aa: ArrayLike<number>, bb: ArrayLike<number>) =>
        dot(w, ref.matmul(aa, bb, { M, N, K }));
      const fdA = finiteDiff((x) => loss(x, b), a);
      const fdB = finiteDiff((x) => loss(a, x), b);
      assertClose(await gpu.readF32(da), fdA, { atol: 1e-5, rtol: 1e-5 }, "dA");
      assertClose(await gpu.readF32(db), fdB, { atol: 1e-5, rtol: 1e-5 }, "dB");
    },
  });
}

cases.push({
  name: "matmul (texture path): every register tiling gives the same bits — the product, its " +
    "epilogue and the row sums (summed as A's texels load: along M or, rows not a multiple of " +
    "4, along K)",
  async run(gpu) {
    const tilings = [
      { rows: 8, texels: 2, wgX: 8, wgY: 2 },
      { rows: 16, texels: 2, wgX: 8, wgY: 2 },
      { rows: 3, texels: 1, wgX: 8, wgY: 4 },
      { rows: 4, texels: 3, wgX: 4, wgY: 2 },
      { rows: 6, texels: 2, wgX: 8, wgY: 1 },
    ];
    const same = (x: Float32Array, y: Float32Array) => x.every((v, i) => Object.is(v, y[i]));
    for (const [M, N, K] of [[13, 12, 23], [37, 70, 64], [5, 9, 130]]) {
      const a = gpu.fromArray(randArray(K * M, 95 + M), [K, M]);
      const b = gpu.fromArray(randArray(K * N, 96 + N), [K, N]);
      const bias = gpu.fromArray(randArray(N, 97));
      const want = await gpu.readF32(sumColumns(gpu, a));
      let first: Float32Array | undefined;
      for (const tiling of tilings) {
        const what = `${M}×${N}×${K}, tiling ${JSON.stringify(tiling)}`;
        const sums = gpu.zeros([M]);
        const c = await gpu.readF32(
          matmul(gpu, a, b, {
            transA: true,
            bias,
            relu: true,
            rowSums: { out: sums },
            path: "texture",
            tiling,
          }),
        );
        first ??= c;
        assert(same(c, first), `${what}: the product`);
        assert(same(await gpu.readF32(sums), want), `${what}: the row sums = sumColumns`);
      }
    }
  },
});

cases.push({
  name:
    "tuneTextureTiling times every candidate, makes one of them the default (the first unless " +
    "another beats it by the margin) and the products keep their bits",
  async run(gpu) {
    const before = gpu.textureTiling;
    const a = gpu.fromArray(randArray(37 * 64, 301), [37, 64]);
    const b = gpu.fromArray(randArray(64 * 70, 302), [64, 70]);
    const bias = gpu.fromArray(randArray(70, 303));
    const product = async () =>
      await gpu.readF32(matmul(gpu, a, b, { bias, relu: true, path: "texture" }));
    try {
      const want = await product();
      const candidates = [
        ...TEXTURE_TILING_CANDIDATES,
        { rows: 3, texels: 1, wgX: 8, wgY: 4 },
      ];
      if (gpu.matmulPath === "texture") {
        const trials = await tuneTextureTiling(gpu, { candidates, rounds: 1, reps: 2 });
        assertEquals(trials.map((t) => t.tiling), candidates);
        assert(trials.every((t) => t.ms > 0 && Number.isFinite(t.ms)), "times are positive");
        assertEquals(trials[0].ratio, 1, "the first is compared with itself");
        assert(trials.every((t) => t.ratio > 0 && Number.isFinite(t.ratio)), "ratios are positive");
        assert(candidates.includes(gpu.textureTiling!), "the default is one of the candidates");
        const got = await product();
        assert(got.every((v, i) => Object.is(v, want[i])), "same bits with the tuned tiling");
        // no margin can be beaten: the first candidate stays
        await tuneTextureTiling(gpu, {
          candidates: candidates.slice(1),
          rounds: 1,
          reps: 1,
          margin: 1,
        });
        assertEquals(gpu.textureTiling, candidates[1]);
      } else {
        assertEquals(await tuneTextureTiling(gpu), [], "the buffer path has nothing to tune");
      }
      await assertThrows(() => tuneTextureTiling(gpu, { rounds: 0 }), RangeError, "rounds");
    } finally {
      gpu.textureTiling = before;
      for (const t of [a, b, bias]) t.dispose();
    }
  },
});

cases.push({
  name: "Gpu.create({ textureTiling }) sets the texture path's default tiling (same bits as the " +
    "built-in default)",
  async run(_gpu: Gpu) {
    const tiling = TEXTURE_TILING_CANDIDATES[1];
    const tuned = await Gpu.create({ matmulPath: "texture", textureTiling: tiling });
    const plain = await Gpu.create({ matmulPath: "texture" });
    try {
      assertEquals(tuned.textureTiling, tiling);
      assertEquals(plain.textureTiling, undefined);
      const run = async (g: Gpu) => {
        const a = g.fromArray(randArray(45 * 36, 311), [45, 36]);
        const b = g.fromArray(randArray(52 * 36, 312), [52, 36]);
        const d0 = g.stats.dispatches;
        const c = await g.readF32(matmul(g, a, b, { transB: true }));
        return { c, dispatches: g.stats.dispatches - d0 };
      };
      const x = await run(tuned), y = await run(plain);
      assert(x.c.every((v, i) => Object.is(v, y.c[i])), "same bits");
      assertEquals(TEXTURE_TILING.rows, 8);
      // matmul compiles the default tiling it is given: a new one, a new pipeline
      const p0 = plain.stats.pipelines;
      await run(plain);
      assertEquals(plain.stats.pipelines, p0, "the same tiling reuses its pipeline");
      plain.textureTiling = { rows: 3, texels: 1, wgX: 8, wgY: 4 };
      await run(plain);
      assertEquals(plain.stats.pipelines, p0 + 1, "another default tiling compiles its kernel");
    } finally {
      tuned.destroy();
      plain.destroy();
    }
  },
});

cases.push({
  name: "matmul (texture path): operands larger than the texture side are chunked in M, N and K",
  async run(_gpu: Gpu) {
    // a second device limited to 16-texel sides forces every chunk loop to iterate
    const small = await Gpu.create({ maxTextureSide: 16, matmulPath: "texture" });
    try {
      const M = 37, K = 70, N = 90, batch = 2;
      const a = randArray(batch * M * K, 31), b = randArray(K * N, 32), bias = randArray(N, 33);
      for (const relu of [false, true]) {
        const c = matmul(
          small,
          small.fromArray(a, [batch, K, M]),
          small.fromArray(b, [N, K]),
          { transA: true, transB: true, bias: small.fromArray(bias), relu },
        );
        assertClose(
          await small.readF32(c),
          ref.matmul(a, b, {
            batch,
            M,
            N,
            K,
            transA: true,
            transB: true,
            shareB: true,
            bias,
            relu,
          }),
          TOL,
          `chunked (relu=${relu})`,
        );
      }
      // the ReLU backward on the last K chunk only, after the partial sums are added
      const h = small.fromArray(randArray(batch * M * N, 34, -1, 1), [batch, M, N]);
      const ta = small.fromArray(a, [batch, K, M]), tb = small.fromArray(b, [N, K]);
      const fused = await small.readF32(
        matmul(small, ta, tb, { transA: true, transB: true, reluBackwardOf: h }),
      );
      const plain = await small.readF32(
        reluBackward(small, matmul(small, ta, tb, { transA: true, transB: true }), h),
      );
      assert(fused.every((v, i) => Object.is(v, plain[i])), "chunked reluBackwardOf");
      // row sums where K needs chunks (or the ones column another N chunk): sumColumns' bits
      for (const [Kr, Nr] of [[70, 9], [9, 128]]) {
        const dy = small.fromArray(randArray(Kr * 5, 35), [Kr, 5]);
        const x = small.fromArray(randArray(Kr * Nr, 36), [Kr, Nr]);
        const sums = small.zeros([5]);
        matmul(small, dy, x, { transA: true, rowSums: { out: sums } });
        const [g, w] = [await small.readF32(sums), await small.readF32(sumColumns(small, dy))];
        assert(g.every((v, i) => Object.is(v, w[i])), `row sums, K ${Kr}, N ${Nr}`);
      }
    } finally {
      small.destroy();
    }
  },
});

cases.push({
  name: "matmul (texture path): whole-vec4 stores (N a multiple of 4) give the bits of the " +
    "scalar stores, with every epilogue term, batched and chunked",
  async run(gpu: Gpu) {
    // N = 72 takes the vec4 epilogue; the same product with one more column (N = 73) takes the
    // scalar one: the first 72 columns of each row are the same sums, so the same bits.
    const small = await Gpu.create({ maxTextureSide: 16, matmulPath: "texture" });
    try {
      for (const g of [gpu, small]) {
        const batch = 2, M = 37, K = 70, N = 72, N1 = N + 1;
        const a = randArray(batch * M * K, 61), b1 = randArray(K * N1, 62);
        const bias1 = randArray(N1, 63), r1 = randArray(batch * M * N1, 64);
        const c1 = randArray(batch * M * N1, 65);
        const narrow = (x: Float32Array, rows: number) =>
          Float32Array.from({ length: rows * N }, (_, i) => x[Math.floor(i / N) * N1 + i % N]);
        const b = narrow(b1, K), bias = narrow(bias1, 1), r = narrow(r1, batch * M);
        const c0 = narrow(c1, batch * M);
        const run = (
          n: number,
          bb: Float32Array,
          bi: Float32Array,
          rr: Float32Array,
          cc: Float32Array,
        ) => {
          const out = g.fromArray(cc, [batch, M, n]);
          matmul(g, g.fromArray(a, [batch, M, K]), g.fromArray(bb, [K, n]), {
            bias: g.fromArray(bi),
            residual: g.fromArray(rr, [batch, M, n]),
            out,
            accumulate: true,
            relu: true,
            alpha: -0.5,
          });
          return g.readF32(out);
        };
        const wide = await run(N1, b1, bias1, r1, c1);
        const got = await run(N, b, bias, r, c0);
        assert(
          got.every((v, i) => Object.is(v, wide[Math.floor(i / N) * N1 + i % N])),
          `vec4 stores = scalar stores (side ${g.textureSide})`,
        );
        assertClose(
          got,
          ref.matmul(a, b, {
            batch,
            M,
            N,
            K,
            shareB: true,
            bias,
            residual: r,
            accumulate: c0,
            relu: true,
            alpha: -0.5,
          }),
          TOL,
          `vec4 stores (side ${g.textureSide})`,
        );
      }
    } finally {
      small.destroy();
    }
  },
});

cases.push({
  name: "matmul (texture path): a K that is not a multiple of 4 never reads stale texture " +
    "padding (pooled textures poisoned with Inf first)",
  async run(gpu) {
    // B [37, 64] has 256-byte rows (copy-eligible) but K = 37 leaves three padding rows that
    // meet A's zero padding: they must be zero, not whatever the pooled texture held
    const M = 5, K = 37, N = 64;
    const inf = (shape: number[]) =>
      gpu.fromArray(new Float32Array(shape.reduce((x, y) => x * y)).fill(Infinity), shape);
    matmul(gpu, inf([M, 40]), inf([40, N])).dispose();
    const a = randArray(M * K, 95), b = randArray(K * N, 96);
    const c = matmul(gpu, gpu.fromArray(a, [M, K]), gpu.fromArray(b, [K, N]));
    assertClose(await gpu.readF32(c), ref.matmul(a, b, { M, N, K }), TOL, "K = 37 after Inf");
    // a transposed A (packed as stored, texels along M) with 256-byte rows: its K padding
    // rows are zeroed too
    const Mt = 64;
    matmul(gpu, inf([40, Mt]), inf([40, N]), { transA: true }).dispose();
    const at = randArray(K * Mt, 97);
    const ct = matmul(gpu, gpu.fromArray(at, [K, Mt]), gpu.fromArray(b, [K, N]), { transA: true });
    assertClose(
      await gpu.readF32(ct),
      ref.matmul(at, b, { M: Mt, N, K, transA: true }),
      TOL,
      "Aᵀ, K = 37 after Inf",
    );
  },
});

cases.push({
  name: "matmul (texture path): rows shorter than 256 bytes fold 2 or 4 to a texture row and " +
    "are copied, not packed, with the bits of the packed operands (A, transposed A, B; " +
    "epilogues, row sums, layernorm)",
  async run(gpu) {
    // a texture side of 32 chunks M past 32 rows: nothing folds there, every operand is packed;
    // with K ≤ 32 (one K chunk) each element of C is the same sum in the same order
    const small = await Gpu.create({ maxTextureSide: 32, matmulPath: "texture" });
    try {
      const same = (x: Float32Array, y: Float32Array, what: string) =>
        assert(x.every((v, i) => Object.is(v, y[i])), `${what}: bits differ from the packed run`);
      const shapes: [number, number, number, boolean][] = [
        [40, 32, 32, false], // A and B rows of 128 bytes: fold 2
        [40, 16, 16, false], // 64 bytes: fold 4
        [48, 32, 24, true], // A stored (K 24 × M 48): rows of 192 bytes fold 4; B folds 2
      ];
      for (const [M, N, K, transA] of shapes) {
        const av = randArray(M * K, 301 + M), bv = randArray(K * N, 302 + N);
        const bias = randArray(N, 303), resv = randArray(M * N, 304);
        const run = (g: Gpu, opts: Record<string, unknown>) => {
          const a = g.fromArray(av, transA ? [K, M] : [M, K]), b = g.fromArray(bv, [K, N]);
          const d0 = g.stats.dispatches;
          const c = matmul(g, a, b, { transA, ...opts });
          return { c, dispatches: g.stats.dispatches - d0 };
        };
        const what = `${M}×${N}×${K}${transA ? " (A transposed)" : ""}`;
        const plain = run(gpu, {});
        assertEquals(plain.dispatches, 1, `${what}: both operands copied`);
        assertClose(
          await gpu.readF32(plain.c),
          ref.matmul(av, bv, { M, N, K, transA }),
          TOL,
          `${what}: float64 reference`,
        );
        same(await gpu.readF32(plain.c), await small.readF32(run(small, {}).c), what);
        const epi = (g: Gpu) => ({
          bias: g.fromArray(bias),
          residual: g.fromArray(resv, [M, N]),
          relu: true,
        });
        same(
          await gpu.readF32(run(gpu, epi(gpu)).c),
          await small.readF32(run(small, epi(small)).c),
          `${what}, bias + residual + ReLU`,
        );
        if (transA) {
          const sums = (g: Gpu) => g.zeros([M]);
          const [s1, s2] = [sums(gpu), sums(small)];
          same(
            await gpu.readF32(run(gpu, { rowSums: { out: s1 } }).c),
            await small.readF32(run(small, { rowSums: { out: s2 } }).c),
            `${what}, with row sums`,
          );
          same(await gpu.readF32(s1), await small.readF32(s2), `${what}: row sums`);
        } else {
          const norm = (g: Gpu) => ({
            weight: g.fromArray(randArray(N, 305)),
            bias: g.fromArray(randArray(N, 306)),
          });
          const ln = (g: Gpu) =>
            matmulLayernorm(g, g.fromArray(av, [M, K]), g.fromArray(bv, [K, N]), {}, norm(g));
          const [x, y] = [ln(gpu), ln(small)];
          same(await gpu.readF32(x.out), await small.readF32(y.out), `${what}, layernorm: sum`);
          same(await gpu.readF32(x.ln.y), await small.readF32(y.ln.y), `${what}, layernorm`);
        }
      }
    } finally {
      small.destroy();
    }
  },
});

cases.push({
  name: "matmul (texture path): 256-byte-aligned operands take the copy path (batched, chunked)",
  async run(gpu) {
    // K and N multiples of 64 make rows 256-byte aligned: A and B are copied, not packed;
    // M = 37 leaves stale padding rows that must never reach C.
    const small = await Gpu.create({ maxTextureSide: 32, matmulPath: "texture" });
    try {
      for (const g of [gpu, small]) {
        const batch = 2, M = 37, K = 128, N = 64;
        const a = randArray(batch * M * K, 51), b = randArray(batch * K * N, 52);
        const bias = randArray(N, 53);
        // poison the pooled textures of exactly these size classes with Inf first
        const inf = (shape: number[]) =>
          g.fromArray(new Float32Array(shape.reduce((x, y) => x * y)).fill(Infinity), shape);
        matmul(g, inf([batch, 64, K]), inf([batch, K, N]));
        const c = matmul(g, g.fromArray(a, [batch, M, K]), g.fromArray(b, [batch, K, N]), {
          bias: g.fromArray(bias),
        });
        assertClose(
          await g.readF32(c),
          ref.matmul(a, b, { batch, M, N, K, bias }),
          TOL,
          `copy path (side ${g.textureSide})`,
        );
        const shared = matmul(
          g,
          g.fromArray(a, [batch, M, K]),
          g.fromArray(b.subarray(0, K * N), [K, N]),
        );
        assertClose(
          await g.readF32(shared),
          ref.matmul(a, b, { batch, M, N, K, shareB: true }),
          TOL,
          `copy path, shared B (side ${g.textureSide})`,
        );
      }
    } finally {
      small.destroy();
    }
  },
});

cases.push({
  name: "matmul: empty inner dimension gives the bias; shape errors are named",
  async run(gpu) {
    const c = matmul(gpu, gpu.zeros([3, 0]), gpu.zeros([0, 2]), {
      bias: gpu.fromArray([1, -2]),
    });
    assertClose(await gpu.readF32(c), [1, -2, 1, -2, 1, -2], { atol: 0, rtol: 0 }, "K=0");
    await assertThrows(
      () => matmul(gpu, gpu.zeros([2, 3]), gpu.zeros([4, 5])),
      ShapeError,
      "inner dimensions differ",
    );
    await assertThrows(
      () => matmul(gpu, gpu.zeros([2, 3]), gpu.zeros([3, 5]), { bias: gpu.zeros([4]) }),
      ShapeError,
      "bias has 4 elements",
    );
    await assertThrows(
      () => matmul(gpu, gpu.zeros([2, 2, 3]), gpu.zeros([3, 3, 5])),
      ShapeError,
      "batch dims differ",
    );
  },
});

cases.push({
  name: "matmul (texture path): a transposed B with 256+ rows of A is packed as stored (texels " +
    "along K) and gives the bits of the same product with B transposed up front (odd K and N, " +
    "bias + ReLU, batched, chunked)",
  async run(gpu) {
    const small = await Gpu.create({ maxTextureSide: 16, matmulPath: "texture" });
    try {
      for (const g of [gpu, small]) {
        for (const [batch, M, N, K] of [[1, 300, 45, 37], [2, 260, 64, 128], [1, 256, 7, 5]]) {
          const a = randArray(batch * M * K, 91 + K), bt = randArray(batch * N * K, 92 + N);
          const bias = randArray(N, 93);
          // the same B as (K × N) per batch
          const b = new Float32Array(batch * K * N);
          for (let z = 0; z < batch; z++) {
            for (let n = 0; n < N; n++) {
              for (let k = 0; k < K; k++) b[z * K * N + k * N + n] = bt[z * N * K + n * K + k];
            }
          }
          const ta = g.fromArray(a, batch > 1 ? [batch, M, K] : [M, K]);
          const o = { bias: g.fromArray(bias), relu: true, path: "texture" as const };
          const got = await g.readF32(
            matmul(g, ta, g.fromArray(bt, batch > 1 ? [batch, N, K] : [N, K]), {
              ...o,
              transB: true,
            }),
          );
          const want = await g.readF32(
            matmul(g, ta, g.fromArray(b, batch > 1 ? [batch, K, N] : [K, N]), o),
          );
          const where = `${batch}×${M}×${N}×${K}, side ${g.textureSide}`;
          assert(got.every((v, i) => Object.is(v, want[i])), `${where}: the bits of B as K × N`);
          assertClose(
            got,
            ref.matmul(a, bt, { batch, M, N, K, transB: true, bias, relu: true }),
            TOL,
            where,
          );
        }
      }
    } finally {
      small.destroy();
    }
  },
});
