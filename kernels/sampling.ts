/**
 * Token sampling on the GPU: greedy, temperature, top-k and top-p (nucleus), one workgroup per
 * row. Sampling uses the Gumbel-max trick with the counter PRNG — `argmax(z/T + G)` over the
 * allowed tokens, `G = −log(−log u)` with `u = rand(seed, step, row·V + i)` — so a draw is one
 * pass and reproducible from (seed, step). The top-k and top-p cut-offs are found by bisection
 * on the logit value (counting, or summing probability mass, above a threshold), so nothing is
 * sorted; tokens tied with the k-th largest logit are all kept.
 *
 * The kernel writes the token into column `t` of a `(B, Tcap)` token buffer, its log-probability
 * under the model (the raw, untempered softmax, as OpenAI-style APIs report it) and a response
 * mask, and tracks which rows have finished (emitted EOS): finished rows get the pad token and
 * mask 0, with no GPU→CPU traffic.
 *
 * @module
 */

import { checkShape } from "./errors.ts";
import { PRNG_WGSL } from "./prng.ts";
import { laneTreeSums, ROW_WG, WG_REDUCE } from "./reduce.ts";
import { checkLoopBudget, SOFTWARE_LOOP_BUDGET } from "./_shader.ts";
import type { Gpu, Tensor } from "./runtime.ts";
import { Params } from "./runtime.ts";

const WG = ROW_WG;
const ROWWISE_WG = 8;

/**
 * WGSL `for (var i = start; i < p.V; i += step) { body }` unrolled `unroll` times: the same
 * indices in the same order with a fraction of the loop back-edges, which software adapters cap
 * ({@link SOFTWARE_LOOP_BUDGET}; a top-k bisection over 50 272 logits used to pass it and return
 * token 0 on llvmpipe).
 */
function overVocab(start: string, step: number, body: string, unroll = 4): string {
  const parts = Array.from(
    { length: unroll },
    (_, u) => `{ let i = i0 + ${u * step}u; if (i < p.V) { ${body} } }`,
  );
  return `for (var i0 = ${start}; i0 < p.V; i0 += ${unroll * step}u) {
    ${parts.join("\n    ")}
  }`;
}

// one Gumbel-max candidate: CHOOSE records index i as the best so far
const GUMBEL = `let z = logits[base + i];
      if (z >= cut) {
        let u = max(rand_f32(p.seed, p.step, b * p.V + i), 1.0 / 16777216.0);
        let key = z / T - log(-log(u));
        if (key > bv) { bv = key; CHOOSE }
      }`;

const ROW_UNROLL = 8;

const SAMPLE_BINDINGS = `${PRNG_WGSL}
struct P {
  B: u32, V: u32, ld: u32, t: u32, Tcap: u32,
  greedy: u32, top_k: u32, seed: u32, step: u32, eos: i32, pad: i32,
  temperature: f32, top_p: f32,
}
@group(0) @binding(0) var<storage, read> logits: array<f32>;   // (B, ld), first V used
@group(0) @binding(1) var<storage, read_write> tokens: array<i32>;   // (B, Tcap)
@group(0) @binding(2) var<storage, read_write> logp: array<f32>;     // (B, Tcap)
@group(0) @binding(3) var<storage, read_write> rmask: array<f32>;    // (B, Tcap)
@group(0) @binding(4) var<storage, read_write> finished: array<u32>; // (B)
@group(0) @binding(5) var<uniform> p: P;`;

