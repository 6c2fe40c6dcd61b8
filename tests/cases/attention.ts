import * as k from "../../kernels/attention.ts";
import * as ref from "../../kernels/reference/attention.ts";
import { ShapeError } from "../../kernels/errors.ts";
import { matmul } from "../../kernels/matmul.ts";
import type { Tensor } from "../../kernels/runtime.ts";
import { assert, assertClose, assertEquals, assertThrows } from "../assert.ts";
import { type Case, dot, finiteDiff, randArray } from "../_util.ts";

export const cases: Case[] = [];
// dot products over Dh ≤ 65 and softmax sums over Tk ≤ 33 keys, in f32
const TOL = { atol: 2e-5, rtol: 2e-5 };

// left padding: batch row b has b leading pad keys
function leftPadMask(B: number, T: number): Float32Array {
  return Float32Array.from({ length: B * T }, (_, i) => (i % T) < Math.floor(i / T) ? 0 : 1);
}

const SHAPES: [number, number, number, number, number][] = [
  // B, H, Tq, Tk, Dh
  [1, 1, 1, 1, 1],
  [2, 3, 7, 7, 5],
  [3, 2, 33, 33, 7],
  [2, 1, 5, 5, 65],
  [2, 2, 1, 9, 8], // decode step against a cache of 9 keys
  [1, 2, 3, 7, 4], // chunked prefill: 3 queries after 4 cached keys
  [3, 3, 13, 13, 8], // 9 (batch, head) layers: invocations across layers
];

for (const [B, H, Tq, Tk, Dh] of SHAPES) {
  cases.push({
    name:
      `attention: causal + key padding forward and backward (B=${B} H=${H} Tq=${Tq} Tk=${Tk} Dh=${Dh})`,
    async run(gpu) {
      const seed = B * 1000 + H * 100 + Tq * 10 + Dh;
      const q = randArray(B * H * Tq * Dh, seed, -2, 2),
        kk = randArray(B * H * Tk * Dh, seed + 1, -2, 2);
      const v = randArray(B * H * Tk * Dh, seed + 2), dout = randArray(B * H * Tq * Dh, seed + 3);
      const mask = leftPadMask(B, Tk);
      const args = { B, H, Tq, Tk, Dh, keyMask: mask };
      const tq = gpu.fromArray(q, [B, H, Tq, Dh]), tk = gpu.fromArray(kk, [B, H, Tk, Dh]);
      const tv = gpu.fromArray(v, [B, H, Tk, Dh]);
      const f = k.attentionForward(gpu, tq, tk, tv, { keyMask: gpu.fromArray(mask, [B, Tk]) });
      const want = ref.attentionForward(q, kk, v, args);
      assertEquals(f.out.shape, [B, H, Tq, Dh], "out shape");
      assertClose(await gpu.readF32(f.out), want.out, TOL, "out");
      const lse = Float64Array.from(await gpu.readF32(f.lse), (x) => x < -1e38 ? -Infinity : x);
      assertClose(lse, want.lse, TOL, "log-sum-exp");
      const g = k.attentionBackward(gpu, gpu.fromArray(dout, [B, H, Tq, Dh]), tq, tk, tv, f);
      const wg = ref.attentionBackward(dout, q, kk, v, args);
      assertClose(await gpu.readF32(g.dq), wg.dq, TOL, "dq");
      assertClose(await gpu.readF32(g.dk), wg.dk, TOL, "dk");
      assertClose(await gpu.readF32(g.dv), wg.dv, TOL, "dv");
      // the merged-heads layout [B, T, H, Dh]: the same values, moved
      const gm = k.attentionBackward(gpu, gpu.fromArray(dout, [B, H, Tq, Dh]), tq, tk, tv, f, {
        merged: true,
      });
      for (const n of ["dq", "dk", "dv"] as const) {
        assertEquals(gm[n].shape, [B, g[n].shape[2], H, Dh], `merged ${n} shape`);
        const want = await gpu.readF32(k.swapAxes12(gpu, g[n]));
        const got = await gpu.readF32(gm[n]);
        assert(got.every((x, i) => Object.is(x, want[i])), `merged ${n} = heads ${n} swapped`);
      }
      // self-attention: dq, dk and dv side by side per row [B, T, 3·H·Dh], the same bits
      if (Tq === Tk) {
        const dqkv = k.attentionBackwardQkv(
          gpu,
          gpu.fromArray(dout, [B, H, Tq, Dh]),
          tq,
          tk,
          tv,
          f,
        );
        assertEquals(dqkv.shape, [B, Tq, 3 * H * Dh], "dqkv shape");
        const got = await gpu.readF32(dqkv), C = H * Dh;
        for (const [part, n] of (["dq", "dk", "dv"] as const).entries()) {
          const want = await gpu.readF32(gm[n]);
          assert(
            want.every((x, i) => Object.is(x, got[Math.floor(i / C) * 3 * C + part * C + i % C])),
            `dqkv part ${part} = merged ${n}`,
          );
        }
      } else {
        await assertThrows(
          () => k.attentionBackwardQkv(gpu, gpu.fromArray(dout, [B, H, Tq, Dh]), tq, tk, tv, f),
          ShapeError,
          "as many queries as keys",
        );
      }
    },
  });
}

