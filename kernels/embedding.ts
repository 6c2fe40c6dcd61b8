/**
 * Token + learned-position embedding: `out[i] = wte[tokens[i]] + wpe[positions[i] + offset]`
 * (OPT uses offset 2) and the backward, a deterministic scatter-add of `dout` rows into the
 * tables: without float atomics, each distinct id is summed by the invocation that owns its
 * first occurrence, following a "next occurrence" chain built on the GPU. The result does not
 * depend on scheduling, so runs are bit-reproducible.
 *
 * Ids outside the table read as zeros in the forward and are skipped in the backward; check
 * ids on the host where they come from (the tokenizer) to get a named error.
 *
 * @module
 */

import { checkShape } from "./errors.ts";
import { groups, LINEAR_MAIN, SOFTWARE_LOOP_BUDGET } from "./_shader.ts";
import { type Gpu, Params, type Tensor } from "./runtime.ts";

/**
 * The forward over elements of type `E`: `f32`, or `vec4f` for four columns an invocation when
 * C is a multiple of 4 (`p.n` and `p.C` then count vec4s) — the same sums per element, so the
 * same bits, with a quarter of the invocations and loads (what a software adapter pays for).
 */
const forwardShader = (E: string) => `
struct P { n: u32, C: u32, V: u32, maxPos: u32, offset: u32, has_pos: u32, tok_offset: i32, accumulate: u32 }
@group(0) @binding(0) var<storage, read> tokens: array<i32>;    // (N)
@group(0) @binding(1) var<storage, read> positions: array<i32>; // (N)
@group(0) @binding(2) var<storage, read> wte: array<${E}>;       // (V, C)
@group(0) @binding(3) var<storage, read> wpe: array<${E}>;       // (maxPos, C)
@group(0) @binding(4) var<storage, read_write> out: array<${E}>;       // (N, C)
@group(0) @binding(5) var<uniform> p: P;
${LINEAR_MAIN}
  if (i >= p.n) { return; }
  let row = i / p.C;
  let c = i % p.C;
  let t = tokens[row] - p.tok_offset;
  var v = ${E}(0.0);
  if (t >= 0 && u32(t) < p.V) { v = wte[u32(t) * p.C + c]; }
  if (p.has_pos == 1u) {
    let q = positions[row] + i32(p.offset);
    if (q >= 0 && u32(q) < p.maxPos) { v += wpe[u32(q) * p.C + c]; }
  }
  out[i] = select(v, out[i] + v, p.accumulate == 1u);
}`;
const FORWARD = forwardShader("f32");
const FORWARD_VEC4 = forwardShader("vec4f");

// next[i] = smallest j > i with ids[j] == ids[i] (or -1); head[i] = 1 when no j < i has the id
const CHAINS = `
struct P { N: u32 }
@group(0) @binding(0) var<storage, read> ids: array<i32>;   // (N)
@group(0) @binding(1) var<storage, read_write> next: array<i32>;  // (N)
@group(0) @binding(2) var<storage, read_write> head: array<u32>;  // (N)
@group(0) @binding(3) var<uniform> p: P;
${LINEAR_MAIN}
  if (i >= p.N) { return; }
  let id = ids[i];
  var h = 1u;
  for (var j = 0u; j < i; j++) { if (ids[j] == id) { h = 0u; break; } }
  var nx = -1;
  for (var j = i + 1u; j < p.N; j++) { if (ids[j] == id) { nx = i32(j); break; } }
  next[i] = nx;
  head[i] = h;
}`;

// CHAINS reading the ids four at a time (N a multiple of 4): the same first matches with a
// quarter of the loads of its scans (storage loads are what software adapters pay for)
const CHAINS_VEC4 = `
struct P { N: u32 }
@group(0) @binding(0) var<storage, read> ids: array<vec4i>;   // (N / 4)
@group(0) @binding(1) var<storage, read_write> next: array<i32>;  // (N)
@group(0) @binding(2) var<storage, read_write> head: array<u32>;  // (N)
@group(0) @binding(3) var<uniform> p: P;
${LINEAR_MAIN}
  if (i >= p.N) { return; }
  let id = ids[i / 4u][i % 4u];
  let lane = vec4u(0u, 1u, 2u, 3u);
  var h = 1u;
  for (var q = 0u; 4u * q < i; q++) {
    if (any((ids[q] == vec4i(id)) & (4u * q + lane < vec4u(i)))) { h = 0u; break; }
  }
  var nx = -1;
  for (var q = (i + 1u) / 4u; 4u * q < p.N; q++) {
    let m = (ids[q] == vec4i(id)) & (4u * q + lane > vec4u(i));
    if (any(m)) {
      nx = i32(4u * q + select(select(select(3u, 2u, m.z), 1u, m.y), 0u, m.x));
      break;
    }
  }
  next[i] = nx;
  head[i] = h;
}`;

