/**
 * Reductions: sum / mean / max along the last axis, column sums (bias gradients), masked
 * sum / mean / variance over a whole tensor, and the global L2 norm of one or more tensors.
 * Whole-tensor reductions run in two stages (per-workgroup partials, then one finishing
 * workgroup) and leave their result on the GPU, so no step needs a readback to use them.
 *
 * @module
 */

import { checkShape } from "./errors.ts";
import { COLUMN_MAIN, columnGroups, groups, LINEAR_MAIN, rowRanges } from "./_shader.ts";
import { type Gpu, Params, type Tensor } from "./runtime.ts";

/** Threads of a row-reduction workgroup. */
export const ROW_WG = 64;

/**
 * WGSL: `wg_sum(v, lid)` / `wg_max(v, lid)` reduce a value over a 64-thread workgroup (every
 * thread gets the result). Must be called in uniform control flow.
 */
export const WG_REDUCE = `
var<workgroup> red_: array<f32, ${ROW_WG}>;
fn wg_sum(v: f32, lid: u32) -> f32 {
  red_[lid] = v;
  workgroupBarrier();
  for (var s = ${ROW_WG / 2}u; s > 0u; s >>= 1u) {
    if (lid < s) { red_[lid] += red_[lid + s]; }
    workgroupBarrier();
  }
  let r = red_[0];
  workgroupBarrier();
  return r;
}
fn wg_max(v: f32, lid: u32) -> f32 {
  red_[lid] = v;
  workgroupBarrier();
  for (var s = ${ROW_WG / 2}u; s > 0u; s >>= 1u) {
    if (lid < s) { red_[lid] = max(red_[lid], red_[lid + s]); }
    workgroupBarrier();
  }
  let r = red_[0];
  workgroupBarrier();
  return r;
}
`;

/**
 * WGSL entry header for one-invocation-per-row kernels launched with `gpu.grid(groups(rows))`
 * (uniforms `p.rows`, `p.cols`): declares `row` and `base = row·cols`.
 */
export const ROW_THREAD_MAIN = `${LINEAR_MAIN}
  let row = i;
  if (row >= p.rows) { return; }
  let base = row * p.cols;`;

/**
 * WGSL statements that sum a row in {@link WG_REDUCE}'s order from one invocation, so a
 * row-per-invocation kernel gets `wg_sum`'s bits without workgroup memory or barriers (slow on
 * software adapters): the 64 lane partials (lane l adds columns l, l + 64, … in order) live in
 * sixteen vec4 registers (lane 4j + i is component i of register j), then fold pairwise with
 * strides 32, 16, …, 1 as the workgroup tree does. `terms` maps each result name to the WGSL
 * f32 expression of one column `c` (a `u32` in scope); `prelude` declares what the terms share;
 * columns past `count` (default `p.cols`) add nothing. The results are `let` bindings of
 * those names. (The first
 * form kept the partials in a private array indexed by a loop counter, which llvmpipe keeps in
 * memory: layernorm forward + backward of 3072 rows of 64 took 6.2–6.4 instead of 5.6–5.8 ms.)
 * With `vec4`, each term is the vec4f of columns `c … c + 3` (four lanes' terms at once, the
 * same values and order) and `count` must be a multiple of 4.
 */
export function laneTreeSums(
  terms: Record<string, string>,
  prelude = "",
  count = "p.cols",
  vec4 = false,
): string {
  const names = Object.keys(terms);
  const out: string[] = [];
  for (const n of names) {
    for (let j = 0; j < 16; j++) out.push(`var ${n}_${j} = vec4f(0.0);`);
  }
  const body: string[] = [];
  for (let j = 0; j < 16 && vec4; j++) {
    body.push(`{
      let c = c0 + ${4 * j}u;
      if (c < ${count}) {
        ${prelude}
        ${names.map((n) => `${n}_${j} += ${terms[n]};`).join(" ")}
      }
    }`);
  }
  for (let j = 0; j < 16 && !vec4; j++) {
    for (let i = 0; i < 4; i++) {
      const comp = "xyzw"[i];
      body.push(`{
      let c = c0 + ${4 * j + i}u;
      if (c < ${count}) {
        ${prelude}
        ${names.map((n) => `${n}_${j}.${comp} += ${terms[n]};`).join(" ")}
      }
    }`);
    }
  }
  out.push(`for (var c0 = 0u; c0 < ${count}; c0 += ${ROW_WG}u) {
    ${body.join("\n    ")}
  }`);
  out.push(laneTree(names));
  return out.join("\n  ");
}