cases.push({
  name: "attention: reference backward equals central finite differences (masked, non-causal too)",
  run() {
    for (const causal of [true, false]) {
      const B = 2, H = 1, Tq = 4, Tk = 4, Dh = 3;
      const args = { B, H, Tq, Tk, Dh, keyMask: leftPadMask(B, Tk), causal };
      const q = randArray(B * H * Tq * Dh, 1), kk = randArray(B * H * Tk * Dh, 2);
      const v = randArray(B * H * Tk * Dh, 3), w = randArray(B * H * Tq * Dh, 4);
      const g = ref.attentionBackward(w, q, kk, v, args);
      const loss = (a: ArrayLike<number>, b: ArrayLike<number>, c: ArrayLike<number>) =>
        dot(w, ref.attentionForward(a, b, c, args).out);
      const tol = { atol: 1e-8, rtol: 1e-6 };
      assertClose(g.dq, finiteDiff((x) => loss(x, kk, v), q), tol, `dq (causal=${causal})`);
      assertClose(g.dk, finiteDiff((x) => loss(q, x, v), kk), tol, `dk (causal=${causal})`);
      assertClose(g.dv, finiteDiff((x) => loss(q, kk, x), v), tol, `dv (causal=${causal})`);
    }
  },
});

cases.push({
  name:
    "attention: fully masked query rows give zeros; unmasked non-causal; head split/merge round-trips",
  async run(gpu) {
    // one batch row whose only causal key is padding: query 0 sees nothing
    const B = 1, H = 1, T = 3, Dh = 2;
    const q = gpu.fromArray(randArray(T * Dh, 5), [B, H, T, Dh]);
    const kv = gpu.fromArray(randArray(T * Dh, 6), [B, H, T, Dh]);
    const f = k.attentionForward(gpu, q, kv, kv, { keyMask: gpu.fromArray([0, 1, 1], [1, 3]) });
    const out = await gpu.readF32(f.out);
    assertClose(out.subarray(0, 2), [0, 0], { atol: 0, rtol: 0 }, "empty row");
    // no mask at all, non-causal (encoder-style) attention over 4 queries and 6 keys
    const a = { B: 2, H: 3, Tq: 4, Tk: 6, Dh: 5, causal: false };
    const qa = randArray(2 * 3 * 4 * 5, 8), ka = randArray(2 * 3 * 6 * 5, 9);
    const va = randArray(2 * 3 * 6 * 5, 10);
    const fa = k.attentionForward(
      gpu,
      gpu.fromArray(qa, [2, 3, 4, 5]),
      gpu.fromArray(ka, [2, 3, 6, 5]),
      gpu.fromArray(va, [2, 3, 6, 5]),
      { causal: false },
    );
    assertClose(
      await gpu.readF32(fa.out),
      ref.attentionForward(qa, ka, va, a).out,
      TOL,
      "non-causal",
    );
    const wa = randArray(2 * 3 * 4 * 5, 11);
    const ga = k.attentionBackward(
      gpu,
      gpu.fromArray(wa, [2, 3, 4, 5]),
      gpu.fromArray(qa, [2, 3, 4, 5]),
      gpu.fromArray(ka, [2, 3, 6, 5]),
      gpu.fromArray(va, [2, 3, 6, 5]),
      fa,
    );
    const wga = ref.attentionBackward(wa, qa, ka, va, a);
    assertClose(await gpu.readF32(ga.dq), wga.dq, TOL, "non-causal dq");
    assertClose(await gpu.readF32(ga.dk), wga.dk, TOL, "non-causal dk");
    assertClose(await gpu.readF32(ga.dv), wga.dv, TOL, "non-causal dv");
    // the empty row gets zero gradient, and the padded key none either
    const ge = k.attentionBackward(
      gpu,
      gpu.fromArray(randArray(T * Dh, 12), [1, 1, T, Dh]),
      q,
      kv,
      kv,
      f,
    );
    assertClose(
      (await gpu.readF32(ge.dq)).subarray(0, 2),
      [0, 0],
      { atol: 0, rtol: 0 },
      "empty row dq",
    );
    assertClose(
      (await gpu.readF32(ge.dk)).subarray(0, 2),
      [0, 0],
      { atol: 0, rtol: 0 },
      "padded key dk",
    );
    const x = randArray(2 * 5 * 3 * 4, 7);
    const tx = gpu.fromArray(x, [2, 5, 3, 4]);
    const split = k.swapAxes12(gpu, tx);
    assertEquals(split.shape, [2, 3, 5, 4], "split shape");
    const back = await gpu.readF32(k.swapAxes12(gpu, split));
    assertEquals(back, x, "round trip");
    const s = await gpu.readF32(split);
    assertEquals(s[((1 * 3 + 2) * 5 + 4) * 4 + 3], x[((1 * 5 + 4) * 3 + 2) * 4 + 3], "element");
    // every element, on the scalar (D odd) and the vec4 (D a multiple of 4) kernels
    for (const [A, X, Y, D] of [[2, 5, 3, 3], [3, 7, 2, 8], [1, 1, 1, 1], [2, 3, 5, 12]]) {
      const v = randArray(A * X * Y * D, A + X + Y + D);
      const got = await gpu.readF32(k.swapAxes12(gpu, gpu.fromArray(v, [A, X, Y, D])));
      const want = new Float32Array(v.length);
      for (let a = 0; a < A; a++) {
        for (let xi = 0; xi < X; xi++) {
          for (let yi = 0; yi < Y; yi++) {
            for (let d = 0; d < D; d++) {
              want[((a * Y + yi) * X + xi) * D + d] = v[((a * X + xi) * Y + yi) * D + d];
            }
          }
        }
      }
      assertEquals(Array.from(got), Array.from(want), `swapAxes12 [${A}, ${X}, ${Y}, ${D}]`);
    }
    await assertThrows(
      () => k.attentionForward(gpu, q, gpu.zeros([1, 1, 2, 2]), gpu.zeros([1, 1, 2, 2])),
      ShapeError,
      "3 queries but only 2 keys",
    );
  },
});

