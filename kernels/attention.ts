/**
 * Causal self-attention with a key padding mask for `[B, H, T, Dh]` tensors.
 *
 * Forward: one fused kernel (flash-attention style). Each invocation owns a few query rows of
 * one (batch, head), keeps them in registers, streams the keys and values from rgba32float
 * storage textures (cheap `textureLoad`s on software adapters, fine on GPUs) with an online
 * softmax, and writes the output and the per-row log-sum-exp. No `T×T` matrix is stored, and
 * causal rows stop at their last visible key.
 *
 * Backward (llm.c-style explicit, from the saved output and log-sum-exp), two fused kernels
 * of the same shape as the forward, no `T×T` matrix stored:
 *
 * ```text
 * p_ij = mask ? exp(scale·q_i·k_j − lse_i) : 0;   D_i = dO_i·O_i
 * dS_ij = scale·p_ij·(dO_i·v_j − D_i)
 * query side (one invocation per query rows, keys and values streamed):  dq_i = Σ_j dS_ij·k_j
 * key side (one invocation per key rows, queries and dO streamed):  dk_j = Σ_i dS_ij·q_i,
 *                                                                    dv_j = Σ_i p_ij·dO_i
 * ```
 *
 * Query i sits at absolute position `i + Tk − Tq`, so the same kernels serve a full sequence
 * (Tq = Tk), chunked prefill and decoding against a KV cache (Tq = 1). Rows with no visible
 * key (left padding) produce zeros and get zero gradient.
 *
 * @module
 */

import { checkShape, GpuLimitError } from "./errors.ts";
import { groups, LINEAR_MAIN, wgsl } from "./_shader.ts";
import { type Block, fillTextures } from "./_texture.ts";
import { type Gpu, Params, type Tensor } from "./runtime.ts";

/** Query rows per invocation for `dq` texels of head dimension (keeps registers bounded). */
function rowsPerInvocation(dq: number): number {
  return dq <= 8 ? 4 : dq <= 16 ? 2 : 1;
}

const FWD_WG = 32;

/**
 * How the row-block kernels (forward, backward query and key sides) map invocations: along the
 * rows of one (batch, head) layer (`g.x` a block of R rows, `g.y` the layer; 32 a workgroup),
 * or, with 8 layers or more, across layers (`g.x` the layer, `g.y` the row block; 8 × 4 a
 * workgroup), so that the invocations of one SIMD row (consecutive x) share their rows and the
 * causal loop's bounds: along rows, a SIMD row of 8 invocations × 4 rows ran every lane to its
 * last row's bound, ≈ 28 % of the lane-iterations masked at T 63. The same sums either way.
 */
function laneMap(across: boolean) {
  return {
    /** WGSL: the workgroup size, and the row block and layer of invocation `g`. */
    size: across ? "8, 4" : `${FWD_WG}`,
    block: across ? "g.y" : "g.x",
    layer: across ? "g.x" : "g.y",
  };
}

/** Whether {@link laneMap} maps `layers` layers across lanes. */
const acrossLayers = (layers: number) => layers >= 8;

/** Workgroups of {@link laneMap} for `layers` layers of `rows` rows, R rows an invocation. */
function laneGrid(across: boolean, layers: number, R: number, rows: number): [number, number] {
  const blocks = Math.ceil(rows / R);
  return across
    ? [Math.ceil(layers / 8), Math.ceil(blocks / 4)]
    : [Math.ceil(blocks / FWD_WG), layers];
}

function fusedForwardShader(
  dq: number,
  causal: boolean,
  keyMask: boolean,
  merged = false,
  across = false,
  vec4 = false,
): string {
  const R = rowsPerInvocation(dq);
  const m = laneMap(across);
  const lines = (f: (i: number, d: number) => string) => {
    const out: string[] = [];
    for (let i = 0; i < R; i++) for (let d = 0; d < dq; d++) out.push(f(i, d));
    return out.join("\n  ");
  };
  const perRow = (f: (i: number) => string) =>
    Array.from({ length: R }, (_, i) => f(i)).join("\n    ");
  const perD = (f: (d: number) => string) => Array.from({ length: dq }, (_, d) => f(d));
  const e = vec4 ? "vec4f" : "f32";
  return wgsl`
struct P { Tq: u32, Tk: u32, Dh: u32, H: u32, bh0: u32, Tmask: u32, scale: f32, layers: u32 }
@group(0) @binding(0) var<storage, read> q: array<${e}>;     // (B·H, Tq, Dh)
@group(0) @binding(1) var kt: texture_storage_2d_array<rgba32float, read>; // (B·H, Tk, Dh/4)
@group(0) @binding(2) var vt: texture_storage_2d_array<rgba32float, read>; // (B·H, Tk, Dh/4)
@group(0) @binding(3) var<storage, read_write> out: array<${e}>;   // (B·H, Tq, Dh) or merged
@group(0) @binding(4) var<storage, read_write> lse: array<f32>;   // (B·H, Tq)
@group(0) @binding(5) var<storage, read> kmask: array<f32>; // (B, Tmask ≥ Tk) 1 = valid key
@group(0) @binding(6) var<uniform> p: P;
${
    vec4
      ? `
// Dh a multiple of 4: one vec4 access per texel (see rowIo)
fn load_q(bh: u32, i: u32, d4: u32) -> vec4f {
  if (i >= p.Tq) { return vec4f(0.0); }
  return q[(bh * p.Tq + i) * p.Dh / 4u + d4];
}

fn store_row(bh: u32, i: u32, d4: u32, v: vec4f) {
  if (i >= p.Tq) { return; }
  out[(${
        merged ? "(((bh / p.H) * p.Tq + i) * p.H + bh % p.H) * p.Dh" : "(bh * p.Tq + i) * p.Dh"
      }) / 4u + d4] = v;
}`
      : `
fn load_q(bh: u32, i: u32, d4: u32) -> vec4f {
  var v = vec4f(0.0);
  if (i >= p.Tq) { return v; }
  let base = (bh * p.Tq + i) * p.Dh;
  for (var c = 0u; c < 4u; c++) { if (4u * d4 + c < p.Dh) { v[c] = q[base + 4u * d4 + c]; } }
  return v;
}

fn store_row(bh: u32, i: u32, d4: u32, v: vec4f) {
  if (i >= p.Tq) { return; }
  let base = ${
        merged ? "(((bh / p.H) * p.Tq + i) * p.H + bh % p.H) * p.Dh" : "(bh * p.Tq + i) * p.Dh"
      };
  for (var c = 0u; c < 4u; c++) { if (4u * d4 + c < p.Dh) { out[base + 4u * d4 + c] = v[c]; } }
}`
  }

@compute @workgroup_size(${m.size})
fn main(@builtin(global_invocation_id) g: vec3u) {
  let i0 = ${m.block} * ${R}u;
  let layer = ${m.layer};
  if (i0 >= p.Tq || layer >= p.layers) { return; }
  let bh = p.bh0 + layer;
  let b = bh / p.H;
  let off = p.Tk - p.Tq;   // absolute position of query i is i + off
  ${lines((i, d) => `let q${i}_${d} = load_q(bh, i0 + ${i}u, ${d}u);`)}
  ${lines((i, d) => `var a${i}_${d} = vec4f(0.0);`)}
  ${
    Array.from({ length: R }, (_, i) =>
      `var m${i} = -3.4e38;
  var l${i} = 0.0;`).join("\n  ")
  }
#if ${causal}
  let last = min(p.Tk, i0 + ${R - 1}u + off + 1u);
#else
  let last = p.Tk;
#endif
  for (var j = 0u; j < last; j++) {
#if ${keyMask}
    if (kmask[b * p.Tmask + j] == 0.0) { continue; }
#endif
    ${perD((d) => `let k${d} = textureLoad(kt, vec2u(${d}u, j), layer);`).join("\n    ")}
    ${perD((d) => `let v${d} = textureLoad(vt, vec2u(${d}u, j), layer);`).join("\n    ")}
    ${
    perRow((i) =>
      `{
      let s = p.scale * (${perD((d) => `dot(q${i}_${d}, k${d})`).join(" + ")});
      ${causal ? `if (j <= i0 + ${i}u + off) {` : "{"}
        let mn = max(m${i}, s);
        let c = exp(m${i} - mn);
        let e = exp(s - mn);
        l${i} = l${i} * c + e;
        m${i} = mn;
        ${perD((d) => `a${i}_${d} = a${i}_${d} * c + e * v${d};`).join("\n        ")}
      }
    }`
    )
  }
  }
  ${
    perRow((i) =>
      `{
    let inv = select(0.0, 1.0 / l${i}, l${i} > 0.0);
    ${perD((d) => `store_row(bh, i0 + ${i}u, ${d}u, a${i}_${d} * inv);`).join("\n    ")}
    if (i0 + ${i}u < p.Tq) {
      lse[bh * p.Tq + i0 + ${i}u] = select(-3.4e38, m${i} + log(l${i}), l${i} > 0.0);
    }
  }`
    )
  }
}`;
}

