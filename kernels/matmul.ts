/**
 * Matrix multiply `C = α·op(A)·op(B) (+ bias) (+ residual) (+ C_old) (then ReLU)`, batched, with either
 * operand transposed. Two implementations with one contract:
 *
 * - **texture path** (software adapters such as llvmpipe/SwiftShader): both operands are packed
 *   into rgba32float storage textures (cheap), then each invocation computes a block of C
 *   ({@link TEXTURE_TILING}: 8 rows × 8 columns, 16 vec4 accumulators, or 16 rows where
 *   {@link tuneTextureTiling} measures that faster on the CPU at hand) from read-only
 *   `textureLoad`s, with no workgroup memory, and stores it with vec4 writes where the layout
 *   allows. Texture loads are ~10× cheaper than storage-buffer loads there (SPEC §11).
 *   Operands larger than `maxTextureDimension2D` are processed in chunks (K chunks accumulate).
 * - **buffer path** (real GPUs): 64×64 output tiles per 16×16 workgroup, 16-deep K slices staged
 *   in workgroup memory, 4×4 outputs per thread.
 *
 * @module
 */

import { checkShape } from "./errors.ts";
import { laneTreeSums, sumColumns } from "./reduce.ts";
import { layernormForward } from "./layernorm.ts";
import {
  type Block,
  blockKey,
  copyFold,
  type FillJob,
  fillTexture,
  fillTextures,
} from "./_texture.ts";
import { type Gpu, Params, Tensor } from "./runtime.ts";

/** Options of {@link matmul}. */
export interface MatmulOptions {
  /** A is stored as `[…, K, M]` and used transposed. */
  transA?: boolean;
  /** B is stored as `[…, N, K]` and used transposed (e.g. HF `Linear.weight` `[out, in]`). */
  transB?: boolean;
  /** Bias of length N added to every row. */
  bias?: Tensor;
  /** Apply ReLU last: `C = relu(α·op(A)·op(B) + bias (+ C_old))`. */
  relu?: boolean;
  /** Scale α of the product (default 1). */
  alpha?: number;
  /**
   * Added after the bias, before `accumulate` and ReLU: `C = α·op(A)·op(B) + bias + residual`
   * (a residual connection; the shape of C, another buffer than `out`).
   */
  residual?: Tensor;
  /**
   * Bias laid out in equal segments of `width` elements, `stride` apart (e.g. the q, k and v
   * biases of a parameter store, each padded to the binding alignment): element `n` of the bias
   * is `bias[⌊n / width⌋·stride + n mod width]`. The bias tensor spans them all.
   */
  biasSegments?: { width: number; stride: number };
  /**
   * Writes `C` (rows `B·T`, columns `P·H·Dh`) split into heads, as `P` parts `[B, H, T, Dh]`
   * `partStride` elements apart (default `B·H·T·Dh`: a `[P, B, H, T, Dh]` tensor; larger to align
   * each part for binding) — q, k and v of a fused projection in attention's layout: element
   * (b·T + t, (p·H + h)·Dh + d) goes to `[p, b, h, t, d]`. Same sums as the plain layout; not
   * with batched A.
   */
  splitHeads?: { T: number; H: number; Dh: number; partStride?: number };
  /**
   * Sums the K axis in segments of this many terms (a multiple of 4 dividing K) and adds the
   * segment sums in order: `C = α·(…(S₁ + S₂) + … + Sₚ) + …` — with α 1, the bits of `p`
   * matmuls over the segments accumulated into one output (e.g. the input gradient of the
   * q, k and v projections from one `[N, 3C]` gradient), in one dispatch. On the texture path
   * the bits hold while a segment fits the texture side (K chunks start at segment borders).
   */
  kSegments?: number;
  /**
   * With a three-part `splitHeads` (q, k, v; Dh a multiple of 4): also writes parts 1 and 2
   * into KV-cache textures (`KvCache.k`/`.v` layout: layer `b·H + h`, row `row + t`, texels
   * along Dh) — what `KvCache.write` does with the split's k and v, done by the matmul itself
   * (on the texture path in its epilogue: no packing passes per decoded token).
   */
  kvCache?: { k: GPUTexture; v: GPUTexture; row: number };
  /**
   * The backward of a ReLU, applied last: `C = [x > 0] ⊙ (…)` where `x` (the shape of C) was the
   * ReLU's input — `reluBackward` of the product in the same dispatch, with its bits.
   */
  reluBackwardOf?: Tensor;
  /**
   * With `transA`: also the row sums of op(A), `α·Σ_k op(A)[m, k]` (op(A)·1: a linear layer's
   * bias gradient when op(A) = dYᵀ), into `out` (length M, or M split into `segments` of
   * `width`, `stride` apart like `biasSegments`; added with `accumulate`). Computed in the
   * product's dispatch, in k order: the bits of `sumColumns` over A (texture path: summed as the
   * invocations load A; buffer path: one more column of the product, B with a column of ones).
   * Falls back to `sumColumns` where K takes more than one pass (texture chunks), is
   * segmented, or A is batched.
   */
  rowSums?: { out: Tensor; segments?: { width: number; stride: number } };
  /** Output tensor; required with `accumulate`. */
  out?: Tensor;
  /** `C += op(A)·op(B)` instead of `C = …` (for gradient accumulation). */
  accumulate?: boolean;
  /** Force an implementation (default: `gpu.matmulPath`). */
  path?: "texture" | "buffer";
  /**
   * Texture-path register blocking (default `gpu.textureTiling`, else {@link TEXTURE_TILING};
   * see {@link tuneTextureTiling}).
   */
  tiling?: TextureTiling;
}

/** `sums_col` when there are no row sums. */
const NO_SUMS = 0xffffffff;

const FLAG_BIAS = 1,
  FLAG_RELU = 2,
  FLAG_ACC = 4,
  FLAG_RES = 8,
  FLAG_SPLIT = 16,
  FLAG_RELU_GRAD = 32;

// ------------------------------------------------------------------------------ texture path

/** Register blocking of the texture kernel: rows and texel columns (4 floats) per invocation. */
export interface TextureTiling {
  /** Output rows per invocation. */
  rows: number;
  /** Output texels (4 columns each) per invocation. */
  texels: number;
  /** Workgroup size in x. */
  wgX: number;
  /** Workgroup size in y. */
  wgY: number;
}

/**
 * The tiling used by {@link matmul}'s texture path: 8 rows × 2 texels (8 columns) per invocation,
 * 8×2 invocations per workgroup (a workgroup covers 16 rows × 64 columns). Any tiling sums each
 * output in the same order (the same bits). On llvmpipe, with each kernel compiled for its
 * epilogue, it beat 4 rows × 2 texels in 8×4 (interleaved, one process): actor + critic
 * fwd/bwd/AdamW at L4/H128 −8 % (1008×128×512: 2.96 → 2.39 ms, 1008×512×128: 3.71 → 3.26 ms),
 * L2/H64 level to −4 %, decode shapes (16 rows) level; wider (16 or 12 rows: ≤ 5 % more) or
 * narrower in x (4 invocations: 2× slower, half a SIMD row) tilings were not better — on that
 * CPU (AVX2). On an AVX-512 one 16 rows won 9–14 %: {@link tuneTextureTiling} picks per machine.
 */
export const TEXTURE_TILING: TextureTiling = { rows: 8, texels: 2, wgX: 8, wgY: 2 };

/**
 * The tilings {@link tuneTextureTiling} times: {@link TEXTURE_TILING} and 16 rows × 2 texels.
 * Which is faster depends on the CPU behind a software adapter. On a 2-core AMD EPYC with
 * AVX-512 (32 vector registers; Mesa 22.3 llvmpipe) 16 rows took 9–14 % less time per product at
 * the L4/H128 training shapes and 6 % less per actor + critic pass; on one with AVX2 only (16
 * registers) it was up to 5 % slower. A disassembly of the 8-row kernel's K loop (perf, the same
 * EPYC) shows why rows pay: llvmpipe emulates each texel load lane by lane (≈ 40 instructions
 * for eight lanes' texel, 42 % of the loop's samples), keeps a product as a multiply and an add
 * (16 %), and spills the accumulators to the stack (25 %) — 16 rows load 24 texels per 512
 * products instead of 16 per 256, at the price of twice the spilled accumulators.
 */
export const TEXTURE_TILING_CANDIDATES: readonly TextureTiling[] = [
  TEXTURE_TILING,
  { rows: 16, texels: 2, wgX: 8, wgY: 2 },
];

/** One candidate's time in {@link tuneTextureTiling}. */
export interface TilingTrial {
  /** The tiling timed. */
  tiling: TextureTiling;
  /**
   * Median over the rounds of the milliseconds per product (wall time of the batch less an idle
   * sync's).
   */
  ms: number;
  /** Median over the rounds of its time divided by the first candidate's in the same round. */
  ratio: number;
}

