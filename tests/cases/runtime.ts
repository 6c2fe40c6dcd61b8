import { Gpu, numel, Params } from "../../kernels/runtime.ts";
import {
  GpuLimitError,
  GpuValidationError,
  ShapeError,
  WebGpuUnavailableError,
} from "../../kernels/errors.ts";
import { scale } from "../../kernels/elementwise.ts";
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
