/**
 * A float64 reference of the OPT decoder forward pass (plain loops over host arrays), written
 * straight from the HF `OPTForCausalLM` definition. Tests compare the GPU model's logits with
 * it, and its central finite differences give the reference for every parameter gradient.
 *
 * @module
 */

import type { OptConfig } from "./config.ts";

/** Host parameters of the float64 reference model, by HF name. */
export type ReferenceParams = Map<string, ArrayLike<number>>;

const D = "model.decoder.";

function linear(
  x: Float64Array,
  N: number,
  w: ArrayLike<number>,
  b: ArrayLike<number> | undefined,
  out: number,
  inp: number,
): Float64Array {
  const y = new Float64Array(N * out);
  for (let n = 0; n < N; n++) {
    for (let o = 0; o < out; o++) {
      let s = b ? b[o] : 0;
      for (let i = 0; i < inp; i++) s += x[n * inp + i] * w[o * inp + i];
      y[n * out + o] = s;
    }
  }
  return y;
}

function layernorm(
  x: Float64Array,
  N: number,
  C: number,
  w: ArrayLike<number>,
  b: ArrayLike<number>,
): Float64Array {
  const y = new Float64Array(N * C);
  for (let n = 0; n < N; n++) {
    let m = 0;
    for (let c = 0; c < C; c++) m += x[n * C + c];
    m /= C;
    let v = 0;
    for (let c = 0; c < C; c++) v += (x[n * C + c] - m) ** 2;
    const r = 1 / Math.sqrt(v / C + 1e-5);
    for (let c = 0; c < C; c++) y[n * C + c] = (x[n * C + c] - m) * r * w[c] + b[c];
  }
  return y;
}

const addInto = (a: Float64Array, b: Float64Array) => {
  for (let i = 0; i < a.length; i++) a[i] += b[i];
  return a;
};

/**
 * Final hidden states `(B·T, E)` of the decoder for `tokens`/`mask` (`B × T`, row-major),
 * with the same masking, position ids and block structure as the GPU model.
 */
export function optHiddenRef(
  c: OptConfig,
  P: ReferenceParams,
  tokens: ArrayLike<number>,
  mask: ArrayLike<number>,
  B: number,
  T: number,
): Float64Array {
  const C = c.hidden_size, E = c.word_embed_proj_dim, F = c.ffn_dim;
  const H = c.num_attention_heads, Dh = C / H, N = B * T;
  const g = (n: string) => {
    const v = P.get(n);
    if (!v) throw new Error(`reference: missing parameter ${n}`);
    return v;
  };
  // embeddings
  const wte = g(`${D}embed_tokens.weight`), wpe = g(`${D}embed_positions.weight`);
  let tok: Float64Array = new Float64Array(N * E);
  for (let n = 0; n < N; n++) for (let e = 0; e < E; e++) tok[n * E + e] = wte[tokens[n] * E + e];
  if (E !== C) tok = linear(tok, N, g(`${D}project_in.weight`), undefined, C, E);
  let x: Float64Array = tok;
  for (let b = 0; b < B; b++) {
    let cum = 0;
    for (let t = 0; t < T; t++) {
      const m = mask[b * T + t] !== 0;
      if (m) cum++;
      const pos = (m ? cum : 0) - 1 + 2;
      for (let e = 0; e < C; e++) x[(b * T + t) * C + e] += wpe[pos * C + e];
    }
  }
  for (let l = 0; l < c.num_hidden_layers; l++) {
    const p = `${D}layers.${l}.`;
    const pre = c.do_layer_norm_before;
    const lnw = (n: string) => [g(`${p}${n}.weight`), g(`${p}${n}.bias`)] as const;
    const h0 = pre ? layernorm(x, N, C, ...lnw("self_attn_layer_norm")) : x;
    const lin = (n: string, inp: Float64Array, o: number, i: number) =>
      linear(inp, N, g(`${p}${n}.weight`), g(`${p}${n}.bias`), o, i);
    const q = lin("self_attn.q_proj", h0, C, C);
    const k = lin("self_attn.k_proj", h0, C, C);
    const v = lin("self_attn.v_proj", h0, C, C);
    const att = new Float64Array(N * C);
    const scale = 1 / Math.sqrt(Dh);
    for (let b = 0; b < B; b++) {
      for (let h = 0; h < H; h++) {
        for (let i = 0; i < T; i++) {
          const s = new Float64Array(T).fill(-Infinity);
          let m = -Infinity;
          for (let j = 0; j <= i; j++) {
            if (mask[b * T + j] === 0) continue;
            let d = 0;
            for (let e = 0; e < Dh; e++) {
              d += q[(b * T + i) * C + h * Dh + e] * k[(b * T + j) * C + h * Dh + e];
            }
            s[j] = d * scale;
            m = Math.max(m, s[j]);
          }
          if (m === -Infinity) continue; // no visible key: zeros
          let z = 0;
          for (let j = 0; j <= i; j++) if (s[j] > -Infinity) z += Math.exp(s[j] - m);
          for (let j = 0; j <= i; j++) {
            if (s[j] === -Infinity) continue;
            const pr = Math.exp(s[j] - m) / z;
            for (let e = 0; e < Dh; e++) {
              att[(b * T + i) * C + h * Dh + e] += pr * v[(b * T + j) * C + h * Dh + e];
            }
          }
        }
      }
    }
    const o = lin("self_attn.out_proj", att, C, C);
    let x1: Float64Array = addInto(Float64Array.from(x), o);
    if (!pre) x1 = layernorm(x1, N, C, ...lnw("self_attn_layer_norm"));
    const f0 = pre ? layernorm(x1, N, C, ...lnw("final_layer_norm")) : x1;
    const hid = lin("fc1", f0, F, C).map((u) => Math.max(u, 0));
    const f = lin("fc2", hid, C, F);
    let x2: Float64Array = addInto(Float64Array.from(x1), f);
    if (!pre) x2 = layernorm(x2, N, C, ...lnw("final_layer_norm"));
    x = x2;
  }
  if (c.do_layer_norm_before) {
    x = layernorm(x, N, C, g(`${D}final_layer_norm.weight`), g(`${D}final_layer_norm.bias`));
  }
  if (E !== C) x = linear(x, N, g(`${D}project_out.weight`), undefined, E, C);
  return x;
}

/** Logits `(B·T, V)` of the reference model (LM head tied to `embed_tokens`). */
export function optLogitsRef(
  c: OptConfig,
  P: ReferenceParams,
  tokens: ArrayLike<number>,
  mask: ArrayLike<number>,
  B: number,
  T: number,
): Float64Array {
  const h = optHiddenRef(c, P, tokens, mask, B, T);
  return linear(
    h,
    B * T,
    P.get(`${D}embed_tokens.weight`)!,
    undefined,
    c.vocab_size,
    c.word_embed_proj_dim,
  );
}