const SAMPLE = `${SAMPLE_BINDINGS}
${WG_REDUCE}
var<workgroup> rv: array<f32, ${WG}>;
var<workgroup> ri: array<u32, ${WG}>;
var<workgroup> done_: u32;

// argmax with the smallest index among ties
fn wargmax(v: f32, i: u32, lid: u32) -> u32 {
  rv[lid] = v;
  ri[lid] = i;
  workgroupBarrier();
  for (var s = ${WG / 2}u; s > 0u; s >>= 1u) {
    if (lid < s) {
      let a = rv[lid]; let b = rv[lid + s];
      if (b > a || (b == a && ri[lid + s] < ri[lid])) { rv[lid] = b; ri[lid] = ri[lid + s]; }
    }
    workgroupBarrier();
  }
  let r = ri[0];
  workgroupBarrier();
  return r;
}

@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_index) lid: u32) {
  let b = wid.x;
  let out = b * p.Tcap + p.t;
  if (lid == 0u) { done_ = finished[b]; }
  if (workgroupUniformLoad(&done_) != 0u) {
    if (lid == 0u) { tokens[out] = p.pad; logp[out] = 0.0; rmask[out] = 0.0; }
    return;
  }
  let base = b * p.ld;
  var mx = -3.4e38;
  var mn = 3.4e38;
  ${overVocab("lid", WG, "let z = logits[base + i]; mx = max(mx, z); mn = min(mn, z);")}
  mx = wg_max(mx, lid);
  mn = -wg_max(-mn, lid);
  var s = 0.0;
  ${overVocab("lid", WG, "s += exp(logits[base + i] - mx);")}
  let lse = mx + log(wg_sum(s, lid));

  var choice = 0u;
  if (p.greedy == 1u || p.temperature <= 0.0) {
    var bv = -3.4e38;
    var bi = 0u;
    ${overVocab("lid", WG, "let z = logits[base + i]; if (z > bv) { bv = z; bi = i; }")}
    choice = wargmax(bv, bi, lid);
  } else {
    let T = p.temperature;
    // top-k cut-off: the largest t with #{z ≥ t} ≥ k
    var tk = mn;
    if (p.top_k > 0u && p.top_k < p.V) {
      var lo = mn;
      var hi = mx;
      for (var it = 0; it < 40; it++) {
        let mid = 0.5 * (lo + hi);
        var c = 0.0;
        ${overVocab("lid", WG, "c += select(0.0, 1.0, logits[base + i] >= mid);")}
        if (wg_sum(c, lid) >= f32(p.top_k)) { lo = mid; } else { hi = mid; }
      }
      tk = lo;
    }
    // top-p cut-off over the top-k survivors at temperature T: the largest t whose mass ≥ p
    var tp = tk;
    if (p.top_p < 1.0) {
      var zk = 0.0;
      ${overVocab("lid", WG, "let z = logits[base + i]; if (z >= tk) { zk += exp((z - mx) / T); }")}
      zk = wg_sum(zk, lid);
      var lo = tk;
      var hi = mx;
      for (var it = 0; it < 40; it++) {
        let mid = 0.5 * (lo + hi);
        var m = 0.0;
        ${
  overVocab(
    "lid",
    WG,
    "let z = logits[base + i]; if (z >= mid && z >= tk) { m += exp((z - mx) / T); }",
  )
}
        if (wg_sum(m, lid) >= p.top_p * zk) { lo = mid; } else { hi = mid; }
      }
      tp = lo;
    }
    let cut = max(tk, tp);
    // Gumbel-max over the allowed tokens
    var bv = -3.4e38;
    var bi = 0u;
    ${overVocab("lid", WG, GUMBEL.replace("CHOOSE", "bi = i;"))}
    choice = wargmax(bv, bi, lid);
  }
  if (lid == 0u) {
    tokens[out] = i32(choice);
    logp[out] = logits[base + choice] - lse;
    rmask[out] = 1.0;
    if (i32(choice) == p.eos) { finished[b] = 1u; }
  }
}`;

// SAMPLE with one invocation per row (8 rows per workgroup, so that rows spread over a software
// adapter's threads) and no workgroup memory or barriers: every sum in the workgroup form's
// order (laneTreeSums), and maxima, minima, counts and the argmax (largest key, smallest index
// among ties) exact in any order — the same token and log-probability bit for bit, without the
// ~30 barriers a row costs in the workgroup form.
const SAMPLE_ROWWISE = `${SAMPLE_BINDINGS}
@compute @workgroup_size(${ROWWISE_WG})
fn main(@builtin(global_invocation_id) g: vec3u) {
  let b = g.x;
  if (b >= p.B) { return; }
  let out = b * p.Tcap + p.t;
  if (finished[b] != 0u) {
    tokens[out] = p.pad; logp[out] = 0.0; rmask[out] = 0.0;
    return;
  }
  let base = b * p.ld;
  var mx = -3.4e38;
  var mn = 3.4e38;
  ${overVocab("0u", 1, "let z = logits[base + i]; mx = max(mx, z); mn = min(mn, z);", ROW_UNROLL)}
  ${laneTreeSums({ s: "exp(logits[base + c] - mx)" }, "", "p.V")}
  let lse = mx + log(s);

  var choice = 0u;
  if (p.greedy == 1u || p.temperature <= 0.0) {
    var bv = -3.4e38;
    ${
  overVocab("0u", 1, "let z = logits[base + i]; if (z > bv) { bv = z; choice = i; }", ROW_UNROLL)
}
  } else {
    let T = p.temperature;
    var tk = mn;
    if (p.top_k > 0u && p.top_k < p.V) {
      var lo = mn;
      var hi = mx;
      for (var it = 0; it < 40; it++) {
        let mid = 0.5 * (lo + hi);
        var n = 0u;
        ${overVocab("0u", 1, "n += select(0u, 1u, logits[base + i] >= mid);", ROW_UNROLL)}
        if (f32(n) >= f32(p.top_k)) { lo = mid; } else { hi = mid; }
      }
      tk = lo;
    }
    var tp = tk;
    if (p.top_p < 1.0) {
      ${
  laneTreeSums(
    { zk: "select(0.0, exp((z - mx) / T), z >= tk)" },
    "let z = logits[base + c];",
    "p.V",
  )
}
      var lo = tk;
      var hi = mx;
      for (var it = 0; it < 40; it++) {
        let mid = 0.5 * (lo + hi);
        ${
  laneTreeSums(
    { m: "select(0.0, exp((z - mx) / T), z >= mid && z >= tk)" },
    "let z = logits[base + c];",
    "p.V",
  )
}
        if (m >= p.top_p * zk) { lo = mid; } else { hi = mid; }
      }
      tp = lo;
    }
    let cut = max(tk, tp);
    var bv = -3.4e38;
    ${overVocab("0u", 1, GUMBEL.replace("CHOOSE", "choice = i;"), ROW_UNROLL)}
  }
  tokens[out] = i32(choice);
  logp[out] = logits[base + choice] - lse;
  rmask[out] = 1.0;
  if (i32(choice) == p.eos) { finished[b] = 1u; }
}`;

