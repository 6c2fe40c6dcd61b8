/**
 * Layer normalisation over the last axis with weight and bias (eps 1e-5 by default), llm.c
 * style: the forward saves per-row mean and reciprocal std; the backward writes dx and
 * accumulates dweight and dbias.
 *
 * @module
 */

import { checkShape } from "./errors.ts";
import {
  checkLoopBudget,
  COLUMN_MAIN,
  columnGroups,
  groups,
  rowRanges,
  SOFTWARE_LOOP_BUDGET,
} from "./_shader.ts";
import {
  laneTreeSums,
  laneTreeSumsUnrolled,
  ROW_MAIN,
  ROW_THREAD_MAIN,
  ROW_WG,
  WG_REDUCE,
} from "./reduce.ts";
import { type Gpu, Params, type Tensor } from "./runtime.ts";

/** Bindings of the forward; `E` is the element type of the row-major arrays (`vec4f`: 4 columns). */
const forwardBindings = (E = "f32") => `
struct P { rows: u32, cols: u32, eps: f32, zero: f32 }
@group(0) @binding(0) var<storage, read> x: array<${E}>;     // (rows, C)
@group(0) @binding(1) var<storage, read> w: array<${E}>;     // (C)
@group(0) @binding(2) var<storage, read> b: array<${E}>;     // (C)
@group(0) @binding(3) var<storage, read_write> y: array<${E}>;     // (rows, C)
@group(0) @binding(4) var<storage, read_write> mean: array<f32>;  // (rows)
@group(0) @binding(5) var<storage, read_write> rstd: array<f32>;  // (rows)
@group(0) @binding(6) var<uniform> p: P;`;
const FORWARD_BINDINGS = forwardBindings();

/** Bindings of the backward's dx; `E` as in {@link forwardBindings}. */
const backwardDxBindings = (E = "f32") => `
struct P { rows: u32, cols: u32, accumulate: u32, zero: f32 }
@group(0) @binding(0) var<storage, read> dy: array<${E}>;    // (rows, C)
@group(0) @binding(1) var<storage, read> x: array<${E}>;     // (rows, C)
@group(0) @binding(2) var<storage, read> w: array<${E}>;     // (C)
@group(0) @binding(3) var<storage, read> mean: array<f32>;  // (rows)
@group(0) @binding(4) var<storage, read> rstd: array<f32>;  // (rows)
@group(0) @binding(5) var<storage, read_write> dx: array<${E}>;    // (rows, C)
@group(0) @binding(6) var<uniform> p: P;`;
const BACKWARD_DX_BINDINGS = backwardDxBindings();

// the entry of the one-invocation-per-row forms: `row` and its offset `base`

const FORWARD = `${WG_REDUCE}
${FORWARD_BINDINGS}
${ROW_MAIN}
  let valid = row < p.rows;
  let base = row * p.cols;
  var s = 0.0;
  if (valid) { for (var c = lid; c < p.cols; c += ${ROW_WG}u) { s += x[base + c]; } }
  let m = wg_sum(s, lid) / f32(p.cols);
  var q = 0.0;
  if (valid) { for (var c = lid; c < p.cols; c += ${ROW_WG}u) { let d = x[base + c] - m; q += d * d; } }
  let r = inverseSqrt(wg_sum(q, lid) / f32(p.cols) + p.eps);
  if (!valid) { return; }
  for (var c = lid; c < p.cols; c += ${ROW_WG}u) {
    y[base + c] = (x[base + c] - m) * r * w[c] + b[c];
  }
  if (lid == 0u) { mean[row] = m; rstd[row] = r; }
}`;

// dx = rstd · (dy·w − mean(dy·w) − x̂ · mean(dy·w · x̂))
const BACKWARD_DX = `${WG_REDUCE}
${BACKWARD_DX_BINDINGS}
${ROW_MAIN}
  let valid = row < p.rows;
  let base = row * p.cols;
  var m = 0.0;
  var r = 0.0;
  if (valid) { m = mean[row]; r = rstd[row]; }
  var s1 = 0.0;
  var s2 = 0.0;
  if (valid) {
    for (var c = lid; c < p.cols; c += ${ROW_WG}u) {
      let g = dy[base + c] * w[c];
      s1 += g;
      s2 += g * (x[base + c] - m) * r;
    }
  }
  let mg = wg_sum(s1, lid) / f32(p.cols);
  let mgx = wg_sum(s2, lid) / f32(p.cols);
  if (!valid) { return; }
  for (var c = lid; c < p.cols; c += ${ROW_WG}u) {
    let xh = (x[base + c] - m) * r;
    let v = r * (dy[base + c] * w[c] - mg - xh * mgx);
    dx[base + c] = select(v, dx[base + c] + v, p.accumulate == 1u);
  }
}`;