/** The median of a non-empty list. */
function median(xs: number[]): number {
  const s = [...xs].sort((x, y) => x - y);
  return s.length % 2 ? s[s.length >> 1] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
}

/**
 * Times the texture-path matmul's register tilings on this adapter and sets the fastest as
 * `gpu.textureTiling` (the default of every later texture-path {@link matmul} on this `gpu`).
 * Each round times every candidate once, back to back in an order that rotates from round to
 * round (`reps` products of 1024×128 by 256 each, then a sync, less the time of a sync with
 * nothing queued), and compares it with the first
 * candidate (the default) of the same round: software adapters change speed by tens of percent
 * within seconds, so only times taken side by side compare. A candidate replaces the first
 * when the median of its round ratios is at least `margin` below 1. Every tiling sums each output
 * in the same order, so results are the same bits whichever wins: only the speed changes. Does
 * nothing (returns `[]`) on the buffer path. Takes about half a second on llvmpipe; `deno task
 * train`, `compare`, the benchmarks and the browser demo call it once after `Gpu.create`.
 *
 * @example Tune once, then train
 * ```ts
 * import { Gpu, tuneTextureTiling } from "../mod.ts";
 * const gpu = await Gpu.create();
 * const trials = await tuneTextureTiling(gpu, { rounds: 1, reps: 2 });
 * for (const t of trials) console.log(t.tiling.rows, t.tiling.texels, t.ms.toFixed(3), t.ratio);
 * console.log(gpu.textureTiling);
 * ```
 */
export async function tuneTextureTiling(
  gpu: Gpu,
  options: {
    /** Tilings to time, the default first (default {@link TEXTURE_TILING_CANDIDATES}). */
    candidates?: readonly TextureTiling[];
    /** Rounds (default 9). */
    rounds?: number;
    /** Products per candidate and round (default 8). */
    reps?: number;
    /** Fraction by which another tiling must beat the first (default 0.03). */
    margin?: number;
  } = {},
): Promise<TilingTrial[]> {
  const candidates = options.candidates ?? TEXTURE_TILING_CANDIDATES;
  const rounds = options.rounds ?? 9, reps = options.reps ?? 8, margin = options.margin ?? 0.03;
  if (!(rounds >= 1 && reps >= 1 && margin >= 0)) {
    throw new RangeError(
      `tuneTextureTiling: rounds and reps must be ≥ 1 and margin ≥ 0 (got ${rounds}, ${reps}, ` +
        `${margin})`,
    );
  }
  if (gpu.matmulPath !== "texture" || candidates.length === 0) return [];
  const M = 1024, N = 128, K = 256;
  const fill = (n: number, s: number) =>
    Float32Array.from({ length: n }, (_, i) => Math.sin(i * s) * 0.1);
  const a = gpu.fromArray(fill(M * K, 1.1), [M, K]);
  const b = gpu.fromArray(fill(K * N, 1.7), [K, N]);
  const out = gpu.empty([M, N]);
  const times = candidates.map(() => [] as number[]);
  const ratios = candidates.map(() => [] as number[]);
  try {
    // compile each candidate and pack the operands once
    for (const tiling of candidates) matmul(gpu, a, b, { out, path: "texture", tiling });
    await gpu.sync();
    for (let r = 0; r < rounds; r++) {
      // the round trip of a sync with nothing queued (≥ 10 ms in Deno), taken off each batch
      const t = performance.now();
      await gpu.sync();
      const idle = performance.now() - t;
      const ms = candidates.map(() => 0);
      for (let j = 0; j < candidates.length; j++) {
        const c = (j + r) % candidates.length;
        const t0 = performance.now();
        for (let i = 0; i < reps; i++) {
          matmul(gpu, a, b, { out, path: "texture", tiling: candidates[c] });
        }
        await gpu.sync();
        ms[c] = Math.max(performance.now() - t0 - idle, 1e-3) / reps;
      }
      ms.forEach((t, c) => {
        times[c].push(t);
        ratios[c].push(t / ms[0]);
      });
    }
  } finally {
    for (const t of [a, b, out]) t.dispose();
  }
  const trials = candidates.map((tiling, c) => ({
    tiling,
    ms: median(times[c]),
    ratio: median(ratios[c]),
  }));
  let pick = 0;
  trials.forEach((t, c) => {
    if (t.ratio < trials[pick].ratio && t.ratio <= 1 - margin) pick = c;
  });
  gpu.textureTiling = candidates[pick];
  return trials;
}

/**
 * WGSL of where element (row, col) of C goes (plain `row·ldc + col`, or the head-split layout;
 * the buffer path's `out_index` — the texture path places whole rows and column texels with
 * {@link TEXTURE_INDEX}) and which bias element it adds (segmented biases; both paths).
 */
const EPILOGUE_INDEX = `
fn out_index(cbase: u32, row: u32, col: u32, ldc: u32) -> u32 {
  if ((p.flags & 16u) == 0u) { return cbase + row * ldc + col; }
  let hd = p.heads * p.head_dim;
  let w = col % hd;
  return (col / hd) * p.part_stride + ((row / p.seq) * p.heads + w / p.head_dim) * p.seq * p.head_dim
    + (row % p.seq) * p.head_dim + w % p.head_dim;
}
fn bias_index(col: u32) -> u32 {
  return (col / p.bias_width) * p.bias_stride + col % p.bias_width;
}`;

/** Uniform fields of {@link EPILOGUE_INDEX}, appended to both kernels' parameters. */
const EPILOGUE_FIELDS =
  "seq: u32, heads: u32, head_dim: u32, part_stride: u32, bias_width: u32, bias_stride: u32, " +
  "k_seg: u32, kv_row: u32, sums_col: u32, sums_width: u32, sums_stride: u32, ln_eps: f32,";

/**
 * WGSL storing a row sum (`rowSums`: the buffer path's column `p.sums_col` of the product, B's
 * column of ones; the texture path's sums of A) to `sums` at row m's segment place, with the
 * epilogue's scale and accumulate.
 */
const EMIT_SUM = `
fn emit_sum(row: u32, v: f32) {
  let o = (row / p.sums_width) * p.sums_stride + row % p.sums_width;
  var x = p.alpha * v;
  if ((p.flags & 4u) != 0u) { x += sums[o]; }
  sums[o] = x;
}`;

/**
 * The epilogue a texture-path kernel is compiled for (see {@link textureMatmulShader}): the
 * dispatch's flags (bias, ReLU, accumulate, residual, head split, ReLU backward), whether the
 * bias is segmented (`biasSegments`) and whether a row-sums column is written; with a head
 * split (or KV-cache store), the head count and size (a model's constants; the sequence length
 * stays a uniform, as it changes from batch to batch).
 */
export interface TextureEpilogue {
  flags: number;
  segmentedBias: boolean;
  rowSums: boolean;
  heads?: { H: number; Dh: number };
}

/**
 * WGSL of the texture-path kernel for a given register blocking. With `vec4Out` (N and ldc
 * multiples of 4; a head split with Dh and the part stride multiples of 4) C and the residual
 * are bound as `array<vec4f>` and each accumulator is stored with one vec4 access instead of four scalar ones — the same arithmetic
 * per element, so the same bits; on llvmpipe the scalar stores' per-lane index math and bounds
 * checks cost as much as the products when K is small (a 624×260 output with K 32: 2.8 → 1.9 ms).
 */
