/**
 * Host-side batch building: tokenize, truncate and pad sequences (right padding, so that the
 * chosen and rejected sequences of a pair line up token by token), with loss targets.
 *
 * @module
 */

import type { Tokenizer } from "../model/tokenizer.ts";
import type { PairExample } from "./data.ts";
import { Mulberry32, permutation } from "./random.ts";
import { CheckpointError, checkStateNumber } from "./types.ts";

/** A padded batch on the host, ready to upload. */
export interface HostBatch {
  /** Rows. */
  B: number;
  /** Columns (the longest sequence). */
  T: number;
  /** Token ids, padded with the tokenizer's pad id. */
  tokens: Int32Array;
  /** 1 for real tokens. */
  mask: Float32Array;
  /** 1 for response/completion tokens (including the EOS). */
  responseMask: Float32Array;
  /** Next-token targets: `tokens[t + 1]` where it counts for the loss, else −1. */
  targets: Int32Array;
}

/**
 * Encodes `(prompt, response)` pairs as `[BOS] prompt response [EOS]` (no EOS for a row marked
 * `truncated`: a sample cut at its token budget, scored as it was generated), cut to `maxLength`
 * (the prompt loses tokens from its left, after BOS; an over-long response is cut at the end),
 * right-padded to the longest row. With `completionOnly` the targets cover only response
 * tokens; otherwise every real next token.
 */
export function encodePairs(
  tok: Tokenizer,
  rows: readonly { prompt: string; response: string; truncated?: boolean }[],
  o: { maxLength: number; completionOnly?: boolean; eos?: boolean },
): HostBatch {
  const enc = rows.map(({ prompt, response, truncated }) => {
    let p = tok.encode(prompt); // starts with BOS
    let r = tok.encode(response, { addBos: false });
    if (o.eos !== false && !truncated) r = [...r, tok.eosId];
    if (r.length > o.maxLength - 2) r = r.slice(0, o.maxLength - 2);
    const room = o.maxLength - r.length;
    if (p.length > room) p = [p[0], ...p.slice(p.length - (room - 1))];
    return { p, r };
  });
  const B = rows.length;
  const T = Math.max(2, ...enc.map((e) => e.p.length + e.r.length));
  const tokens = new Int32Array(B * T).fill(tok.padId);
  const mask = new Float32Array(B * T), responseMask = new Float32Array(B * T);
  const targets = new Int32Array(B * T).fill(-1);
  enc.forEach(({ p, r }, b) => {
    const seq = [...p, ...r];
    for (let t = 0; t < seq.length; t++) {
      tokens[b * T + t] = seq[t];
      mask[b * T + t] = 1;
      if (t >= p.length) responseMask[b * T + t] = 1;
    }
    for (let t = 0; t + 1 < seq.length; t++) {
      if (o.completionOnly === false || t + 1 >= p.length) targets[b * T + t] = seq[t + 1];
    }
  });
  return { B, T, tokens, mask, responseMask, targets };
}

/**
 * A batch of preference pairs as `2P` rows, `[chosen_0 … chosen_{P−1}, rejected_0 …]` (the
 * reward model's and DPO's concatenated forward); cut responses keep no EOS.
 */
export function encodePairBatch(
  tok: Tokenizer,
  pairs: readonly PairExample[],
  maxLength: number,
): HostBatch {
  return encodePairs(
    tok,
    [
      ...pairs.map((p) => ({ prompt: p.prompt, response: p.chosen, truncated: p.chosenTruncated })),
      ...pairs.map((p) => ({
        prompt: p.prompt,
        response: p.rejected,
        truncated: p.rejectedTruncated,
      })),
    ],
    { maxLength },
  );
}

/**
 * The response mask in log-prob space of a completion-only batch: `logp[t]` scores token
 * `t + 1`, so position t counts where a target is set.
 */
export function actionMaskOf(b: HostBatch): Float32Array {
  return Float32Array.from(b.targets, (t) => (t >= 0 ? 1 : 0));
}

/** `[BOS] + last (max − 1) tokens` of an encoded prompt longer than `max`. */
export function truncatePrompt(ids: number[], max: number): number[] {
  return ids.length <= max ? ids : [ids[0], ...ids.slice(ids.length - (max - 1))];
}

/** Left-pads encoded prompts into a `(B, Tp)` batch (generation continues on the right). */
export function leftPad(
  ids: number[][],
  pad: number,
): { tokens: Int32Array; mask: Float32Array; T: number } {
  const T = Math.max(1, ...ids.map((x) => x.length));
  const tokens = new Int32Array(ids.length * T).fill(pad), mask = new Float32Array(ids.length * T);
  ids.forEach((x, b) => {
    x.forEach((id, j) => {
      tokens[b * T + T - x.length + j] = id;
      mask[b * T + T - x.length + j] = 1;
    });
  });
  return { tokens, mask, T };
}

/** Deterministic shuffled index stream (reshuffled every epoch). */
export class Sampler {
  #order: number[] = [];
  #pos = 0;
  #rand: Mulberry32;
  /**
   * A stream over `n` indices, shuffled by `seed`.
   * @param n dataset size (≥ 1)
   * @param seed shuffling seed
   */
  constructor(readonly n: number, seed: number) {
    if (n <= 0) throw new Error("Sampler: empty dataset");
    this.#rand = new Mulberry32(seed);
  }
  /** The next `k` indices. */
  next(k: number): number[] {
    const out: number[] = [];
    while (out.length < k) {
      if (this.#pos >= this.#order.length) {
        this.#order = permutation(this.n, () => this.#rand.next());
        this.#pos = 0;
      }
      out.push(this.#order[this.#pos++]);
    }
    return out;
  }
  /** Serializable state (for resume). */
  state(): SamplerState {
    return { s: this.#rand.s, pos: this.#pos, order: [...this.#order] };
  }
  /** Restores {@link state}; a state that does not fit this data set is a `CheckpointError`. */
  restore(st: SamplerState): void {
    if (typeof st !== "object" || st === null || !Array.isArray(st.order)) {
      throw new CheckpointError(
        `sampler state must be {s, pos, order[]}, got ${JSON.stringify(st)}`,
      );
    }
    const n = this.n;
    if (st.order.length !== 0 && st.order.length !== n) {
      throw new CheckpointError(`sampler order has ${st.order.length} entries for ${n} examples`);
    }
    st.order.forEach((v, i) => checkStateNumber(`sampler order[${i}]`, v, { min: 0, max: n - 1 }));
    const s = checkStateNumber("sampler s", st.s, { min: 0, max: 0xffffffff });
    const pos = checkStateNumber("sampler pos", st.pos, { min: 0, max: st.order.length });
    this.#rand.s = s;
    this.#pos = pos;
    this.#order = [...st.order];
  }
}

/** {@link Sampler}'s resumable state: generator state, position, current epoch's order. */
export interface SamplerState {
  /** Generator state. */
  s: number;
  /** Position in the current epoch's order. */
  pos: number;
  /** The current epoch's shuffled indices. */
  order: number[];
}
