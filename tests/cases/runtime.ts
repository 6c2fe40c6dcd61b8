import { unwrittenReadWriteBindings, writesVariable } from "../../kernels/_bindings.ts";
import { Gpu, numel, Params, type Tensor } from "../../kernels/runtime.ts";
import {
  GpuLimitError,
  GpuValidationError,
  ShapeError,
  WebGpuUnavailableError,
} from "../../kernels/errors.ts";
import { add, scale } from "../../kernels/elementwise.ts";
import { matmul } from "../../kernels/matmul.ts";
import { assert, assertEquals, assertThrows } from "../assert.ts";
import type { Case } from "../_util.ts";

export const cases: Case[] = [];

cases.push({
  name: "runtime: missing WebGPU or adapter gives WebGpuUnavailableError with advice",
  async run() {
    await assertThrows(() => Gpu.create({ gpu: null }), WebGpuUnavailableError, "navigator.gpu");
    const noAdapter = { requestAdapter: () => Promise.resolve(null) } as unknown as GPU;
    await assertThrows(
      () => Gpu.create({ gpu: noAdapter }),
      WebGpuUnavailableError,
      "no GPU adapter",
    );
  },
});

cases.push({
  name: "runtime: tensors round-trip every dtype; shapes, reshape and intoShape are checked",
  async run(gpu) {
    const f = gpu.fromArray(new Float32Array([1.5, -2, 3]));
    const i = gpu.fromArray(new Int32Array([-7, 0, 2 ** 31 - 1]));
    const u = gpu.fromArray(new Uint32Array([0, 1, 2 ** 32 - 1]));
    assertEquals(await gpu.read(f), [1.5, -2, 3]);
    assertEquals(await gpu.read(i), [-7, 0, 2 ** 31 - 1]);
    assertEquals(await gpu.read(u), [0, 1, 2 ** 32 - 1]);
    assertEquals(numel([]), 1, "scalar numel");
    const x = gpu.fromArray(new Float32Array(6), [2, 3]);
    assertEquals(x.reshape([3, 2]).shape, [3, 2]);
    await assertThrows(() => x.reshape([4, 2]), ShapeError, "cannot become [4, 2]");
    await assertThrows(() => gpu.fromArray([1, 2, 3], [2, 2]), ShapeError, "do not fill shape");
    await assertThrows(() => gpu.empty([2, -1]), ShapeError, "not a non-negative integer");
    const moved = x.intoShape([6]);
    assert(x.disposed && !moved.disposed, "intoShape moves ownership");
    moved.dispose();
    await assertThrows(() => scale(gpu, x, 2), Error, "used after dispose");
  },
});

cases.push({
  name: "runtime: the buffer pool reuses freed buffers by size class",
  run(gpu) {
    const a = gpu.empty([1000]);
    const buf = a.buffer;
    a.dispose();
    const b = gpu.empty([1024]); // same power-of-two class (4 KiB)
    assert(b.buffer === buf, "buffer reused");
    const live = gpu.pool.stats().live;
    b.dispose();
    assertEquals(gpu.pool.stats().live, live - 1, "live count");
  },
});

cases.push({
  name: "runtime: a scope frees what it allocated except its result, also when it throws",
  async run(gpu) {
    const live0 = gpu.pool.stats().live;
    const outer = gpu.fromArray(new Float32Array([1, 2]));
    let inner: ReturnType<typeof gpu.empty> | undefined;
    const { y, pair } = await gpu.scope(async () => {
      inner = gpu.fromArray(new Float32Array([1, 2]));
      const y = scale(gpu, inner, 3);
      const z = await gpu.scope(() => scale(gpu, y, 2)); // kept: passes to this scope
      const dropped = scale(gpu, z, 5).intoShape([1, 2]); // intoShape moves the tracking
      assert(!dropped.disposed);
      return { y, pair: [z, outer] };
    });
    assert(inner!.disposed, "a temporary of the scope is disposed");
    assert(!y.disposed && !pair[0].disposed && !outer.disposed, "results and older tensors stay");
    assertEquals(Array.from(await gpu.read(pair[0])), [6, 12]);
    assertEquals(gpu.pool.stats().live, live0 + 3, "outer, y and z are the only live buffers");
    let leaked: ReturnType<typeof gpu.empty> | undefined;
    await assertThrows(
      () =>
        gpu.scope(() => {
          leaked = gpu.zeros([3]);
          throw new Error("boom");
        }),
      Error,
      "boom",
    );
    assert(leaked!.disposed, "a throwing scope still frees its tensors");
    const kept = await gpu.scope(() => gpu.keep(gpu.zeros([2])));
    const alsoKept = await gpu.scope(() => {
      gpu.keep(gpu.zeros([2])).dispose();
      return gpu.placeholder(5); // created inside a scope, still never disposed
    });
    assert(!kept.disposed && !alsoKept.disposed);
    const live1 = gpu.pool.stats().live;
    for (const t of [outer, y, pair[0], kept]) t.dispose();
    assertEquals(gpu.pool.stats().live, live1 - 4, "nothing else was left to the caller");
  },
});