// The same forward with one invocation per row and no workgroup memory: on software adapters
// barriers are what costs (SPEC §11), and for narrow rows a thread per row is also what a GPU
// runs well. Two passes over the row (mean, then centred variance) as in the workgroup form.
const FORWARD_ROWWISE = `
${FORWARD_BINDINGS}
${ROW_THREAD_MAIN}
  var s = 0.0;
  for (var c = 0u; c < p.cols; c++) { s += x[base + c]; }
  let m = s / f32(p.cols);
  var q = 0.0;
  for (var c = 0u; c < p.cols; c++) { let d = x[base + c] - m; q += d * d; }
  let r = inverseSqrt(q / f32(p.cols) + p.eps);
  for (var c = 0u; c < p.cols; c++) { y[base + c] = (x[base + c] - m) * r * w[c] + b[c]; }
  mean[row] = m;
  rstd[row] = r;
}`;

// BACKWARD_DX with one invocation per row (see FORWARD_ROWWISE)
const BACKWARD_DX_ROWWISE = `
${BACKWARD_DX_BINDINGS}
${ROW_THREAD_MAIN}
  let m = mean[row];
  let r = rstd[row];
  var s1 = 0.0;
  var s2 = 0.0;
  for (var c = 0u; c < p.cols; c++) {
    let g = dy[base + c] * w[c];
    s1 += g;
    s2 += g * (x[base + c] - m) * r;
  }
  let mg = s1 / f32(p.cols);
  let mgx = s2 / f32(p.cols);
  for (var c = 0u; c < p.cols; c++) {
    let xh = (x[base + c] - m) * r;
    let v = r * (dy[base + c] * w[c] - mg - xh * mgx);
    dx[base + c] = select(v, dx[base + c] + v, p.accumulate == 1u);
  }
}`;

// The workgroup form's arithmetic, one invocation per row: the 64 per-lane partial sums (lane l
// adds columns l, l + 64, …) and then the same pairwise tree (stride 32, 16, …, 1), so every
// sum is formed in the same order and the results are bit for bit the workgroup form's — without
// its barriers, which are what software adapters pay for (SPEC §11).

// With `vec4` (rows of a multiple of 4 columns) four columns at a time: each vec4 term holds
// four lanes' terms, added in the same order, and every output element is the same arithmetic
// on its own component — the same bits with a quarter of the loads (llvmpipe pays per load,
// SPEC §11).

function forwardTree(vec4: boolean): string {
  const at = (c: string) => vec4 ? `(${c}) / 4u` : c; // the array index of column c
  return `
${forwardBindings(vec4 ? "vec4f" : "f32")}
${ROW_THREAD_MAIN}
  ${laneTreeSums({ s: `x[${at("base + c")}]` }, "", "p.cols", vec4)}
  let m = s / f32(p.cols);
  ${laneTreeSums({ q: "d * d" }, `let d = x[${at("base + c")}] - m;`, "p.cols", vec4)}
  let r = inverseSqrt(q / f32(p.cols) + p.eps);
  for (var c = 0u; c < p.cols; c += ${vec4 ? 4 : 1}u) {
    let k = ${at("base + c")};
    y[k] = (x[k] - m) * r * w[${at("c")}] + b[${at("c")}];
  }
  mean[row] = m;
  rstd[row] = r;
}`;
}

function backwardDxTree(vec4: boolean): string {
  const at = (c: string) => vec4 ? `(${c}) / 4u` : c;
  return `
${backwardDxBindings(vec4 ? "vec4f" : "f32")}
${ROW_THREAD_MAIN}
  let m = mean[row];
  let r = rstd[row];
  ${
    laneTreeSums(
      { s1: "g", s2: "g * (x[k] - m) * r" },
      `let k = ${at("base + c")}; let g = dy[k] * w[${at("c")}];`,
      "p.cols",
      vec4,
    )
  }
  let mg = s1 / f32(p.cols);
  let mgx = s2 / f32(p.cols);
  for (var c = 0u; c < p.cols; c += ${vec4 ? 4 : 1}u) {
    let k = ${at("base + c")};
    let xh = (x[k] - m) * r;
    let v = r * (dy[k] * w[${at("c")}] - mg - xh * mgx);
    dx[k] = select(v, dx[k] + v, p.accumulate == 1u);
  }
}`;
}

