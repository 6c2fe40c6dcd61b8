/**
 * Softmax family over the last axis, max-subtracted: softmax, log-softmax, per-token log-prob
 * gather with entropy and log-sum-exp, cross-entropy with an ignore index, and one fused
 * backward that sends d(logp) and d(entropy) straight to the logits
 * (`dz = g_logp·(onehot − p) − g_H·p·(log p + H)`), so the giant logits are read once.
 *
 * @module
 */

import { checkShape } from "./errors.ts";
import { checkLoopBudget, groups, SOFTWARE_LOOP_BUDGET } from "./_shader.ts";
import { laneTreeSums, ROW_MAIN, ROW_THREAD_MAIN, ROW_WG, WG_REDUCE } from "./reduce.ts";
import { type Gpu, Params, type Tensor } from "./runtime.ts";

const SOFTMAX = `${WG_REDUCE}
struct P { rows: u32, cols: u32, log: u32 }
@group(0) @binding(0) var<storage, read> x: array<f32>;   // (rows, cols)
@group(0) @binding(1) var<storage, read_write> out: array<f32>; // (rows, cols)
@group(0) @binding(2) var<uniform> p: P;
${ROW_MAIN}
  let valid = row < p.rows;
  let base = row * p.cols;
  var m = -3.4e38;
  if (valid) { for (var c = lid; c < p.cols; c += ${ROW_WG}u) { m = max(m, x[base + c]); } }
  m = wg_max(m, lid);
  var s = 0.0;
  if (valid) { for (var c = lid; c < p.cols; c += ${ROW_WG}u) { s += exp(x[base + c] - m); } }
  s = wg_sum(s, lid);
  if (!valid) { return; }
  let lse = m + log(s);
  for (var c = lid; c < p.cols; c += ${ROW_WG}u) {
    let z = x[base + c];
    out[base + c] = select(exp(z - lse), z - lse, p.log == 1u);
  }
}`;

const TOKEN_LOGPROBS_BINDINGS = `
struct P { rows: u32, cols: u32 }
@group(0) @binding(0) var<storage, read> logits: array<f32>;  // (rows, V)
@group(0) @binding(1) var<storage, read> targets: array<i32>; // (rows), < 0 ignored
@group(0) @binding(2) var<storage, read_write> logp: array<f32>;    // (rows)
@group(0) @binding(3) var<storage, read_write> ent: array<f32>;     // (rows)
@group(0) @binding(4) var<storage, read_write> lse_out: array<f32>; // (rows)
@group(0) @binding(5) var<uniform> p: P;
`;

const TOKEN_LOGPROBS = `${WG_REDUCE}
${TOKEN_LOGPROBS_BINDINGS}
${ROW_MAIN}
  let valid = row < p.rows;
  let base = row * p.cols;
  var m = -3.4e38;
  if (valid) { for (var c = lid; c < p.cols; c += ${ROW_WG}u) { m = max(m, logits[base + c]); } }
  m = wg_max(m, lid);
  var s = 0.0;
  var sz = 0.0;
  if (valid) {
    for (var c = lid; c < p.cols; c += ${ROW_WG}u) {
      let z = logits[base + c] - m;
      let e = exp(z);
      s += e;
      sz += e * z;
    }
  }
  s = wg_sum(s, lid);
  sz = wg_sum(sz, lid);
  if (!valid || lid != 0u) { return; }
  let lse = m + log(s);
  let t = targets[row];
  logp[row] = select(0.0, logits[base + u32(max(t, 0))] - lse, t >= 0 && u32(t) < p.cols);
  // H = lse - Σ p z = log s - Σ e (z - m) / s
  ent[row] = log(s) - sz / s;
  lse_out[row] = lse;
}`;

// One invocation per row with TOKEN_LOGPROBS's sums in the same order (64 lane partials, then
// the same pairwise tree; the max is exact in any order): its bits without workgroup barriers.
const TOKEN_LOGPROBS_TREE = `
${TOKEN_LOGPROBS_BINDINGS}
${ROW_THREAD_MAIN}
  var m = -3.4e38;
  for (var c = 0u; c < p.cols; c++) { m = max(m, logits[base + c]); }
  ${laneTreeSums({ s: "e", sz: "e * z" }, "let z = logits[base + c] - m; let e = exp(z);")}
  let lse = m + log(s);
  let t = targets[row];
  logp[row] = select(0.0, logits[base + u32(max(t, 0))] - lse, t >= 0 && u32(t) < p.cols);
  ent[row] = log(s) - sz / s;
  lse_out[row] = lse;
}`;