/** The scatter over elements of type `E` (see {@link forwardShader}: `vec4f` when C % 4 is 0). */
const scatterShader = (E: string) => `
struct P { n: u32, C: u32, rowsTable: u32, offset: i32 }
@group(0) @binding(0) var<storage, read> ids: array<i32>;   // (N)
@group(0) @binding(1) var<storage, read> next: array<i32>;  // (N)
@group(0) @binding(2) var<storage, read> head: array<u32>;  // (N)
@group(0) @binding(3) var<storage, read> dout: array<${E}>;  // (N, C)
@group(0) @binding(4) var<storage, read_write> table: array<${E}>; // (rowsTable, C)
@group(0) @binding(5) var<uniform> p: P;
${LINEAR_MAIN}
  if (i >= p.n) { return; }
  let row = i / p.C;
  let c = i % p.C;
  if (head[row] == 0u) { return; }
  let t = ids[row] + p.offset;
  if (t < 0 || u32(t) >= p.rowsTable) { return; }
  var s = ${E}(0.0);
  var j = i32(row);
  loop {
    if (j < 0) { break; }
    s += dout[u32(j) * p.C + c];
    j = next[u32(j)];
  }
  table[u32(t) * p.C + c] += s;
}`;
const SCATTER = scatterShader("f32");
const SCATTER_VEC4 = scatterShader("vec4f");

function checkIds(t: Tensor, n: number, what: string): void {
  checkShape(t.dtype === "i32", `embedding: ${what} must be i32, got ${t.dtype}`);
  checkShape(t.size === n, `embedding: ${what} has ${t.size} ids, tokens have ${n}`);
}

/**
 * `out[…, :] = wte[tokens] + wpe[positions + offset]`; `positions` may be omitted (no
 * position table). Output shape is `[...tokens.shape, C]`. With `chunk`, `wte` holds only the
 * table rows from `firstRow` on (ids outside it contribute 0) and the result is written to, or
 * added into (`accumulate`), `chunk.out`: a table too large for one binding is looked up chunk
 * by chunk.
 *
 * @example OPT-style embeddings
 * ```ts
 * import { embeddingForward, Gpu } from "../mod.ts";
 * const gpu = await Gpu.create();
 * const wte = gpu.zeros([10, 4]), wpe = gpu.zeros([12, 4]);
 * const tokens = gpu.fromArray(new Int32Array([2, 5, 7]));
 * const positions = gpu.fromArray(new Int32Array([0, 1, 2]));
 * const h = embeddingForward(gpu, tokens, wte, { positions, wpe, offset: 2 }); // (3, 4)
 * ```
 */
export function embeddingForward(
  gpu: Gpu,
  tokens: Tensor,
  wte: Tensor,
  pos?: { positions: Tensor; wpe: Tensor; offset?: number },
  chunk?: { firstRow: number; out: Tensor; accumulate: boolean },
): Tensor {
  checkShape(wte.shape.length === 2, `embeddingForward: wte must be (V, C), got [${wte.shape}]`);
  const [V, C] = wte.shape;
  checkIds(tokens, tokens.size, "tokens");
  if (pos) {
    checkIds(pos.positions, tokens.size, "positions");
    checkShape(
      pos.wpe.shape.length === 2 && pos.wpe.shape[1] === C,
      `embeddingForward: wpe [${pos.wpe.shape}] must be (P, ${C})`,
    );
  }
  const out = chunk?.out ?? gpu.empty([...tokens.shape, C]);
  checkShape(
    out.size === tokens.size * C,
    `embeddingForward: out [${out.shape}] is not (${tokens.size}, ${C})`,
  );
  const v = C % 4 === 0 ? 4 : 1;
  gpu.dispatch(
    gpu.pipeline(v === 4 ? FORWARD_VEC4 : FORWARD),
    [tokens, pos?.positions ?? gpu.placeholder(0), wte, pos?.wpe ?? gpu.placeholder(1), out],
    gpu.grid(groups(out.size / v)),
    new Params().u32(out.size / v, C / v, V, pos?.wpe.shape[0] ?? 0, pos?.offset ?? 0, pos ? 1 : 0)
      .i32(chunk?.firstRow ?? 0).u32(chunk?.accumulate ? 1 : 0),
  );
  return out;
}

/**
 * Adds rows of `dout` (`[N, C]`) into `table` (`[R, C]`) at `ids + offset`, summing
 * duplicates deterministically: `table[ids[i] + offset] += dout[i]`.
 */