const DECODE_WG = 32;

/**
 * The forward for one query row per (batch, head) — a decode step against a KV cache — with one
 * invocation per (layer, texel of Dh) instead of one per query row: each computes the row's
 * score over all Dh as the fused kernel does (same expression, same order) and accumulates only
 * its own four output columns, so the results are bit for bit {@link fusedForwardShader}'s. On
 * software adapters (SIMD across invocations) a query row per invocation leaves most lanes idle
 * at decode shapes; here `Dh/4` lanes share a row and consecutive layers share a workgroup.
 */
function decodeForwardShader(dq: number, keyMask: boolean, vec4 = false): string {
  const perD = (f: (d: number) => string) => Array.from({ length: dq }, (_, d) => f(d));
  const e = vec4 ? "vec4f" : "f32";
  return wgsl`
struct P { n: u32, Tk: u32, Dh: u32, H: u32, bh0: u32, Tmask: u32, scale: f32 }
@group(0) @binding(0) var<storage, read> q: array<${e}>;     // (B·H, 1, Dh)
@group(0) @binding(1) var kt: texture_storage_2d_array<rgba32float, read>; // (B·H, Tk, Dh/4)
@group(0) @binding(2) var vt: texture_storage_2d_array<rgba32float, read>; // (B·H, Tk, Dh/4)
@group(0) @binding(3) var<storage, read_write> out: array<${e}>;   // (B·H, 1, Dh)
@group(0) @binding(4) var<storage, read_write> lse: array<f32>;   // (B·H, 1)
@group(0) @binding(5) var<storage, read> kmask: array<f32>; // (B, Tmask ≥ Tk) 1 = valid key
@group(0) @binding(6) var<uniform> p: P;

fn load_q(bh: u32, d4: u32) -> vec4f {
${
    vec4
      ? "  return q[bh * p.Dh / 4u + d4];  // Dh a multiple of 4: one vec4 access (see rowIo)"
      : `  var v = vec4f(0.0);
  let base = bh * p.Dh;
  for (var c = 0u; c < 4u; c++) { if (4u * d4 + c < p.Dh) { v[c] = q[base + 4u * d4 + c]; } }
  return v;`
  }
}

@compute @workgroup_size(${DECODE_WG})
fn main(@builtin(global_invocation_id) g: vec3u) {
  let layer = g.x / ${dq}u;
  let mine = g.x % ${dq}u;
  if (layer >= p.n) { return; }
  let bh = p.bh0 + layer;
  let b = bh / p.H;
  ${perD((d) => `let q${d} = load_q(bh, ${d}u);`).join("\n  ")}
  var a = vec4f(0.0);
  var m = -3.4e38;
  var l = 0.0;
  for (var j = 0u; j < p.Tk; j++) {
#if ${keyMask}
    if (kmask[b * p.Tmask + j] == 0.0) { continue; }
#endif
    ${perD((d) => `let k${d} = textureLoad(kt, vec2u(${d}u, j), layer);`).join("\n    ")}
    let vm = textureLoad(vt, vec2u(mine, j), layer);
    let s = p.scale * (${perD((d) => `dot(q${d}, k${d})`).join(" + ")});
    let mn = max(m, s);
    let c = exp(m - mn);
    let e = exp(s - mn);
    l = l * c + e;
    m = mn;
    a = a * c + e * vm;
  }
  let inv = select(0.0, 1.0 / l, l > 0.0);
  let y = a * inv;
${
    vec4 ? "  out[bh * p.Dh / 4u + mine] = y;" : `  let base = bh * p.Dh + 4u * mine;
  for (var c = 0u; c < 4u; c++) { if (4u * mine + c < p.Dh) { out[base + c] = y[c]; } }`
  }
  if (mine == 0u) { lse[bh] = select(-3.4e38, m + log(l), l > 0.0); }
}`;
}