/**
 * How {@link tokenLogprobs} reduces a row: `"workgroup"` — 64 threads and a tree in workgroup
 * memory (what a GPU runs well); `"row-tree"` — one invocation per row doing the same sums in
 * the same order (the same bits, no barriers). Software adapters take `"row-tree"` for 128 rows
 * or more while its loops fit their cap (`SOFTWARE_LOOP_BUDGET`: vocabularies up to ~59 000
 * logits), everything else the workgroup form.
 */
export type RowReduction = "workgroup" | "row-tree";

function defaultReduction(gpu: Gpu, rows: number, cols: number): RowReduction {
  // the row-tree form's loops: the max over the row and the lane-partial pass
  const fits = cols + Math.ceil(cols / ROW_WG) <= SOFTWARE_LOOP_BUDGET;
  return gpu.isFallbackAdapter && rows >= 128 && fits ? "row-tree" : "workgroup";
}

/**
 * The logits backward for one set of inputs (`hasLogp`, `hasEnt` known when built: the branches
 * a dispatch does not take are compiled out), over `E` = `f32` elements or `vec4f` (four
 * columns an invocation when V is a multiple of 4; `p.cols` then counts vec4s): the same
 * arithmetic per element, so the same bits, with the row's values loaded once per four columns.
 */
function logitsBackwardShader(vec4: boolean, hasLogp: boolean, hasEnt: boolean): string {
  const E = vec4 ? "vec4f" : "f32";
  const col = vec4 ? "4u * c + vec4u(0u, 1u, 2u, 3u)" : "c";
  return `
struct P { rows: u32, cols: u32, sign: f32, has_logp: u32, has_ent: u32 }
@group(0) @binding(0) var<storage, read> logits: array<${E}>;  // (rows, V)
@group(0) @binding(1) var<storage, read> targets: array<i32>; // (rows)
@group(0) @binding(2) var<storage, read> lse: array<f32>;     // (rows)
@group(0) @binding(3) var<storage, read> ent: array<f32>;     // (rows)
@group(0) @binding(4) var<storage, read> g_logp: array<f32>;  // (rows)
@group(0) @binding(5) var<storage, read> g_ent: array<f32>;   // (rows)
@group(0) @binding(6) var<storage, read_write> dlogits: array<${E}>; // (rows, V)
@group(0) @binding(7) var<uniform> p: P;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) g: vec3u) {
  _ = &targets; _ = &ent; _ = &g_logp; _ = &g_ent;
  let c = g.x;
  let row = g.y + g.z * 65535u;
  if (c >= p.cols || row >= p.rows) { return; }
  let idx = row * p.cols + c;
  let logq = logits[idx] - lse[row];
  let q = exp(logq);
  var d = ${E}(0.0);
  ${
    hasLogp
      ? `let t = targets[row];
  if (t >= 0) { d += p.sign * g_logp[row] * (select(${E}(0.0), ${E}(1.0), ${
        vec4 ? "vec4u(u32(t))" : "u32(t)"
      } == ${col}) - q); }`
      : ""
  }
  ${hasEnt ? "d -= g_ent[row] * q * (logq + ent[row]);" : ""}
  dlogits[idx] = d;
}`;
}
const logitsBackwardShaders = new Map<string, string>();

function rowsOf(x: Tensor, name: string): { rows: number; cols: number } {
  checkShape(x.dtype === "f32", `${name}: logits must be f32, got ${x.dtype}`);
  checkShape(x.shape.length >= 1, `${name}: logits need at least one dimension`);
  const cols = x.shape[x.shape.length - 1];
  checkShape(cols > 0, `${name}: last axis is empty`);
  return { rows: x.size / cols, cols };
}