/**
 * How {@link sampleTokens} spreads a row: `"workgroup"` (64 invocations and tree reductions, what
 * a GPU runs well) or `"row"` (one invocation per row, the same sums in the same order: the same
 * token and log-probability, without barriers). Software adapters take `"row"` while its loops
 * stay within their loop cap (Mesa's stops every loop of an invocation after 65 535 iterations in
 * all) — 16 rows of 260 tokens at temperature 1 on llvmpipe: 700–920 → 340–430 µs a call; with
 * top-k and top-p 3.6 → 0.8–1.0 ms — and every other case `"workgroup"`.
 */
export type SamplerForm = "workgroup" | "row";

/** Loop iterations one invocation of the row form runs for a row of `V` logits. */
function rowwiseIterations(V: number, greedy: boolean, topK: number, topP: number): number {
  const lanes = Math.ceil(V / ROW_WG), scan = Math.ceil(V / ROW_UNROLL);
  let n = scan + lanes + scan; // max/min, log-sum-exp, then the argmax (greedy or Gumbel)
  if (!greedy && topK > 0 && topK < V) n += 40 * (scan + 1);
  if (!greedy && topP < 1) n += lanes + 40 * (lanes + 1);
  return n;
}

function defaultForm(gpu: Gpu, iterations: number): SamplerForm {
  return gpu.isFallbackAdapter && iterations <= SOFTWARE_LOOP_BUDGET ? "row" : "workgroup";
}

/** Sampling settings. `temperature ≤ 0` or `greedy` picks the argmax. */
export interface SamplingOptions {
  /** Softmax temperature (default 1; ≤ 0 means argmax). */
  temperature?: number;
  /** Keep the k most likely tokens (0 = off). */
  topK?: number;
  /** Keep the smallest set of tokens with probability mass ≥ p (1 = off). */
  topP?: number;
  /** Pick the argmax (temperature and filters are ignored). */
  greedy?: boolean;
  /** Seed of the device PRNG (default 0). */
  seed?: number;
}

/** Output buffers of generation, `(B, Tcap)` each, plus per-row finished flags. */
export interface SampleTargets {
  /** Token ids `(B, Tcap)` (i32). */
  tokens: Tensor;
  /** Log-probability of each sampled token under the unfiltered distribution `(B, Tcap)`. */
  logprobs: Tensor;
  /** 1 where a response token was written `(B, Tcap)`. */
  responseMask: Tensor;
  /** Per-row flag `(B)` (u32): 1 once the row emitted EOS. */
  finished: Tensor;
}

/**
 * Samples one token per row from `logits` `(B, V)` (or `(B, ld)` rows of which the first V are
 * used) into column `t` of the target buffers. `step` keys the random stream so that every
 * position draws fresh noise. `form` forces a {@link SamplerForm} (the default picks the faster
 * one for the adapter; both give the same bits).
 *
 * @example Greedy pick
 * ```ts
 * import { Gpu, sampleTokens } from "../mod.ts";
 * const gpu = await Gpu.create();
 * const logits = gpu.fromArray([0, 3, 1], [1, 3]);
 * const out = {
 *   tokens: gpu.zeros([1, 1], "i32"), logprobs: gpu.zeros([1, 1]),
 *   responseMask: gpu.zeros([1, 1]), finished: gpu.zeros([1], "u32"),
 * };
 * sampleTokens(gpu, logits, out, 0, { greedy: true }, { eos: 2, pad: 1, step: 0 });
 * console.log(await gpu.read(out.tokens)); // [1]
 * ```
 */