cases.push({
  name: "runtime: device limits are enforced with GpuLimitError",
  async run(gpu) {
    const max = gpu.limits.maxStorageBufferBindingSize;
    await assertThrows(
      () => gpu.empty([max / 4 + 1]),
      GpuLimitError,
      "maxStorageBufferBindingSize",
    );
    const p = gpu.pipeline("@compute @workgroup_size(1) fn main() {}");
    const tooMany = gpu.limits.maxComputeWorkgroupsPerDimension + 1;
    await assertThrows(
      () => gpu.dispatch(p, [], [tooMany]),
      GpuLimitError,
      "maxComputeWorkgroupsPerDimension",
    );
    const [x, y] = gpu.grid(tooMany * 3);
    assert(x <= tooMany - 1 && x * y >= tooMany * 3, "grid splits large 1-D dispatches");
    await assertThrows(
      () => gpu.scratchTexture(gpu.limits.maxTextureDimension2D + 1, 1, 1),
      GpuLimitError,
      "maxTextureDimension2D",
    );
  },
});

cases.push({
  name: "runtime: a step of many kernels is one submit; read is the sync point",
  async run(gpu) {
    const x = gpu.fromArray(new Float32Array([1, 2, 3]));
    const before = { ...gpu.stats };
    let y = x;
    for (let k = 0; k < 50; k++) y = scale(gpu, y, 1.01, k === 0 ? undefined : y);
    const got = await gpu.read(y);
    assertEquals(gpu.stats.dispatches - before.dispatches, 50, "dispatches");
    assertEquals(gpu.stats.submits - before.submits, 1, "submits");
    assertEquals(gpu.stats.readbacks - before.readbacks, 1, "readbacks");
    assert(Math.abs(got[0] - 1.01 ** 50) < 1e-5, `value ${got[0]}`);
    // more parameter blocks than one uniform arena holds (64 KiB / 256 B = 256 slots)
    const z = gpu.fromArray(new Float32Array([1]));
    for (let k = 0; k < 600; k++) scale(gpu, z, k % 2 === 0 ? 2 : 0.5, z);
    assertEquals(await gpu.read(z), [1], "600 dispatches across uniform arenas");
  },
});

cases.push({
  name: "runtime: a WGSL error surfaces as GpuValidationError at the next sync point",
  async run(gpu) {
    const bad = "@compute @workgroup_size(1) fn main() { let x: u32 = 1.5; }";
    await assertThrows(
      async () => {
        const p = gpu.pipeline(bad);
        gpu.dispatch(p, [], [1], new Params().u32(0));
        await gpu.sync();
      },
      GpuValidationError,
      "",
    );
    // the device still works afterwards
    assertEquals(await gpu.read(gpu.fromArray([4])), [4]);
  },
});