function runSoftmax(gpu: Gpu, x: Tensor, log: boolean, out?: Tensor): Tensor {
  const { rows, cols } = rowsOf(x, log ? "logSoftmax" : "softmax");
  const y = out ?? gpu.empty(x.shape);
  checkShape(y.size === x.size, `softmax: out [${y.shape}] does not match [${x.shape}]`);
  gpu.dispatch(
    gpu.pipeline(SOFTMAX),
    [x, y],
    gpu.grid(rows),
    new Params().u32(rows, cols, log ? 1 : 0),
  );
  return y;
}

/**
 * Softmax over the last axis.
 *
 * @example
 * ```ts
 * import { Gpu, softmax } from "../mod.ts";
 * const gpu = await Gpu.create();
 * const p = softmax(gpu, gpu.fromArray([0, Math.log(3)], [1, 2]));
 * console.log(await gpu.read(p)); // [0.25, 0.75]
 * ```
 */
export function softmax(gpu: Gpu, x: Tensor, out?: Tensor): Tensor {
  return runSoftmax(gpu, x, false, out);
}

/** Log-softmax over the last axis. */
export function logSoftmax(gpu: Gpu, x: Tensor, out?: Tensor): Tensor {
  return runSoftmax(gpu, x, true, out);
}

/** Outputs of {@link tokenLogprobs}, each shaped like `targets`. */
export interface TokenLogprobs {
  /** `log softmax(logits)[target]`, 0 where the target is ignored (< 0). */
  logp: Tensor;
  /** Entropy of the row's distribution, `−Σ p log p`. */
  entropy: Tensor;
  /** Log-sum-exp of the row (saved for the backward pass). */
  lse: Tensor;
}

function checkTargets(logits: Tensor, targets: Tensor, rows: number, name: string): void {
  checkShape(targets.dtype === "i32", `${name}: targets must be i32, got ${targets.dtype}`);
  checkShape(
    targets.size === rows,
    `${name}: ${targets.size} targets for ${rows} rows of logits [${logits.shape}]`,
  );
}

/**
 * Per-row log-probability of a target token, entropy and log-sum-exp, in one pass over the
 * logits. For next-token log-probs of a sequence, pass `targets[b, t] = tokens[b, t + 1]`
 * (and −1 where no target exists).
 *
 * @example
 * ```ts
 * import { Gpu, tokenLogprobs } from "../mod.ts";
 * const gpu = await Gpu.create();
 * const logits = gpu.fromArray([0, 0, 0, 0], [1, 4]);
 * const { logp, entropy } = tokenLogprobs(gpu, logits, gpu.fromArray(new Int32Array([2])));
 * console.log(await gpu.read(logp), await gpu.read(entropy)); // [-log 4], [log 4]
 * ```
 */
export function tokenLogprobs(
  gpu: Gpu,
  logits: Tensor,
  targets: Tensor,
  opts: { reduction?: RowReduction } = {},
): TokenLogprobs {
  const { rows, cols } = rowsOf(logits, "tokenLogprobs");
  checkTargets(logits, targets, rows, "tokenLogprobs");
  const shape = logits.shape.slice(0, -1);
  const logp = gpu.empty(shape), entropy = gpu.empty(shape), lse = gpu.empty(shape);
  const tree = (opts.reduction ?? defaultReduction(gpu, rows, cols)) === "row-tree";
  if (tree) checkLoopBudget(gpu, cols + Math.ceil(cols / ROW_WG), "tokenLogprobs (row-tree)");
  gpu.dispatch(
    gpu.pipeline(tree ? TOKEN_LOGPROBS_TREE : TOKEN_LOGPROBS),
    [logits, targets, logp, entropy, lse],
    tree ? gpu.grid(groups(rows)) : gpu.grid(rows),
    new Params().u32(rows, cols),
  );
  return { logp, entropy, lse };
}

/**
 * Cross-entropy per row, `−log softmax(logits)[target]`, 0 where `target < 0` (ignored).
 * Returns the per-row losses and the saved log-sum-exp for {@link crossEntropyBackward}.
 */
export function crossEntropy(
  gpu: Gpu,
  logits: Tensor,
  targets: Tensor,
): { loss: Tensor; lse: Tensor } {
  const { logp, entropy, lse } = tokenLogprobs(gpu, logits, targets);
  entropy.dispose();
  const loss = gpu.empty(logp.shape);
  gpu.dispatch(
    gpu.pipeline(NEGATE),
    [logp, loss],
    gpu.grid(Math.ceil(logp.size / 64)),
    new Params().u32(logp.size),
  );
  logp.dispose();
  return { loss, lse };
}