export function scatterAddRows(
  gpu: Gpu,
  ids: Tensor,
  dout: Tensor,
  table: Tensor,
  offset = 0,
): void {
  checkShape(table.shape.length === 2, `scatterAddRows: table must be 2-D, got [${table.shape}]`);
  const [R, C] = table.shape;
  const N = ids.size;
  checkIds(ids, N, "ids");
  checkShape(dout.size === N * C, `scatterAddRows: dout [${dout.shape}] is not (${N}, ${C})`);
  if (N === 0) return;
  // each invocation walks up to N ids: within a software adapter's loop cap, chunks of rows
  const chunk = gpu.isFallbackAdapter ? Math.floor(SOFTWARE_LOOP_BUDGET / 64) * 64 : N;
  if (N > chunk) {
    for (let r0 = 0; r0 < N; r0 += chunk) {
      const n = Math.min(chunk, N - r0);
      scatterAddRows(gpu, ids.view(r0, [n]), dout.view(r0 * C, [n, C]), table, offset);
    }
    return;
  }
  const next = gpu.empty([N], "i32"), head = gpu.empty([N], "u32");
  gpu.dispatch(
    gpu.pipeline(N % 4 === 0 ? CHAINS_VEC4 : CHAINS),
    [ids, next, head],
    gpu.grid(groups(N)),
    new Params().u32(N),
  );
  const v = C % 4 === 0 ? 4 : 1;
  gpu.dispatch(
    gpu.pipeline(v === 4 ? SCATTER_VEC4 : SCATTER),
    [ids, next, head, dout, table],
    gpu.grid(groups((N * C) / v)),
    new Params().u32((N * C) / v, C / v, R).i32(offset),
  );
  next.dispose();
  head.dispose();
}

/**
 * Backward of {@link embeddingForward}: accumulates `dout` into `dwte` at the tokens and into
 * `dwpe` at `positions + offset`.
 */
export function embeddingBackward(
  gpu: Gpu,
  dout: Tensor,
  tokens: Tensor,
  dwte: Tensor,
  pos?: { positions: Tensor; dwpe: Tensor; offset?: number },
): void {
  scatterAddRows(gpu, tokens, dout, dwte);
  if (pos) scatterAddRows(gpu, pos.positions, dout, pos.dwpe, pos.offset ?? 0);
}

const POSITIONS = `
struct P { B: u32, T: u32, offset: i32 }
@group(0) @binding(0) var<storage, read> mask: array<f32>;  // (B, T) 1 = token, 0 = pad
@group(0) @binding(1) var<storage, read_write> pos: array<i32>;   // (B, T)
@group(0) @binding(2) var<uniform> p: P;
${LINEAR_MAIN}
  if (i >= p.B) { return; }
  var c = 0;
  for (var t = 0u; t < p.T; t++) {
    let m = mask[i * p.T + t] != 0.0;
    if (m) { c += 1; }
    pos[i * p.T + t] = select(0, c, m) - 1 + p.offset;
  }
}`;

/**
 * Position ids from an attention mask, as HF OPT computes them:
 * `(cumsum(mask)·mask − 1) + offset`, so a left-padded prompt starts at position 0 and pads
 * get `offset − 1`.
 *
 * @example OPT (offset 2)
 * ```ts
 * import { Gpu, positionsFromMask } from "../mod.ts";
 * const gpu = await Gpu.create();
 * const pos = positionsFromMask(gpu, gpu.fromArray([0, 1, 1], [1, 3]), 2);
 * console.log(await gpu.read(pos)); // [1, 2, 3]
 * ```
 */
export function positionsFromMask(gpu: Gpu, mask: Tensor, offset = 0): Tensor {
  checkShape(
    mask.shape.length === 2 && mask.dtype === "f32",
    `positionsFromMask: mask must be f32 [B, T], got ${mask.dtype} [${mask.shape}]`,
  );
  const [B, T] = mask.shape;
  const pos = gpu.empty([B, T], "i32");
  gpu.dispatch(
    gpu.pipeline(POSITIONS),
    [mask, pos],
    gpu.grid(groups(B)),
    new Params().u32(B, T).i32(offset),
  );
  return pos;
}

const NEXT_TARGETS = `
struct P { B: u32, T: u32 }
@group(0) @binding(0) var<storage, read> tokens: array<i32>;  // (B, T)
@group(0) @binding(1) var<storage, read> mask: array<f32>;    // (B, T)
@group(0) @binding(2) var<storage, read_write> targets: array<i32>; // (B, T)
@group(0) @binding(3) var<uniform> p: P;
${LINEAR_MAIN}
  if (i >= p.B * p.T) { return; }
  let t = i % p.T;
  var v = -1;
  if (t + 1u < p.T && mask[i + 1u] != 0.0) { v = tokens[i + 1u]; }
  targets[i] = v;
}`;