/**
 * {@link laneTreeSums} over a row of `width4` vec4s known when the shader is built, fully
 * unrolled: `terms` maps each result name to the WGSL vec4f of vec4 `v` (e.g. a register that
 * holds it), added to partial `v mod 16` in increasing `v` — the loop form's order, so its bits
 * — with no loop, no bounds tests and values that stay in registers. `zero` is a WGSL f32 that
 * is 0 but not known to the compiler (a uniform): from a literal 0 the compiler would drop the
 * first addition, and a partial that is then a bare product would fuse into the tree's first
 * addition (an FMA), which the loop form never does — other bits.
 */
export function laneTreeSumsUnrolled(
  terms: Record<string, (v: number) => string>,
  width4: number,
  zero: string,
): string {
  const names = Object.keys(terms);
  const out: string[] = [];
  for (const n of names) {
    for (let j = 0; j < 16; j++) out.push(`var ${n}_${j} = vec4f(${zero});`);
    for (let v = 0; v < width4; v++) out.push(`${n}_${v % 16} += ${terms[n](v)};`);
  }
  out.push(laneTree(names));
  return out.join("\n  ");
}

/** The pairwise fold of sixteen vec4 lane partials per name into `let` results (WG_REDUCE's). */
function laneTree(names: string[]): string {
  const out: string[] = [];
  for (const n of names) {
    const r = (k: number) => `${n}_${k}`;
    out.push(
      ...[0, 1, 2, 3, 4, 5, 6, 7].map((j) => `let ${n}_a${j} = ${r(j)} + ${r(j + 8)};`),
      ...[0, 1, 2, 3].map((j) => `let ${n}_b${j} = ${n}_a${j} + ${n}_a${j + 4};`),
      ...[0, 1].map((j) => `let ${n}_c${j} = ${n}_b${j} + ${n}_b${j + 2};`),
      `let ${n}_d = ${n}_c0 + ${n}_c1;`,
      `let ${n}_e = ${n}_d.xy + ${n}_d.zw;`,
      `let ${n} = ${n}_e.x + ${n}_e.y;`,
    );
  }
  return out.join("\n  ");
}

/** WGSL entry header for one-workgroup-per-row kernels launched with `gpu.grid(rows)`. */
export const ROW_MAIN = `@compute @workgroup_size(${ROW_WG})
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u,
        @builtin(local_invocation_index) lid: u32) {
  let row = wid.x + wid.y * nwg.x;`;

const ROWS = `${WG_REDUCE}
struct P { rows: u32, cols: u32, op: u32 }   // op 0 sum, 1 mean, 2 max
@group(0) @binding(0) var<storage, read> x: array<f32>;   // (rows, cols)
@group(0) @binding(1) var<storage, read_write> out: array<f32>; // (rows)
@group(0) @binding(2) var<uniform> p: P;
${ROW_MAIN}
  let valid = row < p.rows;
  let base = row * p.cols;
  var acc = select(0.0, -3.4e38, p.op == 2u);
  if (valid) {
    for (var c = lid; c < p.cols; c += ${ROW_WG}u) {
      let v = x[base + c];
      acc = select(acc + v, max(acc, v), p.op == 2u);
    }
  }
  var r: f32;
  if (p.op == 2u) { r = wg_max(acc, lid); } else { r = wg_sum(acc, lid); }
  if (valid && lid == 0u) { out[row] = select(r, r / f32(p.cols), p.op == 1u); }
}`;

// rows [r0, r1) of a column sum (see rowRanges): `carry` starts from the running sums `run`,
// `finish` 0 stores them back there instead of into `out`
const COLS = `
struct P {
  rows: u32, cols: u32, accumulate: u32, seg_width: u32, seg_stride: u32,
  r0: u32, r1: u32, carry: u32, finish: u32,
}
@group(0) @binding(0) var<storage, read> x: array<f32>;   // (rows, cols)
@group(0) @binding(1) var<storage, read_write> out: array<f32>; // (cols), or segments
@group(0) @binding(2) var<storage, read_write> run: array<f32>; // (cols) running sums
@group(0) @binding(3) var<uniform> p: P;
${COLUMN_MAIN}
  if (i >= p.cols) { return; }
  var s = select(0.0, run[i], p.carry == 1u);
  for (var r = p.r0; r < p.r1; r++) { s += x[r * p.cols + i]; }
  if (p.finish == 0u) { run[i] = s; return; }
  let o = (i / p.seg_width) * p.seg_stride + i % p.seg_width;
  out[o] = select(s, out[o] + s, p.accumulate == 1u);
}`;