export function textureMatmulShader(
  t: TextureTiling = TEXTURE_TILING,
  vec4Out = false,
  segmented = false,
  kvOut = false,
  lnOut = false,
  aAlongM = false,
  foldA = 1,
  foldB = 1,
  epilogue?: TextureEpilogue,
  bAlongK = false,
): string {
  const R = t.rows, Q = t.texels;
  const sums = epilogue?.rowSums ?? true;
  const acc: string[] = [], aload: string[] = [], body: string[] = [], store: string[] = [];
  const all = (f: (i: number, j: number) => string) => {
    const out: string[] = [];
    for (let i = 0; i < R; i++) for (let j = 0; j < Q; j++) out.push(f(i, j));
    return out.join(" ");
  };
  for (let i = 0; i < R; i++) for (let j = 0; j < Q; j++) acc.push(`var c${i}_${j} = vec4f(0.0);`);
  // the row sums of op(A) (rowSums), in k order as sumColumns adds them: with A along M a vec4
  // of four rows' sums per four rows, else one sum per row; the first column block stores them
  const sumRows = aAlongM ? R / 4 : R;
  if (sums) {
    for (let i = 0; i < sumRows; i++) acc.push(`var s${i} = ${aAlongM ? "vec4f" : "f32"}(0.0);`);
  }
  // segments (p.k_seg texels each): totals t = S₁, then t = Sᵢ + t at each border, C = Sₚ + t;
  // an outer loop over the segments (no per-texel test: a modulo per iteration cost llvmpipe
  // as much as the products, 1008×128×384 in three segments 3.7 vs 1.8 ms unsegmented)
  const segStart = segmented
    ? `for (var s0 = 0u; s0 < p.K4; s0 += p.k_seg) {
    if (s0 != 0u) {
      if (s0 == p.k_seg) { ${all((i, j) => `t${i}_${j} = c${i}_${j};`)} }
      else { ${all((i, j) => `t${i}_${j} = c${i}_${j} + t${i}_${j};`)} }
      ${all((i, j) => `c${i}_${j} = vec4f(0.0);`)}
    }
    for (var kq = s0; kq < min(s0 + p.k_seg, p.K4); kq++) {`
    : "for (var kq = 0u; kq < p.K4; kq++) {";
  const segEnd = segmented
    ? `if (p.K4 > p.k_seg) { ${all((i, j) => `c${i}_${j} = c${i}_${j} + t${i}_${j};`)} }`
    : "";
  if (segmented) {
    for (let i = 0; i < R; i++) {
      for (let j = 0; j < Q; j++) acc.push(`var t${i}_${j} = vec4f(0.0);`);
    }
  }
  // A's texels run along K (four k of one row), or along M (four rows at one k: the natural
  // layout of a transposed A such as dYᵀ, which then packs — or copies — untransposed); each
  // product is added in the same k order either way
  const aAt = (i: number, kk: number) =>
    aAlongM ? `a${kk}_${Math.floor(i / 4)}.${"xyzw"[i % 4]}` : `a${i}.${"xyzw"[kk]}`;
  // a folded operand (f rows a texture row, see Block.fold) finds row r at texture row r / f,
  // texel offset (r mod f)·p.fold_a|b — all known here, as f divides 4 and the block's rows
  const foldedRow = (f: number, kk: number) =>
    f === 1 ? `k + ${kk}u` : `kq * ${4 / f}u + ${Math.floor(kk / f)}u`;
  const foldedAt = (f: number, kk: number, w: string) =>
    f === 1 || kk % f === 0 ? "" : ` + ${kk % f}u * p.${w}`;
  // B stored transposed (N × K, e.g. a Linear weight) and packed as stored, texels along K
  // (often a plain copy): each of the block's 4Q columns is one texel a step, and the four
  // columns' values at k make the same vec4 the K × N layout holds — the same products in the
  // same order, so the same bits
  if (bAlongK) {
    for (let n = 0; n < 4 * Q; n++) {
      aload.push(`let bn${n} = textureLoad(bt, vec2u(kq, cb + ${n}u), lb);`);
    }
  }
  if (!aAlongM) {
    for (let i = 0; i < R; i++) {
      aload.push(
        foldA === 1
          ? `let a${i} = textureLoad(at, vec2u(kq, r0 + ${i}u), la);`
          : `let a${i} = textureLoad(at, vec2u(kq${
            foldedAt(foldA, i, "fold_a")
          }, r0 / ${foldA}u + ${Math.floor(i / foldA)}u), la);`,
      );
    }
  }
  for (let kk = 0; kk < 4; kk++) {
    if (aAlongM) {
      for (let q = 0; q < R / 4; q++) {
        body.push(
          `let a${kk}_${q} = textureLoad(at, vec2u(r0 / 4u + ${q}u${
            foldedAt(foldA, kk, "fold_a")
          }, ${foldedRow(foldA, kk)}), la);`,
        );
        if (sums) body.push(`s${q} += a${kk}_${q};`);
      }
    } else if (sums) {
      for (let i = 0; i < R; i++) body.push(`s${i} += a${i}.${"xyzw"[kk]};`);
    }
    for (let j = 0; j < Q; j++) {
      body.push(
        bAlongK
          ? `let b${kk}_${j} = vec4f(${
            [0, 1, 2, 3].map((c) => `bn${4 * j + c}.${"xyzw"[kk]}`).join(", ")
          });`
          : `let b${kk}_${j} = textureLoad(bt, vec2u(cq + ${j}u${foldedAt(foldB, kk, "fold_b")}, ${
            foldedRow(foldB, kk)
          }), lb);`,
      );
    }
  }
  // then the products, one accumulator at a time over the four k (column texel by column texel):
  // each accumulator is loaded and stored once per four k where the register file cannot hold
  // them all (llvmpipe: 16 vec4 accumulators are 64 ymm registers). The same sum per output in
  // the same k order as k-outermost, whose every k touched all 16 — 6–32 % slower at training
  // shapes (1008×512×128 3.7 → 2.6 ms, 1008×128×512 2.4 → 2.0, interleaved in one process)
  for (let j = 0; j < Q; j++) {
    for (let i = 0; i < R; i++) {
      for (let kk = 0; kk < 4; kk++) body.push(`c${i}_${j} += ${aAt(i, kk)} * b${kk}_${j};`);
    }
  }
  for (let i = 0; i < R; i++) store.push(`let ra${i} = row_at(cbase, p.m0 + r0 + ${i}u);`);
  for (let j = 0; j < Q; j++) {
    store.push(
      `let ca${j} = col_at(p.n0 + cb + ${4 * j}u);`,
      `let bv${j} = bias_at(cb + ${4 * j}u);`,
    );
  }
  for (let i = 0; i < R; i++) {
    for (let j = 0; j < Q; j++) {
      store.push(`emit(r0 + ${i}u, cb + ${4 * j}u, c${i}_${j}, ra${i}, ca${j}, bv${j});`);
    }
  }
  if (sums) {
    const at = (i: number) => aAlongM ? `s${Math.floor(i / 4)}.${"xyzw"[i % 4]}` : `s${i}`;
    store.push(
      `if (p.sums_col != ${NO_SUMS}u && p.n0 + cb == 0u) {\n    ${
        Array.from(
          { length: R },
          (_, i) => `if (r0 + ${i}u < p.M) { emit_sum(p.m0 + r0 + ${i}u, ${at(i)}); }`,
        ).join("\n    ")
      }\n  }`,
    );
  }
  const elem = vec4Out ? "vec4f" : "f32";
  const code = `
struct P {
  M: u32, N: u32, K4: u32,     // chunk rows, chunk cols, texels along K
  m0: u32, n0: u32,            // chunk origin in C
  ldc: u32, c_batch_stride: u32, batch0: u32,
  b_layer_step: u32,           // 0 when B is shared by all batches
  flags: u32,                  // 1 bias, 2 relu, 4 accumulate, 8 residual, 16 split heads,
                               // 32 relu backward
  alpha: f32,                  // scale of the product
  ${EPILOGUE_FIELDS}
  fold_a: u32, fold_b: u32,    // texels between the rows sharing a texture row (Block.fold)
}
@group(0) @binding(0) var at: texture_storage_2d_array<rgba32float, read>; // (batch, M, K/4)
@group(0) @binding(1) var bt: texture_storage_2d_array<rgba32float, read>; // (batch|1, K, N/4) or (…, N, K/4)
@group(0) @binding(2) var<storage, read_write> c: array<${elem}>;   // (batch, M, ldc)
@group(0) @binding(3) var<storage, read> bias: array<f32>;           // (ldc)
@group(0) @binding(4) var<storage, read> res: array<${elem}>;        // like c
${
    lnOut
      ? `// the layernorm epilogue's bindings (no ReLU backward, row sums or KV cache with it)
var<private> relu_in: array<${elem}, 1>;
var<private> sums: array<f32, 1>;
@group(0) @binding(5) var<storage, read> ln_w: array<${elem}>;             // (N)
@group(0) @binding(6) var<storage, read> ln_b: array<${elem}>;             // (N)
@group(0) @binding(7) var<storage, read_write> ln_y: array<${elem}>;       // (M, N)
@group(0) @binding(8) var<storage, read_write> ln_mean: array<f32>;    // (M)
@group(0) @binding(9) var<storage, read_write> ln_rstd: array<f32>;    // (M)
@group(0) @binding(10) var<uniform> p: P;
fn c_at(i: u32) -> ${elem} { return c[i]; }  // (the sums' column index is named c)`
      : `@group(0) @binding(5) var<storage, read> relu_in: array<${elem}>;    // like c
@group(0) @binding(6) var<storage, read_write> sums: array<f32>;     // (M) row sums of op(A)`
  }
${
    lnOut
      ? ""
      : kvOut
      ? `@group(0) @binding(7) var kc: texture_storage_2d_array<rgba32float, write>; // (B·H, rows, Dh/4)
@group(0) @binding(8) var vc: texture_storage_2d_array<rgba32float, write>;
@group(0) @binding(9) var<uniform> p: P;`
      : "@group(0) @binding(7) var<uniform> p: P;"
  }