/**
 * WGSL helpers `load_<name>(bh, i, d4)` / `store_<name>(bh, i, d4, v)` for `(B·H, rows, Dh)`,
 * or for stores into the merged layout `(B, rows, H, Dh)` (`"merged"`), or into part `part` of
 * `(B, rows, 3, H, Dh)` — q, k and v gradients side by side in one tensor `dqkv` (`"qkv"`).
 */
function rowIo(
  name: string,
  rows: "Tq" | "Tk",
  store = false,
  layout: GradLayout = "heads",
  part = 0,
  vec4 = false,
): string {
  const base = layout === "merged"
    ? `(((bh / p.H) * p.${rows} + i) * p.H + bh % p.H) * p.Dh`
    : layout === "qkv"
    ? `((((bh / p.H) * p.${rows} + i) * 3u + ${part}u) * p.H + bh % p.H) * p.Dh`
    : `(bh * p.${rows} + i) * p.Dh`;
  const target = store && layout === "qkv" ? "dqkv" : name;
  const loadBase = layout === "merged" ? base : `(bh * p.${rows} + i) * p.Dh`;
  // Dh a multiple of 4 (vec4-bound tensors): each row's texel is one vec4 access — the same
  // values; llvmpipe stores (and loads) storage buffers lane by lane, four scalar accesses cost
  // four such loops (the scalar stores were a third of the backward kernels' time at Dh 32)
  const body = vec4
    ? store
      ? `if (i >= p.${rows}) { return; }
  ${target}[(${base}) / 4u + d4] = val;`
      : `if (i >= p.${rows}) { return vec4f(0.0); }
  return ${name}[(${loadBase}) / 4u + d4];`
    : store
    ? `if (i >= p.${rows}) { return; }
  let base = ${base};
  for (var c = 0u; c < 4u; c++) { if (4u * d4 + c < p.Dh) { ${target}[base + 4u * d4 + c] = val[c]; } }`
    : `var val = vec4f(0.0);
  if (i >= p.${rows}) { return val; }
  let base = ${loadBase};
  for (var c = 0u; c < 4u; c++) { if (4u * d4 + c < p.Dh) { val[c] = ${name}[base + 4u * d4 + c]; } }
  return val;`;
  return store
    ? `fn store_${name}(bh: u32, i: u32, d4: u32, val: vec4f) {\n  ${body}\n}`
    : `fn load_${name}(bh: u32, i: u32, d4: u32) -> vec4f {\n  ${body}\n}`;
}

/** Unrolled code generators over R rows and dq texels. */
function unroll(R: number, dq: number) {
  const perRow = (f: (r: number) => string, sep = "\n  ") =>
    Array.from({ length: R }, (_, r) => f(r)).join(sep);
  const perD = (f: (d: number) => string, sep = "\n  ") =>
    Array.from({ length: dq }, (_, d) => f(d)).join(sep);
  const both = (f: (r: number, d: number) => string) => perRow((r) => perD((d) => f(r, d)));
  return { perRow, perD, both };
}

/**
 * Backward, query side: each invocation owns R query rows of one (batch, head), keeps q, dO and
 * the dq accumulators in registers and streams the keys and values from textures:
 * `p = exp(scale·q·k − lse)`, `dS = scale·p·(dO·v − D)`, `dq += dS·k`, with
 * `D = rowsum(dO ⊙ O)` (written for the key side).
 */
function backwardQueryShader(
  dq: number,
  causal: boolean,
  keyMask: boolean,
  layout: GradLayout,
  mergedOut = false,
  across = false,
  vec4 = false,
): string {
  const R = rowsPerInvocation(dq);
  const m = laneMap(across);
  const { perRow, perD, both } = unroll(R, dq);
  const dqName = layout === "qkv" ? "dqkv" : "dq";
  const e = vec4 ? "vec4f" : "f32";
  return wgsl`
struct P { Tq: u32, Tk: u32, Dh: u32, H: u32, bh0: u32, scale: f32, layers: u32 }
@group(0) @binding(0) var<storage, read> q: array<${e}>;     // (B·H, Tq, Dh)
@group(0) @binding(1) var<storage, read> dout: array<${e}>;  // (B·H, Tq, Dh)
@group(0) @binding(2) var<storage, read> o: array<${e}>;     // (B·H, Tq, Dh) forward output, or merged
@group(0) @binding(3) var<storage, read> lse: array<f32>;   // (B·H, Tq)
@group(0) @binding(4) var<storage, read> kmask: array<f32>; // (B, Tk) 1 = valid key
@group(0) @binding(5) var kt: texture_storage_2d_array<rgba32float, read>; // (B·H, Tk, Dh/4)
@group(0) @binding(6) var vt: texture_storage_2d_array<rgba32float, read>; // (B·H, Tk, Dh/4)
@group(0) @binding(7) var<storage, read_write> ${dqName}: array<${e}>; // (B·H, Tq, Dh), (B, Tq, H, Dh) or (B, Tq, 3, H, Dh)
@group(0) @binding(8) var<storage, read_write> drow: array<f32>; // (B·H, Tq) D
@group(0) @binding(9) var<uniform> p: P;

${rowIo("q", "Tq", false, "heads", 0, vec4)}
${rowIo("dout", "Tq", false, "heads", 0, vec4)}
${rowIo("o", "Tq", false, mergedOut ? "merged" : "heads", 0, vec4)}
${rowIo("dq", "Tq", true, layout, 0, vec4)}

@compute @workgroup_size(${m.size})
fn main(@builtin(global_invocation_id) g: vec3u) {
  let i0 = ${m.block} * ${R}u;
  let layer = ${m.layer};
  if (i0 >= p.Tq || layer >= p.layers) { return; }
  let bh = p.bh0 + layer;
  let b = bh / p.H;
  let off = p.Tk - p.Tq;   // absolute position of query i is i + off
  ${both((r, d) => `let q${r}_${d} = load_q(bh, i0 + ${r}u, ${d}u);`)}
  ${both((r, d) => `let g${r}_${d} = load_dout(bh, i0 + ${r}u, ${d}u);`)}
  ${both((r, d) => `var a${r}_${d} = vec4f(0.0);`)}
  ${
    perRow((r) =>
      `let D${r} = ${perD((d) => `dot(g${r}_${d}, load_o(bh, i0 + ${r}u, ${d}u))`, " + ")};
  let L${r} = select(-3.4e38, lse[min(bh * p.Tq + i0 + ${r}u, arrayLength(&lse) - 1u)], i0 + ${r}u < p.Tq);
  let ok${r} = L${r} > -1e38;`
    )
  }
#if ${causal}
  let last = min(p.Tk, i0 + ${R - 1}u + off + 1u);
#else
  let last = p.Tk;
#endif
  for (var j = 0u; j < last; j++) {
#if ${keyMask}
    if (kmask[b * p.Tk + j] == 0.0) { continue; }
#endif
    ${perD((d) => `let k${d} = textureLoad(kt, vec2u(${d}u, j), layer);`, "\n    ")}
    ${perD((d) => `let v${d} = textureLoad(vt, vec2u(${d}u, j), layer);`, "\n    ")}
    ${
    perRow((r) =>
      `if (ok${r}${causal ? ` && j <= i0 + ${r}u + off` : ""}) {
      let pr = exp(p.scale * (${perD((d) => `dot(q${r}_${d}, k${d})`, " + ")}) - L${r});
      let ds = p.scale * pr * ((${perD((d) => `dot(g${r}_${d}, v${d})`, " + ")}) - D${r});
      ${perD((d) => `a${r}_${d} += ds * k${d};`, "\n      ")}
    }`, "\n    ")
  }
  }
  ${
    perRow((r) =>
      `${perD((d) => `store_dq(bh, i0 + ${r}u, ${d}u, a${r}_${d});`)}
  if (i0 + ${r}u < p.Tq) { drow[bh * p.Tq + i0 + ${r}u] = D${r}; }`
    )
  }
}`;
}