cases.push({
  name: "runtime: one tensor read twice is allowed (matmul(a, a) on both paths, add(x, x)); " +
    "read + write or overlapping writes of one buffer are named errors",
  async run(gpu) {
    const a = gpu.fromArray(new Float32Array([1, 2, 3, 4]), [2, 2]);
    for (const path of ["texture", "buffer"] as const) {
      assertEquals(await gpu.read(matmul(gpu, a, a, { path })), [7, 10, 15, 22], path);
      assertEquals(await gpu.read(matmul(gpu, a, a, { path, transB: true })), [5, 11, 11, 25]);
    }
    assertEquals(await gpu.read(add(gpu, a, a)), [2, 4, 6, 8]);
    // WebGPU's per-dispatch rules, enforced on every backend by Gpu.dispatch
    const copy = gpu.pipeline(`
@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> y: array<f32>;
@group(0) @binding(2) var<storage, read_write> z: array<f32>;
@compute @workgroup_size(1) fn main() { y[0] = x[0]; z[0] = x[0]; }`);
    const n = gpu.limits.minStorageBufferOffsetAlignment / 4; // smallest bindable view offset
    const big = gpu.zeros([3 * n]);
    const lo = big.view(0, [n]), hi = big.view(n, [n]), wide = big.view(0, [2 * n]);
    const other = gpu.zeros([4]);
    assertThrows(
      () => gpu.dispatch(copy, [a, a, other], [1]),
      GpuValidationError,
      "bindings 0 (x, read) and 1 (y, read_write)",
    );
    assertThrows(
      () => gpu.dispatch(copy, [lo, hi, other], [1]),
      GpuValidationError,
      "use the same buffer",
    );
    assertThrows(
      () => gpu.dispatch(copy, [other, lo, wide], [1]),
      GpuValidationError,
      "overlapping ranges",
    );
    gpu.dispatch(copy, [a, lo, hi], [1]); // disjoint writable views of one buffer are fine
    assertEquals((await gpu.read(big)).slice(0, n + 1), [1, ...new Array(n - 1).fill(0), 1]);
  },
});

cases.push({
  name:
    "runtime: the WGSL write analysis behind the read-only binding check reads tricky code right",
  run() {
    const decl = "@group(0) @binding(0) var<storage, read_write> x: array<f32>;\n";
    const writes = [
      "x[i] = 1.0;",
      "x[idx[j] + 1u] += 2.0;",
      "x[i]++;",
      "x[i] >>= 1u;",
      "x.count = 0u;",
      "x = s;",
      "let r = atomicAdd(&x[0], 1u);",
      "let ptr = & x[3];",
    ];
    const reads = [
      "let y = x[i];",
      "if (x[i] == 0.0) { return; }",
      "let ok = a && x[0] > 0.0;",
      "let m = flags & x[1];",
      "let c = x[i] <= 2.0 || x[i] != 1.0 || x[i] >= 0.5;",
      "// x[i] = 1.0;",
      "/* x[i] = 1.0; */",
      "xs[i] = 1.0; p.x = 2.0; y_x[0] = 3.0;",
      "out[x[i]] = 1.0;",
    ];
    for (const body of writes) assert(writesVariable(decl + body, "x"), `should write: ${body}`);
    for (const body of reads) {
      assert(!writesVariable(decl + body, "x"), `should not write: ${body}`);
    }
    assertEquals(
      unwrittenReadWriteBindings(
        decl + "@group(0) @binding(1) var<storage, read_write> y: array<f32>;\n" +
          "@group(0) @binding(2) var<uniform> p: P;\nfn main() { y[0] = x[0]; }",
      ).map((b) => b.name),
      ["x"],
    );
  },
});

cases.push({
  name: "runtime: profiling mode times every dispatch and names its kernel and caller " +
    "(timestamp queries, and one submit per dispatch)",
  async run(gpu) {
    for (const mode of [true, "submit"] as const) {
      const p = await Gpu.create({ profile: mode, matmulPath: gpu.matmulPath });
      try {
        const a = p.fromArray(new Float32Array(12).fill(1), [3, 4]);
        const d0 = p.stats.dispatches;
        const y = scale(p, matmul(p, a, a, { transB: true }), 2);
        assertEquals(Array.from(await p.read(y)), new Array(9).fill(8));
        const rows = await p.profileReport();
        assertEquals(rows.reduce((s, r) => s + r.count, 0), p.stats.dispatches - d0, String(mode));
        assert(rows.every((r) => r.ms >= 0 && Number.isFinite(r.ms)), JSON.stringify(rows));
        // names come from the call stack's file paths: only unbundled sources have kernels/
        if (import.meta.url.includes("/tests/cases/")) {
          const kernels = rows.map((r) => r.kernel);
          assert(kernels.some((k) => k.startsWith("matmul")), `${kernels}`);
          assert(kernels.some((k) => k.startsWith("scale")), `${kernels}`);
        }
        assertEquals(await p.profileReport(), [], "a report forgets what it reported");
        if (mode === "submit") assertEquals(p.profiling, "submit");
      } finally {
        p.destroy();
      }
    }
    await assertThrows(() => gpu.profileReport(), Error, "profile: true");
  },
});

