/**
 * Private: staging matrices into rgba32float storage textures (read-only `textureLoad`s are
 * ~10× cheaper than storage-buffer loads on software adapters, SPEC §11).
 *
 * @module
 */

import { type Gpu, Params, type Tensor } from "./runtime.ts";

/** Where one operand's sub-block comes from, for {@link fillTexture}. */
export interface Block {
  rows: number;
  cols: number;
  ld: number;
  trans: boolean;
  row0: number;
  col0: number;
  batchStride: number;
  batch0: number;
  layers: number;
  /** Texels × rows the matmul kernel will read. */
  width: number;
  height: number;
  /** First texture row to write (default 0), e.g. the position in a KV cache. */
  dstRow0?: number;
  /**
   * The rows past `rows` up to `height` are read as data (a B operand's K padding, multiplied
   * by A's zero padding): they must be zero, not stale — 0 × a stale Inf is NaN.
   */
  zeroPadRows?: boolean;
  /**
   * Rows per texture row (1, 2 or 4; default 1), for rows too short to copy alone: texture row
   * `y` holds block rows `f·y … f·y + f − 1` side by side, row `r` from texel `(r mod f)·cols/4`.
   * Only copies fold (see {@link copyFold}); `width` and `height` stay the unfolded ones.
   */
  fold?: number;
}

/**
 * A name for what a filled texture of `b` holds, for {@link Gpu.packedTexture}: two blocks of
 * one buffer with the same name fill the same texels (a padding row is zero when
 * `zeroPadRows` asks for it and there is one; otherwise padding is never read as data).
 */
export function blockKey(b: Block, size: readonly number[]): string {
  const batched = b.layers > 1 || b.batch0 > 0;
  return [
    b.rows,
    b.cols,
    b.ld,
    b.trans ? 1 : 0,
    b.row0,
    b.col0,
    batched ? b.batchStride : 0,
    b.batch0,
    b.layers,
    b.width,
    b.height,
    b.dstRow0 ?? 0,
    b.zeroPadRows && b.height > b.rows ? 1 : 0,
    b.fold ?? 1,
    ...size,
  ].join(",");
}

/**
 * Fills `tex` with a sub-block of `src`. A plain row-major block whose rows are 256-byte
 * multiples (or, folded, whose 2 or 4 rows side by side are: `Block.fold`) and whose column
 * count fills whole texels is a `copyBufferToTexture` (a memcpy: ~4× cheaper than the pack
 * kernel on llvmpipe); anything else goes through a pack
 * kernel, which also zero-fills the padding: whole aligned texels a vec4 load each, the rest
 * (transposed, ragged) element by element. Padding rows/texels left stale by a copy only feed
 * outputs that are never written (rows ≥ M, columns ≥ N); the shared K axis must be exact, so
 * a block whose padding rows are K padding (`zeroPadRows`, a B operand whose K is not a
 * multiple of 4) is packed, not copied.
 */
export function fillTexture(gpu: Gpu, src: Tensor, tex: GPUTexture, b: Block): void {
  fillTextures(gpu, [{ src, tex, block: b }]);
}

/** One texture to fill, for {@link fillTextures}. */
export interface FillJob {
  src: Tensor;
  tex: GPUTexture;
  block: Block;
}

/**
 * {@link fillTexture} for several textures at once: the blocks that can be copied are copied,
 * and small blocks that need the pack kernel share one dispatch (up to four, the storage
 * textures a stage may write; see `MAX_SHARED_TEXELS`) — a small matmul's two operands, or
 * attention's keys and values, cost one dispatch instead of two. Each texel is computed as by
 * {@link fillTexture}.
 */
export function fillTextures(gpu: Gpu, jobs: FillJob[]): void {
  const packed = jobs.filter((j) => !copied(gpu, j.src, j.tex, j.block));
  // small blocks share a dispatch; a large block is packed alone (see MAX_SHARED_TEXELS), by
  // whole texels where its rows allow it
  const groups: FillJob[][] = [];
  let open: FillJob[] = [], texels = 0;
  for (const j of packed) {
    const n = j.block.width * j.block.height * j.block.layers;
    if (n > MAX_SHARED_TEXELS && texelAligned(j.src, j.block)) {
      packTexels(gpu, j);
      continue;
    }
    if (open.length > 0 && (open.length === MAX_PACKED || texels + n > MAX_SHARED_TEXELS)) {
      groups.push(open);
      open = [];
      texels = 0;
    }
    open.push(j);
    texels += n;
  }
  if (open.length > 0) groups.push(open);
  for (const group of groups) {
    const params = new Params();
    // 8×8-texel tiles, one row of workgroups per block (a union grid of differently shaped
    // blocks would run mostly idle invocations); each workgroup finds its tile from its id
    // (uniform integer math: per-invocation division is slow on software adapters)
    let most = 0;
    for (const { block: b } of group) {
      most = Math.max(most, Math.ceil(b.width / 8) * Math.ceil(b.height / 8) * b.layers);
      params.u32(
        b.rows,
        b.cols,
        b.ld,
        b.trans ? 1 : 0,
        b.row0,
        b.col0,
        b.batchStride,
        b.batch0,
        b.width,
        b.height,
        b.dstRow0 ?? 0,
        b.layers,
        0,
        0,
        0,
        0,
      );
    }
    gpu.dispatch(
      gpu.pipeline(packShader(group.length)),
      [...group.map((j) => j.src), ...group.map((j) => gpu.arrayView(j.tex))],
      // workgroups along x, and z when x would pass the device limit
      (() => {
        const x = Math.min(most, gpu.limits.maxComputeWorkgroupsPerDimension);
        return [x, group.length, Math.ceil(most / x)] as const;
      })(),
      params,
    );
  }
}