/**
 * Backward, key side: each invocation owns R key rows of one (batch, head), keeps k, v and the
 * dk, dv accumulators in registers and streams q and dO from textures over the queries that
 * see those keys: `dk += dS·q`, `dv += p·dO` (D and lse from the query side and the forward).
 */
function backwardKeyShader(
  dq: number,
  causal: boolean,
  keyMask: boolean,
  layout: GradLayout,
  across = false,
  vec4 = false,
): string {
  const R = rowsPerInvocation(dq);
  const m = laneMap(across);
  const { perRow, perD, both } = unroll(R, dq);
  const e = vec4 ? "vec4f" : "f32";
  // the qkv layout writes dk and dv through one binding (two writable bindings of one buffer
  // may not overlap)
  const outputs = layout === "qkv"
    ? `@group(0) @binding(7) var<storage, read_write> dqkv: array<${e}>; // (B, Tk, 3, H, Dh)`
    : `@group(0) @binding(7) var<storage, read_write> dk: array<${e}>;   // (B·H, Tk, Dh) or merged
@group(0) @binding(8) var<storage, read_write> dv: array<${e}>;   // (B·H, Tk, Dh) or merged`;
  return wgsl`
struct P { Tq: u32, Tk: u32, Dh: u32, H: u32, bh0: u32, scale: f32, layers: u32 }
@group(0) @binding(0) var<storage, read> k: array<${e}>;     // (B·H, Tk, Dh)
@group(0) @binding(1) var<storage, read> v: array<${e}>;     // (B·H, Tk, Dh)
@group(0) @binding(2) var<storage, read> lse: array<f32>;   // (B·H, Tq)
@group(0) @binding(3) var<storage, read> drow: array<f32>;  // (B·H, Tq) D
@group(0) @binding(4) var<storage, read> kmask: array<f32>; // (B, Tk) 1 = valid key
@group(0) @binding(5) var qt: texture_storage_2d_array<rgba32float, read>; // (B·H, Tq, Dh/4)
@group(0) @binding(6) var gt: texture_storage_2d_array<rgba32float, read>; // (B·H, Tq, Dh/4) dO
${outputs}
@group(0) @binding(9) var<uniform> p: P;

${rowIo("k", "Tk", false, "heads", 0, vec4)}
${rowIo("v", "Tk", false, "heads", 0, vec4)}
${rowIo("dk", "Tk", true, layout, 1, vec4)}
${rowIo("dv", "Tk", true, layout, 2, vec4)}

@compute @workgroup_size(${m.size})
fn main(@builtin(global_invocation_id) g: vec3u) {
  let j0 = ${m.block} * ${R}u;
  let layer = ${m.layer};
  if (j0 >= p.Tk || layer >= p.layers) { return; }
  let bh = p.bh0 + layer;
  let b = bh / p.H;
  let off = p.Tk - p.Tq;   // query i sees key j when j <= i + off
  ${both((r, d) => `let k${r}_${d} = load_k(bh, j0 + ${r}u, ${d}u);`)}
  ${both((r, d) => `let v${r}_${d} = load_v(bh, j0 + ${r}u, ${d}u);`)}
  ${both((r, d) => `var dk${r}_${d} = vec4f(0.0);`)}
  ${both((r, d) => `var dv${r}_${d} = vec4f(0.0);`)}
  ${
    perRow((r) =>
      `let ok${r} = j0 + ${r}u < p.Tk${
        keyMask ? ` && kmask[min(b * p.Tk + j0 + ${r}u, arrayLength(&kmask) - 1u)] != 0.0` : ""
      };`
    )
  }
#if ${causal}
  let first = select(0u, j0 - off, j0 > off);
#else
  let first = 0u;
#endif
  for (var i = first; i < p.Tq; i++) {
    let L = lse[bh * p.Tq + i];
    if (L <= -1e38) { continue; }
    let Di = drow[bh * p.Tq + i];
    ${perD((d) => `let q${d} = textureLoad(qt, vec2u(${d}u, i), layer);`, "\n    ")}
    ${perD((d) => `let g${d} = textureLoad(gt, vec2u(${d}u, i), layer);`, "\n    ")}
    ${
    perRow((r) =>
      `if (ok${r}${causal ? ` && j0 + ${r}u <= i + off` : ""}) {
      let pr = exp(p.scale * (${perD((d) => `dot(q${d}, k${r}_${d})`, " + ")}) - L);
      let ds = p.scale * pr * ((${perD((d) => `dot(g${d}, v${r}_${d})`, " + ")}) - Di);
      ${perD((d) => `dk${r}_${d} += ds * q${d};`, "\n      ")}
      ${perD((d) => `dv${r}_${d} += pr * g${d};`, "\n      ")}
    }`, "\n    ")
  }
  }
  ${both((r, d) => `store_dk(bh, j0 + ${r}u, ${d}u, dk${r}_${d});`)}
  ${both((r, d) => `store_dv(bh, j0 + ${r}u, ${d}u, dv${r}_${d});`)}
}`;
}