cases.push({
  name: "runtime: a held-constant operand is packed once and gives the same bits as packing per " +
    "use; a write to it (kernel, write, clear, copy) drops the packed copy; the hold ends cleanly",
  async run(gpu) {
    // odd shapes, B transposed (a linear layer's weight) and not, with bias
    const M = 5, K = 37, N = 19;
    const x = gpu.fromArray(Float32Array.from({ length: M * K }, (_, i) => Math.sin(i)), [M, K]);
    const w = gpu.fromArray(Float32Array.from({ length: N * K }, (_, i) => Math.cos(i)), [N, K]);
    const bias = gpu.fromArray(Float32Array.from({ length: N }, (_, i) => i / 7));
    const y = () => gpu.read(matmul(gpu, x, w, { transB: true, bias, path: "texture" }));
    const wT = gpu.fromArray(await gpu.read(w), [K, N]); // same values, as (K, N)
    const y2 = () => gpu.read(matmul(gpu, x, wT, { path: "texture" }));
    const plain = await y(), plain2 = await y2();
    const release = gpu.holdConstant([w, wT]);
    const d0 = gpu.stats.dispatches;
    assertEquals(await y(), plain, "first use under the hold (packs)");
    const d1 = gpu.stats.dispatches;
    assertEquals(await y(), plain, "second use (reuses the packed texture)");
    assert(gpu.stats.dispatches - d1 < d1 - d0, "the reuse skips the pack dispatch");
    assertEquals(await y2(), plain2);
    assertEquals(await y2(), plain2);
    // a kernel writing w, then gpu.write, then gpu.copy: each is seen by the next matmul
    scale(gpu, w, 2, w);
    const doubled = await y();
    for (let j = 0; j < doubled.length; j++) {
      const b = (j % N) / 7, want = 2 * (plain[j] - b) + b; // x·(2w)ᵀ + b
      assert(Math.abs(doubled[j] - want) < 1e-4, `after scale: ${doubled[j]} vs ${want}`);
    }
    gpu.write(w, new Float32Array(N * K));
    assertEquals(await y(), Array.from({ length: M * N }, (_, j) => Math.fround((j % N) / 7)));
    gpu.copy(wT.reshape([N, K]), w); // non-zero weights again, then cleared
    await y();
    gpu.clear(w);
    assertEquals(await y(), Array.from({ length: M * N }, (_, j) => Math.fround((j % N) / 7)));
    const original = Float32Array.from({ length: N * K }, (_, i) => Math.cos(i));
    gpu.copy(gpu.fromArray(original, [N, K]), w);
    assertEquals(await y(), plain, "after copy: the original weights again");
    release();
    release(); // a second call is a no-op
    assertEquals(await y(), plain, "after the hold");
  },
});