/**
 * A block whose texels are whole aligned vec4s of its source: not transposed, rows of whole
 * texels starting on a 16-byte boundary.
 */
function texelAligned(src: Tensor, b: Block): boolean {
  const first = b.batch0 * b.batchStride + b.row0 * b.ld + b.col0;
  return !b.trans && b.cols % 4 === 0 && b.ld % 4 === 0 &&
    b.batchStride % 4 === 0 && first % 4 === 0 && src.byteOffset % 16 === 0;
}

/** Texels per invocation of {@link TEXEL_PACK} (loop-unrolled by the compiler: measured best). */
const TEXELS_PER_INVOCATION = 4;

/**
 * Packs a {@link texelAligned} block with one vec4 load per texel, four texels an invocation
 * over a flat index: the same texels as the general pack kernel (zero outside the block), at
 * ~40 % of its time on llvmpipe (16 128 texels: 0.17–0.23 vs 0.38–0.57 ms, GL and Vulkan).
 */
const TEXEL_PACK = `
struct P {
  width: u32, height: u32, texels: u32,   // texture block: width × height × layers texels
  rows: u32, cols4: u32, ld4: u32,        // source block: rows × cols4 texels, ld4 apart
  first4: u32, batch_stride4: u32, dst_row0: u32,
}
@group(0) @binding(0) var<storage, read> src: array<vec4f>;
@group(0) @binding(1) var dst: texture_storage_2d_array<rgba32float, write>;
@group(0) @binding(2) var<uniform> p: P;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) g: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let start = (g.x + g.z * nwg.x * 64u) * ${TEXELS_PER_INVOCATION}u;
  for (var u = 0u; u < ${TEXELS_PER_INVOCATION}u; u++) {
    let i = start + u;
    if (i >= p.texels) { return; }
    let x = i % p.width;
    let rest = i / p.width;
    let y = rest % p.height;
    let z = rest / p.height;
    var v = vec4f(0.0);
    if (x < p.cols4 && y < p.rows) { v = src[p.first4 + z * p.batch_stride4 + y * p.ld4 + x]; }
    textureStore(dst, vec2u(x, y + p.dst_row0), z, v);
  }
}`;

function packTexels(gpu: Gpu, { src, tex, block: b }: FillJob): void {
  const texels = b.width * b.height * b.layers;
  const groups = Math.ceil(texels / (64 * TEXELS_PER_INVOCATION));
  const x = Math.min(groups, gpu.limits.maxComputeWorkgroupsPerDimension);
  const first = b.batch0 * b.batchStride + b.row0 * b.ld + b.col0;
  gpu.dispatch(
    gpu.pipeline(TEXEL_PACK),
    [src, gpu.arrayView(tex)],
    [x, 1, Math.ceil(groups / x)],
    new Params().u32(
      b.width,
      b.height,
      texels,
      b.rows,
      b.cols / 4,
      b.ld / 4,
      first / 4,
      b.batchStride / 4,
      b.dstRow0 ?? 0,
    ),
  );
}

const MAX_PACKED = 4;
/**
 * Blocks share one packing dispatch only while they hold at most this many texels in all. On
 * llvmpipe a shader that packs several blocks runs two to three times slower per texel than
 * one packing one block (0.45 → 1.2–1.6 ms for 32 K texels, GL and Vulkan; two 5 K-texel
 * blocks 0.83 → 1.21 ms wall), which the dispatch it saves pays back only for small blocks.
 */
const MAX_SHARED_TEXELS = 2048;

/**
 * Packs `n` logical (rows × cols) sub-blocks of strided matrices, one per (source, texture)
 * pair, into rgba32float texels: zero outside the block.
 */