const shaderCache = new Map<string, string>();
function cached(key: string, make: () => string): string {
  const code = shaderCache.get(key) ?? String(make());
  shaderCache.set(key, code);
  return code;
}

// [A, X, Y, D] → [A, Y, X, D], one element (f32) or four (vec4f, D a multiple of 4: a quarter
// of the loads, which dominate on software adapters, SPEC §11) per invocation; D counts elements
const swap12Shader = (elem: "f32" | "vec4f") => `
struct P { n: u32, X: u32, Y: u32, D: u32 }
@group(0) @binding(0) var<storage, read> x: array<${elem}>;   // (A, X, Y, D)
@group(0) @binding(1) var<storage, read_write> out: array<${elem}>; // (A, Y, X, D)
@group(0) @binding(2) var<uniform> p: P;
${LINEAR_MAIN}
  if (i >= p.n) { return; }
  let d = i % p.D;
  let xi = (i / p.D) % p.X;
  let yi = (i / (p.D * p.X)) % p.Y;
  let a = i / (p.D * p.X * p.Y);
  out[i] = x[((a * p.X + xi) * p.Y + yi) * p.D + d];
}`;
const SWAP12 = swap12Shader("f32"), SWAP12_VEC4 = swap12Shader("vec4f");

/**
 * Swaps axes 1 and 2 of a 4-D tensor: `[A, X, Y, D] → [A, Y, X, D]`. Splits heads
 * (`[B, T, H, Dh] → [B, H, T, Dh]`) and merges them back; each is the other's backward.
 *
 * @example
 * ```ts
 * import { Gpu, swapAxes12 } from "../mod.ts";
 * const gpu = await Gpu.create();
 * const x = gpu.zeros([2, 5, 4, 8]);          // (B, T, H, Dh)
 * const heads = swapAxes12(gpu, x);            // (B, H, T, Dh)
 * ```
 */
export function swapAxes12(gpu: Gpu, x: Tensor, out?: Tensor): Tensor {
  checkShape(x.shape.length === 4, `swapAxes12: needs a 4-D tensor, got [${x.shape}]`);
  const [A, X, Y, D] = x.shape;
  const y = out ?? gpu.empty([A, Y, X, D]);
  checkShape(y.size === x.size, "swapAxes12: out size differs");
  const vec4 = D % 4 === 0 && x.byteOffset % 16 === 0 && y.byteOffset % 16 === 0;
  const n = vec4 ? x.size / 4 : x.size;
  gpu.dispatch(
    gpu.pipeline(vec4 ? SWAP12_VEC4 : SWAP12),
    [x, y],
    gpu.grid(groups(n)),
    new Params().u32(n, X, Y, vec4 ? D / 4 : D),
  );
  return y;
}

/** Options of {@link attentionForward}. */
export interface AttentionOptions {
  /** `[B, Tk]` f32, 1 for real keys and 0 for padding. */
  keyMask?: Tensor;
  /** Mask future keys (default true). */
  causal?: boolean;
  /** Score scale (default `Dh^-1/2`). Pass 1 when q is pre-scaled (as OPT does). */
  scale?: number;
  /**
   * k and v already in the kernels' texture form — `B·H` layers of `Dh/4 × Tk` rgba32float
   * texels, as {@link matmul}'s `kvCache` epilogue writes them (row 0 on) — so the forward does
   * not pack them, and {@link attentionBackward} reuses them. Needs `B·H` within
   * `maxTextureArrayLayers`; the textures must stay alive (unreleased) until the backward.
   */
  keyValueTextures?: KeyValueTextures;
  /**
   * Write the output merged, `[B, Tq, H, Dh]` (the heads side by side, as the output
   * projection reads it), instead of `[B, H, Tq, Dh]`; the backward reads it there.
   */
  mergedOut?: boolean;
}

/** The keys and values of an attention as textures (see {@link AttentionOptions}). */
export interface KeyValueTextures {
  /** The keys: layer `b·H + h`, row t, texel d holds `k[b, h, t, 4d … 4d + 3]`. */
  k: GPUTexture;
  /** The values, laid out as the keys. */
  v: GPUTexture;
}

interface Dims {
  B: number;
  H: number;
  Tq: number;
  Tk: number;
  Dh: number;
}

function dims(q: Tensor, k: Tensor, v: Tensor): Dims {
  for (const [n, t] of [["q", q], ["k", k], ["v", v]] as const) {
    checkShape(t.shape.length === 4, `attention: ${n} must be [B, H, T, Dh], got [${t.shape}]`);
    checkShape(t.dtype === "f32", `attention: ${n} must be f32`);
  }
  const [B, H, Tq, Dh] = q.shape;
  const Tk = k.shape[2];
  checkShape(
    k.shape.join() === [B, H, Tk, Dh].join() && v.shape.join() === k.shape.join(),
    `attention: k [${k.shape}] and v [${v.shape}] must be [${B}, ${H}, Tk, ${Dh}]`,
  );
  checkShape(Tk >= Tq, `attention: ${Tq} queries but only ${Tk} keys`);
  return { B, H, Tq, Tk, Dh };
}

/** Saved state of {@link attentionForward} for {@link attentionBackward}. */
export interface AttentionSaved {
  /** The forward output `[B, H, Tq, Dh]`. */
  out: Tensor;
  /** Log-sum-exp of each query row's scaled scores `[B, H, Tq]` (−3.4e38 for empty rows). */
  lse: Tensor;
  /** Score scale the forward used (default 1/√Dh). */
  scale: number;
  /** Whether the forward applied the causal mask. */
  causal: boolean;
  /** The key mask `(B, Tmask)` the forward applied (1 = valid key), if any. */
  keyMask?: Tensor;
  /** The key/value textures the forward read, when given them (the backward reads them too). */
  keyValueTextures?: KeyValueTextures;
  /** Whether `out` is merged `[B, Tq, H, Dh]` (see {@link AttentionOptions}). */
  mergedOut?: boolean;
}