const FORWARD_TREE = forwardTree(false), FORWARD_TREE_VEC4 = forwardTree(true);
const BACKWARD_DX_TREE = backwardDxTree(false), BACKWARD_DX_TREE_VEC4 = backwardDxTree(true);

// The row-tree forms for one row width C (a multiple of 4, at most UNROLLED_MAX), fully
// unrolled: each element is loaded once into a register and reused by every pass (the loop forms
// load x three times forward, dy/x/w twice and dx once backward), and whether dx accumulates is
// known — the same terms in the same order, so the same bits. On llvmpipe (SPEC §11: a storage
// load per lane costs more than the arithmetic around it) the 18 backward calls of an L4/H128
// actor + critic pass (1008 rows of 128) took 16 → 12 ms, its 2 forward calls 1.6 → 0.7–1.3 ms.

/** Widest row (in floats) the unrolled row-tree kernels are built for. */
const UNROLLED_MAX = 256;
const unrolledShaders = new Map<string, string>();

function unrolledForward(C: number): string {
  const key = `f${C}`, hit = unrolledShaders.get(key);
  if (hit) return hit;
  const C4 = C / 4, each = (f: (v: number) => string) => range(C4).map(f).join("\n  ");
  const code = `
${forwardBindings("vec4f")}
${ROW_THREAD_MAIN}
  let xb = base / 4u;
  ${each((v) => `let x${v} = x[xb + ${v}u];`)}
  ${laneTreeSumsUnrolled({ s: (v) => `x${v}` }, C4, "p.zero")}
  let m = s / f32(p.cols);
  ${each((v) => `let d${v} = x${v} - m;`)}
  ${laneTreeSumsUnrolled({ q: (v) => `d${v} * d${v}` }, C4, "p.zero")}
  let r = inverseSqrt(q / f32(p.cols) + p.eps);
  ${each((v) => `y[xb + ${v}u] = (x${v} - m) * r * w[${v}u] + b[${v}u];`)}
  mean[row] = m;
  rstd[row] = r;
}`;
  unrolledShaders.set(key, code);
  return code;
}

function unrolledBackwardDx(C: number, accumulate: boolean): string {
  const key = `b${C}/${accumulate}`, hit = unrolledShaders.get(key);
  if (hit) return hit;
  const C4 = C / 4, each = (f: (v: number) => string) => range(C4).map(f).join("\n  ");
  const code = `
${backwardDxBindings("vec4f")}
${ROW_THREAD_MAIN}
  let m = mean[row];
  let r = rstd[row];
  let xb = base / 4u;
  ${each((v) => `let dy${v} = dy[xb + ${v}u]; let x${v} = x[xb + ${v}u]; let w${v} = w[${v}u];`)}
  ${each((v) => `let g${v} = dy${v} * w${v};`)}
  ${
    laneTreeSumsUnrolled(
      { s1: (v) => `g${v}`, s2: (v) => `g${v} * (x${v} - m) * r` },
      C4,
      "p.zero",
    )
  }
  let mg = s1 / f32(p.cols);
  let mgx = s2 / f32(p.cols);
  ${
    each((v) =>
      `let o${v} = r * (dy${v} * w${v} - mg - ((x${v} - m) * r) * mgx); ` +
      `dx[xb + ${v}u] = ${accumulate ? `dx[xb + ${v}u] + o${v}` : `o${v}`};`
    )
  }
}`;
  unrolledShaders.set(key, code);
  return code;
}

function range(n: number): number[] {
  return Array.from({ length: n }, (_, i) => i);
}

/**
 * How a layernorm kernel spreads a row. `"workgroup"`: 64 invocations per row with a tree
 * reduction — what a GPU runs well. `"row-tree"`: one invocation per row doing the same sums in
 * the same order (bit for bit the workgroup form's results) without workgroup memory or barriers
 * — what software adapters run well (SPEC §11: on the 2-core llvmpipe machine 640 rows of 64
 * take ≈ 4.5 instead of 21 ms forward + backward). `"row-thread"`: one invocation per row with
 * plain sequential sums (fastest there, but it rounds differently; an option only). By default
 * a software (fallback) adapter takes `"row-tree"` (while its loops stay within the adapter's
 * loop cap: rows up to ~58 000 columns) and any other `"workgroup"`: the choice never changes a
 * result. (On llvmpipe the row-tree forward is faster or level at every shape measured,
 * 4 to 3072 rows of 64 to 2048: 16 rows of 64, a decode step's, 262–375 → 190–219 µs a call.)
 */
