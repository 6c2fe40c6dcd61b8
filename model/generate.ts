/**
 * Batched generation with a KV cache: left-padded prompts are prefilled in one forward pass,
 * then each new token costs one decode step (one query row per sequence against the cached
 * keys and values). Sampling (greedy / temperature / top-k / top-p), EOS tracking and the
 * bookkeeping of positions and masks all stay on the GPU; the only GPU→CPU traffic is a cheap
 * "all rows finished?" check every `checkEvery` tokens, read without waiting for the GPU (the
 * answer is used one check point later; tokens sampled past the stop are cut off).
 *
 * @module
 */

import { concatColumns } from "../kernels/elementwise.ts";
import { checkShape } from "../kernels/errors.ts";
import { embeddingForward } from "../kernels/embedding.ts";
import type { Tensor } from "../kernels/runtime.ts";
import {
  feedbackSampled,
  type SampleTargets,
  sampleTokens,
  type SamplingOptions,
} from "../kernels/sampling.ts";
import type { OptModel } from "./opt.ts";

/** Options of {@link generate}. */
export interface GenerateOptions extends SamplingOptions {
  /** Tokens to generate at most per row. */
  maxNewTokens: number;
  /** Stop token (default: the model's `eos_token_id`; −1 disables stopping). */
  eosId?: number;
  /** Token written after a row finished (default: the model's `pad_token_id`). */
  padId?: number;
  /**
   * Read back the finished flags every this many tokens to stop early (default 8; 0 = never;
   * never when `eosId` is negative). The flags of a check point are looked at the next one, so
   * a stop costs up to this many wasted decode steps but the GPU never drains for the check.
   */
  checkEvery?: number;
}

/** The result of {@link generate}; all tensors are `(B, Tp + G)` unless noted. */
export interface Generation {
  /** Prompt followed by the response (pads after EOS). */
  tokens: Tensor;
  /** 1 for real tokens (prompt and response up to and including EOS). */
  attentionMask: Tensor;
  /** 1 for response tokens up to and including EOS, 0 for the prompt and padding. */
  responseMask: Tensor;
  /** `(B, G)`: log-probability of each generated token under the model (0 after EOS). */
  logprobs: Tensor;
  /** Prompt columns (left-padded) before the first generated token. */
  promptLength: number;
  /** G: response columns produced (≤ maxNewTokens; fewer when all rows finished early). */
  generated: number;
}

/**
 * Generates continuations of left-padded `prompt` tokens `(B, Tp)` (i32) with `mask` `(B, Tp)`.
 * The prompt's last column must be a real token in every row (left padding).
 *
 * @example Greedy continuation of two prompts
 * ```ts
 * import { generate, Gpu, OPT_PRESETS, OptModel } from "../mod.ts";
 * const gpu = await Gpu.create();
 * const model = OptModel.create(gpu, OPT_PRESETS.tiny, { seed: 1 });
 * const prompt = gpu.fromArray(new Int32Array([1, 2, 50, 2, 60, 61]), [2, 3]);
 * const mask = gpu.fromArray(new Float32Array([0, 1, 1, 1, 1, 1]), [2, 3]);
 * const out = await generate(model, prompt, mask, { maxNewTokens: 8, greedy: true });
 * console.log(await gpu.read(out.tokens));
 * ```
 */