cases.push({
  name: "runtime: an operand is packed once while its buffer is unchanged (one block serving " +
    "two matmuls: dW and dx) with the bits of a fresh pack; a write (kernel, write, clear, " +
    "copy, copyRange) or a dispose and reuse of its pooled buffer is always seen",
  async run(gpu) {
    // odd shapes: K = 37 is not whole texels, so A and B go through the pack kernel
    const M = 6, K = 37, N = 19;
    const host = (n: number, f: (i: number) => number) =>
      Float32Array.from({ length: n }, (_, i) => f(i));
    const x = gpu.fromArray(host(M * K, (i) => Math.sin(i)), [M, K]);
    const w = gpu.fromArray(host(N * K, (i) => Math.cos(i)), [N, K]);
    const y = () => gpu.read(matmul(gpu, x, w, { transB: true, path: "texture" }));
    // the same product from fresh copies of the operands (other buffers, packed anew)
    const fresh = async () => {
      const x2 = gpu.fromArray(await gpu.read(x), [M, K]);
      const w2 = gpu.fromArray(await gpu.read(w), [N, K]);
      const out = await gpu.read(matmul(gpu, x2, w2, { transB: true, path: "texture" }));
      x2.dispose();
      w2.dispose();
      return out;
    };
    const first = await y();
    const s0 = { ...gpu.stats };
    assertEquals(await y(), first, "the second use reads the packed textures");
    assertEquals(gpu.stats.dispatches - s0.dispatches, 1, "the matmul alone: no pack dispatch");
    assertEquals(gpu.stats.packReuses - s0.packReuses, 2, "both operands counted as reused");
    // a copyable block (K a multiple of 64) counts as a staging copy, once
    const xc = gpu.fromArray(host(M * 64, (i) => i / 64), [M, 64]);
    const wc = gpu.fromArray(host(N * 64, (i) => -i / 64), [N, 64]);
    const s1 = { ...gpu.stats };
    matmul(gpu, xc, wc, { transB: true, path: "texture" }).dispose();
    matmul(gpu, xc, wc, { transB: true, path: "texture" }).dispose();
    assert(gpu.stats.textureCopies - s1.textureCopies >= 1, "A is copied, not packed");
    assertEquals(
      gpu.stats.textureCopyBytes - s1.textureCopyBytes,
      (gpu.stats.textureCopies - s1.textureCopies) * 4 * M * 64,
      "bytes of M×64 blocks",
    );
    assertEquals(first, await fresh());
    // a kernel writing x, then write, clear, copy and copyRange: each is seen
    scale(gpu, x, 2, x);
    assertEquals(await y(), await fresh(), "after a kernel wrote x");
    gpu.write(x, host(M * K, (i) => Math.cos(3 * i)));
    assertEquals(await y(), await fresh(), "after write");
    gpu.clear(w);
    assertEquals(await y(), new Float32Array(M * N), "after clear");
    gpu.copy(gpu.fromArray(host(N * K, (i) => i / 50), [N, K]), w);
    assertEquals(await y(), await fresh(), "after copy");
    gpu.copyRange(gpu.fromArray(host(40, (i) => -i / 9)), 3, x, 5, 30);
    assertEquals(await y(), await fresh(), "after copyRange");
    // a disposed operand's pooled buffer, reused and filled by a raw encoder copy (no write
    // the runtime sees): its packed texture went with the dispose
    const before = await gpu.read(x);
    const src = gpu.fromArray(host(M * K, (i) => 1 - i / 100), [M, K]);
    x.dispose();
    const x3 = gpu.empty([M, K]);
    assert(x3.buffer === x.buffer, "the pool hands the buffer out again");
    gpu.encoder().copyBufferToBuffer(src.buffer, src.byteOffset, x3.buffer, 0, 4 * M * K);
    const again = await gpu.read(matmul(gpu, x3, w, { transB: true, path: "texture" }));
    const x4 = gpu.fromArray(await gpu.read(x3), [M, K]);
    assertEquals(again, await gpu.read(matmul(gpu, x4, w, { transB: true, path: "texture" })));
    const old = gpu.fromArray(before, [M, K]);
    const stale = await gpu.read(matmul(gpu, old, w, { transB: true, path: "texture" }));
    assert(stale.some((v, i) => v !== again[i]), "the stale operand would give other values");
    // an output gradient dy as dW's A (dyᵀ, texels along M) and dx's A: one packed block,
    // the bits of each product packed alone
    const T = 16, Co = 24, Ci = 12;
    const dy = gpu.fromArray(host(T * Co, (i) => Math.sin(0.3 * i)), [T, Co]);
    const xin = gpu.fromArray(host(T * Ci, (i) => Math.cos(0.7 * i)), [T, Ci]);
    const W = gpu.fromArray(host(Co * Ci, (i) => Math.sin(1.3 * i)), [Co, Ci]);
    const pair = async (g: Tensor) => [
      await gpu.read(matmul(gpu, g, xin, { transA: true, path: "texture" })),
      await gpu.read(matmul(gpu, g, W, { path: "texture" })),
    ];
    const shared = await pair(dy);
    const copies = await Promise.all([0, 1].map(async (i) => {
      const g = gpu.fromArray(await gpu.read(dy), [T, Co]);
      const out = (await pair(g))[i];
      g.dispose();
      return out;
    }));
    assertEquals(shared, copies);
  },
});

