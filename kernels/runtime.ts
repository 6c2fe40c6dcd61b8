/**
 * The GPU runtime: one {@link Gpu} owns the `GPUDevice`, a buffer pool, a pipeline cache, a
 * uniform-parameter arena and the current command encoder. Kernels record dispatches into one
 * compute pass; {@link Gpu.flush} submits them once per step, and {@link Gpu.read} is the only
 * GPU→CPU sync point.
 *
 * Runtime-agnostic: uses only the WebGPU API (`navigator.gpu`), so it runs in Deno and browsers.
 *
 * @module
 */

import { checkShape, GpuLimitError, GpuValidationError, WebGpuUnavailableError } from "./errors.ts";
import { type BufferAccess, type BufferBinding, bufferBindings } from "./_bindings.ts";
import { DispatchProfiler, dispatchSite, type KernelTime, type ProfileMode } from "./_profiler.ts";
import type { TextureTiling } from "./matmul.ts";

export type { KernelTime, ProfileMode };

/** Element types a {@link Tensor} can hold (4 bytes each). */
export type DType = "f32" | "i32" | "u32";

/** Typed array matching a {@link DType}. */
export type TypedArrayFor<D extends DType> = D extends "f32" ? Float32Array
  : D extends "i32" ? Int32Array
  : Uint32Array;

/** Number of elements of a shape (1 for a scalar `[]`). */
export function numel(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}

function checkDims(shape: readonly number[], what: string): void {
  for (const d of shape) {
    checkShape(
      Number.isInteger(d) && d >= 0,
      `${what}: shape [${shape.join(", ")}] has a dimension that is not a non-negative integer`,
    );
  }
}

/**
 * A GPU buffer region with a shape and a dtype. Created by {@link Gpu.empty}, {@link Gpu.zeros},
 * {@link Gpu.fromArray} or as a view of a larger buffer; call {@link Tensor.dispose} to return
 * its buffer to the pool.
 *
 * @example Upload, compute, read back
 * ```ts
 * import { Gpu, scale } from "../mod.ts";
 * const gpu = await Gpu.create();
 * const x = gpu.fromArray(new Float32Array([1, 2, 3]), [3]);
 * const y = scale(gpu, x, 2);
 * console.log(await gpu.read(y)); // Float32Array [2, 4, 6]
 * ```
 */
export class Tensor {
  /** Number of elements. */
  readonly size: number;
  #disposed = false;

  /**
   * Internal: tensors come from {@link Gpu.empty}, {@link Gpu.zeros}, {@link Gpu.fromArray}
   * or {@link Tensor.view}.
   */
  constructor(
    /** The runtime that owns the buffer. */
    readonly gpu: Gpu,
    /** The underlying buffer (may be shared with other views). */
    readonly buffer: GPUBuffer,
    /** Dimensions, row-major. */
    readonly shape: readonly number[],
    /** Element type. */
    readonly dtype: DType = "f32",
    /** Offset of element 0 in bytes inside `buffer` (a multiple of the storage offset alignment). */
    readonly byteOffset = 0,
    /** Whether this tensor owns (and on dispose, returns) its buffer. */
    readonly owner = true,
  ) {
    this.size = numel(shape);
  }

  /** Size in bytes. */
  get byteLength(): number {
    return this.size * 4;
  }

  /** True once {@link dispose} ran. */
  get disposed(): boolean {
    return this.#disposed;
  }