export async function generate(
  model: OptModel,
  prompt: Tensor,
  mask: Tensor,
  opts: GenerateOptions,
): Promise<Generation> {
  const gpu = model.gpu, c = model.config;
  checkShape(
    prompt.shape.length === 2 && prompt.dtype === "i32" && mask.dtype === "f32" &&
      mask.shape.join() === prompt.shape.join(),
    `generate: prompt must be i32 (B, Tp) with an f32 mask of the same shape, got ` +
      `${prompt.dtype} [${prompt.shape}] and ${mask.dtype} [${mask.shape}]`,
  );
  const [B, Tp] = prompt.shape;
  const G = opts.maxNewTokens;
  checkShape(Number.isInteger(G) && G >= 1, `generate: maxNewTokens must be ≥ 1, got ${G}`);
  checkShape(Tp >= 1, "generate: empty prompt");
  checkShape(
    Tp + G <= c.max_position_embeddings,
    `generate: prompt ${Tp} + ${G} new tokens exceed max_position_embeddings ${c.max_position_embeddings}`,
  );
  const eos = opts.eosId ?? c.eos_token_id, pad = opts.padId ?? c.pad_token_id;
  const checkEvery = opts.checkEvery ?? 8;
  const cap = Tp + G - 1; // the last sampled token is never fed back
  // every cache row is written (prefill, then one per step) before attention reads it: the
  // pooled textures need no zeroing
  const caches = model.createKvCaches(B, Math.max(cap, Tp), { zeroed: false });
  const out: SampleTargets = {
    tokens: gpu.zeros([B, G], "i32"),
    logprobs: gpu.zeros([B, G]),
    responseMask: gpu.zeros([B, G]),
    finished: gpu.zeros([B], "u32"),
  };
  const keyMask = gpu.zeros([B, Math.max(cap, Tp)]);
  const nextTok = gpu.empty([B, 1], "i32"), nextPos = gpu.empty([B, 1], "i32");
  const V = c.vocab_size;
  let generated = G;
  // "all rows finished?" at check point t, snapshot taken there and read without a stall: the
  // answer is looked at one check point later (or at the end), so the GPU never drains for it;
  // the tokens sampled after a stop are cut off, so the result is that of an immediate check
  let pending: { t: number; flags: Promise<Uint32Array> } | null = null;
  // the weights do not change while generating: the texture matmul path packs them once
  const release = gpu.holdConstant(
    [model.store.params, model.lora?.store.params].filter((t): t is Tensor => !!t),
  );
  try {
    // prefill, then the logits of each row's last prompt position
    const acts = model.forward(prompt, mask, { kvCache: caches });
    const lastRows = gpu.fromArray(Int32Array.from({ length: B }, (_, b) => b * Tp + Tp - 1));
    const lastHidden = embeddingForward(gpu, lastRows, acts.hidden);
    lastRows.dispose();
    let logits = model.logitsOf(lastHidden);
    lastHidden.dispose();
    const promptPositions = acts.positions;
    model.disposeActivations(acts, [promptPositions]);
    // key mask over [prompt | generated]
    copyPromptMask(mask, keyMask, B, Tp);
    for (let t = 0; t < G; t++) {
      sampleTokens(gpu, logits, out, t, opts, { eos, pad, step: t, vocab: V });
      logits.dispose();
      if (t === G - 1) break;
      if (checkEvery > 0 && eos >= 0 && (t + 1) % checkEvery === 0) {
        // the flags of the previous check point, read while this stretch was being encoded
        if (pending && (await pending.flags).every((f) => f !== 0)) {
          generated = pending.t + 1;
          pending = null;
          break;
        }
        pending = { t, flags: gpu.read(out.finished) as Promise<Uint32Array> };
      }
      feedbackSampled(gpu, out, promptPositions, t, {
        tokens: nextTok,
        positions: nextPos,
        keyMask,
      });
      const step = model.decodeStep(nextTok, nextPos, caches, Tp + t, keyMask, keyMask.shape[1]);
      logits = model.logitsOf(step.hidden);
      model.disposeActivations(step, [nextPos]);
    }
    if (pending && (await pending.flags).every((f) => f !== 0)) generated = pending.t + 1;
    pending = null;
    promptPositions.dispose();
  } finally {
    // an exception left a read in flight: let it settle (its result no longer matters)
    await pending?.flags.catch(() => {});
    release();
    for (const cache of caches) cache.destroy();
    keyMask.dispose();
    nextTok.dispose();
    nextPos.dispose();
  }
  const gen = trimColumns(out, generated);
  const zeros = gpu.zeros([B, Tp]);
  const result: Generation = {
    tokens: concatColumns(gpu, prompt, gen.tokens),
    attentionMask: concatColumns(gpu, mask, gen.responseMask),
    responseMask: concatColumns(gpu, zeros, gen.responseMask),
    logprobs: gen.logprobs,
    promptLength: Tp,
    generated,
  };
  zeros.dispose();
  gen.tokens.dispose();
  gen.responseMask.dispose();
  out.finished.dispose();
  return result;

  function copyPromptMask(src: Tensor, dst: Tensor, rows: number, cols: number): void {
    // the key mask has a wider row stride than the prompt mask: copy row by row
    for (let b = 0; b < rows; b++) gpu.copyRange(src, b * cols, dst, b * dst.shape[1], cols);
  }

  function trimColumns(o: SampleTargets, n: number) {
    if (n === G) return o;
    const take = (t: Tensor) => {
      const r = gpu.empty([B, n], t.dtype);
      for (let b = 0; b < B; b++) gpu.copyRange(t, b * G, r, b * n, n);
      t.dispose();
      return r;
    };
    return {
      ...o,
      tokens: take(o.tokens),
      logprobs: take(o.logprobs),
      responseMask: take(o.responseMask),
    };
  }
}