function lastAxis(x: Tensor, op: string): { rows: number; cols: number } {
  checkShape(x.dtype === "f32", `${op}: expects f32, got ${x.dtype}`);
  checkShape(x.shape.length >= 1, `${op}: needs at least one dimension`);
  const cols = x.shape[x.shape.length - 1];
  return { rows: cols === 0 ? 0 : x.size / cols, cols };
}

function rowReduce(gpu: Gpu, x: Tensor, op: number, name: string): Tensor {
  const { rows, cols } = lastAxis(x, name);
  checkShape(cols > 0 || op !== 2, `${name}: max over an empty axis`);
  const out = gpu.empty(x.shape.slice(0, -1));
  if (cols === 0) {
    gpu.clear(out);
    return out;
  }
  gpu.dispatch(gpu.pipeline(ROWS), [x, out], gpu.grid(rows), new Params().u32(rows, cols, op));
  return out;
}

/**
 * Sum along the last axis: `[…, C] → […]`.
 *
 * @example
 * ```ts
 * import { Gpu, sumLastAxis } from "../mod.ts";
 * const gpu = await Gpu.create();
 * const s = sumLastAxis(gpu, gpu.fromArray([1, 2, 3, 4], [2, 2]));
 * console.log(await gpu.read(s)); // [3, 7]
 * ```
 */
export function sumLastAxis(gpu: Gpu, x: Tensor): Tensor {
  return rowReduce(gpu, x, 0, "sumLastAxis");
}

/** Mean along the last axis. */
export function meanLastAxis(gpu: Gpu, x: Tensor): Tensor {
  return rowReduce(gpu, x, 1, "meanLastAxis");
}

/** Max along the last axis. */
export function maxLastAxis(gpu: Gpu, x: Tensor): Tensor {
  return rowReduce(gpu, x, 2, "maxLastAxis");
}

/**
 * Column sums of a `[…, C]` tensor viewed as rows × C: `out[c] = Σ_r x[r, c]` (the bias
 * gradient of a linear layer). With `accumulate`, adds into `out`. With `outSegments`, column
 * `c` goes to `out[⌊c / width⌋·stride + c mod width]` (e.g. the q, k and v bias gradients of a
 * parameter store, each padded for binding).
 */
export function sumColumns(
  gpu: Gpu,
  x: Tensor,
  opts: { out?: Tensor; accumulate?: boolean; outSegments?: { width: number; stride: number } } =
    {},
): Tensor {
  const { rows, cols } = lastAxis(x, "sumColumns");
  const seg = opts.outSegments ?? { width: Math.max(cols, 1), stride: 0 };
  const parts = Math.ceil(cols / seg.width);
  checkShape(
    Number.isInteger(seg.width) && seg.width > 0 && cols % seg.width === 0 &&
      Number.isInteger(seg.stride) && (parts <= 1 || seg.stride >= seg.width),
    `sumColumns: outSegments {width ${seg.width}, stride ${seg.stride}} must divide ${cols} ` +
      "columns into segments that do not overlap",
  );
  const size = opts.outSegments ? (parts - 1) * seg.stride + seg.width : cols;
  const out = opts.out ?? gpu.empty([size]);
  checkShape(out.size === size, `sumColumns: out has ${out.size} elements, expected ${size}`);
  checkShape(!opts.accumulate || opts.out !== undefined, "sumColumns: accumulate needs `out`");
  const ranges = rowRanges(rows);
  const run = ranges.length > 1 ? gpu.empty([cols]) : gpu.placeholder(1);
  ranges.forEach(([r0, r1], k) =>
    gpu.dispatch(
      gpu.pipeline(COLS),
      [x, out, run],
      gpu.grid(columnGroups(cols)),
      new Params().u32(
        rows,
        cols,
        opts.accumulate ? 1 : 0,
        seg.width,
        seg.stride,
        r0,
        r1,
        k > 0 ? 1 : 0,
        k === ranges.length - 1 ? 1 : 0,
      ),
    )
  );
  if (ranges.length > 1) run.dispose();
  return out;
}

// ---------------------------------------------------------------- whole-tensor reductions

/** Elements each partial-sum workgroup covers. */
const CHUNK = 4096;

/**
 * Stage 1: per-workgroup partial sums of `f(x, m)` (value and mask weight), written to
 * `partials[offset + wg]` as vec2 (Σ value, Σ weight). Mode 0: Σ m·x; 1: Σ m·(x − mean)²;
 * 2: Σ x² (mask ignored).
 */