export type LayernormVariant = "row-thread" | "workgroup" | "row-tree";

// dweight[c] += Σ_r dy·x̂, dbias[c] += Σ_r dy: one invocation per column, over rows [r0, r1)
// (see rowRanges: `carry` starts from the running sums `run`, `finish` 0 stores them there)
const backwardDw = (E: string) => `
struct P { n: u32, rows: u32, cols: u32, r0: u32, r1: u32, carry: u32, finish: u32 }
@group(0) @binding(0) var<storage, read> dy: array<${E}>;    // (rows, C)
@group(0) @binding(1) var<storage, read> x: array<${E}>;     // (rows, C)
@group(0) @binding(2) var<storage, read> mean: array<f32>;  // (rows)
@group(0) @binding(3) var<storage, read> rstd: array<f32>;  // (rows)
@group(0) @binding(4) var<storage, read_write> dw: array<${E}>;    // (C)
@group(0) @binding(5) var<storage, read_write> db: array<${E}>;    // (C)
@group(0) @binding(6) var<storage, read_write> run: array<${E}>;   // (2, C) running sums
@group(0) @binding(7) var<uniform> p: P;
${COLUMN_MAIN}
  if (i >= p.cols) { return; }
  var sw = select(${E}(0.0), run[i], p.carry == 1u);
  var sb = select(${E}(0.0), run[p.cols + i], p.carry == 1u);
  for (var r = p.r0; r < p.r1; r++) {
    let g = dy[r * p.cols + i];
    sw += g * (x[r * p.cols + i] - mean[r]) * rstd[r];
    sb += g;
  }
  if (p.finish == 0u) {
    run[i] = sw;
    run[p.cols + i] = sb;
    return;
  }
  dw[i] += sw;
  db[i] += sb;
}`;
const BACKWARD_DW = backwardDw("f32");
// four columns an invocation (C a multiple of 4; `cols` then counts vec4s): each column's sums in
// the same row order, so the same bits, with a quarter of the loads
const BACKWARD_DW_VEC4 = backwardDw("vec4f");

/** A forced one-invocation-per-row form must fit the loop cap (see `checkLoopBudget`). */
function checkRowLoops(gpu: Gpu, variant: LayernormVariant, C: number): void {
  if (variant === "row-tree") checkLoopBudget(gpu, rowTreeLoops(C), "layernorm (row-tree)");
  if (variant === "row-thread") checkLoopBudget(gpu, 3 * C, "layernorm (row-thread)");
}

/** Loop iterations of the row-tree forward: two lane-partial passes and the output pass. */
function rowTreeLoops(C: number): number {
  return C + 2 * Math.ceil(C / ROW_WG);
}

/** The default {@link LayernormVariant}: same bits either way, the faster form for the adapter. */
function defaultVariant(gpu: Gpu, cols: number): LayernormVariant {
  const fits = rowTreeLoops(cols) <= SOFTWARE_LOOP_BUDGET;
  return gpu.isFallbackAdapter && fits ? "row-tree" : "workgroup";
}

/** Saved activations of {@link layernormForward}. */
export interface LayernormSaved {
  /** Per-row mean of the input `(rows)`. */
  mean: Tensor;
  /** Per-row reciprocal standard deviation `1/√(var + eps)` `(rows)`. */
  rstd: Tensor;
}

function dims(x: Tensor, w: Tensor, b: Tensor | null, name: string) {
  checkShape(x.dtype === "f32", `${name}: x must be f32`);
  const C = x.shape[x.shape.length - 1] ?? 0;
  checkShape(C > 0, `${name}: x [${x.shape}] has an empty last axis`);
  checkShape(w.size === C, `${name}: weight has ${w.size} elements, last axis is ${C}`);
  if (b) checkShape(b.size === C, `${name}: bias has ${b.size} elements, last axis is ${C}`);
  return { rows: x.size / C, C };
}

/**
 * `y = (x − mean)/sqrt(var + eps)·w + b` over the last axis. Returns `y` and the saved
 * `mean`/`rstd` (one per row) for {@link layernormBackward}.
 *
 * @example
 * ```ts
 * import { Gpu, layernormForward } from "../mod.ts";
 * const gpu = await Gpu.create();
 * const x = gpu.fromArray([1, 2, 3, 4], [1, 4]);
 * const { y } = layernormForward(gpu, x, gpu.fromArray([1, 1, 1, 1]), gpu.zeros([4]));
 * console.log(await gpu.read(y)); // ≈ [-1.342, -0.447, 0.447, 1.342]
 * ```
 */