${EPILOGUE_INDEX}
${TEXTURE_INDEX}
${EMIT_SUM}
${kvOut ? KV_STORE : "fn kv_store(ra: vec3u, ca: vec3u, x: vec4f) {}"}
${vec4Out ? EMIT_VEC4 : EMIT_SCALAR}
@compute @workgroup_size(${t.wgX}, ${t.wgY})
fn main(@builtin(global_invocation_id) g: vec3u${
    lnOut ? ", @builtin(local_invocation_id) lid: vec3u" : ""
  }) {
  let cq = ${Q}u * g.x;        // first texel column of this block
  let cb = ${4 * Q}u * g.x;    // first column
  let r0 = ${R}u * g.y;        // first row
  ${lnOut ? "if (cb < p.N && r0 < p.M) {" : "if (cb >= p.N || r0 >= p.M) { return; }"}
  // every binding stays in the interface when a compiled epilogue does not read it
  _ = &bias; _ = &res; _ = &relu_in; _ = &sums;
  let la = g.z;
  let lb = g.z * p.b_layer_step;
  ${acc.join("\n  ")}
  ${segStart}
    ${aload.join("\n    ")}
    let k = 4u * kq;
    ${body.join("\n    ")}
  }${segmented ? "}" : ""}
  ${segEnd}
  let cbase = (p.batch0 + g.z) * p.c_batch_stride;
  ${store.join("\n  ")}
  ${
    lnOut
      ? `}
${LN_EPILOGUE(R, t.wgX, t.wgY, vec4Out)}`
      : ""
  }
}`;
  if (!epilogue) return code;
  // compiled for one epilogue: its flags are constants, so the branches it does not take (and
  // their index arithmetic: head split, bias segments) are compiled out
  const flags = `const FLAGS = ${epilogue.flags}u;\n`;
  const h = epilogue.heads;
  const heads = (c: string) =>
    h ? c.replaceAll("p.heads", `${h.H}u`).replaceAll("p.head_dim", `${h.Dh}u`) : c;
  return flags + heads(code).replaceAll("p.flags", "FLAGS").replace(
    "return (col / p.bias_width) * p.bias_stride + col % p.bias_width;",
    epilogue.segmentedBias
      ? "return (col / p.bias_width) * p.bias_stride + col % p.bias_width;"
      : "return col;",
  );
}

/**
 * The layernorm epilogue (a workgroup holds whole rows of C): after a storage barrier, the
 * workgroup's invocation i normalises its rows i, i + wgX·wgY, … with layernormForward's
 * row-tree arithmetic
 * (the same sums in the same order, so its bits) into ln_y, ln_mean and ln_rstd.
 */
function LN_EPILOGUE(R: number, wgX: number, wgY: number, vec4: boolean): string {
  // with vec4 rows (N a multiple of 4) four columns are read, normalised and stored at once:
  // the same values in the same order
  const sums = vec4
    ? `${laneTreeSums({ s: "c_at((base + c) / 4u)" }, "", "p.N", true)}
    let m = s / f32(p.N);
    ${laneTreeSums({ q: "d * d" }, "let d = c_at((base + c) / 4u) - m;", "p.N", true)}
    let r = inverseSqrt(q / f32(p.N) + p.ln_eps);
    for (var q4 = 0u; q4 < p.N / 4u; q4++) {
      ln_y[base / 4u + q4] = (c[base / 4u + q4] - m) * r * ln_w[q4] + ln_b[q4];
    }`
    : `${laneTreeSums({ s: "c_at(base + c)" }, "", "p.N")}
    let m = s / f32(p.N);
    ${laneTreeSums({ q: "d * d" }, "let d = c_at(base + c) - m;", "p.N")}
    let r = inverseSqrt(q / f32(p.N) + p.ln_eps);
    for (var col = 0u; col < p.N; col++) {
      ln_y[base + col] = (c[base + col] - m) * r * ln_w[col] + ln_b[col];
    }`;
  return `  storageBarrier();
  let first = (g.y - lid.y) * ${R}u;   // the workgroup's first row
  for (var rr = lid.y * ${wgX}u + lid.x; rr < ${R * wgY}u && first + rr < p.M; rr += ${
    wgX * wgY
  }u) {
    let row = p.m0 + first + rr;
    let base = row * p.ldc;
    ${sums}
    ln_mean[row] = m;
    ln_rstd[row] = r;
  }`;
}

// Where the texture kernel's block puts its rows and columns of C, each computed once per row
// and per column texel of the block (not per element: with a head split an element's index
// took two integer divisions by the uniform sequence length, which llvmpipe does lane by lane —
// 1008×384×128 with the split and KV stores 3.35 vs 2.2 ms plain); the index of element
// (row, col) is row_at(row).x + col_at(col).x. row_at's y and z are the row's batch and
// position (head split), col_at's y and z its part (q, k, v) and place in the part.
const TEXTURE_INDEX = `
fn row_at(cbase: u32, row: u32) -> vec3u {
  if ((p.flags & 16u) == 0u) { return vec3u(cbase + row * p.ldc, 0u, 0u); }
  let b = row / p.seq;
  let t = row % p.seq;
  return vec3u((b * p.heads * p.seq + t) * p.head_dim, b, t);
}
fn col_at(col: u32) -> vec3u {
  if ((p.flags & 16u) == 0u) { return vec3u(col, 0u, 0u); }
  let hd = p.heads * p.head_dim;
  let part = col / hd;
  let w = col % hd;
  return vec3u(part * p.part_stride + (w / p.head_dim) * p.seq * p.head_dim + w % p.head_dim,
    part, w);
}
// the bias of four columns of the block (chunk column col), loaded once for all its rows
fn bias_at(col: u32) -> vec4f {
  var x = vec4f(0.0);
  if ((p.flags & 1u) == 0u) { return x; }
  for (var t = 0u; t < 4u; t++) {
    if (col + t < p.N) { x[t] = bias[bias_index(p.n0 + col + t)]; }
  }
  return x;
}`;

// Stores four columns of one row of C (any layout, any N): scalar accesses.
const EMIT_SCALAR = `
fn emit(r: u32, col: u32, v: vec4f, ra: vec3u, ca: vec3u, bv: vec4f) {
  if (r >= p.M) { return; }
  for (var t = 0u; t < 4u; t++) {
    let cc = col + t;
    if (cc < p.N) {
      let idx = ra.x + col_at(p.n0 + cc).x;
      var x = p.alpha * v[t];
      if ((p.flags & 1u) != 0u) { x += bv[t]; }
      if ((p.flags & 8u) != 0u) { x += res[idx]; }
      if ((p.flags & 4u) != 0u) { x += c[idx]; }
      if ((p.flags & 2u) != 0u) { x = max(x, 0.0); }
      if ((p.flags & 32u) != 0u) { x = select(0.0, x, relu_in[idx] > 0.0); }
      c[idx] = x;
    }
  }
}`;

// Stores four columns of one row of C as one vec4 (N, ldc, n0 and the batch stride multiples of
// 4; with a head split also Dh and the part stride, so four columns stay in one head's row):
// the same operations per element as EMIT_SCALAR.
const EMIT_VEC4 = `
fn emit(r: u32, col: u32, v: vec4f, ra: vec3u, ca: vec3u, bv: vec4f) {
  if (r >= p.M || col >= p.N) { return; }
  let idx = (ra.x + ca.x) / 4u;
  var x = p.alpha * v;
  if ((p.flags & 1u) != 0u) { x += bv; }
  if ((p.flags & 8u) != 0u) { x += res[idx]; }
  if ((p.flags & 4u) != 0u) { x += c[idx]; }
  if ((p.flags & 2u) != 0u) { x = max(x, vec4f(0.0)); }
  if ((p.flags & 32u) != 0u) { x = select(vec4f(0.0), x, relu_in[idx] > vec4f(0.0)); }
  c[idx] = x;
  kv_store(ra, ca, x);
}`;

// The k and v parts of a head-split q/k/v block of four columns, into the KV-cache textures
// (ra, ca: the row's and the columns' row_at and col_at).
const KV_STORE = `
fn kv_store(ra: vec3u, ca: vec3u, x: vec4f) {
  if (ca.y == 0u) { return; }
  let layer = ra.y * p.heads + ca.z / p.head_dim;
  let at = vec2u((ca.z % p.head_dim) / 4u, p.kv_row + ra.z);
  if (ca.y == 1u) { textureStore(kc, at, layer, x); } else { textureStore(vc, at, layer, x); }
}`;

const tilingShaders = new Map<string, string>();
function textureShaderFor(
  t: TextureTiling,
  vec4Out: boolean,
  segmented: boolean,
  kvOut: boolean,
  lnOut = false,
  aAlongM = false,
  foldA = 1,
  foldB = 1,
  epilogue?: TextureEpilogue,
  bAlongK = false,
): string {
  const e = epilogue;
  const key = `${t.rows}/${t.texels}/${t.wgX}/${t.wgY}/${vec4Out}/${segmented}/${kvOut}/` +
    `${lnOut}/${aAlongM}/${foldA}/${foldB}/${bAlongK}/${
      e ? `${e.flags}/${e.segmentedBias}/${e.rowSums}/${e.heads?.H}/${e.heads?.Dh}` : ""
    }`;
  const code = tilingShaders.get(key) ??
    textureMatmulShader(t, vec4Out, segmented, kvOut, lnOut, aAlongM, foldA, foldB, e, bAlongK);
  tilingShaders.set(key, code);
  return code;
}

// ------------------------------------------------------------------------------- buffer path

const bufferShaders = new Map<boolean, string>();
function bufferShaderFor(segmented: boolean): string {
  const code = bufferShaders.get(segmented) ?? bufferMatmulShader(segmented);
  bufferShaders.set(segmented, code);
  return code;
}

// Each 16×16 workgroup computes a 64×64 tile of C; thread (x, y) owns rows 4y..4y+3 and
// columns 4x..4x+3 (four vec4 accumulators). Per 16-deep K slice, every thread stages one vec4
// of A (4 rows at one k) and one of B (4 columns at one k) in workgroup memory. Written to
// keep llvmpipe's compile time low too (vec4 registers, no private arrays): ~4 s uncached.
function bufferMatmulShader(segmented: boolean): string {
  return `