cases.push({
  name: "attention: 8 or more (batch, head) layers (invocations across layers) give the bits of " +
    "each layer alone (invocations along rows), forward and backward, causal and not",
  async run(gpu) {
    const B = 5, H = 2, T = 19, Dh = 8, n = B * H * T * Dh;
    const q = randArray(n, 31, -2, 2), kk = randArray(n, 32, -2, 2), v = randArray(n, 33);
    const w = randArray(n, 34), mask = leftPadMask(B, T);
    // out, lse, dq, dk, dv of the layers in `t` (q, k, v, dO) under key mask `m`
    const run = (t: (a: Float32Array) => Tensor, m: Tensor, causal: boolean) => {
      const f = k.attentionForward(gpu, t(q), t(kk), t(v), { keyMask: m, causal });
      const g = k.attentionBackward(gpu, t(w), t(q), t(kk), t(v), f);
      return [f.out, f.lse, g.dq, g.dk, g.dv];
    };
    for (const causal of [true, false]) {
      const all = (a: Float32Array) => gpu.fromArray(a, [B, H, T, Dh]);
      const got = run(all, gpu.fromArray(mask, [B, T]), causal);
      const parts = await Promise.all(got.map((t) => gpu.readF32(t)));
      for (let b = 0; b < B; b++) {
        for (let h = 0; h < H; h++) {
          const at = (b * H + h) * T * Dh;
          const one = (a: Float32Array) => gpu.fromArray(a.slice(at, at + T * Dh), [1, 1, T, Dh]);
          const alone = run(one, gpu.fromArray(mask.slice(b * T, (b + 1) * T), [1, T]), causal);
          for (const [i, name] of ["out", "lse", "dq", "dk", "dv"].entries()) {
            const x = await gpu.readF32(alone[i]), size = x.length;
            const y = parts[i].subarray((b * H + h) * size, (b * H + h + 1) * size);
            assert(
              x.every((e, j) => Object.is(e, y[j])),
              `${name} of layer (${b}, ${h}), causal ${causal}`,
            );
          }
        }
      }
    }
  },
});