cases.push({
  name: "runtime: packed operand textures stay within packedTextureBytes: the least recently " +
    "used is evicted (never the other operand of the same matmul), 0 packs per use; the " +
    "bits never change",
  async run(_gpu: Gpu) {
    // devices of its own (a GPU case: skipped where there is no adapter)
    const M = 8, K = 37, N = 19;
    const host = (n: number, f: (i: number) => number) =>
      Float32Array.from({ length: n }, (_, i) => f(i));
    for (const budget of [0, 1, 3]) {
      // the budget in textures of the (equal) size class A's and B's packs take
      const probe = await Gpu.create({ matmulPath: "texture" });
      const t = probe.scratchTexture(10, 8, 1); // A: 10 texels of K, 8 rows
      const tb = probe.scratchTexture(6, 40, 1); // B (transposed): 6 texels of N, 40 rows of K
      const bytesA = 16 * t.width * t.height, bytesB = 16 * tb.width * tb.height;
      probe.destroy();
      const gpu = await Gpu.create({
        matmulPath: "texture",
        packedTextureBytes: budget === 0 ? 0 : budget === 1 ? bytesA + bytesB : 2 * bytesA + bytesB,
      });
      try {
        const xs = [1, 2, 3].map((s) => gpu.fromArray(host(M * K, (i) => Math.sin(s * i)), [M, K]));
        const w = gpu.fromArray(host(N * K, (i) => Math.cos(i)), [N, K]);
        const want = await Promise.all(xs.map(async (x) => {
          const c = gpu.fromArray(await gpu.read(x), [M, K]);
          const wc = gpu.fromArray(await gpu.read(w), [N, K]);
          const out = await gpu.read(matmul(gpu, c, wc, { transB: true }));
          c.dispose();
          wc.dispose();
          return out;
        }));
        // each call: its bits, and its dispatches (1 = both operands reused, 2 = a pack too)
        const call = async (i: number) => {
          const d0 = gpu.stats.dispatches;
          assertEquals(await gpu.read(matmul(gpu, xs[i], w, { transB: true })), want[i]);
          return gpu.stats.dispatches - d0;
        };
        const counts = [];
        for (const i of [0, 0, 1, 2, 0, 0]) counts.push(await call(i));
        assertEquals(
          counts,
          budget === 0
            ? [2, 2, 2, 2, 2, 2] // nothing kept
            : budget === 1
            ? [2, 1, 2, 2, 1, 1] // x0 and w kept: the two most recent are never evicted
            : [2, 1, 2, 2, 2, 1], // room for one more A: x2 evicts x0 (not w), x0 evicts x1
          `budget ${budget}`,
        );
      } finally {
        gpu.destroy();
      }
    }
  },
});

cases.push({
  name: "runtime: textures a tensor holds go back to the pool when it is disposed, by dispose, " +
    "by a scope or through intoShape's successor, and only once",
  run(gpu) {
    const fresh = () => gpu.scratchTexture(3, 5, 2);
    const a = fresh(), t = gpu.zeros([4]);
    t.holdTextures([a]);
    t.dispose();
    t.dispose();
    const b = fresh(), c = fresh();
    assert(b === a && c !== a, "released once, reused once");
    gpu.releaseTexture(c);
    gpu.scope(() => gpu.zeros([2, 2]).holdTextures([b]));
    const d = fresh();
    assert(d === b, "a scope released it");
    const u = gpu.zeros([2, 2]);
    u.holdTextures([d]);
    const moved = u.intoShape([4]);
    assertEquals(fresh() === d, false, "still held after intoShape");
    moved.dispose();
    assert(fresh() === d, "released by the successor");
  },
});