struct P {
  M: u32, N: u32, K: u32,
  trans_a: u32, trans_b: u32,
  a_batch_stride: u32, b_batch_stride: u32, c_batch_stride: u32,
  flags: u32, alpha: f32,
  ${EPILOGUE_FIELDS}
}
@group(0) @binding(0) var<storage, read> a: array<f32>;    // (batch, M, K) or (batch, K, M)
@group(0) @binding(1) var<storage, read> b: array<f32>;    // (batch|1, K, N) or (…, N, K)
@group(0) @binding(2) var<storage, read_write> c: array<f32>;    // (batch, M, N)
@group(0) @binding(3) var<storage, read> bias: array<f32>; // (N)
@group(0) @binding(4) var<storage, read> res: array<f32>;  // (batch, M, N) like c
@group(0) @binding(5) var<storage, read> relu_in: array<f32>; // (batch, M, N) like c
@group(0) @binding(6) var<storage, read_write> sums: array<f32>; // (M) row sums of op(A)
@group(0) @binding(7) var<uniform> p: P;
${EPILOGUE_INDEX}
${EMIT_SUM}

var<workgroup> as_: array<vec4f, 256>; // [k (16)][row group (16)]: 4 rows of A at one k
var<workgroup> bs_: array<vec4f, 256>; // [k (16)][col group (16)]: 4 cols of B at one k

fn load_a(base: u32, m: u32, k: u32) -> f32 {
  if (m >= p.M || k >= p.K) { return 0.0; }
  return a[base + select(m * p.K + k, k * p.M + m, p.trans_a == 1u)];
}
fn load_b(base: u32, k: u32, n: u32) -> f32 {
  if (k < p.K && n == p.sums_col) { return 1.0; }
  if (k >= p.K || n >= p.N) { return 0.0; }
  return b[base + select(k * p.N + n, n * p.K + k, p.trans_b == 1u)];
}

