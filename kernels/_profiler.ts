/**
 * Per-dispatch GPU timing for {@link Gpu} in profiling mode (`Gpu.create({ profile: true })`).
 * With the adapter's `timestamp-query` feature each dispatch runs in its own compute pass whose
 * begin and end are written to a query set (GPU time, no sync). Without it each dispatch is
 * submitted alone and timed by when `onSubmittedWorkDone` resolves (wall time of the queue: an
 * upper bound that includes the submit overhead). Either way a dispatch is attributed to the
 * kernel function that recorded it and to the first caller outside `kernels/` (the model or
 * trainer code that asked for it), read from the call stack (from unbundled sources: in a bundle
 * every frame is one file, and a dispatch is named by its innermost function).
 *
 * @module
 */

/** Time spent in one kernel (or one call site), summed over its dispatches. */
export interface KernelTime {
  /** The kernel function that recorded the dispatches (e.g. `matmul`, `layernormForward`). */
  kernel: string;
  /** The first caller outside `kernels/` (e.g. `OptModel.forward`), or `-`. */
  site: string;
  /** Dispatches. */
  count: number;
  /** Total GPU milliseconds (timestamp mode) or queue wall milliseconds (submit mode). */
  ms: number;
}

/** How dispatches are timed: GPU timestamps, or one submit per dispatch. */
export type ProfileMode = "timestamp" | "submit";

const SET_SIZE = 2048; // dispatches per query set (two timestamps each)

interface QuerySlab {
  set: GPUQuerySet;
  resolve: GPUBuffer;
  read: GPUBuffer;
  labels: [string, string][];
}

/**
 * Where the current dispatch comes from: the kernel (the outermost function in `kernels/` — the
 * public entry such as `matmul` —, with the innermost one after a slash when they differ, e.g.
 * `matmul/fillTexture`) and the first named caller outside `kernels/` (e.g. `OptModel.forward`).
 */
export function dispatchSite(): [string, string] {
  const frames = (new Error().stack ?? "").split("\n").slice(1);
  const kernels: string[] = [];
  let site = "-", first = "";
  for (const f of frames) {
    if (/runtime\.ts|_profiler\.ts/.test(f)) continue;
    const name = f.match(/at (?:async )?(?:new )?([\w.$<>]+) \(/)?.[1] ??
      f.match(/^\s*([\w.$<>]+)@/)?.[1];
    // a dispatch recorded outside kernels/ by an anonymous function: name it by its file
    first ||= name ?? f.match(/\/([\w.-]+\.ts):\d+/)?.[1] ?? "";
    if (/\/kernels\//.test(f)) {
      if (name) kernels.push(name);
      continue;
    }
    if (name) {
      site = name;
      break;
    }
  }
  const inner = kernels[0] ?? (first || "?"), outer = kernels.at(-1) ?? inner;
  return [inner === outer ? outer : `${outer}/${inner}`, site];
}

/** Collects dispatch timings; owned by a {@link Gpu} created with `profile: true`. */
export class DispatchProfiler {
  #slabs: QuerySlab[] = [];
  #done: { label: [string, string]; t: number }[] = [];
  #submitStart = 0;

  constructor(readonly device: GPUDevice, readonly mode: ProfileMode) {}

  /** Timestamp writes for the pass of the next dispatch (timestamp mode). */
  timestampWrites(label: [string, string]): GPUComputePassTimestampWrites {
    let slab = this.#slabs.at(-1);
    if (!slab || slab.labels.length === SET_SIZE) {
      slab = {
        set: this.device.createQuerySet({ type: "timestamp", count: 2 * SET_SIZE }),
        resolve: this.device.createBuffer({
          size: 16 * SET_SIZE,
          usage: GPUBufferUsage.QUERY_RESOLVE | GPUBufferUsage.COPY_SRC,
        }),
        read: this.device.createBuffer({
          size: 16 * SET_SIZE,
          usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
        }),
        labels: [],
      };
      this.#slabs.push(slab);
    }
    const i = slab.labels.length;
    slab.labels.push(label);
    return { querySet: slab.set, beginningOfPassWriteIndex: 2 * i, endOfPassWriteIndex: 2 * i + 1 };
  }

  /** Records the resolves of every used query into `enc` (before it is finished). */
  resolve(enc: GPUCommandEncoder): void {
    for (const s of this.#slabs) {
      const n = 2 * s.labels.length;
      if (n === 0) continue;
      enc.resolveQuerySet(s.set, 0, n, s.resolve, 0);
      enc.copyBufferToBuffer(s.resolve, 0, s.read, 0, 8 * n);
    }
  }

  /** Notes that one dispatch was just submitted alone (submit mode). */
  submitted(label: [string, string]): void {
    if (this.#done.length === 0) this.#submitStart = performance.now();
    const entry = { label, t: NaN };
    this.#done.push(entry);
    this.device.queue.onSubmittedWorkDone().then(() => entry.t = performance.now());
  }

  /** Sums the recorded dispatches by kernel and call site, then forgets them. */
  async report(): Promise<KernelTime[]> {
    const acc = new Map<string, KernelTime>();
    const add = ([kernel, site]: [string, string], ms: number) => {
      const key = `${kernel}\u0000${site}`;
      const e = acc.get(key) ?? { kernel, site, count: 0, ms: 0 };
      e.count++;
      e.ms += ms;
      acc.set(key, e);
    };
    if (this.mode === "timestamp") {
      for (const s of this.#slabs) {
        const n = s.labels.length;
        await s.read.mapAsync(GPUMapMode.READ, 0, 16 * n);
        const t = new BigInt64Array(s.read.getMappedRange(0, 16 * n).slice(0));
        s.read.unmap();
        for (let i = 0; i < n; i++) add(s.labels[i], Number(t[2 * i + 1] - t[2 * i]) / 1e6);
        s.set.destroy();
        s.resolve.destroy();
        s.read.destroy();
      }
      this.#slabs = [];
    } else {
      await this.device.queue.onSubmittedWorkDone();
      let prev = this.#submitStart;
      for (const d of this.#done) {
        add(d.label, Math.max(0, d.t - prev));
        prev = d.t;
      }
      this.#done = [];
    }
    return [...acc.values()];
  }
}