function packShader(n: number): string {
  const known = packShaders.get(n);
  if (known) return known;
  const ids = Array.from({ length: n }, (_, i) => i);
  const code = `
struct Job {
  rows: u32, cols: u32, ld: u32, trans: u32, row0: u32, col0: u32,
  batch_stride: u32, batch0: u32, width: u32, height: u32, dst_row0: u32, layers: u32,
  pad0: u32, pad1: u32, pad2: u32, pad3: u32,
}
struct P { ${ids.map((i) => `j${i}: Job,`).join(" ")} }
${ids.map((i) => `@group(0) @binding(${i}) var<storage, read> src${i}: array<f32>;`).join("\n")}
${
    ids.map((i) =>
      `@group(0) @binding(${n + i}) var dst${i}: texture_storage_2d_array<rgba32float, write>;`
    ).join("\n")
  }
@group(0) @binding(${2 * n}) var<uniform> p: P;
${
    ids.map((i) => `
fn pack${i}(tile: u32, lid: vec3u) {
  let j = p.j${i};
  let tx = (j.width + 7u) / 8u;
  let ty = (j.height + 7u) / 8u;
  if (tile >= tx * ty * j.layers) { return; }
  let z = tile / (tx * ty);
  let x = (tile % tx) * 8u + lid.x;
  let y = ((tile / tx) % ty) * 8u + lid.y;
  if (x >= j.width || y >= j.height) { return; }
  var v = vec4f(0.0);
  if (y < j.rows) {
    let base = (j.batch0 + z) * j.batch_stride;
    let r = j.row0 + y;
    for (var c = 0u; c < 4u; c++) {
      let col = 4u * x + c;
      if (col < j.cols) {
        let cc = j.col0 + col;
        v[c] = src${i}[base + select(r * j.ld + cc, cc * j.ld + r, j.trans == 1u)];
      }
    }
  }
  textureStore(dst${i}, vec2u(x, y + j.dst_row0), z, v);
}`).join("\n")
  }
@compute @workgroup_size(8, 8)
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u,
        @builtin(local_invocation_id) lid: vec3u) {
  let tile = wid.x + wid.z * nwg.x;   // 8×8-texel tile of block wid.y
  ${ids.map((i) => `if (wid.y == ${i}u) { pack${i}(tile, lid); }`).join("\n  ")}
}`;
  packShaders.set(n, code);
  return code;
}
const packShaders = new Map<number, string>();

/** Whether the block is a plain row-major one that {@link fillTexture} copies. */
function copyable(gpu: Gpu, src: Tensor, b: Block): boolean {
  const f = b.fold ?? 1;
  const byteOffset = src.byteOffset + 4 * (b.batch0 * b.batchStride + b.row0 * b.ld + b.col0);
  const plain = !b.trans && (4 * b.ld * f) % 256 === 0 && b.cols % 4 === 0 &&
    byteOffset % 16 === 0 && (b.layers === 1 || b.batchStride % (b.ld * f) === 0) &&
    (!b.zeroPadRows || b.rows === b.height);
  if (f === 1) return plain;
  // folded rows must be contiguous (the block spans its rows) and fill whole texture rows
  return plain && b.cols === b.ld && b.rows % f === 0 && !b.dstRow0 &&
    (f * b.cols) / 4 <= gpu.textureSide;
}

/**
 * The fold (rows per texture row, see {@link Block.fold}) at most `most` that makes the block a
 * copy: 1 when its rows copy as they are (256-byte multiples) or nothing copies, else 2 or 4.
 */
export function copyFold(gpu: Gpu, src: Tensor, b: Block, most: number): number {
  for (const f of [2, 4]) {
    if (
      f <= most && !copyable(gpu, src, { ...b, fold: 1 }) && copyable(gpu, src, { ...b, fold: f })
    ) {
      return f;
    }
  }
  return 1;
}

/** Copies the block when it is a plain row-major one (see {@link fillTexture}); false if not. */
function copied(gpu: Gpu, src: Tensor, tex: GPUTexture, b: Block): boolean {
  const f = b.fold ?? 1;
  if (!copyable(gpu, src, b)) {
    if (f > 1) throw new Error(`internal: a block folded ${f} rows a texel row must be a copy`);
    return false;
  }
  const elemOffset = b.batch0 * b.batchStride + b.row0 * b.ld + b.col0;
  gpu.stats.textureCopies++;
  gpu.stats.textureCopyBytes += 4 * f * b.cols * (b.rows / f) * b.layers;
  gpu.encoder().copyBufferToTexture(
    {
      buffer: src.buffer,
      offset: src.byteOffset + 4 * elemOffset,
      bytesPerRow: 4 * b.ld * f,
      rowsPerImage: b.layers > 1 ? b.batchStride / (b.ld * f) : b.rows / f,
    },
    { texture: tex, origin: { x: 0, y: b.dstRow0 ?? 0, z: 0 } },
    [(f * b.cols) / 4, b.rows / f, b.layers],
  );
  return true;
}