/**
 * Scaled dot-product attention with causal and key-padding masks. Returns the output and the
 * state {@link attentionBackward} needs (the output itself and the per-row log-sum-exp).
 *
 * @example
 * ```ts
 * import { attentionForward, Gpu } from "../mod.ts";
 * const gpu = await Gpu.create();
 * const q = gpu.zeros([1, 2, 5, 8]), k = gpu.zeros([1, 2, 5, 8]), v = gpu.zeros([1, 2, 5, 8]);
 * const keyMask = gpu.fromArray([0, 1, 1, 1, 1], [1, 5]); // left padding
 * const { out, lse } = attentionForward(gpu, q, k, v, { keyMask });
 * ```
 */
export function attentionForward(
  gpu: Gpu,
  q: Tensor,
  k: Tensor,
  v: Tensor,
  opts: AttentionOptions = {},
): AttentionSaved {
  const d = dims(q, k, v);
  const { B, H, Tq, Tk, Dh } = d;
  checkMask(opts.keyMask, B, Tk, Tk);
  checkKeys(gpu, Tk);
  const causal = opts.causal !== false;
  const scale = opts.scale ?? 1 / Math.sqrt(Dh);
  const BH = B * H, dq = Math.ceil(Dh / 4);
  const merged = opts.mergedOut === true;
  const out = gpu.empty(merged ? [B, Tq, H, Dh] : [B, H, Tq, Dh]), lse = gpu.empty([B, H, Tq]);
  const maxLayers = gpu.limits.maxTextureArrayLayers;
  const given = opts.keyValueTextures;
  if (given) checkTextures(gpu, given, BH, Tk, dq);
  for (let c0 = 0; c0 < BH && Tq > 0; c0 += maxLayers) {
    const n = Math.min(maxLayers, BH - c0);
    const kt = given?.k ?? gpu.scratchTexture(dq, Tk, n);
    const vt = given?.v ?? gpu.scratchTexture(dq, Tk, n);
    if (!given) {
      fillTextures(gpu, [
        { src: k, tex: kt, block: headBlock(Tk, Dh, c0, n) },
        { src: v, tex: vt, block: headBlock(Tk, Dh, c0, n) },
      ]);
    }
    fused(
      gpu,
      q,
      kt,
      vt,
      out,
      lse,
      d,
      { causal, scale, keyMask: opts.keyMask, maskStride: Tk, merged },
      c0,
      n,
    );
    if (!given) {
      gpu.releaseTexture(kt);
      gpu.releaseTexture(vt);
    }
  }
  return {
    out,
    lse,
    scale,
    causal,
    keyMask: opts.keyMask,
    keyValueTextures: given,
    mergedOut: merged,
  };
}

/** Given key/value textures must hold every (batch, head) layer, `Tk` rows and `dq` texels. */
function checkTextures(gpu: Gpu, t: KeyValueTextures, BH: number, Tk: number, dq: number): void {
  checkShape(
    BH <= gpu.limits.maxTextureArrayLayers &&
      [t.k, t.v].every((x) => x.depthOrArrayLayers >= BH && x.height >= Tk && x.width >= dq),
    `attention: keyValueTextures must hold ${BH} layers of ${Tk} × ${dq} texels, got ` +
      `${t.k.width}×${t.k.height}×${t.k.depthOrArrayLayers}`,
  );
}

/** The texture block of `n` (batch, head) layers `[T, Dh]` from layer `c0` of a `[B·H, T, Dh]`. */
function headBlock(T: number, Dh: number, c0: number, n: number): Block {
  return {
    rows: T,
    cols: Dh,
    ld: Dh,
    trans: false,
    row0: 0,
    col0: 0,
    batchStride: T * Dh,
    batch0: c0,
    layers: n,
    width: Math.ceil(Dh / 4),
    height: T,
  };
}

function checkMask(mask: Tensor | undefined, B: number, Tk: number, stride: number): void {
  if (!mask) return;
  checkShape(
    mask.dtype === "f32" && mask.size === B * stride && stride >= Tk,
    `attention: keyMask [${mask.shape}] must be f32 [${B}, ${stride}] covering ${Tk} keys`,
  );
}

function checkKeys(gpu: Gpu, Tk: number): void {
  if (Tk > gpu.textureSide) {
    throw new GpuLimitError(
      `attention: ${Tk} keys exceed the texture side limit (${gpu.textureSide})`,
    );
  }
}

/** Dispatches the fused kernel for (b,h) layers `[c0, c0 + n)` with K/V already in textures. */
function fused(
  gpu: Gpu,
  q: Tensor,
  kt: GPUTexture,
  vt: GPUTexture,
  out: Tensor,
  lse: Tensor,
  d: Dims,
  o: { causal: boolean; scale: number; keyMask?: Tensor; maskStride: number; merged?: boolean },
  c0: number,
  n: number,
): void {
  const dq = Math.ceil(d.Dh / 4), hasMask = o.keyMask !== undefined;
  if (d.Tq === 1) {
    gpu.dispatch(
      gpu.pipeline(
        cached(
          `decode/${dq}/${hasMask}/${d.Dh % 4 === 0}`,
          () => decodeForwardShader(dq, hasMask, d.Dh % 4 === 0),
        ),
      ),
      [
        q,
        gpu.arrayView(kt),
        gpu.arrayView(vt),
        out,
        lse,
        o.keyMask ?? null,
      ],
      [Math.ceil((n * dq) / DECODE_WG)],
      new Params().u32(n, d.Tk, d.Dh, d.H, c0, o.maskStride).f32(o.scale),
    );
    return;
  }
  // (with one query row a merged output is the head layout: the decode kernel serves both)
  const merged = o.merged === true;
  const across = acrossLayers(n);
  const pipe = gpu.pipeline(
    cached(
      `fwd/${dq}/${o.causal}/${hasMask}/${merged}/${across}/${d.Dh % 4 === 0}`,
      () => fusedForwardShader(dq, o.causal, hasMask, merged, across, d.Dh % 4 === 0),
    ),
  );
  gpu.dispatch(
    pipe,
    [
      q,
      gpu.arrayView(kt),
      gpu.arrayView(vt),
      out,
      lse,
      o.keyMask ?? null,
    ],
    laneGrid(across, n, rowsPerInvocation(dq), d.Tq),
    new Params().u32(d.Tq, d.Tk, d.Dh, d.H, c0, o.maskStride).f32(o.scale).u32(n),
  );
}