cases.push({
  name: "attention: more (batch, head) pairs than texture array layers are processed in chunks",
  async run(gpu) {
    const H = 2, T = 3, Dh = 4, B = Math.floor(gpu.limits.maxTextureArrayLayers / H) + 2;
    const n = B * H * T * Dh;
    const q = randArray(n, 21), kk = randArray(n, 22), v = randArray(n, 23), w = randArray(n, 24);
    const mask = leftPadMask(B, T).map((x, i) => Math.floor(i / T) >= 3 ? 1 : x);
    const args = { B, H, Tq: T, Tk: T, Dh, keyMask: mask };
    const t = (a: Float32Array) => gpu.fromArray(a, [B, H, T, Dh]);
    const tq = t(q), tk = t(kk), tv = t(v);
    const f = k.attentionForward(gpu, tq, tk, tv, { keyMask: gpu.fromArray(mask, [B, T]) });
    assertClose(await gpu.readF32(f.out), ref.attentionForward(q, kk, v, args).out, TOL, "out");
    const g = k.attentionBackward(gpu, t(w), tq, tk, tv, f);
    const want = ref.attentionBackward(w, q, kk, v, args);
    assertClose(await gpu.readF32(g.dq), want.dq, TOL, "dq");
    assertClose(await gpu.readF32(g.dk), want.dk, TOL, "dk");
    assertClose(await gpu.readF32(g.dv), want.dv, TOL, "dv");
  },
});

cases.push({
  name:
    "attention: KvCache prefill + incremental writes + decode equal full attention (masked, strided mask; pooled textures)",
  async run(gpu) {
    const B = 2, H = 3, Dh = 7, Tp = 4, steps = 3, cap = Tp + steps;
    const kk = randArray(B * H * cap * Dh, 61), vv = randArray(B * H * cap * Dh, 62);
    const qq = randArray(B * H * cap * Dh, 63);
    // mask with capacity stride: row 0 left-padded by 1, row 1 has a pad at its last position
    const mask = Float32Array.from(
      { length: B * cap },
      (_, i) => (i === 0 || i === cap + cap - 1 ? 0 : 1),
    );
    // caches come from the runtime's texture pool: a released one full of NaN must not leak
    const stale = new k.KvCache(gpu, B, H, cap, Dh);
    const nan = gpu.fromArray(new Float32Array(B * H * cap * Dh).fill(NaN), [B, H, cap, Dh]);
    stale.write(nan, nan, 0);
    stale.destroy();
    const cache = new k.KvCache(gpu, B, H, cap, Dh);
    const slice = (a: Float32Array, t0: number, t1: number) => {
      const out = new Float32Array(B * H * (t1 - t0) * Dh);
      for (let bh = 0; bh < B * H; bh++) {
        out.set(a.subarray((bh * cap + t0) * Dh, (bh * cap + t1) * Dh), bh * (t1 - t0) * Dh);
      }
      return out;
    };
    cache.write(
      gpu.fromArray(slice(kk, 0, Tp), [B, H, Tp, Dh]),
      gpu.fromArray(slice(vv, 0, Tp), [B, H, Tp, Dh]),
      0,
    );
    const tmask = gpu.fromArray(mask, [B, cap]);
    for (let t = Tp; t < cap; t++) {
      cache.write(
        gpu.fromArray(slice(kk, t, t + 1), [B, H, 1, Dh]),
        gpu.fromArray(slice(vv, t, t + 1), [B, H, 1, Dh]),
        t,
      );
      const Tk = t + 1;
      const q1 = slice(qq, t, t + 1);
      const out = cache.attend(gpu.fromArray(q1, [B, H, 1, Dh]), Tk, {
        keyMask: tmask,
        maskStride: cap,
      });
      const km = Float32Array.from(
        { length: B * Tk },
        (_, i) => mask[Math.floor(i / Tk) * cap + (i % Tk)],
      );
      const want = ref.attentionForward(q1, slice(kk, 0, Tk), slice(vv, 0, Tk), {
        B,
        H,
        Tq: 1,
        Tk,
        Dh,
        keyMask: km,
      });
      assertClose(await gpu.readF32(out), want.out, TOL, `decode at ${t}`);
    }
    cache.destroy();
  },
});