export function layernormForward(
  gpu: Gpu,
  x: Tensor,
  weight: Tensor,
  bias: Tensor,
  opts: { eps?: number; out?: Tensor; variant?: LayernormVariant } = {},
): { y: Tensor } & LayernormSaved {
  const { rows, C } = dims(x, weight, bias, "layernormForward");
  const y = opts.out ?? gpu.empty(x.shape);
  const mean = gpu.empty(x.shape.slice(0, -1)), rstd = gpu.empty(x.shape.slice(0, -1));
  const variant = opts.variant ?? defaultVariant(gpu, C), rowwise = variant !== "workgroup";
  checkRowLoops(gpu, variant, C);
  gpu.dispatch(
    gpu.pipeline(
      variant === "row-tree"
        ? (C % 4 === 0
          ? (C <= UNROLLED_MAX ? unrolledForward(C) : FORWARD_TREE_VEC4)
          : FORWARD_TREE)
        : variant === "row-thread"
        ? FORWARD_ROWWISE
        : FORWARD,
    ),
    [x, weight, bias, y, mean, rstd],
    gpu.grid(rowwise ? groups(rows) : rows),
    new Params().u32(rows, C).f32(opts.eps ?? 1e-5, 0),
  );
  return { y, mean, rstd };
}

/**
 * Backward of {@link layernormForward}: returns `dx` (written, or added into `opts.dx` with
 * `accumulateDx`) and adds into `dweight` and `dbias` (pass `null` for both to skip the
 * parameter gradients, e.g. for a frozen norm).
 */
export function layernormBackward(
  gpu: Gpu,
  dy: Tensor,
  x: Tensor,
  weight: Tensor,
  saved: LayernormSaved,
  dweight: Tensor | null,
  dbias: Tensor | null,
  opts: { dx?: Tensor; accumulateDx?: boolean; variant?: LayernormVariant } = {},
): Tensor {
  const { rows, C } = dims(x, weight, null, "layernormBackward");
  const variant = opts.variant ?? defaultVariant(gpu, C), rowwise = variant !== "workgroup";
  checkRowLoops(gpu, variant, C);
  checkShape(dy.size === x.size, `layernormBackward: dy [${dy.shape}] vs x [${x.shape}]`);
  checkShape(
    (dweight === null) === (dbias === null),
    "layernormBackward: give both dweight and dbias, or neither",
  );
  checkShape(
    dweight === null || (dweight.size === C && dbias!.size === C),
    "layernormBackward: dweight/dbias size",
  );
  checkShape(
    !opts.accumulateDx || opts.dx !== undefined,
    "layernormBackward: accumulateDx needs dx",
  );
  const dx = opts.dx ?? gpu.empty(x.shape);
  gpu.dispatch(
    gpu.pipeline(
      variant === "row-tree"
        ? (C % 4 === 0
          ? (C <= UNROLLED_MAX
            ? unrolledBackwardDx(C, opts.accumulateDx === true)
            : BACKWARD_DX_TREE_VEC4)
          : BACKWARD_DX_TREE)
        : variant === "row-thread"
        ? BACKWARD_DX_ROWWISE
        : BACKWARD_DX,
    ),
    [dy, x, weight, saved.mean, saved.rstd, dx],
    gpu.grid(rowwise ? groups(rows) : rows),
    new Params().u32(rows, C, opts.accumulateDx ? 1 : 0).f32(0),
  );
  if (dweight === null) return dx;
  const ranges = rowRanges(rows);
  const run = ranges.length > 1 ? gpu.empty([2 * C]) : gpu.placeholder(1);
  const v = C % 4 === 0 ? 4 : 1, cols = C / v;
  ranges.forEach(([r0, r1], k) =>
    gpu.dispatch(
      gpu.pipeline(v === 4 ? BACKWARD_DW_VEC4 : BACKWARD_DW),
      [dy, x, saved.mean, saved.rstd, dweight, dbias!, run],
      gpu.grid(columnGroups(cols)),
      new Params().u32(cols, rows, cols, r0, r1, k > 0 ? 1 : 0, k === ranges.length - 1 ? 1 : 0),
    )
  );
  if (ranges.length > 1) run.dispose();
  return dx;
}