const PARTIALS = `${WG_REDUCE}
struct P { n: u32, mode: u32, offset: u32, has_mask: u32 }
@group(0) @binding(0) var<storage, read> x: array<f32>;        // (n)
@group(0) @binding(1) var<storage, read> mask: array<f32>;     // (n) or dummy
@group(0) @binding(2) var<storage, read> stats: array<f32>;    // (4): sum, count, mean, var
@group(0) @binding(3) var<storage, read_write> partials: array<vec2f>;
@group(0) @binding(4) var<uniform> p: P;
${ROW_MAIN}
  let start = row * ${CHUNK}u;
  let end = min(start + ${CHUNK}u, p.n);
  let mean = select(0.0, stats[2], p.mode == 1u);
  var s = 0.0;
  var w = 0.0;
  for (var i = start + lid; i < end; i += ${ROW_WG}u) {
    let m = select(1.0, mask[i], p.has_mask == 1u);
    let v = x[i];
    if (p.mode == 0u) { s += m * v; } else if (p.mode == 1u) { s += m * (v - mean) * (v - mean); } else { s += v * v; }
    w += m;
  }
  let ts = wg_sum(s, lid);
  let tw = wg_sum(w, lid);
  if (lid == 0u) { partials[p.offset + row] = vec2f(ts, tw); }
}`;

/**
 * Stage 2: one workgroup sums the partials. Mode 0 writes stats = (sum, count, mean, ·);
 * mode 1 writes stats[3] = variance (unbiased when `unbiased`); mode 2 writes stats[0] =
 * sqrt(Σ) (the L2 norm) and, when max_norm > 0, stats[1] = min(1, max_norm / (norm + 1e-6)).
 */
const FINISH = `${WG_REDUCE}
struct P { count: u32, mode: u32, unbiased: u32, max_norm: f32 }
@group(0) @binding(0) var<storage, read> partials: array<vec2f>;
@group(0) @binding(1) var<storage, read_write> stats: array<f32>;    // (4)
@group(0) @binding(2) var<uniform> p: P;
@compute @workgroup_size(${ROW_WG})
fn main(@builtin(local_invocation_index) lid: u32) {
  var s = 0.0;
  var w = 0.0;
  for (var i = lid; i < p.count; i += ${ROW_WG}u) { let v = partials[i]; s += v.x; w += v.y; }
  let ts = wg_sum(s, lid);
  let tw = wg_sum(w, lid);
  if (lid != 0u) { return; }
  if (p.mode == 0u) {
    stats[0] = ts;
    stats[1] = tw;
    stats[2] = select(0.0, ts / tw, tw > 0.0);
    stats[3] = 0.0;
  } else if (p.mode == 1u) {
    let d = select(tw, tw - 1.0, p.unbiased == 1u);
    stats[3] = select(0.0, ts / d, d > 0.0);
  } else {
    let norm = sqrt(ts);
    stats[0] = norm;
    stats[1] = select(1.0, min(1.0, p.max_norm / (norm + 1e-6)), p.max_norm > 0.0);
  }
}`;

function partialsFor(gpu: Gpu, count: number): Tensor {
  return gpu.empty([Math.max(1, count) * 2]);
}

/**
 * Columns of a statistics tensor (from {@link maskedStats} and the losses that return one):
 * `stats[STAT.mean]` rather than `stats[2]`.
 */
export const STAT = { sum: 0, count: 1, mean: 2, variance: 3 } as const;

/**
 * Masked statistics over a whole tensor: returns a `[4]` tensor `(Σ m·x, Σ m, mean, var)`
 * with `var = Σ m·(x − mean)² / (Σ m − 1)` (unbiased, as TRL's `masked_var`) or `/ Σ m`.
 * Without a mask every element counts. Two passes, so the variance is numerically stable.
 *
 * @example Mean and variance of valid tokens
 * ```ts
 * import { Gpu, maskedStats } from "../mod.ts";
 * const gpu = await Gpu.create();
 * const s = maskedStats(gpu, gpu.fromArray([1, 2, 3, 100]), gpu.fromArray([1, 1, 1, 0]));
 * console.log(await gpu.read(s)); // [6, 3, 2, 1]
 * ```
 */