@compute @workgroup_size(16, 16)
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_id) lid: vec3u) {
  let row0 = wid.y * 64u;
  let col0 = wid.x * 64u;
  let abase = wid.z * p.a_batch_stride;
  let bbase = wid.z * p.b_batch_stride;
  let t = lid.y * 16u + lid.x;
  let lk = t / 16u;
  let lg = t % 16u;
  var acc0 = vec4f(0.0);
  var acc1 = vec4f(0.0);
  var acc2 = vec4f(0.0);
  var acc3 = vec4f(0.0);
  ${
    segmented
      ? "var t0 = vec4f(0.0); var t1 = vec4f(0.0); var t2 = vec4f(0.0); var t3 = vec4f(0.0);"
      : ""
  }
  for (var k0 = 0u; k0 < p.K; k0 += 16u) {
    let k = k0 + lk;
    let r = row0 + lg * 4u;
    as_[lk * 16u + lg] = vec4f(load_a(abase, r, k), load_a(abase, r + 1u, k),
                               load_a(abase, r + 2u, k), load_a(abase, r + 3u, k));
    let n = col0 + lg * 4u;
    bs_[lk * 16u + lg] = vec4f(load_b(bbase, k, n), load_b(bbase, k, n + 1u),
                               load_b(bbase, k, n + 2u), load_b(bbase, k, n + 3u));
    workgroupBarrier();
    for (var kk = 0u; kk < 16u; kk++) {
      ${
    segmented
      ? `let kg = k0 + kk;
      if (kg != 0u && kg < p.K && kg % p.k_seg == 0u) {
        if (kg == p.k_seg) { t0 = acc0; t1 = acc1; t2 = acc2; t3 = acc3; }
        else { t0 = acc0 + t0; t1 = acc1 + t1; t2 = acc2 + t2; t3 = acc3 + t3; }
        acc0 = vec4f(0.0); acc1 = vec4f(0.0); acc2 = vec4f(0.0); acc3 = vec4f(0.0);
      }`
      : ""
  }
      let av = as_[kk * 16u + lid.y];
      let bv = bs_[kk * 16u + lid.x];
      acc0 = fma(vec4f(av.x), bv, acc0);
      acc1 = fma(vec4f(av.y), bv, acc1);
      acc2 = fma(vec4f(av.z), bv, acc2);
      acc3 = fma(vec4f(av.w), bv, acc3);
    }
    workgroupBarrier();
  }
  ${
    segmented
      ? "if (p.K > p.k_seg) { acc0 = acc0 + t0; acc1 = acc1 + t1; acc2 = acc2 + t2; acc3 = acc3 + t3; }"
      : ""
  }
  let cbase = wid.z * p.c_batch_stride;
  for (var i = 0u; i < 4u; i++) {
    let r = row0 + lid.y * 4u + i;
    var v = acc0;
    if (i == 1u) { v = acc1; } else if (i == 2u) { v = acc2; } else if (i == 3u) { v = acc3; }
    for (var j = 0u; j < 4u; j++) {
      let cc = col0 + lid.x * 4u + j;
      if (r < p.M && cc == p.sums_col) { emit_sum(r, v[j]); }
      if (r < p.M && cc < p.N) {
        let idx = out_index(cbase, r, cc, p.N);
        var x = p.alpha * v[j];
        if ((p.flags & 1u) != 0u) { x += bias[bias_index(cc)]; }
        if ((p.flags & 8u) != 0u) { x += res[idx]; }
        if ((p.flags & 4u) != 0u) { x += c[idx]; }
        if ((p.flags & 2u) != 0u) { x = max(x, 0.0); }
        if ((p.flags & 32u) != 0u) { x = select(0.0, x, relu_in[idx] > 0.0); }
        c[idx] = x;
      }
    }
  }
}`;
}

// ------------------------------------------------------------------------------- wrapper

/** Shapes of a matmul call, resolved from the operands. */
interface MatmulShape {
  batch: number;
  M: number;
  N: number;
  K: number;
  shareB: boolean;
  outShape: number[];
}

function resolveShape(a: Tensor, b: Tensor, o: MatmulOptions): MatmulShape {
  const sa = a.shape, sb = b.shape;
  checkShape(
    sa.length >= 2 && sb.length >= 2,
    `matmul: operands need ≥ 2 dims (A: [${sa}], B: [${sb}])`,
  );
  checkShape(a.dtype === "f32" && b.dtype === "f32", "matmul: operands must be f32");
  const batchA = sa.slice(0, -2), batchB = sb.slice(0, -2);
  const [ar, ac] = sa.slice(-2), [br, bc] = sb.slice(-2);
  const M = o.transA ? ac : ar, K = o.transA ? ar : ac;
  const Kb = o.transB ? bc : br, N = o.transB ? br : bc;
  checkShape(
    K === Kb,
    `matmul: inner dimensions differ (A${o.transA ? "ᵀ" : ""}: [${sa}], B${
      o.transB ? "ᵀ" : ""
    }: [${sb}])`,
  );
  const batch = batchA.reduce((x, y) => x * y, 1);
  const shareB = batchB.length === 0 || batchB.reduce((x, y) => x * y, 1) === 1;
  checkShape(
    shareB || batchB.join() === batchA.join(),
    `matmul: batch dims differ (A: [${sa}], B: [${sb}])`,
  );
  return { batch, M, N, K, shareB, outShape: [...batchA, M, N] };
}

/**
 * `C = α·op(A)·op(B) (+ bias) (+ residual) (+ C_old with accumulate) (then ReLU)`.
 *
 * A is `[…batch, M, K]` (`[…, K, M]` with `transA`), B is `[K, N]` (shared by all batches) or
 * `[…batch, K, N]` (`[…, N, K]` with `transB`). Returns `[…batch, M, N]`.
 *
 * @example A linear layer with HF weight layout
 * ```ts
 * import { Gpu, matmul } from "../mod.ts";
 * const gpu = await Gpu.create();
 * const x = gpu.fromArray(new Float32Array(6).fill(1), [2, 3]);      // (tokens, in)
 * const w = gpu.fromArray(new Float32Array(12).fill(0.5), [4, 3]);   // (out, in)
 * const b = gpu.fromArray(new Float32Array([0, 1, 2, 3]), [4]);
 * const y = matmul(gpu, x, w, { transB: true, bias: b });            // (2, 4)
 * console.log(await gpu.read(y)); // [1.5, 2.5, 3.5, 4.5, 1.5, 2.5, 3.5, 4.5]
 * ```
 */
export function matmul(gpu: Gpu, a: Tensor, b: Tensor, opts: MatmulOptions = {}): Tensor {
  return run(gpu, a, b, opts);
}

/** {@link matmul}, with the layernorm epilogue of {@link matmulLayernorm} when `ln` is given. */
function run(
  gpu: Gpu,
  a: Tensor,
  b: Tensor,
  opts: MatmulOptions,
  ln?: LayernormEpilogue,
): Tensor {
  const s = resolveShape(a, b, opts);
  const alpha = opts.alpha ?? 1;
  checkShape(Number.isFinite(alpha), `matmul: alpha must be finite, got ${alpha}`);
  checkShape(!opts.accumulate || opts.out !== undefined, "matmul: accumulate needs `out`");
  const seg = opts.biasSegments ?? { width: Math.max(s.N, 1), stride: 0 };
  if (opts.bias) {
    const parts = Math.ceil(s.N / seg.width);
    checkShape(
      Number.isInteger(seg.width) && seg.width > 0 && s.N % seg.width === 0 &&
        Number.isInteger(seg.stride) && (parts === 1 || seg.stride >= seg.width),
      `matmul: biasSegments {width ${seg.width}, stride ${seg.stride}} must divide N = ${s.N} into segments that do not overlap`,
    );
    const need = opts.biasSegments ? (parts - 1) * seg.stride + seg.width : s.N;
    checkShape(
      opts.bias.size === need && opts.bias.dtype === "f32",
      `matmul: bias has ${opts.bias.size} elements, expected ${need}`,
    );
  }
  if (opts.kSegments !== undefined) {
    const g = opts.kSegments;
    checkShape(
      Number.isInteger(g) && g > 0 && g % 4 === 0 && s.K % g === 0,
      `matmul: kSegments ${g} must be a positive multiple of 4 dividing K = ${s.K}`,
    );
  }
  const split = opts.splitHeads;
  if (split) {
    const { T, H, Dh } = split;
    checkShape(
      s.batch === 1 && [T, H, Dh].every((x) => Number.isInteger(x) && x > 0) &&
        s.M % T === 0 && s.N % (H * Dh) === 0,
      `matmul: splitHeads {T ${T}, H ${H}, Dh ${Dh}} needs unbatched A with rows a multiple of T ` +
        `and columns a multiple of H·Dh (M ${s.M}, N ${s.N}, batch ${s.batch})`,
    );
    const P = s.N / (H * Dh), part = s.M * H * Dh, stride = split.partStride ?? part;
    checkShape(
      Number.isInteger(stride) && stride >= part,
      `matmul: splitHeads partStride ${stride} is smaller than a part (${part} elements)`,
    );
    s.outShape = stride === part ? [P, s.M / T, H, T, Dh] : [(P - 1) * stride + part];
  }
  if (opts.kvCache) {
    const sp = opts.splitHeads;
    const stride = sp ? sp.partStride ?? s.M * sp.H * sp.Dh : 0;
    checkShape(
      sp !== undefined && s.N === 3 * sp.H * sp.Dh && sp.Dh % 4 === 0 && stride % 4 === 0,
      "matmul: kvCache needs a q/k/v splitHeads (three parts, Dh and partStride multiples of 4)",
    );
    const rows = opts.kvCache.row + sp!.T, layers = (s.M / sp!.T) * sp!.H;
    for (const tex of [opts.kvCache.k, opts.kvCache.v]) {
      checkShape(
        Number.isInteger(opts.kvCache.row) && opts.kvCache.row >= 0 && rows <= tex.height &&
          layers <= tex.depthOrArrayLayers && sp!.Dh / 4 <= tex.width,
        `matmul: kvCache rows ${opts.kvCache.row}..${rows} × ${layers} layers do not fit a ` +
          `${tex.width}×${tex.height}×${tex.depthOrArrayLayers} texture`,
      );
    }
  }
  const out = opts.out ?? gpu.empty(s.outShape);
  checkShape(
    out.size === s.outShape.reduce((x, y) => x * y, 1),
    `matmul: out [${out.shape}] does not hold the result [${s.outShape}]`,
  );
  if (s.batch * s.M * s.N === 0) return out;
  let flags = 0;
  if (opts.bias) flags |= FLAG_BIAS;
  if (opts.relu) flags |= FLAG_RELU;
  if (split) flags |= FLAG_SPLIT;
  if (opts.accumulate) flags |= FLAG_ACC;
  if (opts.residual) {
    checkShape(
      opts.residual.size === out.size && opts.residual.dtype === "f32",
      `matmul: residual [${opts.residual.shape}] does not match the result [${s.outShape}]`,
    );
    flags |= FLAG_RES;
  }
  if (opts.reluBackwardOf) {
    checkShape(
      opts.reluBackwardOf.size === out.size && opts.reluBackwardOf.dtype === "f32" &&
        !opts.splitHeads,
      `matmul: reluBackwardOf [${opts.reluBackwardOf.shape}] does not match the result ` +
        `[${s.outShape}] (or comes with splitHeads)`,
    );
    flags |= FLAG_RELU_GRAD;
  }
  // K = 0 (an empty sum) leaves only the epilogue: the buffer kernel handles it without textures
  const path = s.K === 0 ? "buffer" : opts.path ?? gpu.matmulPath;
  const sums = opts.rowSums;
  let fuseSums = false;
  if (sums) {
    const seg = sums.segments ?? { width: Math.max(s.M, 1), stride: 0 };
    const parts = Math.ceil(s.M / seg.width);
    const need = sums.segments ? (parts - 1) * seg.stride + seg.width : s.M;
    checkShape(
      opts.transA === true && alpha === 1 && sums.out.dtype === "f32" && sums.out.size === need &&
        Number.isInteger(seg.width) && seg.width > 0 && s.M % seg.width === 0 &&
        (parts === 1 || seg.stride >= seg.width),
      `matmul: rowSums needs transA, α 1 and an out of ${need} elements in non-overlapping ` +
        `segments (got ${sums.out.size})`,
    );
    // in the product's dispatch where K takes one pass: on the buffer path one more column of
    // the product (B with a column of ones), on the texture path sums of A's texels as the
    // first column block loads them
    fuseSums = s.batch === 1 && opts.kSegments === undefined && !split && !opts.kvCache &&
      s.K > 0 && (path === "buffer" || s.K <= Math.floor(gpu.textureSide / 4) * 4);
  }
  const sumsCol = fuseSums ? s.N : NO_SUMS;
  if (path === "buffer") {
    runBuffer(gpu, a, b, out, s, { ...opts, kvCache: undefined }, flags, sumsCol);
    if (opts.kvCache) writeKvParts(gpu, out, s, opts);
  } else runTexture(gpu, a, b, out, s, opts, flags, sumsCol, ln);
  if (sums && !fuseSums) {
    // the row sums of op(A) = Aᵀ are A's column sums, in the same k order
    sumColumns(gpu, a, { out: sums.out, accumulate: opts.accumulate, outSegments: sums.segments });
  }
  return out;
}

/** Where {@link matmulLayernorm}'s kernel writes the normalised rows. */
interface LayernormEpilogue {
  weight: Tensor;
  bias: Tensor;
  eps: number;
  y: Tensor;
  mean: Tensor;
  rstd: Tensor;
}

/**
 * The texture tiling of the layernorm epilogue: one workgroup across all N columns (2 texels an
 * invocation), `rows` rows an invocation — the device's tiling's (8, or 16 where
 * {@link tuneTextureTiling} chose it: 1008×128×512 with the norm 2.87 → 2.34 ms, ×128 1.03 →
 * 0.95 ms on the EPYC where 16 won).
 */
function lnTiling(N: number, rows: number): TextureTiling {
  const wgX = Math.max(1, Math.ceil(N / 8));
  // sixteen rows per workgroup where the size allows (fewer otherwise): the norm then runs on
  // whole SIMD rows; 8 rows an invocation rather than 4 (on llvmpipe 10–15 % faster:
  // 1008×64×256 with the norm 1.29 → 1.13 ms, 1008×128×512 3.94 → 3.44 ms)
  return {
    rows,
    texels: 2,
    wgX,
    wgY: Math.max(1, Math.min(Math.floor(16 / rows), Math.floor(256 / wgX))),
  };
}

/**
 * `C = matmul(A, B, opts)` followed by `layernormForward(C, weight, bias)` (e.g. a residual sum
 * and the next layer's input norm): one dispatch on the texture path when a workgroup can hold
 * whole rows of C (N ≤ 8 × the workgroup size limit, one pass over K, unbatched, no head split,
 * KV cache, row sums or ReLU backward), else the two calls. The same bits either way: the
 * product as {@link matmul}, the norm with layernormForward's row-tree arithmetic.
 *
 * @example Residual sum and layernorm
 * ```ts
 * import { Gpu, matmulLayernorm } from "../mod.ts";
 * const gpu = await Gpu.create();
 * const x = gpu.fromArray(new Float32Array(8).fill(1), [2, 4]);
 * const w = gpu.fromArray(Float32Array.from({ length: 16 }, (_, i) => i / 16), [4, 4]);
 * const { out, ln } = matmulLayernorm(gpu, x, w, { transB: true, residual: x }, {
 *   weight: gpu.fromArray([1, 1, 1, 1]),
 *   bias: gpu.zeros([4]),
 * });
 * console.log(out.shape, ln.y.shape, ln.mean.shape); // [2, 4] [2, 4] [2]
 * ```
 */
export function matmulLayernorm(
  gpu: Gpu,
  a: Tensor,
  b: Tensor,
  opts: MatmulOptions,
  norm: { weight: Tensor; bias: Tensor; eps?: number },
): { out: Tensor; ln: { y: Tensor; mean: Tensor; rstd: Tensor } } {
  const s = resolveShape(a, b, opts);
  const eps = norm.eps ?? 1e-5;
  const path = s.K === 0 ? "buffer" : opts.path ?? gpu.matmulPath;
  const side = gpu.textureSide, limits = gpu.limits;
  const fits = path === "texture" && s.batch === 1 && s.M > 0 && s.N > 0 &&
    !opts.splitHeads && !opts.kvCache && !opts.rowSums && !opts.reluBackwardOf &&
    opts.kSegments === undefined && opts.tiling === undefined && !opts.accumulate &&
    s.K <= Math.floor(side / 4) * 4 && s.N <= Math.floor(side / 2) * 8 &&
    s.M <= Math.floor(side / 4) * 4 &&
    Math.ceil(s.N / 8) <= Math.min(
        limits.maxComputeInvocationsPerWorkgroup,
        limits.maxComputeWorkgroupSizeX,
      ) &&
    norm.weight.size === s.N && norm.bias.size === s.N;
  if (!fits) {
    const out = matmul(gpu, a, b, opts);
    return { out, ln: layernormForward(gpu, out, norm.weight, norm.bias, { eps }) };
  }
  const rows = s.outShape.slice(0, -1);
  const ln = {
    ...norm,
    eps,
    y: gpu.empty([...s.outShape]),
    mean: gpu.empty(rows),
    rstd: gpu.empty(rows),
  };
  const out = run(gpu, a, b, opts, ln);
  return { out, ln: { y: ln.y, mean: ln.mean, rstd: ln.rstd } };
}

/** `kvCache` on the buffer path: packs the split's k and v parts as `KvCache.write` does. */
function writeKvParts(gpu: Gpu, out: Tensor, s: MatmulShape, o: MatmulOptions): void {
  const { T, H, Dh } = o.splitHeads!, kv = o.kvCache!;
  const stride = o.splitHeads!.partStride ?? s.M * H * Dh;
  [kv.k, kv.v].forEach((tex, i) =>
    fillTexture(gpu, out, tex, {
      rows: T,
      cols: Dh,
      ld: Dh,
      trans: false,
      row0: 0,
      col0: (i + 1) * stride,
      batchStride: T * Dh,
      batch0: 0,
      layers: (s.M / T) * H,
      width: Dh / 4,
      height: T,
      dstRow0: kv.row,
    })
  );
}

/** The {@link EPILOGUE_FIELDS} values of a call. */
function epilogueParams(
  params: Params,
  s: MatmulShape,
  o: MatmulOptions,
  kSeg: number,
  sumsCol = NO_SUMS,
  lnEps = 0,
): Params {
  const sumsSeg = o.rowSums?.segments ?? { width: Math.max(s.M, 1), stride: 0 };
  const sp = o.splitHeads ?? { T: 1, H: 1, Dh: 1 };
  const seg = o.biasSegments ?? { width: Math.max(s.N, 1), stride: 0 };
  const partStride = sp.partStride ?? s.M * sp.H * sp.Dh;
  return params.u32(
    sp.T,
    sp.H,
    sp.Dh,
    partStride,
    seg.width,
    seg.stride,
    kSeg,
    o.kvCache?.row ?? 0,
    sumsCol,
    sumsSeg.width,
    sumsSeg.stride,
  ).f32(lnEps);
}

function dummy(gpu: Gpu): Tensor {
  // a 4-element tensor bound where an optional input is absent
  return gpu.placeholder(2);
}

function runBuffer(
  gpu: Gpu,
  a: Tensor,
  b: Tensor,
  out: Tensor,
  s: MatmulShape,
  o: MatmulOptions,
  flags: number,
  sumsCol: number,
): void {
  const max = gpu.limits.maxComputeWorkgroupsPerDimension;
  const gx = Math.ceil((s.N + (sumsCol === NO_SUMS ? 0 : 1)) / 64), gy = Math.ceil(s.M / 64);
  for (let b0 = 0; b0 < s.batch; b0 += max) {
    const nb = Math.min(max, s.batch - b0);
    const view = (t: Tensor, stride: number) =>
      b0 === 0
        ? t
        : new Tensor(gpu, t.buffer, [nb * stride], t.dtype, t.byteOffset + b0 * stride * 4, false);
    const params = new Params().u32(
      s.M,
      s.N,
      s.K,
      o.transA ? 1 : 0,
      o.transB ? 1 : 0,
      s.M * s.K,
      s.shareB ? 0 : s.K * s.N,
      s.M * s.N,
      flags,
    ).f32(o.alpha ?? 1);
    epilogueParams(params, s, o, o.kSegments ?? 0, sumsCol);
    gpu.dispatch(
      gpu.pipeline(bufferShaderFor(o.kSegments !== undefined)),
      [
        view(a, s.M * s.K),
        s.shareB ? b : view(b, s.K * s.N),
        view(out, s.M * s.N),
        o.bias ?? dummy(gpu),
        o.residual ? view(o.residual, s.M * s.N) : dummy(gpu),
        o.reluBackwardOf ? view(o.reluBackwardOf, s.M * s.N) : dummy(gpu),
        sumsCol === NO_SUMS ? gpu.placeholder(3) : o.rowSums!.out,
      ],
      [gx, gy, nb],
      params,
    );
  }
}

function runTexture(
  gpu: Gpu,
  a: Tensor,
  b: Tensor,
  out: Tensor,
  s: MatmulShape,
  o: MatmulOptions,
  flags: number,
  sumsCol: number,
  ln?: LayernormEpilogue,
): void {
  // the layernorm epilogue needs whole rows in a workgroup: 8 columns per invocation across
  const tiling = o.tiling ?? gpu.textureTiling ?? TEXTURE_TILING;
  const t = ln ? lnTiling(s.N, tiling.rows) : tiling;
  const maxTex = gpu.textureSide;
  const maxLayers = gpu.limits.maxTextureArrayLayers;
  // chunk sizes that keep every (padded) texture side within the device limits
  const mStep = Math.floor(maxTex / t.rows) * t.rows;
  // with segments, a K too long for one chunk goes one segment per chunk: each chunk adds its
  // sum to the total so far, as the segments' own matmuls would (see kSegments)
  const seg = o.kSegments ?? 0, kMax = Math.floor(maxTex / 4) * 4;
  const kStep = seg > 0 && seg <= kMax && s.K > kMax ? seg : kMax;
  // a transposed B (N × K stored) is packed as stored, texels along K: no transposing pack, and
  // often a plain copy. On llvmpipe
  // the product itself is faster that way at training shapes (1008×512×128: 3.25 → 2.74 ms,
  // 1008×384×128: 2.52 → 2.05) but slower with few rows (16×64×256: 0.074 → 0.106, 128×384×
  // 128: 0.32 → 0.36), where B is usually a held weight packed once (decoding): from 256 rows
  const bAlongK = !!o.transB && s.M >= 256;
  // N chunks keep B's texture side (N/4 texels, or N rows along K) within the limit
  const nStep = bAlongK
    ? Math.floor(maxTex / (4 * t.texels)) * 4 * t.texels
    : Math.floor(maxTex / t.texels) * t.texels * 4;
  // whole vec4 stores when every block of four columns is four consecutive elements of C
  const sp = o.splitHeads;
  const vec4Out = s.N % 4 === 0 &&
    (!sp || (sp.Dh % 4 === 0 && (sp.partStride ?? s.M * sp.H * sp.Dh) % 4 === 0));
  const kv = o.kvCache;
  // a transposed A is packed in its stored layout, texels along M (rows a multiple of 4 per
  // invocation): no transposing pack, often a plain copy
  const aAlongM = !!o.transA && t.rows % 4 === 0;
  // rows too short to copy (under 256 bytes) fold two or four to a texture row where that makes
  // them a copy: one chunk in every dimension, unbatched (see Block.fold)
  const single = s.batch === 1 && s.M <= mStep && s.N <= nStep && s.K <= kStep;
  const whole: Chunk = {
    m0: 0,
    n0: 0,
    k0: 0,
    mc: s.M,
    nc: s.N,
    kc: s.K,
    b0: 0,
    nb: 1,
    aRows: Math.ceil(s.M / t.rows) * t.rows,
    bTexels: Math.ceil(s.N / (4 * t.texels)) * t.texels,
    k4: Math.ceil(s.K / 4),
  };
  const foldA = !single ? 1 : copyFold(
    gpu,
    a,
    aBlockOf(s, !!o.transA, aAlongM, whole),
    aAlongM || t.rows % 4 === 0 ? 4 : t.rows % 2 === 0 ? 2 : 1,
  );
  const foldB = !single || bAlongK ? 1 : copyFold(gpu, b, bBlockOf(s, !!o.transB, whole, 1), 4);
  // each chunk's kernel is compiled for its epilogue (flags differ between K chunks)
  const mm = (flags: number) =>
    gpu.pipeline(
      textureShaderFor(t, vec4Out, seg > 0, kv !== undefined, !!ln, aAlongM, foldA, foldB, {
        flags,
        segmentedBias: o.biasSegments !== undefined,
        rowSums: sumsCol !== NO_SUMS,
        heads: sp ? { H: sp.H, Dh: sp.Dh } : undefined,
      }, bAlongK),
    );
  const kvViews = kv ? [gpu.arrayView(kv.k), gpu.arrayView(kv.v)] : [];
  for (let b0 = 0; b0 < s.batch; b0 += maxLayers) {
    const nb = Math.min(maxLayers, s.batch - b0);
    const bLayers = s.shareB ? 1 : nb;
    for (let m0 = 0; m0 < s.M; m0 += mStep) {
      const mc = Math.min(mStep, s.M - m0);
      for (let n0 = 0; n0 < s.N; n0 += nStep) {
        const nc = Math.min(nStep, s.N - n0);
        for (let k0 = 0; k0 < s.K; k0 += kStep) {
          const kc = Math.min(kStep, s.K - k0);
          const k4 = Math.ceil(kc / 4);
          const aRows = Math.ceil(mc / t.rows) * t.rows;
          const bTexels = Math.ceil(nc / (4 * t.texels)) * t.texels;
          const c: Chunk = { m0, n0, k0, mc, nc, kc, b0, nb, aRows, bTexels, k4 };
          // folded, f rows side by side in a texture row (reads past a row's texels land in the
          // next row's: columns or rows of C that are never written)
          const aBlock: Block = { ...aBlockOf(s, !!o.transA, aAlongM, c), fold: foldA };
          const aSize = aAlongM
            ? [(foldA - 1) * (mc / 4) + aRows / 4, (4 * k4) / foldA, nb] as const
            : [foldA * k4, aRows / foldA, nb] as const;
          // B as (K × N), texels along N, or as stored (N × K) along K
          const bBlock: Block = {
            ...bBlockOf(s, !!o.transB, c, bLayers, bAlongK),
            fold: foldB,
          };
          const bSize = bAlongK
            ? [k4, 4 * bTexels, bLayers] as const
            : [(foldB - 1) * (nc / 4) + bTexels, (4 * k4) / foldB, bLayers] as const;
          // each operand packed once while its buffer is unchanged (Gpu.packedTexture): a held
          // weight across decoded tokens, an output gradient for dW and dx, a saved input for
          // the forward and dW; both in one packing dispatch when neither is a plain copy
          const jobs: FillJob[] = [];
          const packed = (src: Tensor, block: Block, size: readonly [number, number, number]) =>
            gpu.packedTexture(
              src,
              blockKey(block, size),
              size,
              (tex) => jobs.push({ src, tex, block }),
            );
          const aHeld = packed(a, aBlock, aSize);
          const bHeld = packed(b, bBlock, bSize);
          const at = aHeld ?? gpu.scratchTexture(...aSize);
          const bt = bHeld ?? gpu.scratchTexture(...bSize);
          if (!aHeld) jobs.unshift({ src: a, tex: at, block: aBlock });
          if (!bHeld) jobs.push({ src: b, tex: bt, block: bBlock });
          fillTextures(gpu, jobs);
          // bias and relu on the first / only K chunk; later K chunks accumulate
          let f = flags;
          if (k0 > 0) f = (f & ~(FLAG_BIAS | FLAG_RES)) | FLAG_ACC;
          const lastK = k0 + kStep >= s.K;
          if (!lastK) f &= ~(FLAG_RELU | FLAG_RELU_GRAD);
          gpu.dispatch(
            mm(f),
            [
              gpu.arrayView(at),
              gpu.arrayView(bt),
              out,
              o.bias ?? dummy(gpu),
              o.residual ?? dummy(gpu),
              ...(ln ? [ln.weight, ln.bias, ln.y, ln.mean, ln.rstd] : [
                o.reluBackwardOf ?? dummy(gpu),
                sumsCol !== NO_SUMS ? o.rowSums!.out : gpu.placeholder(3),
                ...kvViews,
              ]),
            ],
            [
              Math.ceil(nc / (4 * t.texels * t.wgX)),
              Math.ceil(mc / (t.rows * t.wgY)),
              nb,
            ],
            epilogueParams(
              new Params()
                .u32(mc, nc, k4, m0, n0, s.N, s.M * s.N, b0, s.shareB ? 0 : 1, f)
                .f32(o.alpha ?? 1),
              s,
              o,
              seg / 4,
              sumsCol,
              ln?.eps ?? 0,
            ).u32(aAlongM ? Math.floor(mc / 4) : k4, Math.floor(nc / 4)),
          );
          if (!aHeld) gpu.releaseTexture(at);
          if (!bHeld) gpu.releaseTexture(bt);
        }
      }
    }
  }
  // ReLU with several K chunks: only the last chunk applies it, after adding the partial sums
  // of the earlier ones (epilogue order: bias, accumulate, ReLU), so C = max(total, 0).
}

/** One chunk of a texture-path matmul: origin and extent in M, N, K and the batch. */
interface Chunk {
  m0: number;
  n0: number;
  k0: number;
  mc: number;
  nc: number;
  kc: number;
  b0: number;
  nb: number;
  /** Rows of A's texture (mc padded to the tiling's rows) and texels of B's. */
  aRows: number;
  bTexels: number;
  k4: number;
}

/**
 * A's block of a chunk: (M × K), texels along K (a transposed A read across, unless `alongM`);
 * or, with `alongM`, a transposed A as stored (K × M), texels along M, with zero K padding (it
 * meets B's zero padding: 0 × a stale Inf would be NaN).
 */
function aBlockOf(s: MatmulShape, transA: boolean, alongM: boolean, c: Chunk): Block {
  const batch = { batchStride: s.M * s.K, batch0: c.b0, layers: c.nb };
  return alongM
    ? {
      ...batch,
      rows: c.kc,
      cols: c.mc,
      ld: s.M,
      trans: false,
      row0: c.k0,
      col0: c.m0,
      width: c.aRows / 4,
      height: 4 * c.k4,
      zeroPadRows: true,
    }
    : {
      ...batch,
      rows: c.mc,
      cols: c.kc,
      ld: transA ? s.M : s.K,
      trans: transA,
      row0: c.m0,
      col0: c.k0,
      width: c.k4,
      height: c.aRows,
    };
}

/**
 * B's block of a chunk: (K × N), texels along N, zero K padding; or,
 * `alongK`, a transposed B as stored: (N × K), texels along K (the pack zero-fills a last partial
 * texel: the K padding meets A's; rows past N feed only columns never written).
 */
function bBlockOf(
  s: MatmulShape,
  transB: boolean,
  c: Chunk,
  layers: number,
  alongK = false,
): Block {
  const batch = {
    batchStride: s.shareB ? 0 : s.K * s.N,
    batch0: s.shareB ? 0 : c.b0,
    layers,
  };
  return alongK
    ? {
      ...batch,
      rows: c.nc,
      cols: c.kc,
      ld: s.K,
      trans: false,
      row0: c.n0,
      col0: c.k0,
      width: c.k4,
      height: 4 * c.bTexels,
    }
    : {
      ...batch,
      rows: c.kc,
      cols: c.nc,
      ld: transB ? s.K : s.N,
      trans: transB,
      row0: c.k0,
      col0: c.n0,
      width: c.bTexels,
      height: 4 * c.k4,
      zeroPadRows: true,
    };
}