/**
 * A key/value cache for incremental decoding, kept as rgba32float textures (one layer per
 * (batch, head)), so that each decode step writes only the new rows and attention reads the
 * cache directly with no re-packing.
 *
 * @example
 * ```ts
 * import { Gpu, KvCache } from "../mod.ts";
 * const gpu = await Gpu.create();
 * const cache = new KvCache(gpu, 2, 4, 16, 8); // B=2, H=4, capacity 16, Dh=8
 * cache.write(gpu.zeros([2, 4, 3, 8]), gpu.zeros([2, 4, 3, 8]), 0); // prefill 3 positions
 * const out = cache.attend(gpu.zeros([2, 4, 1, 8]), 4, {}); // after writing position 3
 * ```
 */
export class KvCache {
  /** Cached keys: an rgba32float texture array of `B·H` layers, `capacity` rows, `Dh/4` texels. */
  readonly k: GPUTexture;
  /** Cached values, laid out like {@link KvCache.k}. */
  readonly v: GPUTexture;

  /** Allocates an empty cache for `B` rows, `H` heads, `capacity` positions and head size `Dh`. */
  constructor(
    readonly gpu: Gpu,
    readonly B: number,
    readonly H: number,
    readonly capacity: number,
    readonly Dh: number,
    opts: {
      /**
       * Zero the (pooled) textures first, so that rows not yet written read as zero (default
       * true). A caller that writes every row before attending to it may skip it (`generate`).
       */
      zeroed?: boolean;
    } = {},
  ) {
    const layers = B * H;
    if (layers > gpu.limits.maxTextureArrayLayers) {
      throw new GpuLimitError(
        `KvCache: batch × heads = ${layers} exceeds maxTextureArrayLayers ` +
          `(${gpu.limits.maxTextureArrayLayers}); generate in smaller batches`,
      );
    }
    checkKeys(gpu, capacity);
    // pooled and zeroed (rows not yet written read as zero, as in a new texture): creating two
    // textures per generation cost ~9 ms on llvmpipe (16 rows, 63 positions), zeroing pooled
    // ones is one small dispatch
    this.k = gpu.scratchTexture(Math.ceil(Dh / 4), capacity, layers);
    this.v = gpu.scratchTexture(Math.ceil(Dh / 4), capacity, layers);
    if (opts.zeroed === false) return;
    const zeros: Block = {
      rows: 0,
      cols: 0,
      ld: 0,
      trans: false,
      row0: 0,
      col0: 0,
      batchStride: 0,
      batch0: 0,
      layers,
      width: Math.ceil(Dh / 4),
      height: capacity,
      zeroPadRows: true, // every row is padding: the pack kernel writes zeros
    };
    fillTextures(gpu, [
      { src: gpu.placeholder(), tex: this.k, block: zeros },
      { src: gpu.placeholder(), tex: this.v, block: zeros },
    ]);
  }

  /** Writes `k`, `v` `[B, H, Tn, Dh]` into positions `[at, at + Tn)`. */
  write(k: Tensor, v: Tensor, at: number): void {
    const { B, H, Dh } = this;
    const Tn = k.shape[2];
    checkShape(
      k.shape.join() === [B, H, Tn, Dh].join() && v.shape.join() === k.shape.join(),
      `KvCache.write: k/v must be [${B}, ${H}, Tn, ${Dh}], got [${k.shape}] and [${v.shape}]`,
    );
    checkShape(
      at >= 0 && at + Tn <= this.capacity,
      `KvCache.write: rows ${at}..${at + Tn} exceed capacity ${this.capacity}`,
    );
    const block = { ...headBlock(Tn, Dh, 0, B * H), dstRow0: at };
    fillTextures(this.gpu, [{ src: k, tex: this.k, block }, { src: v, tex: this.v, block }]);
  }

  /**
   * Attention of `q` `[B, H, Tq, Dh]` over the first `Tk` cached positions (query i at
   * position `i + Tk − Tq`), with an optional key mask `[B, maskStride]`.
   */
  attend(
    q: Tensor,
    Tk: number,
    opts: { keyMask?: Tensor; maskStride?: number; scale?: number; causal?: boolean },
  ): Tensor {
    const { B, H, Dh } = this;
    const Tq = q.shape[2];
    checkShape(
      q.shape.length === 4 && q.shape.join() === [B, H, Tq, Dh].join(),
      `KvCache.attend: q must be [${B}, ${H}, Tq, ${Dh}], got [${q.shape}]`,
    );
    checkShape(
      Tq <= Tk && Tk <= this.capacity,
      `KvCache.attend: ${Tq} queries over ${Tk} keys (capacity ${this.capacity})`,
    );
    const stride = opts.maskStride ?? Tk;
    checkMask(opts.keyMask, B, Tk, stride);
    const out = this.gpu.empty([B, H, Tq, Dh]), lse = this.gpu.empty([B, H, Tq]);
    fused(
      this.gpu,
      q,
      this.k,
      this.v,
      out,
      lse,
      { B, H, Tq, Tk, Dh },
      {
        causal: opts.causal !== false,
        scale: opts.scale ?? 1 / Math.sqrt(Dh),
        keyMask: opts.keyMask,
        maskStride: stride,
      },
      0,
      B * H,
    );
    lse.dispose();
    return out;
  }

  /** Gives the textures back to the runtime's pool (work recorded so far still reads them). */
  destroy(): void {
    this.gpu.releaseTexture(this.k);
    this.gpu.releaseTexture(this.v);
  }
}

/** Where {@link attentionBackward}'s kernels write the gradients. */
type GradLayout = "heads" | "merged" | "qkv";

/**
 * Backward of {@link attentionForward}: gradients for q, k and v from `dout`, recomputing the
 * attention probabilities from the saved log-sum-exp. Masked keys and empty rows get zero
 * gradient. With `merged`, the gradients come out in the merged-heads layout `[B, T, H, Dh]`
 * (what the q/k/v projections' backward reads) instead of `[B, H, T, Dh]`: the same values.
 */
export function attentionBackward(
  gpu: Gpu,
  dout: Tensor,
  q: Tensor,
  k: Tensor,
  v: Tensor,
  saved: AttentionSaved,
  opts: { merged?: boolean } = {},
): { dq: Tensor; dk: Tensor; dv: Tensor } {
  const { B, H, Tq, Tk, Dh } = checkBackward(gpu, dout, q, k, v, saved, "attentionBackward");
  const merged = opts.merged === true;
  const shape = (T: number) => merged ? [B, T, H, Dh] : [B, H, T, Dh];
  const dq = gpu.empty(shape(Tq)), dk = gpu.empty(shape(Tk)), dv = gpu.empty(shape(Tk));
  runBackward(gpu, dout, q, k, v, saved, merged ? "merged" : "heads", [dq], [dk, dv]);
  if (Tq === 0) { for (const t of [dk, dv]) gpu.clear(t); }
  return { dq, dk, dv };
}