  /** The binding resource for this tensor (whole region). */
  binding(): GPUBufferBinding {
    if (this.#disposed) throw new Error(`tensor [${this.shape.join(", ")}] used after dispose`);
    if (this.byteLength > this.gpu.maxBindingBytes) {
      throw new GpuLimitError(
        `tensor [${this.shape.join(", ")}] (${this.byteLength} bytes) cannot be bound: ` +
          `maxStorageBufferBindingSize is ${this.gpu.maxBindingBytes}; process it in row chunks`,
      );
    }
    // zero-sized bindings are invalid: bind at least 4 bytes (shaders never read them).
    return { buffer: this.buffer, offset: this.byteOffset, size: Math.max(4, this.byteLength) };
  }

  /** A tensor with the same data and a new shape of equal element count (shares the buffer). */
  reshape(shape: readonly number[]): Tensor {
    checkDims(shape, "reshape");
    checkShape(
      numel(shape) === this.size,
      `reshape: [${this.shape.join(", ")}] (${this.size} elements) cannot become [${
        shape.join(", ")
      }]`,
    );
    return new Tensor(this.gpu, this.buffer, shape, this.dtype, this.byteOffset, false);
  }

  /**
   * A view of `numel(shape)` elements starting `elementOffset` elements into this tensor
   * (shares the buffer; disposing the view frees nothing). The byte offset must meet
   * `minStorageBufferOffsetAlignment` so that the view can be bound.
   */
  view(elementOffset: number, shape: readonly number[]): Tensor {
    checkDims(shape, "view");
    const n = numel(shape);
    checkShape(
      Number.isInteger(elementOffset) && elementOffset >= 0 && elementOffset + n <= this.size,
      `view: [${shape.join(", ")}] at ${elementOffset} exceeds ${this.size} elements`,
    );
    const byteOffset = this.byteOffset + 4 * elementOffset;
    const align = this.gpu.limits.minStorageBufferOffsetAlignment;
    checkShape(
      byteOffset % align === 0,
      `view: byte offset ${byteOffset} is not a multiple of minStorageBufferOffsetAlignment (${align})`,
    );
    return new Tensor(this.gpu, this.buffer, shape, this.dtype, byteOffset, false);
  }

  /**
   * Splits this tensor along its first axis into views that can each be bound (at most
   * `maxBytes`, default the device's binding limit), with aligned offsets.
   */
  rowChunks(maxBytes = this.gpu.maxBindingBytes): { row0: number; rows: number; view: Tensor }[] {
    checkShape(this.shape.length >= 1, "rowChunks: needs at least one dimension");
    const rows = this.shape[0], rowElems = rows === 0 ? 0 : this.size / rows;
    const align = this.gpu.limits.minStorageBufferOffsetAlignment / 4;
    // rows per chunk: within the limit and a multiple of the alignment period
    const period = rowElems === 0 ? 1 : align / gcd(align, rowElems);
    let per = Math.floor(maxBytes / 4 / Math.max(1, rowElems));
    per = Math.max(period, Math.floor(per / period) * period);
    checkShape(
      per * rowElems * 4 <= maxBytes || rows <= 1,
      `rowChunks: one aligned chunk of [${this.shape}] exceeds ${maxBytes} bytes`,
    );
    const out: { row0: number; rows: number; view: Tensor }[] = [];
    for (let r0 = 0; r0 < rows; r0 += per) {
      const n = Math.min(per, rows - r0);
      out.push({ row0: r0, rows: n, view: this.view(r0 * rowElems, [n, ...this.shape.slice(1)]) });
    }
    return out;
  }

  /**
   * Consumes this tensor and returns one with a new shape that owns the buffer (use when a
   * kernel's result is handed out under another shape; `reshape` would leave the view unable
   * to free it).
   */
  intoShape(shape: readonly number[]): Tensor {
    const v = this.reshape(shape);
    const owned = new Tensor(
      this.gpu,
      this.buffer,
      v.shape,
      this.dtype,
      this.byteOffset,
      this.owner,
    );
    owned.#textures = this.#textures;
    this.#textures = undefined;
    this.#disposed = true;
    if (this.owner) this.gpu._retrack(this, owned);
    return owned;
  }

  #textures?: GPUTexture[];

  /**
   * Ties pooled textures (from {@link Gpu.scratchTexture}) to this tensor: they go back to the
   * pool when it is disposed (by `dispose`, a {@link Gpu.scope} or a model's
   * `disposeActivations`) — for textures that live as long as an activation, such as the keys
   * and values attention reads in the backward.
   */
  holdTextures(textures: readonly GPUTexture[]): void {
    this.#textures = [...(this.#textures ?? []), ...textures];
  }

  /** Returns the buffer to the pool (no-op for views), and any {@link holdTextures} textures. */
  dispose(): void {
    if (this.#disposed) return;
    this.#disposed = true;
    if (this.owner) {
      this.gpu._released(this.buffer);
      this.gpu.pool.release(this.buffer);
    }
    for (const t of this.#textures ?? []) this.gpu.releaseTexture(t);
    this.#textures = undefined;
  }
}

// WebGPU usage flags (fixed by the spec). Literal values rather than the GPUBufferUsage globals,
// so that importing this module never throws where WebGPU is absent.
const BUFFER = { MAP_READ: 0x1, COPY_SRC: 0x4, COPY_DST: 0x8, UNIFORM: 0x40, STORAGE: 0x80 };
const TEXTURE = { COPY_SRC: 0x1, COPY_DST: 0x2, STORAGE_BINDING: 0x8 };
const MAP_READ = 0x1;
const STORAGE_USAGE = BUFFER.STORAGE | BUFFER.COPY_SRC | BUFFER.COPY_DST;

/**
 * Reuses freed storage buffers by size class: up to 1 MiB sizes round to the next power of two,
 * above that to the next MiB.
 */
export class BufferPool {
  #free = new Map<number, GPUBuffer[]>();
  #live = 0;
  #pooledBytes = 0;
  /**
   * An empty pool.
   * @param device the device whose buffers the pool manages
   */
  constructor(readonly device: GPUDevice) {}

  /** The size class a request of `bytes` is served from. */
  static sizeClass(bytes: number): number {
    const b = Math.max(16, bytes);
    if (b <= 1 << 20) return 2 ** Math.ceil(Math.log2(b));
    return Math.ceil(b / (1 << 20)) * (1 << 20);
  }

  /** A buffer of at least `bytes` (storage | copy-src | copy-dst). */
  acquire(bytes: number): GPUBuffer {
    const size = BufferPool.sizeClass(bytes);
    const max = this.device.limits.maxBufferSize;
    if (size > max) {
      throw new GpuLimitError(
        `buffer of ${bytes} bytes exceeds device.limits.maxBufferSize (${max})`,
      );
    }
    const list = this.#free.get(size);
    this.#live++;
    if (list && list.length > 0) {
      this.#pooledBytes -= size;
      return list.pop()!;
    }
    return this.device.createBuffer({ size, usage: STORAGE_USAGE });
  }

  /** Returns a buffer for reuse. Commands already recorded keep their order on the queue. */
  release(buffer: GPUBuffer): void {
    this.#live--;
    const list = this.#free.get(buffer.size) ?? [];
    list.push(buffer);
    this.#free.set(buffer.size, list);
    this.#pooledBytes += buffer.size;
  }

  /** Buffers handed out and not yet released; bytes held for reuse. */
  stats(): { live: number; pooledBytes: number } {
    return { live: this.#live, pooledBytes: this.#pooledBytes };
  }

  /** Destroys all pooled buffers. */
  clear(): void {
    for (const list of this.#free.values()) for (const b of list) b.destroy();
    this.#free.clear();
    this.#pooledBytes = 0;
  }
}

/** A resource bound to a kernel: a tensor, a texture view, or nothing (binding left out). */
export type Bindable = Tensor | GPUTextureView | null;

/** Options for {@link Gpu.create}. */
export interface GpuOptions {
  /**
   * The WebGPU entry point (default `navigator.gpu`); `null` means "not available". Lets
   * hosts without a global `navigator.gpu` pass their own implementation.
   */
  gpu?: GPU | null;
  /** `"high-performance"` or `"low-power"`; default none. */
  powerPreference?: GPUPowerPreference;
  /**
   * Matmul path: `"texture"` reads operands from rgba32float storage textures (fast on software
   * adapters), `"buffer"` uses workgroup-tiled storage buffers (real GPUs). Default: texture
   * when the adapter is a fallback (software) adapter.
   */
  matmulPath?: "texture" | "buffer";
  /** Bytes of each uniform arena block (default 64 KiB). */
  uniformArenaBytes?: number;
  /**
   * Largest storage binding in bytes (default and cap: `maxStorageBufferBindingSize`). Smaller
   * values force the row-chunked paths for big tensors (e.g. a 50k-token embedding); tests
   * use this.
   */
  maxBindingBytes?: number;
  /**
   * Largest texture side the kernels may use (default and cap: `maxTextureDimension2D`).
   * Smaller values force operand chunking; tests use this to exercise the chunked paths.
   */
  maxTextureSide?: number;
  /**
   * Bytes of packed operand textures kept for reuse while their buffers are unchanged (see
   * {@link Gpu.packedTexture}; default and cap: `min(64 MiB, maxBufferSize)`; 0 packs every
   * operand per use). Tests use small values to exercise eviction.
   */
  packedTextureBytes?: number;
  /**
   * Profiling mode: every dispatch is timed and attributed to its kernel (see
   * {@link Gpu.profileReport}) — with GPU timestamps when the adapter offers `timestamp-query`
   * (requested then), else by submitting each dispatch alone (`"submit"` forces that). Slower;
   * for `deno task profile`.
   */
  profile?: boolean | ProfileMode;
  /**
   * The texture-path matmul's register tiling (default: `TEXTURE_TILING`, or what
   * `tuneTextureTiling` measures fastest on this adapter). Every tiling gives the same bits.
   */
  textureTiling?: TextureTiling;
}

/** Per-dispatch parameter block builder (written into the uniform arena). */
export class Params {
  #view: DataView;
  #bytes: Uint8Array;
  #n = 0;
  /**
   * An empty parameter block.
   * @param capacity most 32-bit fields the block holds (default 64)
   */
  constructor(capacity = 64) {
    this.#bytes = new Uint8Array(capacity * 4);
    this.#view = new DataView(this.#bytes.buffer);
  }
  /** Appends unsigned 32-bit integers. */
  u32(...v: number[]): this {
    for (const x of v) this.#view.setUint32(4 * this.#n++, x >>> 0, true);
    return this;
  }
  /** Appends signed 32-bit integers. */
  i32(...v: number[]): this {
    for (const x of v) this.#view.setInt32(4 * this.#n++, x | 0, true);
    return this;
  }
  /** Appends 32-bit floats. */
  f32(...v: number[]): this {
    for (const x of v) this.#view.setFloat32(4 * this.#n++, x, true);
    return this;
  }
  /** The bytes written so far, padded to 16. */
  bytes(): Uint8Array {
    const len = Math.max(16, Math.ceil((4 * this.#n) / 16) * 16);
    return this.#bytes.subarray(0, len);
  }
}

interface Arena {
  buffer: GPUBuffer;
  staging: Uint8Array;
  used: number;
}

/** Statistics of the runtime, for benchmarks and tests. */
export interface GpuStats {
  /** Compute dispatches recorded. */
  dispatches: number;
  /** Command buffers submitted. */
  submits: number;
  /** GPU → CPU readbacks (each a sync point). */
  readbacks: number;
  /** Compute pipelines compiled (cache misses). */
  pipelines: number;
  /**
   * Buffer → texture copies staging matmul/attention operands (recorded between dispatches;
   * profiling's timestamps do not time them).
   */
  textureCopies: number;
  /** Bytes those copies moved. */
  textureCopyBytes: number;
  /** Operand blocks served by an earlier pack ({@link Gpu.packedTexture}) instead of a new one. */
  packReuses: number;
}

/** Adds the tensors in `v` (a tensor, or arrays/plain objects of them, `depth` levels) to `out`. */
function collectTensors(v: unknown, out: Set<Tensor>, depth: number): void {
  if (v instanceof Tensor) out.add(v);
  else if (depth > 0 && Array.isArray(v)) { for (const x of v) collectTensors(x, out, depth - 1); }
  else if (depth > 0 && v !== null && typeof v === "object" && !ArrayBuffer.isView(v)) {
    for (const x of Object.values(v)) collectTensors(x, out, depth - 1);
  }
}

/** How many device errors are kept for one {@link GpuValidationError}. */
const MAX_ERRORS = 8;
/** Bind groups kept for reuse (a PPO iteration of the built-in task records ~4 400 dispatches). */
const MAX_BIND_GROUPS = 16384;

/**
 * Owns the device and batches work. Create one per program with {@link Gpu.create}.
 *
 * @example Create and inspect
 * ```ts
 * import { Gpu } from "../mod.ts";
 * const gpu = await Gpu.create();
 * console.log(gpu.adapterDescription, gpu.matmulPath);
 * ```
 */
export class Gpu {
  /** The size-classed buffer pool tensors are allocated from. */
  readonly pool: BufferPool;
  /** The device's limits (binding sizes, workgroup counts, texture side). */
  readonly limits: GPUSupportedLimits;
  /** Running counts of dispatches, submits, readbacks, pipelines and operand staging. */
  readonly stats: GpuStats = {
    dispatches: 0,
    submits: 0,
    readbacks: 0,
    pipelines: 0,
    textureCopies: 0,
    textureCopyBytes: 0,
    packReuses: 0,
  };
  /** Largest texture side kernels use (≤ `maxTextureDimension2D`). */
  readonly textureSide: number;
  /**
   * The texture-path matmul's default register tiling (`undefined`: `TEXTURE_TILING`); set by
   * {@link GpuOptions.textureTiling} or `tuneTextureTiling`. Any tiling gives the same bits:
   * only the speed depends on it, and which is fastest depends on the CPU behind a software
   * adapter (its vector registers).
   */
  textureTiling: TextureTiling | undefined;
  /** Largest storage binding in bytes (≤ `maxStorageBufferBindingSize`). */
  readonly maxBindingBytes: number;
  #pipelines = new Map<string, GPUComputePipeline>();
  /** Pipelines with entry point `main` by their source (no per-call key string). */
  #mainPipelines = new Map<string, GPUComputePipeline>();
  /** Bind groups by their resources (see {@link dispatch}); cleared when it grows large. */
  #groups = new Map<string, GPUBindGroup>();
  /** Identity numbers of pipelines, buffers and texture views, for bind-group keys. */
  #ids = new WeakMap<object, number>();
  #nextId = 1;
  /** One 2-D-array view per texture (see {@link arrayView}). */
  #views = new WeakMap<GPUTexture, GPUTextureView>();
  /** Per pipeline: each buffer binding's access and variable name, parsed from its WGSL. */
  #access = new WeakMap<GPUComputePipeline, Map<number, BufferBinding>>();
  #encoder: GPUCommandEncoder | null = null;
  #pass: GPUComputePassEncoder | null = null;
  #arenas: Arena[] = [];
  #arenaIndex = 0;
  /** Uniform slots written since the last submit, by content. */
  #uniformSlots = new Map<string, GPUBufferBinding>();
  #arenaBytes: number;
  /** Device errors reported and not yet thrown, oldest first (at most {@link MAX_ERRORS}). */
  #errors: string[] = [];
  #textures = new Map<string, GPUTexture[]>();
  /** Buffers held constant ({@link holdConstant}) and their packed operand textures. */
  #constant = new Map<GPUBuffer, { holds: number; packed: Map<string, GPUTexture> }>();
  #constantBytes = 0;
  /**
   * Packed operand textures of buffers that are not held ({@link packedTexture}), by buffer
   * and block; reused until the buffer is written or released. `#recent` orders them for
   * eviction (oldest first).
   */
  #operands = new Map<GPUBuffer, Map<string, GPUTexture>>();
  #recent = new Map<GPUTexture, { buffer: GPUBuffer; key: string; bytes: number }>();
  #operandBytes = 0;
  #operandBudget: number;
  #profiler: DispatchProfiler | null;

  private constructor(
    readonly device: GPUDevice,
    readonly adapterDescription: string,
    readonly isFallbackAdapter: boolean,
    readonly matmulPath: "texture" | "buffer",
    uniformArenaBytes: number,
    maxTextureSide: number | undefined,
    maxBindingBytes: number | undefined,
    profile: ProfileMode | null = null,
    packedTextureBytes?: number,
    textureTiling?: TextureTiling,
  ) {
    this.textureTiling = textureTiling;
    this.pool = new BufferPool(device);
    this.#operandBudget = Math.max(
      0,
      Math.min(packedTextureBytes ?? Infinity, 64 * 2 ** 20, device.limits.maxBufferSize),
    );
    this.#profiler = profile ? new DispatchProfiler(device, profile) : null;
    this.limits = device.limits;
    this.maxBindingBytes = Math.min(
      maxBindingBytes ?? Infinity,
      device.limits.maxStorageBufferBindingSize,
    );
    this.textureSide = Math.min(
      maxTextureSide ?? Infinity,
      device.limits.maxTextureDimension2D,
    );
    this.#arenaBytes = uniformArenaBytes;
    device.addEventListener("uncapturederror", (ev) => {
      this.#report((ev as GPUUncapturedErrorEvent).error.message);
    });
    device.lost.then((info) => {
      if (info.reason !== "destroyed") this.#report(`device lost: ${info.message}`);
    });
  }

  /**
   * Acquires an adapter and a device with the adapter's limits requested explicitly.
   * Throws {@link WebGpuUnavailableError} with advice when WebGPU is not available.
   */
  static async create(options: GpuOptions = {}): Promise<Gpu> {
    const entry = options.gpu !== undefined
      ? options.gpu
      : (globalThis as { navigator?: { gpu?: GPU } }).navigator?.gpu;
    if (!entry) {
      throw new WebGpuUnavailableError(
        "WebGPU is not available: navigator.gpu is undefined. Use Deno ≥ 2.9, or a browser with " +
          "WebGPU enabled (Chromium: --enable-unsafe-webgpu; Safari/Firefox: recent versions).",
      );
    }
    const adapter = await entry.requestAdapter(
      options.powerPreference ? { powerPreference: options.powerPreference } : undefined,
    );
    if (!adapter) {
      throw new WebGpuUnavailableError(
        "WebGPU is present but no GPU adapter was found (no driver? On Linux without a GPU, " +
          "install Mesa (llvmpipe) or set DENO_WEBGPU_BACKEND=gl).",
      );
    }
    const wanted: (keyof GPUSupportedLimits)[] = [
      "maxStorageBufferBindingSize",
      "maxBufferSize",
      "maxComputeWorkgroupStorageSize",
      "maxComputeInvocationsPerWorkgroup",
      "maxComputeWorkgroupSizeX",
      "maxComputeWorkgroupSizeY",
      "maxComputeWorkgroupsPerDimension",
      "maxStorageBuffersPerShaderStage",
      "maxStorageTexturesPerShaderStage",
      "maxTextureDimension2D",
      "maxTextureArrayLayers",
    ];
    const requiredLimits: Record<string, number> = {};
    for (const k of wanted) {
      const v = adapter.limits[k];
      if (typeof v === "number") requiredLimits[k] = v;
    }
    const timestamps = (options.profile === true || options.profile === "timestamp") &&
      adapter.features.has("timestamp-query");
    let device: GPUDevice;
    try {
      device = await adapter.requestDevice({
        requiredLimits,
        requiredFeatures: timestamps ? ["timestamp-query"] : [],
      });
    } catch (e) {
      throw new WebGpuUnavailableError(`WebGPU adapter refused a device: ${String(e)}`);
    }
    // deno-lint-ignore no-explicit-any
    const info = (adapter as any).info ?? {};
    // deno-lint-ignore no-explicit-any
    const fallback = Boolean((adapter as any).isFallbackAdapter ?? info.isFallbackAdapter) ||
      /llvmpipe|swiftshader|lavapipe|software/i.test(
        `${info.description ?? ""} ${info.architecture ?? ""} ${info.vendor ?? ""}`,
      );
    const desc = [info.vendor, info.architecture, info.device, info.description]
      .filter((s: string | undefined) => s).join(" ") || "unknown adapter";
    const path = options.matmulPath ?? (fallback ? "texture" : "buffer");
    return new Gpu(
      device,
      desc,
      fallback,
      path,
      options.uniformArenaBytes ?? 65536,
      options.maxTextureSide,
      options.maxBindingBytes,
      options.profile ? (timestamps ? "timestamp" : "submit") : null,
      options.packedTextureBytes,
      options.textureTiling,
    );
  }

  // ---------------------------------------------------------------- tensors

  #placeholders: Tensor[] = [];

  /**
   * Small buffers of their own (one per `slot`) to bind where a kernel's optional inputs are
   * absent (a flag tells the shader not to read them). Binding another operand there instead
   * would alias buffers, which WebGPU forbids when a binding is writable. Do not dispose.
   */
  placeholder(slot = 0): Tensor {
    while (this.#placeholders.length <= slot) {
      this.#placeholders.push(this.keep(this.zeros([4])));
    }
    return this.#placeholders[slot];
  }

  /** Open {@link scope}s, innermost last: the tensors each has allocated. */
  #scopes: Set<Tensor>[] = [];

  /**
   * Runs `fn` (sync, or async: then when its promise settles) and then disposes every tensor
   * allocated inside it (by {@link empty},
   * {@link zeros}, {@link fromArray} or any kernel) except those found in its result — a
   * tensor, or arrays and plain objects holding tensors (two levels deep) — which pass to the
   * enclosing scope. Trainers use it instead of hand-kept dispose lists. Views of a disposed
   * tensor must not escape; use {@link keep} for tensors that outlive the scope by other paths.
   *
   * @example Temporaries of a computation are freed, the result stays
   * ```ts
   * import { Gpu, scale } from "../mod.ts";
   * const gpu = await Gpu.create();
   * const y = await gpu.scope(() => {
   *   const x = gpu.fromArray(new Float32Array([1, 2])); // freed when the scope ends
   *   return scale(gpu, x, 3);
   * });
   * console.log(await gpu.read(y)); // Float32Array [3, 6]
   * ```
   */
  scope<R>(fn: () => R): R {
    const mine = new Set<Tensor>();
    this.#scopes.push(mine);
    let result: R;
    try {
      result = fn();
    } catch (e) {
      this.#closeScope(mine, undefined);
      throw e;
    }
    if (result instanceof Promise) {
      return result.then(
        (v) => (this.#closeScope(mine, v), v),
        (e) => {
          this.#closeScope(mine, undefined);
          throw e;
        },
      ) as R;
    }
    this.#closeScope(mine, result);
    return result;
  }

  #closeScope(mine: Set<Tensor>, result: unknown): void {
    const kept = new Set<Tensor>();
    collectTensors(result, kept, 2);
    const i = this.#scopes.lastIndexOf(mine);
    if (i >= 0) this.#scopes.splice(i, 1);
    const parent = this.#scopes.at(-1);
    for (const t of mine) {
      if (kept.has(t)) parent?.add(t);
      else t.dispose();
    }
  }

  /** Takes `t` out of every open {@link scope} (it lives until disposed by hand); returns it. */
  keep<T extends Tensor>(t: T): T {
    for (const s of this.#scopes) s.delete(t);
    return t;
  }

  /** `from` became `to` (see {@link Tensor.intoShape}): `to` takes its place in its scope. @internal */
  _retrack(from: Tensor, to: Tensor): void {
    for (const s of this.#scopes) {
      if (s.delete(from)) s.add(to);
    }
  }

  /** Called when a tensor takes a pooled buffer: the innermost open scope tracks it. @internal */
  _track(t: Tensor): void {
    this.#scopes.at(-1)?.add(t);
  }

  /** An uninitialised tensor from the pool. */
  empty(shape: readonly number[], dtype: DType = "f32"): Tensor {
    checkDims(shape, "empty");
    const bytes = numel(shape) * 4;
    const maxBinding = this.maxBindingBytes;
    if (bytes > maxBinding) {
      throw new GpuLimitError(
        `tensor [${shape.join(", ")}] needs ${bytes} bytes, above ` +
          `device.limits.maxStorageBufferBindingSize (${maxBinding})`,
      );
    }
    const t = new Tensor(this, this.pool.acquire(bytes), shape, dtype);
    this._track(t);
    return t;
  }

  /** A tensor filled with zeros (cleared on the GPU queue, in order with recorded work). */
  zeros(shape: readonly number[], dtype: DType = "f32"): Tensor {
    const t = this.empty(shape, dtype);
    this.clear(t);
    return t;
  }

  /** Sets every element of `t` to zero (recorded in order). */
  clear(t: Tensor): void {
    if (t.byteLength === 0) return;
    this.#changed(t.buffer);
    this.#endPass();
    this.#enc().clearBuffer(t.buffer, t.byteOffset, t.byteLength);
  }

  /** Uploads `data` into a new tensor. The dtype follows the array type unless given. */
  fromArray(
    data: Float32Array | Int32Array | Uint32Array | readonly number[],
    shape?: readonly number[],
    dtype?: DType,
  ): Tensor {
    const dt: DType = dtype ??
      (data instanceof Int32Array ? "i32" : data instanceof Uint32Array ? "u32" : "f32");
    const arr = Array.isArray(data)
      ? (dt === "f32"
        ? new Float32Array(data)
        : dt === "i32"
        ? new Int32Array(data)
        : new Uint32Array(data))
      : data as Float32Array | Int32Array | Uint32Array;
    const shp = shape ?? [arr.length];
    checkShape(
      numel(shp) === arr.length,
      `fromArray: ${arr.length} values do not fill shape [${shp.join(", ")}]`,
    );
    const t = this.empty(shp, dt);
    this.write(t, arr);
    return t;
  }

  /**
   * Writes host data into a tensor. The write is ordered with recorded work: pending dispatches
   * are submitted first, so earlier kernels see the old contents.
   */
  write(t: Tensor, data: Float32Array | Int32Array | Uint32Array, elementOffset = 0): void {
    checkShape(
      elementOffset + data.length <= t.size,
      `write: ${data.length} values at offset ${elementOffset} overflow [${t.shape.join(", ")}]`,
    );
    if (this.#encoder) this.flush();
    if (data.length === 0) return;
    this.#changed(t.buffer);
    this.device.queue.writeBuffer(
      t.buffer,
      t.byteOffset + elementOffset * 4,
      data.buffer,
      data.byteOffset,
      data.byteLength,
    );
  }

  /** Copies `src` into `dst` (element counts must match), recorded in order. */
  copy(src: Tensor, dst: Tensor): void {
    checkShape(
      src.size === dst.size,
      `copy: ${src.size} elements into ${dst.size} ([${src.shape}] → [${dst.shape}])`,
    );
    if (src.size === 0) return;
    this.#changed(dst.buffer);
    this.#endPass();
    this.#enc().copyBufferToBuffer(
      src.buffer,
      src.byteOffset,
      dst.buffer,
      dst.byteOffset,
      src.byteLength,
    );
  }

  /**
   * Copies `count` elements from `src[srcOffset…]` to `dst[dstOffset…]` (a buffer copy recorded
   * in order; only 4-byte alignment is needed).
   */
  copyRange(src: Tensor, srcOffset: number, dst: Tensor, dstOffset: number, count: number): void {
    checkShape(
      srcOffset >= 0 && dstOffset >= 0 && srcOffset + count <= src.size &&
        dstOffset + count <= dst.size,
      `copyRange: ${count} elements from ${srcOffset} (of ${src.size}) to ${dstOffset} (of ${dst.size})`,
    );
    if (count === 0) return;
    this.#changed(dst.buffer);
    this.#endPass();
    this.#enc().copyBufferToBuffer(
      src.buffer,
      src.byteOffset + 4 * srcOffset,
      dst.buffer,
      dst.byteOffset + 4 * dstOffset,
      4 * count,
    );
  }

  /**
   * Reads a tensor back to the host: submits pending work and waits. This is the sync point;
   * call it once per step, not per kernel.
   */
  async read<T extends Tensor>(t: T): Promise<Float32Array | Int32Array | Uint32Array> {
    const bytes = t.byteLength;
    const staging = this.device.createBuffer({
      size: Math.max(16, Math.ceil(bytes / 4) * 4),
      usage: BUFFER.MAP_READ | BUFFER.COPY_DST,
    });
    if (bytes > 0) {
      this.#endPass();
      this.#enc().copyBufferToBuffer(t.buffer, t.byteOffset, staging, 0, bytes);
    }
    this.flush();
    this.stats.readbacks++;
    try {
      await staging.mapAsync(MAP_READ);
    } catch (e) {
      await this.#throwReportedErrors();
      throw e;
    }
    await this.#throwReportedErrors();
    const copy = staging.getMappedRange(0, Math.max(16, bytes)).slice(0, bytes);
    staging.unmap();
    staging.destroy();
    return t.dtype === "f32"
      ? new Float32Array(copy)
      : t.dtype === "i32"
      ? new Int32Array(copy)
      : new Uint32Array(copy);
  }

  /** {@link read} typed as `Float32Array` (throws for integer tensors). */
  async readF32(t: Tensor): Promise<Float32Array> {
    checkShape(t.dtype === "f32", `readF32: tensor has dtype ${t.dtype}`);
    return await this.read(t) as Float32Array;
  }

  /**
   * Throws the device errors reported so far, if any, as one {@link GpuValidationError}
   * (oldest first), and forgets them.
   */
  throwIfError(): void {
    if (this.#errors.length === 0) return;
    const list = this.#errors;
    this.#errors = [];
    throw new GpuValidationError(`WebGPU reported: ${list.join("\n")}`);
  }

  /** How dispatches are timed in profiling mode (`null`: not profiling). */
  get profiling(): ProfileMode | null {
    return this.#profiler?.mode ?? null;
  }

  /**
   * The time of every dispatch since the last report (or since creation), summed by kernel
   * function and call site, largest first. Needs `Gpu.create({ profile: true })`.
   *
   * @example Time one forward pass by kernel
   * ```ts
   * import { Gpu, OPT_PRESETS, OptModel } from "../mod.ts";
   * const gpu = await Gpu.create({ profile: true });
   * const model = OptModel.create(gpu, OPT_PRESETS.tiny, { seed: 1 });
   * const acts = model.forward(gpu.fromArray(new Int32Array([2, 5, 9]), [1, 3]), gpu.fromArray([1, 1, 1], [1, 3]));
   * model.disposeActivations(acts);
   * for (const k of await gpu.profileReport()) console.log(k.kernel, k.site, k.count, k.ms.toFixed(3));
   * ```
   */
  async profileReport(): Promise<KernelTime[]> {
    if (!this.#profiler) throw new Error("profileReport: create the Gpu with { profile: true }");
    this.flush();
    await this.device.queue.onSubmittedWorkDone();
    await this.#throwReportedErrors();
    return (await this.#profiler.report()).sort((a, b) => b.ms - a.ms);
  }

  /** Waits until the queue is idle (a sync point; for benchmarks). */
  async sync(): Promise<void> {
    this.flush();
    await this.device.queue.onSubmittedWorkDone();
    await this.#throwReportedErrors();
  }

  #report(message: string): void {
    if (this.#errors.length < MAX_ERRORS) this.#errors.push(message);
  }

  /**
   * At a sync point: when an error has been reported, one more round trip to the device lets
   * the errors that follow from it (an invalid shader makes an invalid pipeline, then an
   * invalid command buffer; browsers deliver these asynchronously) arrive, so that they are
   * thrown together now instead of failing a later, unrelated sync point.
   */
  async #throwReportedErrors(): Promise<void> {
    if (this.#errors.length === 0) return;
    this.device.pushErrorScope("validation");
    await this.device.popErrorScope();
    await this.device.queue.onSubmittedWorkDone();
    this.throwIfError();
  }

  // ---------------------------------------------------------------- textures

  /**
   * A pooled rgba32float 2-D array texture usable as a read-only storage texture and as a
   * storage-write target, at least `width`×`height`×`layers`. Give it back with
   * {@link releaseTexture} once the dispatches that use it are recorded: queue order keeps
   * later reuse safe.
   */
  scratchTexture(width: number, height: number, layers: number): GPUTexture {
    const max = this.textureSide;
    const maxLayers = this.limits.maxTextureArrayLayers;
    if (width > max || height > max || layers > maxLayers) {
      throw new GpuLimitError(
        `texture ${width}×${height}×${layers} exceeds maxTextureDimension2D (${max}) or ` +
          `maxTextureArrayLayers (${maxLayers})`,
      );
    }
    const w = Math.min(max, roundUpClass(width));
    const h = Math.min(max, roundUpClass(height));
    const l = Math.min(maxLayers, 2 ** Math.ceil(Math.log2(Math.max(layers, 1))));
    const key = `${w}x${h}x${l}`;
    const list = this.#textures.get(key);
    const tex = list?.pop() ?? this.device.createTexture({
      size: [w, h, l],
      dimension: "2d",
      format: "rgba32float",
      usage: TEXTURE.STORAGE_BINDING | TEXTURE.COPY_DST | TEXTURE.COPY_SRC,
    });
    return tex;
  }

  /** Returns a texture from {@link scratchTexture} to the pool. */
  releaseTexture(tex: GPUTexture): void {
    const key = `${tex.width}x${tex.height}x${tex.depthOrArrayLayers}`;
    const list = this.#textures.get(key) ?? [];
    list.push(tex);
    this.#textures.set(key, list);
  }

  /**
   * Declares the buffers of `tensors` constant until the returned function is called (holds
   * nest; call it once). While held, the texture matmul path packs each sub-block of such an
   * operand into a texture once and reuses it, instead of packing it again for every matmul:
   * generation holds the model's weights, which every decoded token multiplies by. Any write
   * to a held buffer (a kernel binding it writable, `write`, `clear`, `copy`, `copyRange`) drops its
   * packed textures, so a stale copy is never read. Packed textures count against a budget
   * (`min(256 MiB, maxBufferSize)`); beyond it operands are packed per use as usual. Release
   * the hold before disposing a held tensor (its pooled buffer may be reused).
   */
  holdConstant(tensors: readonly Tensor[]): () => void {
    const buffers = [...new Set(tensors.map((t) => t.buffer))];
    for (const b of buffers) {
      const e = this.#constant.get(b) ?? { holds: 0, packed: new Map() };
      e.holds++;
      this.#constant.set(b, e);
    }
    let released = false;
    return () => {
      if (released) return;
      released = true;
      for (const b of buffers) {
        const e = this.#constant.get(b)!;
        if (--e.holds > 0) continue;
        this.#changed(b);
        this.#constant.delete(b);
      }
    };
  }

  /**
   * The packed texture of a held-constant operand block (`key` names the block), filled by
   * `fill` on first use; `undefined` when `src` is not held or the budget is spent (then the
   * caller packs into a scratch texture and releases it).
   */
  constantTexture(
    src: Tensor,
    key: string,
    size: readonly [number, number, number],
    fill: (tex: GPUTexture) => void,
  ): GPUTexture | undefined {
    const e = this.#constant.get(src.buffer);
    if (!e) return undefined;
    const k = `${src.byteOffset}|${key}`;
    const hit = e.packed.get(k);
    if (hit) {
      this.stats.packReuses++;
      return hit;
    }
    const tex = this.scratchTexture(...size);
    const bytes = 16 * tex.width * tex.height * tex.depthOrArrayLayers;
    if (this.#constantBytes + bytes > Math.min(256 * 2 ** 20, this.limits.maxBufferSize)) {
      this.releaseTexture(tex);
      return undefined;
    }
    fill(tex);
    this.#constantBytes += bytes;
    e.packed.set(k, tex);
    return tex;
  }

  /**
   * The packed texture of an operand block of any buffer (`key` names the block and the
   * texture's size), filled by `fill` on first use and reused while the buffer is unchanged:
   * a held buffer's from {@link constantTexture}; any other's until a write to the buffer (a
   * kernel binding it writable, `write`, `clear`, `copy`, `copyRange`) or its release (the
   * tensor owning it disposed) drops it. A backward reads each output gradient as the A
   * operand of two matmuls (dW and dx) and each saved input as the B operand of dW, packed
   * the same way as by the forward's matmul: one fill instead of two (on llvmpipe a buffer →
   * texture copy costs about as much as a product's loads). The textures count against a
   * budget, least recently used evicted first — never the
   * two most recently returned, which one matmul binds together. `undefined` when the block
   * does not fit the budget (`GpuOptions.packedTextureBytes`): the caller packs into a scratch
   * texture and releases it.
   */
  packedTexture(
    src: Tensor,
    key: string,
    size: readonly [number, number, number],
    fill: (tex: GPUTexture) => void,
  ): GPUTexture | undefined {
    if (this.#constant.has(src.buffer)) return this.constantTexture(src, key, size, fill);
    const k = `${src.byteOffset}|${key}`;
    const entries = this.#operands.get(src.buffer);
    const hit = entries?.get(k);
    if (hit) {
      this.stats.packReuses++;
      const e = this.#recent.get(hit)!;
      this.#recent.delete(hit);
      this.#recent.set(hit, e);
      return hit;
    }
    const tex = this.scratchTexture(...size);
    const bytes = 16 * tex.width * tex.height * tex.depthOrArrayLayers;
    const budget = this.#operandBudget;
    if (bytes > budget) {
      this.releaseTexture(tex);
      return undefined;
    }
    // evict the least recently used, sparing the two most recent (a matmul's other operand)
    const spared = [...this.#recent.keys()].slice(-2);
    for (const [old, e] of this.#recent) {
      if (this.#operandBytes + bytes <= budget) break;
      if (spared.includes(old)) continue;
      this.#dropOperand(old, e);
    }
    if (this.#operandBytes + bytes > budget) {
      this.releaseTexture(tex);
      return undefined;
    }
    fill(tex);
    this.#operandBytes += bytes;
    const map = entries ?? new Map<string, GPUTexture>();
    map.set(k, tex);
    this.#operands.set(src.buffer, map);
    this.#recent.set(tex, { buffer: src.buffer, key: k, bytes });
    return tex;
  }

  #dropOperand(tex: GPUTexture, e: { buffer: GPUBuffer; key: string; bytes: number }): void {
    this.#recent.delete(tex);
    const map = this.#operands.get(e.buffer);
    map?.delete(e.key);
    if (map?.size === 0) this.#operands.delete(e.buffer);
    this.#operandBytes -= e.bytes;
    this.releaseTexture(tex);
  }

  /** Called when a tensor's buffer goes back to the pool: drops its packed textures. @internal */
  _released(buffer: GPUBuffer): void {
    this.#changed(buffer);
  }

  /** A buffer changed (or its hold ended, or it was released): its packed textures go back. */
  #changed(buffer: GPUBuffer): void {
    const ops = this.#operands.get(buffer);
    if (ops) {
      for (const tex of [...ops.values()]) {
        this.#dropOperand(tex, this.#recent.get(tex)!);
      }
    }
    const e = this.#constant.get(buffer);
    if (!e || e.packed.size === 0) return;
    for (const tex of e.packed.values()) {
      this.#constantBytes -= 16 * tex.width * tex.height * tex.depthOrArrayLayers;
      this.releaseTexture(tex);
    }
    e.packed.clear();
  }

  // ---------------------------------------------------------------- pipelines and dispatch

  /** A compute pipeline for `code`, cached by source and entry point. */
  pipeline(code: string, entryPoint = "main"): GPUComputePipeline {
    if (entryPoint === "main") {
      const hit = this.#mainPipelines.get(code);
      if (hit) return hit;
    }
    const key = `${entryPoint}\u0000${code}`;
    let p = this.#pipelines.get(key);
    if (!p) {
      const module = this.device.createShaderModule({ code });
      p = this.device.createComputePipeline({
        layout: "auto",
        compute: { module, entryPoint },
      });
      this.#pipelines.set(key, p);
      this.#access.set(p, bufferBindings(code));
      this.stats.pipelines++;
    }
    if (entryPoint === "main") this.#mainPipelines.set(code, p);
    return p;
  }

  /**
   * The `"2d-array"` view of a texture, one per texture: kernels bind the same view object each
   * time, so that their bind groups can be reused.
   */
  arrayView(tex: GPUTexture): GPUTextureView {
    let v = this.#views.get(tex);
    if (!v) {
      v = tex.createView({ dimension: "2d-array" });
      this.#views.set(tex, v);
    }
    return v;
  }

  #id(o: object): number {
    let i = this.#ids.get(o);
    if (i === undefined) {
      i = this.#nextId++;
      this.#ids.set(o, i);
    }
    return i;
  }

  /**
   * Records one dispatch into the current compute pass.
   *
   * @param pipeline from {@link pipeline}
   * @param bindings resources for `@group(0) @binding(i)`, in binding order; `null` leaves a
   *   binding number out. When `params` is given it is bound after the last entry.
   * @param workgroups dispatch size; checked against `maxComputeWorkgroupsPerDimension`
   * @param params uniform parameters, bound at binding `bindings.length`
   */
  dispatch(
    pipeline: GPUComputePipeline,
    bindings: Bindable[],
    workgroups: readonly [number, number?, number?],
    params?: Params,
  ): void {
    const [x, y = 1, z = 1] = workgroups;
    if (x === 0 || y === 0 || z === 0) return;
    const max = this.limits.maxComputeWorkgroupsPerDimension;
    if (x > max || y > max || z > max) {
      throw new GpuLimitError(
        `dispatch ${x}×${y}×${z} exceeds maxComputeWorkgroupsPerDimension (${max})`,
      );
    }
    // the bind group is reused when the same pipeline binds the same resources (the same
    // buffer ranges, texture views and uniform slot): creating one costs ~20 µs in Deno, a
    // tenth of a small dispatch; steps that repeat (training steps, decode loops) hit the cache
    const entries: GPUBindGroupEntry[] = [];
    let key = `${this.#id(pipeline)}`;
    bindings.forEach((b, i) => {
      if (b === null) {
        key += "|-";
        return;
      }
      if (b instanceof Tensor) {
        const r = b.binding();
        key += `|${this.#id(r.buffer)}:${r.offset}:${r.size}`;
        entries.push({ binding: i, resource: r });
      } else {
        key += `|v${this.#id(b)}`;
        entries.push({ binding: i, resource: b });
      }
    });
    if (this.#constant.size > 0 || this.#operands.size > 0) {
      const access = this.#access.get(pipeline);
      bindings.forEach((b, i) => {
        if (b instanceof Tensor && access?.get(i)?.access === "read_write") this.#changed(b.buffer);
      });
    }
    if (params) {
      const u = this.#uniform(params.bytes());
      key += `|u${this.#id(u.buffer)}:${u.offset}:${u.size}`;
      entries.push({ binding: bindings.length, resource: u });
    }
    let group = this.#groups.get(key);
    if (!group) {
      this.#checkAliasing(pipeline, bindings);
      group = this.device.createBindGroup({ layout: pipeline.getBindGroupLayout(0), entries });
      if (this.#groups.size >= MAX_BIND_GROUPS) this.#groups.clear();
      this.#groups.set(key, group);
    }
    if (this.#profiler) {
      // one pass per dispatch, timed on its own
      const label = dispatchSite();
      this.#endPass();
      const timed = this.#profiler.mode === "timestamp";
      const pass = this.#enc().beginComputePass(
        timed ? { timestampWrites: this.#profiler.timestampWrites(label) } : {},
      );
      pass.setPipeline(pipeline);
      pass.setBindGroup(0, group);
      pass.dispatchWorkgroups(x, y, z);
      pass.end();
      this.stats.dispatches++;
      if (!timed) {
        this.flush();
        this.#profiler.submitted(label);
      }
      return;
    }
    const pass = this.#beginPass();
    pass.setPipeline(pipeline);
    pass.setBindGroup(0, group);
    pass.dispatchWorkgroups(x, y, z);
    this.stats.dispatches++;
  }

  /**
   * WebGPU's per-dispatch usage rules, checked here so that every backend (including ones that
   * do not validate them, like Deno's) fails the same way a browser does: a buffer bound as
   * writable storage must not also be bound read-only (usage conflict), and two writable
   * bindings of one buffer must not overlap (binding aliasing).
   */
  #checkAliasing(pipeline: GPUComputePipeline, bindings: Bindable[]): void {
    const access = this.#access.get(pipeline);
    if (!access) return;
    const bound: { i: number; t: Tensor; a: BufferAccess; name: string }[] = [];
    bindings.forEach((b, i) => {
      const info = access.get(i);
      if (b instanceof Tensor && info) bound.push({ i, t: b, a: info.access, name: info.name });
    });
    for (let x = 0; x < bound.length; x++) {
      for (let y = x + 1; y < bound.length; y++) {
        const p = bound[x], q = bound[y];
        if (p.t.buffer !== q.t.buffer || (p.a !== "read_write" && q.a !== "read_write")) continue;
        const overlap = p.t.byteOffset < q.t.byteOffset + Math.max(4, q.t.byteLength) &&
          q.t.byteOffset < p.t.byteOffset + Math.max(4, p.t.byteLength);
        if (p.a === q.a && !overlap) continue;
        throw new GpuValidationError(
          `bindings ${p.i} (${p.name}, ${p.a}) and ${q.i} (${q.name}, ${q.a}) of one dispatch ` +
            `use the same buffer${overlap ? " with overlapping ranges" : ""}: WebGPU forbids ` +
            `this (browsers reject the command buffer); use a separate output tensor`,
        );
      }
    }
  }

  /** The open command encoder, for copies that must be ordered with dispatches. */
  encoder(): GPUCommandEncoder {
    this.#endPass();
    return this.#enc();
  }

  /** Submits all recorded work (one submit per step). */
  flush(): void {
    this.#endPass();
    if (!this.#encoder) return;
    for (let i = 0; i <= this.#arenaIndex && i < this.#arenas.length; i++) {
      const a = this.#arenas[i];
      if (a.used > 0) this.device.queue.writeBuffer(a.buffer, 0, a.staging, 0, a.used);
      a.used = 0;
    }
    this.#arenaIndex = 0;
    this.#uniformSlots.clear();
    if (this.#profiler?.mode === "timestamp") this.#profiler.resolve(this.#encoder);
    this.device.queue.submit([this.#encoder.finish()]);
    this.#encoder = null;
    this.stats.submits++;
  }

  /** Releases pooled resources and destroys the device. */
  destroy(): void {
    this.flush();
    this.pool.clear();
    for (const list of this.#textures.values()) for (const t of list) t.destroy();
    for (const a of this.#arenas) a.buffer.destroy();
    this.device.destroy();
  }

  /**
   * Splits `n` workgroups over x and y so that no dimension exceeds the device limit. Shaders
   * recover the linear index as `wid.x + wid.y * nwg.x`.
   */
  grid(n: number): [number, number, number] {
    const max = this.limits.maxComputeWorkgroupsPerDimension;
    if (n <= max) return [n, 1, 1];
    const y = Math.ceil(n / max);
    if (y > max) throw new GpuLimitError(`dispatch of ${n} workgroups is too large`);
    return [Math.ceil(n / y), y, 1];
  }

  #enc(): GPUCommandEncoder {
    if (!this.#encoder) this.#encoder = this.device.createCommandEncoder();
    return this.#encoder;
  }

  #beginPass(): GPUComputePassEncoder {
    if (!this.#pass) this.#pass = this.#enc().beginComputePass();
    return this.#pass;
  }

  #endPass(): void {
    if (this.#pass) {
      this.#pass.end();
      this.#pass = null;
    }
  }

  #uniform(bytes: Uint8Array): GPUBufferBinding {
    // identical parameters share a slot until the next submit (then the arenas are rewritten):
    // a dispatch repeated with the same buffers and parameters (a layer of each decode step)
    // then binds exactly what it bound before, and its bind group is reused
    const content = String.fromCharCode(
      ...new Uint16Array(bytes.buffer, bytes.byteOffset, bytes.length / 2),
    );
    const known = this.#uniformSlots.get(content);
    if (known) return known;
    const slot = this.#uniformSlot(bytes);
    this.#uniformSlots.set(content, slot);
    return slot;
  }

  #uniformSlot(bytes: Uint8Array): GPUBufferBinding {
    const align = Math.max(256, this.limits.minUniformBufferOffsetAlignment);
    let a = this.#arenas[this.#arenaIndex];
    if (!a) {
      a = this.#newArena();
    } else if (a.used + bytes.length > a.staging.length) {
      this.#arenaIndex++;
      a = this.#arenas[this.#arenaIndex] ?? this.#newArena();
    }
    const offset = a.used;
    a.staging.set(bytes, offset);
    a.used = offset + Math.ceil(bytes.length / align) * align;
    return { buffer: a.buffer, offset, size: bytes.length };
  }

  #newArena(): Arena {
    const a: Arena = {
      buffer: this.device.createBuffer({
        size: this.#arenaBytes,
        usage: BUFFER.UNIFORM | BUFFER.COPY_DST,
      }),
      staging: new Uint8Array(this.#arenaBytes),
      used: 0,
    };
    this.#arenas.push(a);
    return a;
  }
}

function gcd(a: number, b: number): number {
  return b === 0 ? a : gcd(b, a % b);
}

// Texture sides are powers of two: llvmpipe specialises (re-JITs, ~0.5 s) a shader for each
// combination of power-of-two-ness of its textures' sides, so keeping them all powers of two
// means one variant per kernel. It also lets nearby shapes share pooled textures.
function roundUpClass(n: number): number {
  return 2 ** Math.ceil(Math.log2(Math.max(n, 16)));
}