export function sampleTokens(
  gpu: Gpu,
  logits: Tensor,
  out: SampleTargets,
  t: number,
  opts: SamplingOptions,
  ids: { eos: number; pad: number; step: number; vocab?: number },
  form?: SamplerForm,
): void {
  checkShape(
    logits.shape.length === 2 && logits.dtype === "f32",
    "sampleTokens: logits must be f32 (B, V)",
  );
  const [B, ld] = logits.shape;
  const V = ids.vocab ?? ld;
  checkShape(V > 0 && V <= ld, `sampleTokens: vocabulary ${V} exceeds the logits width ${ld}`);
  const [Bt, Tcap] = out.tokens.shape;
  checkShape(
    Bt === B && out.tokens.dtype === "i32" && out.logprobs.size === B * Tcap &&
      out.responseMask.size === B * Tcap && out.finished.size === B && out.finished.dtype === "u32",
    `sampleTokens: target buffers must be (B=${B}, Tcap) i32/f32/f32 and finished (B) u32`,
  );
  checkShape(
    Number.isInteger(t) && t >= 0 && t < Tcap,
    `sampleTokens: column ${t} outside [0, ${Tcap})`,
  );
  const topK = opts.topK ?? 0, topP = opts.topP ?? 1;
  checkShape(
    Number.isInteger(topK) && topK >= 0,
    `sampleTokens: topK must be a non-negative integer`,
  );
  checkShape(topP > 0 && topP <= 1, `sampleTokens: topP must be in (0, 1], got ${topP}`);
  const temperature = opts.temperature ?? 1;
  checkShape(Number.isFinite(temperature), "sampleTokens: temperature must be finite");
  const greedy = opts.greedy === true || temperature <= 0;
  const iterations = rowwiseIterations(V, greedy, topK, topP);
  const rowwise = (form ?? defaultForm(gpu, iterations)) === "row";
  if (rowwise) checkLoopBudget(gpu, iterations, "sampleTokens (row form)");
  gpu.dispatch(
    gpu.pipeline(rowwise ? SAMPLE_ROWWISE : SAMPLE),
    [logits, out.tokens, out.logprobs, out.responseMask, out.finished],
    [rowwise ? Math.ceil(B / ROWWISE_WG) : B],
    new Params()
      .u32(B, V, ld, t, Tcap, opts.greedy ? 1 : 0, topK, opts.seed ?? 0, ids.step)
      .i32(ids.eos, ids.pad)
      .f32(temperature, topP),
  );
}

const FEEDBACK = `
struct P { B: u32, Tp: u32, Tgen: u32, t: u32, Tcap: u32 }
@group(0) @binding(0) var<storage, read> gen: array<i32>;       // (B, Tgen) sampled tokens
@group(0) @binding(1) var<storage, read> rmask: array<f32>;     // (B, Tgen) response mask
@group(0) @binding(2) var<storage, read> ppos: array<i32>;      // (B, Tp) prompt positions
@group(0) @binding(3) var<storage, read_write> next_tok: array<i32>;  // (B, 1)
@group(0) @binding(4) var<storage, read_write> next_pos: array<i32>;  // (B, 1)
@group(0) @binding(5) var<storage, read_write> kmask: array<f32>;     // (B, Tcap) key mask
@group(0) @binding(6) var<uniform> p: P;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) g: vec3u) {
  let b = g.x;
  if (b >= p.B) { return; }
  next_tok[b] = gen[b * p.Tgen + p.t];
  next_pos[b] = ppos[b * p.Tp + p.Tp - 1] + 1 + i32(p.t);
  kmask[b * p.Tcap + p.Tp + p.t] = rmask[b * p.Tgen + p.t];
}`;

/**
 * Feeds the token sampled at generation column `t` back as the next decode input: copies it to
 * `nextTok`, sets its position (one past the prompt's last position, plus `t`) and marks its
 * key valid in the running key mask `(B, Tcap)` when the row has not finished.
 */
export function feedbackSampled(
  gpu: Gpu,
  out: SampleTargets,
  promptPositions: Tensor,
  t: number,
  next: { tokens: Tensor; positions: Tensor; keyMask: Tensor },
): void {
  const [B, Tgen] = out.tokens.shape;
  const [Bp, Tp] = promptPositions.shape;
  const Tcap = next.keyMask.shape[1];
  checkShape(
    Bp === B && promptPositions.dtype === "i32" && next.keyMask.shape[0] === B && Tp + t < Tcap &&
      next.tokens.size === B && next.positions.size === B,
    "feedbackSampled: inconsistent shapes",
  );
  gpu.dispatch(
    gpu.pipeline(FEEDBACK),
    [out.tokens, out.responseMask, promptPositions, next.tokens, next.positions, next.keyMask],
    [Math.ceil(B / 64)],
    new Params().u32(B, Tp, Tgen, t, Tcap),
  );
}