export function maskedStats(
  gpu: Gpu,
  x: Tensor,
  mask?: Tensor,
  opts: { unbiased?: boolean; out?: Tensor } = {},
): Tensor {
  checkShape(x.dtype === "f32", `maskedStats: expects f32, got ${x.dtype}`);
  if (mask) {
    checkShape(
      mask.size === x.size && mask.dtype === "f32",
      `maskedStats: mask [${mask.shape}] (${mask.dtype}) does not match x [${x.shape}]`,
    );
  }
  const stats = opts.out ?? gpu.empty([4]);
  checkShape(stats.size === 4, "maskedStats: out must have 4 elements");
  const wgs = Math.ceil(x.size / CHUNK);
  const partials = partialsFor(gpu, wgs);
  const part = gpu.pipeline(PARTIALS), fin = gpu.pipeline(FINISH);
  const m = mask ?? gpu.placeholder();
  const hasMask = mask ? 1 : 0;
  for (const mode of [0, 1]) {
    if (wgs === 0) gpu.clear(partials);
    gpu.dispatch(
      part,
      [x, m, stats, partials],
      gpu.grid(wgs),
      new Params().u32(x.size, mode, 0, hasMask),
    );
    gpu.dispatch(
      fin,
      [partials, stats],
      [1],
      new Params().u32(Math.max(1, wgs), mode, opts.unbiased === false ? 0 : 1).f32(0),
    );
  }
  partials.dispose();
  return stats;
}

/**
 * Global L2 norm of one or more tensors, `sqrt(Σ_t Σ_i t_i²)`, as a `[4]` tensor
 * `(norm, clipCoef, ·, ·)` where `clipCoef = min(1, maxNorm / (norm + 1e-6))` when `maxNorm`
 * is given (1 otherwise). The coefficient stays on the GPU for {@link scaleByScalarTensor} or
 * AdamW, so clipping needs no readback.
 *
 * @example
 * ```ts
 * import { globalNorm, Gpu } from "../mod.ts";
 * const gpu = await Gpu.create();
 * const n = globalNorm(gpu, [gpu.fromArray([3]), gpu.fromArray([4])]);
 * console.log((await gpu.read(n))[0]); // 5
 * ```
 */
export function globalNorm(gpu: Gpu, tensors: Tensor[], maxNorm = 0): Tensor {
  checkShape(tensors.length > 0, "globalNorm: no tensors");
  const counts = tensors.map((t) => Math.ceil(t.size / CHUNK));
  const total = counts.reduce((a, b) => a + b, 0);
  const partials = partialsFor(gpu, total);
  const stats = gpu.empty([4]);
  const part = gpu.pipeline(PARTIALS);
  let offset = 0;
  if (total === 0) gpu.clear(partials);
  tensors.forEach((t, i) => {
    checkShape(t.dtype === "f32", `globalNorm: tensor ${i} has dtype ${t.dtype}`);
    gpu.dispatch(
      part,
      [t, gpu.placeholder(), stats, partials],
      gpu.grid(counts[i]),
      new Params().u32(t.size, 2, offset, 0),
    );
    offset += counts[i];
  });
  gpu.dispatch(
    gpu.pipeline(FINISH),
    [partials, stats],
    [1],
    new Params().u32(Math.max(1, total), 2, 0).f32(maxNorm),
  );
  partials.dispose();
  return stats;
}

const SCALE_BY = `
struct P { n: u32, index: u32 }
@group(0) @binding(0) var<storage, read_write> x: array<f32>;  // (n), scaled in place
@group(0) @binding(1) var<storage, read> s: array<f32>;  // scalar source
@group(0) @binding(2) var<uniform> p: P;
${LINEAR_MAIN}
  if (i >= p.n) { return; }
  x[i] = x[i] * s[p.index];
}`;

/** `x ← x · s[index]` in place, with the factor read on the GPU (e.g. a clip coefficient). */
export function scaleByScalarTensor(gpu: Gpu, x: Tensor, s: Tensor, index = 0): Tensor {
  checkShape(index < s.size, `scaleByScalarTensor: index ${index} outside [${s.shape}]`);
  gpu.dispatch(
    gpu.pipeline(SCALE_BY),
    [x, s],
    gpu.grid(groups(x.size)),
    new Params().u32(x.size, index),
  );
  return x;
}

/**
 * Clips gradients to a global L2 norm in place (`g ← g·min(1, maxNorm/‖g‖)`) and returns the
 * `[4]` stats tensor of {@link globalNorm} (pre-clip norm first), without a readback.
 *
 * @example
 * ```ts
 * import { clipGradNorm, Gpu } from "../mod.ts";
 * const gpu = await Gpu.create();
 * const g = gpu.fromArray([3, 4]);
 * clipGradNorm(gpu, [g], 1);
 * console.log(await gpu.read(g)); // ≈ [0.6, 0.8]
 * ```
 */
export function clipGradNorm(gpu: Gpu, grads: Tensor[], maxNorm: number): Tensor {
  checkShape(maxNorm > 0, `clipGradNorm: maxNorm must be > 0, got ${maxNorm}`);
  const stats = globalNorm(gpu, grads, maxNorm);
  for (const g of grads) scaleByScalarTensor(gpu, g, stats, 1);
  return stats;
}
