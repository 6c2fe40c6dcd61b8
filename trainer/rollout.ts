/**
 * The one rollout of every online method: truncate and left-pad the prompts, sample responses
 * with the policy's KV-cache sampler, read the tokens back once, and decode each response up to
 * its EOS. PPO trains on its tensors; evaluation, reward-model comparisons and (next) GRPO and
 * rejection sampling use the same function.
 *
 * Alignment: for a sequence `s` of length T, position t carries the action `s[t + 1]`, so the
 * action mask is the response mask shifted left by one.
 *
 * @module
 */

import type { Tensor } from "../kernels/runtime.ts";
import { generate } from "../model/generate.ts";
import type { OptModel } from "../model/opt.ts";
import type { Tokenizer } from "../model/tokenizer.ts";
import { leftPad, truncatePrompt } from "./batch.ts";
import { sequenceScores } from "./logprobs.ts";

/** How responses are sampled. */
export interface RolloutOptions {
  /** New tokens per response at most. */
  maxNewTokens: number;
  /** Prompt tokens kept (longer prompts lose tokens on the left, after BOS). */
  maxPromptLength: number;
  /** Softmax temperature. */
  temperature: number;
  /** Argmax decoding (the temperature is then ignored). */
  greedy?: boolean;
  /** Keep the k most likely tokens (0 or absent = off). */
  topK?: number;
  /** Nucleus mass (1 or absent = off). */
  topP?: number;
  /** Sampling seed (the device PRNG is keyed by it). */
  seed: number;
}

/** A decoded response. */
export interface RolloutText {
  /** The prompt. */
  prompt: string;
  /** The response up to (without) its EOS. */
  response: string;
  /** The response reached the token budget without EOS. */
  truncated: boolean;
}

/** What {@link rollout} produced: device tensors `(B, T)` and their host copies. */
export interface Rollout {
  /** Prompt columns (left-padded). */
  promptLength: number;
  /** Prompt + response columns. */
  length: number;
  /** Prompt and response ids `(B, length)`. */
  tokens: Tensor;
  /** 1 for real tokens `(B, length)`. */
  attentionMask: Tensor;
  /** 1 for response tokens (including EOS) `(B, length)`. */
  responseMask: Tensor;
  /** The response mask shifted left by one: 1 where position t's action is a response token. */
  actionMask: Tensor;
  /** Host copy of `tokens`. */
  hostTokens: Int32Array;
  /** Host copy of `responseMask`. */
  hostResponseMask: Float32Array;
  /** Host copy of `actionMask`. */
  hostActionMask: Float32Array;
  /** The decoded prompts and responses. */
  texts: RolloutText[];
}

/**
 * Samples one response per prompt from `policy` and decodes it. The returned tensors belong
 * to the caller (dispose them, or call inside a `gpu.scope`).
 *
 * @example Two greedy responses
 * ```ts
 * import { ByteTokenizer, Gpu, OPT_PRESETS, OptModel, rollout } from "../mod.ts";
 * const gpu = await Gpu.create();
 * const policy = OptModel.create(gpu, OPT_PRESETS.tiny, { seed: 1 });
 * const r = await rollout(policy, new ByteTokenizer(), ["Q: 1+1?", "Q: 2+2?"], {
 *   maxNewTokens: 4, maxPromptLength: 64, temperature: 0, greedy: true, seed: 1,
 * });
 * console.log(r.texts.length, r.length); // 2, prompt + response columns
 * ```
 */
export async function rollout(
  policy: OptModel,
  tok: Tokenizer,
  prompts: readonly string[],
  o: RolloutOptions,
): Promise<Rollout> {
  const gpu = policy.gpu, B = prompts.length;
  const enc = leftPad(
    prompts.map((p) => truncatePrompt(tok.encode(p), o.maxPromptLength)),
    tok.padId,
  );
  const gen = await gpu.scope(() =>
    generate(
      policy,
      gpu.fromArray(enc.tokens, [B, enc.T]),
      gpu.fromArray(enc.mask, [B, enc.T]),
      {
        maxNewTokens: o.maxNewTokens,
        temperature: o.temperature,
        greedy: o.greedy,
        topK: o.topK,
        topP: o.topP,
        seed: o.seed,
        eosId: tok.eosId,
        padId: tok.padId,
      },
    )
  );
  gen.logprobs.dispose();
  const T = enc.T + gen.generated;
  const hostTokens = await gpu.read(gen.tokens) as Int32Array;
  const hostResponseMask = await gpu.readF32(gen.responseMask);
  const hostActionMask = new Float32Array(B * T);
  for (let i = 0; i < B * T; i++) {
    hostActionMask[i] = (i % T) + 1 < T ? hostResponseMask[i + 1] : 0;
  }
  const texts = prompts.map((prompt, b) => {
    const ids: number[] = [];
    let truncated = true;
    for (let t = enc.T; t < T && hostResponseMask[b * T + t]; t++) {
      if (hostTokens[b * T + t] !== tok.eosId) ids.push(hostTokens[b * T + t]);
      else truncated = false;
    }
    return { prompt, response: tok.decode(ids), truncated };
  });
  return {
    promptLength: enc.T,
    length: T,
    tokens: gen.tokens,
    attentionMask: gen.attentionMask,
    responseMask: gen.responseMask,
    actionMask: gpu.fromArray(hostActionMask, [B, T]),
    hostTokens,
    hostResponseMask,
    hostActionMask,
    texts,
  };
}

/** A sampled response with its reward-model score. */
export interface ScoredSample extends RolloutText {
  /** The reward model's score (NaN without a reward model). */
  score: number;
}

/**
 * Scores `(B)` of a rollout's sequences, on the device (e.g. DPO's implicit reward
 * `β·(ℓ_θ − ℓ_ref)`) or on the host (e.g. a grader's).
 */
export type RolloutScorer = (r: Rollout) => Tensor | Float32Array | Promise<Float32Array>;

/**
 * Samples one response per prompt (temperature `T`, greedy when 0, seeded) and scores each
 * with `reward`: a reward model (its value at the last real token), a {@link RolloutScorer},
 * or nothing (NaN). Frees everything it allocated.
 */
export async function sampleAndScore(
  policy: OptModel,
  reward: OptModel | RolloutScorer | undefined,
  tok: Tokenizer,
  prompts: readonly string[],
  o: { temperature: number; seed: number; maxNewTokens: number; maxPromptLength: number },
): Promise<ScoredSample[]> {
  return await policy.gpu.scope(async () => {
    const r = await rollout(policy, tok, prompts, { ...o, greedy: o.temperature === 0 });
    const device = (t: Tensor | Float32Array) =>
      t instanceof Float32Array ? t : policy.gpu.readF32(t);
    const scores = reward === undefined
      ? undefined
      : typeof reward === "function"
      ? await device(await reward(r))
      : await device(sequenceScores(reward, r.tokens, r.attentionMask));
    return r.texts.map((x, b) => ({ ...x, score: scores?.[b] ?? NaN }));
  });
}