/**
 * Next-token targets of a `(B, T)` batch: `targets[b, t] = tokens[b, t + 1]` where that token
 * is real (mask 1), else −1 (ignored by the log-prob and cross-entropy kernels). Row t of the
 * logits then scores token t + 1.
 *
 * @example
 * ```ts
 * import { Gpu, nextTokenTargets } from "../mod.ts";
 * const gpu = await Gpu.create();
 * const t = nextTokenTargets(gpu, gpu.fromArray(new Int32Array([2, 7, 9]), [1, 3]),
 *   gpu.fromArray([1, 1, 1], [1, 3]));
 * console.log(await gpu.read(t)); // [7, 9, -1]
 * ```
 */
export function nextTokenTargets(gpu: Gpu, tokens: Tensor, mask: Tensor): Tensor {
  checkShape(
    tokens.shape.length === 2 && tokens.dtype === "i32" && mask.dtype === "f32" &&
      mask.shape.join() === tokens.shape.join(),
    `nextTokenTargets: tokens i32 (B, T) and an f32 mask of the same shape, got [${tokens.shape}], [${mask.shape}]`,
  );
  const [B, T] = tokens.shape;
  const out = gpu.empty([B, T], "i32");
  gpu.dispatch(
    gpu.pipeline(NEXT_TARGETS),
    [tokens, mask, out],
    gpu.grid(groups(B * T)),
    new Params().u32(B, T),
  );
  return out;
}

const LAST_VALUES = `
struct P { B: u32, T: u32 }
@group(0) @binding(0) var<storage, read> values: array<f32>; // (B, T)
@group(0) @binding(1) var<storage, read> mask: array<f32>;   // (B, T)
@group(0) @binding(2) var<storage, read_write> out: array<f32>;    // (B)
@group(0) @binding(3) var<storage, read_write> index: array<i32>;  // (B)
@group(0) @binding(4) var<uniform> p: P;
${LINEAR_MAIN}
  if (i >= p.B) { return; }
  var last = -1;
  for (var t = 0u; t < p.T; t++) { if (mask[i * p.T + t] != 0.0) { last = i32(t); } }
  index[i] = last;
  out[i] = select(0.0, values[i * p.T + u32(max(last, 0))], last >= 0);
}`;

/**
 * Per-row value at the last position whose mask is 1 (a reward model's sequence score: the
 * value at the response's last real token, its EOS when present). Rows without any 1 score 0
 * with index −1.
 */
export function lastMaskedValues(
  gpu: Gpu,
  values: Tensor,
  mask: Tensor,
): { values: Tensor; index: Tensor } {
  checkShape(
    values.shape.length === 2 && values.dtype === "f32" &&
      mask.shape.join() === values.shape.join(),
    `lastMaskedValues: values and mask must be f32 (B, T), got [${values.shape}], [${mask.shape}]`,
  );
  const [B, T] = values.shape;
  const out = gpu.empty([B]), index = gpu.empty([B], "i32");
  gpu.dispatch(
    gpu.pipeline(LAST_VALUES),
    [values, mask, out, index],
    gpu.grid(groups(B)),
    new Params().u32(B, T),
  );
  return { values: out, index };
}

const LAST_VALUES_BACKWARD = `
struct P { B: u32, T: u32 }
@group(0) @binding(0) var<storage, read> dscore: array<f32>; // (B)
@group(0) @binding(1) var<storage, read> index: array<i32>;  // (B)
@group(0) @binding(2) var<storage, read_write> dv: array<f32>;     // (B, T)
@group(0) @binding(3) var<uniform> p: P;
${LINEAR_MAIN}
  if (i >= p.B * p.T) { return; }
  let b = i / p.T;
  let t = i32(i % p.T);
  dv[i] = select(0.0, dscore[b], t == index[b]);
}`;

/** Backward of {@link lastMaskedValues}: `dvalues[b, index[b]] = dscore[b]`, 0 elsewhere. */
export function lastMaskedValuesBackward(
  gpu: Gpu,
  dscore: Tensor,
  index: Tensor,
  T: number,
): Tensor {
  const B = dscore.size;
  checkShape(
    index.size === B && index.dtype === "i32",
    "lastMaskedValuesBackward: index must be i32 (B)",
  );
  const dv = gpu.empty([B, T]);
  gpu.dispatch(
    gpu.pipeline(LAST_VALUES_BACKWARD),
    [dscore, index, dv],
    gpu.grid(groups(B * T)),
    new Params().u32(B, T),
  );
  return dv;
}