cases.push({
  name: "attention: k and v given as textures (written by the q/k/v matmul's KV epilogue) give " +
    "the bits of packed k and v, forward and backward; too small textures are named",
  async run(gpu) {
    // B 3, T 9, H 2, Dh 8: the fused q/k/v projection of a (27 × 12) input, heads split
    const B = 3, T = 9, H = 2, Dh = 8, C = H * Dh, N = B * T, part = 448; // 256-byte aligned
    const x = gpu.fromArray(randArray(N * 12, 71), [N, 12]);
    const w = gpu.fromArray(randArray(3 * C * 12, 72), [3 * C, 12]);
    const kt = gpu.scratchTexture(Dh / 4, T, B * H), vt = gpu.scratchTexture(Dh / 4, T, B * H);
    const qkv = matmul(gpu, x, w, {
      transB: true,
      splitHeads: { T, H, Dh, partStride: part },
      kvCache: { k: kt, v: vt, row: 0 },
    });
    const [q, kk, v] = [0, 1, 2].map((i) => qkv.view(i * part, [B, H, T, Dh]));
    const mask = gpu.fromArray(leftPadMask(B, T), [B, T]);
    const dout = gpu.fromArray(randArray(N * C, 73), [B, H, T, Dh]);
    const run = async (textures: boolean) => {
      const f = k.attentionForward(gpu, q, kk, v, {
        keyMask: mask,
        keyValueTextures: textures ? { k: kt, v: vt } : undefined,
      });
      assertEquals(f.keyValueTextures !== undefined, textures, "saved textures");
      const d = k.attentionBackwardQkv(gpu, dout, q, kk, v, f);
      return await Promise.all([f.out, f.lse, d].map(gpu.readF32, gpu));
    };
    const [packed, given] = [await run(false), await run(true)];
    packed.forEach((a, j) =>
      assert(a.every((u, i) => Object.is(u, given[j][i])), `output ${j}: given textures' bits`)
    );
    const small = gpu.scratchTexture(Dh / 4, 4, 2);
    await assertThrows(
      () => k.attentionForward(gpu, q, kk, v, { keyValueTextures: { k: small, v: small } }),
      ShapeError,
      "keyValueTextures must hold 6 layers of 9 × 2 texels",
    );
  },
});

cases.push({
  name: "attention: a merged output [B, Tq, H, Dh] holds the head-layout output's bits at the " +
    "swapped places, and the backward from it gives the same gradients",
  async run(gpu) {
    for (const [B, H, T, Dh] of [[2, 3, 7, 8], [1, 2, 5, 5]]) {
      const t = (seed: number) => gpu.fromArray(randArray(B * H * T * Dh, seed), [B, H, T, Dh]);
      const [q, kk, v, dout] = [t(81), t(82), t(83), t(84)];
      const mask = gpu.fromArray(leftPadMask(B, T), [B, T]);
      const heads = k.attentionForward(gpu, q, kk, v, { keyMask: mask });
      const merged = k.attentionForward(gpu, q, kk, v, { keyMask: mask, mergedOut: true });
      assertEquals(merged.out.shape, [B, T, H, Dh], "merged shape");
      const [a, m] = [await gpu.readF32(heads.out), await gpu.readF32(merged.out)];
      for (let i = 0; i < a.length; i++) {
        const d = i % Dh, r = Math.floor(i / Dh), tt = r % T, h = Math.floor(r / T) % H;
        const b = Math.floor(r / (T * H));
        const j = ((b * T + tt) * H + h) * Dh + d;
        assert(Object.is(a[i], m[j]), `element (${b}, ${h}, ${tt}, ${d})`);
      }
      const g1 = k.attentionBackward(gpu, dout, q, kk, v, heads);
      const g2 = k.attentionBackward(gpu, dout, q, kk, v, merged);
      for (const n of ["dq", "dk", "dv"] as const) {
        const [x, y] = [await gpu.readF32(g1[n]), await gpu.readF32(g2[n])];
        assert(x.every((u, i) => Object.is(u, y[i])), `${n}: the same bits`);
      }
    }
  },
});