const NEGATE = `
struct P { n: u32 }
@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<uniform> p: P;
@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u,
        @builtin(local_invocation_index) lid: u32) {
  let i = (wid.x + wid.y * nwg.x) * 64u + lid;
  if (i < p.n) { out[i] = -x[i]; }
}`;

/** Upstream gradients for {@link logitsBackward}. */
export interface LogitsGrads {
  /** d loss / d logp per row (with `targets`). */
  dlogp?: Tensor;
  /** d loss / d entropy per row (needs `entropy` from the forward). */
  dentropy?: Tensor;
  /** Entropy per row from {@link tokenLogprobs} (required with `dentropy`). */
  entropy?: Tensor;
  /** Output tensor (default: new). */
  out?: Tensor;
}

/**
 * Gradient of per-row log-probs and/or entropies with respect to the logits, in one pass:
 * `dz_j = dlogp·(1[j = target] − p_j) − dH·p_j·(log p_j + H)`.
 *
 * @example Policy-gradient step on logits
 * ```ts
 * import { Gpu, logitsBackward, tokenLogprobs } from "../mod.ts";
 * const gpu = await Gpu.create();
 * const logits = gpu.fromArray([1, 2, 3], [1, 3]);
 * const targets = gpu.fromArray(new Int32Array([0]));
 * const { lse } = tokenLogprobs(gpu, logits, targets);
 * const dz = logitsBackward(gpu, logits, targets, lse, { dlogp: gpu.fromArray([1]) });
 * ```
 */
export function logitsBackward(
  gpu: Gpu,
  logits: Tensor,
  targets: Tensor,
  lse: Tensor,
  grads: LogitsGrads,
  sign = 1,
): Tensor {
  const { rows, cols } = rowsOf(logits, "logitsBackward");
  checkTargets(logits, targets, rows, "logitsBackward");
  for (const [n, t] of Object.entries({ lse, ...grads })) {
    if (t && n !== "out") {
      checkShape(t.size === rows, `logitsBackward: ${n} has ${t.size} elements, rows = ${rows}`);
    }
  }
  checkShape(
    !grads.dentropy || grads.entropy !== undefined,
    "logitsBackward: dentropy needs the forward entropy",
  );
  checkShape(Boolean(grads.dlogp || grads.dentropy), "logitsBackward: give dlogp and/or dentropy");
  const out = grads.out ?? gpu.empty(logits.shape);
  checkShape(out.size === logits.size, "logitsBackward: out does not match logits");
  const rowsY = Math.min(rows, 65535), rowsZ = Math.ceil(rows / 65535);
  const v = cols % 4 === 0 ? 4 : 1, hasLogp = grads.dlogp !== undefined;
  const hasEnt = grads.dentropy !== undefined, key = `${v}/${hasLogp}/${hasEnt}`;
  let code = logitsBackwardShaders.get(key);
  if (!code) logitsBackwardShaders.set(key, code = logitsBackwardShader(v === 4, hasLogp, hasEnt));
  gpu.dispatch(
    gpu.pipeline(code),
    [
      logits,
      targets,
      lse,
      grads.entropy ?? gpu.placeholder(0),
      grads.dlogp ?? gpu.placeholder(1),
      grads.dentropy ?? gpu.placeholder(2),
      out,
    ],
    [Math.ceil(cols / v / 64), rowsY, rowsZ],
    new Params().u32(rows, cols / v).f32(sign).u32(grads.dlogp ? 1 : 0, grads.dentropy ? 1 : 0),
  );
  return out;
}

/** Gradient of {@link crossEntropy}: `dz = dloss·(p − onehot)` (ignored rows get 0). */
export function crossEntropyBackward(
  gpu: Gpu,
  logits: Tensor,
  targets: Tensor,
  lse: Tensor,
  dloss: Tensor,
  out?: Tensor,
): Tensor {
  return logitsBackward(gpu, logits, targets, lse, { dlogp: dloss, out }, -1);
}