/**
 * {@link attentionBackward} of self-attention (as many queries as keys) with the three
 * gradients side by side in one `[B, T, 3·H·Dh]` tensor: row `(b, t)` holds dq, dk and dv in
 * the merged-heads layout — the gradient of one matmul over adjacent q, k and v weights. The
 * same values as {@link attentionBackward}.
 *
 * @example
 * ```ts
 * import { attentionBackwardQkv, attentionForward, Gpu } from "../mod.ts";
 * const gpu = await Gpu.create();
 * const t = () => gpu.fromArray(Float32Array.from({ length: 8 }, (_, i) => i / 8), [1, 1, 4, 2]);
 * const [q, k, v] = [t(), t(), t()];
 * const att = attentionForward(gpu, q, k, v, { causal: true });
 * const dqkv = attentionBackwardQkv(gpu, t(), q, k, v, att);
 * console.log(dqkv.shape); // [1, 4, 6]
 * ```
 */
export function attentionBackwardQkv(
  gpu: Gpu,
  dout: Tensor,
  q: Tensor,
  k: Tensor,
  v: Tensor,
  saved: AttentionSaved,
): Tensor {
  const { B, H, Tq, Tk, Dh } = checkBackward(gpu, dout, q, k, v, saved, "attentionBackwardQkv");
  checkShape(Tq === Tk, `attentionBackwardQkv: needs as many queries as keys (Tq ${Tq}, Tk ${Tk})`);
  const dqkv = gpu.empty([B, Tq, 3 * H * Dh]);
  runBackward(gpu, dout, q, k, v, saved, "qkv", [dqkv], [dqkv]);
  return dqkv;
}

function checkBackward(
  gpu: Gpu,
  dout: Tensor,
  q: Tensor,
  k: Tensor,
  v: Tensor,
  saved: AttentionSaved,
  op: string,
) {
  const d = dims(q, k, v);
  checkShape(dout.size === q.size, `${op}: dout [${dout.shape}] vs q [${q.shape}]`);
  checkShape(
    saved.out.size === q.size && saved.lse.size === d.B * d.H * d.Tq,
    `${op}: saved out [${saved.out.shape}] / lse [${saved.lse.shape}] do not match q [${q.shape}]`,
  );
  checkMask(saved.keyMask, d.B, d.Tk, d.Tk);
  checkKeys(gpu, d.Tk);
  return d;
}

/** The query-side and key-side kernels, writing `queryOut` and `keyOut` in `layout`. */
function runBackward(
  gpu: Gpu,
  dout: Tensor,
  q: Tensor,
  k: Tensor,
  v: Tensor,
  saved: AttentionSaved,
  layout: GradLayout,
  queryOut: Tensor[],
  keyOut: Tensor[],
): void {
  const { B, H, Tq, Tk, Dh } = dims(q, k, v);
  const BH = B * H, dq4 = Math.ceil(Dh / 4), R = rowsPerInvocation(dq4);
  const hasMask = saved.keyMask !== undefined, causal = saved.causal;
  const D = gpu.empty([B, H, Tq]);
  const mergedOut = saved.mergedOut === true;
  const vec4 = Dh % 4 === 0;
  const pipes = (across: boolean) => {
    const key = `${dq4}/${causal}/${hasMask}/${layout}/${across}/${vec4}`;
    return [
      gpu.pipeline(
        cached(
          `bwdq/${key}/${mergedOut}`,
          () => backwardQueryShader(dq4, causal, hasMask, layout, mergedOut, across, vec4),
        ),
      ),
      gpu.pipeline(
        cached(
          `bwdk/${key}`,
          () => backwardKeyShader(dq4, causal, hasMask, layout, across, vec4),
        ),
      ),
    ];
  };
  // the qkv layout's key side writes dk and dv through one binding (7), binding 8 unused
  const keyBindings = layout === "qkv" ? [keyOut[0], null] : keyOut;
  const maxLayers = gpu.limits.maxTextureArrayLayers;
  const view = (t: GPUTexture) => gpu.arrayView(t);
  // the forward's key/value textures when it was given them (one chunk of layers)
  const given = saved.keyValueTextures;
  if (given) checkTextures(gpu, given, BH, Tk, dq4);
  for (let c0 = 0; c0 < BH && Tq > 0; c0 += maxLayers) {
    const n = Math.min(maxLayers, BH - c0);
    // keys, values, queries and dO into textures (small ones share a packing dispatch)
    const kt = given?.k ?? gpu.scratchTexture(dq4, Tk, n);
    const vt = given?.v ?? gpu.scratchTexture(dq4, Tk, n);
    const qt = gpu.scratchTexture(dq4, Tq, n), gt = gpu.scratchTexture(dq4, Tq, n);
    fillTextures(gpu, [
      ...(given ? [] : [
        { src: k, tex: kt, block: headBlock(Tk, Dh, c0, n) },
        { src: v, tex: vt, block: headBlock(Tk, Dh, c0, n) },
      ]),
      { src: q, tex: qt, block: headBlock(Tq, Dh, c0, n) },
      { src: dout, tex: gt, block: headBlock(Tq, Dh, c0, n) },
    ]);
    const params = new Params().u32(Tq, Tk, Dh, H, c0).f32(saved.scale).u32(n);
    const across = acrossLayers(n);
    const [queryPipe, keyPipe] = pipes(across);
    gpu.dispatch(
      queryPipe,
      [q, dout, saved.out, saved.lse, saved.keyMask ?? null, view(kt), view(vt), queryOut[0], D],
      laneGrid(across, n, R, Tq),
      params,
    );
    if (!given) {
      gpu.releaseTexture(kt);
      gpu.releaseTexture(vt);
    }
    gpu.dispatch(
      keyPipe,
      [k, v, saved.lse, D, saved.keyMask ?? null, view(qt), view(gt), ...keyBindings],
      laneGrid(across, n, R, Tk),
      params,
    );
    gpu.releaseTexture(qt);
    gpu.releaseTexture(gt);
  }
  D.dispose();
}
