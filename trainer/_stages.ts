/**
 * Pieces shared by the pipelines (built-in task and checkpoint recipes): scoring fresh samples
 * on held-out prompts, and the resumable PPO loop with its state checkpoints.
 *
 * @module
 */

import type { Gpu } from "../kernels/runtime.ts";
import { generate } from "../model/generate.ts";
import type { OptModel } from "../model/opt.ts";
import type { ParamStore } from "../model/params.ts";
import type { Tokenizer } from "../model/tokenizer.ts";
import type { PipelineHooks } from "./pipeline.ts";
import {
  leftPad,
  type PpoTrainer,
  type PpoTrainerState,
  type RolloutSample,
  truncatePrompt,
} from "./ppo.ts";
import type { Metrics } from "./sft.ts";

/** A sampled response and its reward-model score. */
export interface ScoredSample {
  prompt: string;
  response: string;
  score: number;
  /** The response reached the token budget without EOS. */
  truncated: boolean;
}

/**
 * Samples one response per prompt from `actor` (temperature `T`, greedy when 0, seeded) and
 * scores each with `reward` (the value at the last real token; NaN without a reward model).
 */
export async function sampleAndScore(
  gpu: Gpu,
  actor: OptModel,
  reward: OptModel | undefined,
  tok: Tokenizer,
  prompts: readonly string[],
  o: { temperature: number; seed: number; maxNewTokens: number; maxPromptLength: number },
): Promise<ScoredSample[]> {
  const enc = leftPad(
    prompts.map((p) => truncatePrompt(tok.encode(p), o.maxPromptLength)),
    tok.padId,
  );
  const B = prompts.length;
  const promptTok = gpu.fromArray(enc.tokens, [B, enc.T]);
  const promptMask = gpu.fromArray(enc.mask, [B, enc.T]);
  const out = await generate(actor, promptTok, promptMask, {
    maxNewTokens: o.maxNewTokens,
    temperature: o.temperature,
    greedy: o.temperature === 0,
    seed: o.seed,
    eosId: tok.eosId,
    padId: tok.padId,
  });
  promptTok.dispose();
  promptMask.dispose();
  let scores: Float32Array | undefined;
  if (reward) {
    const acts = reward.forward(out.tokens, out.attentionMask);
    const s = reward.sequenceScores(acts);
    scores = await gpu.readF32(s);
    s.dispose();
    reward.disposeActivations(acts);
  }
  const all = await gpu.read(out.tokens), resp = await gpu.readF32(out.responseMask);
  const L = enc.T + out.generated;
  const samples = prompts.map((prompt, b) => {
    const ids: number[] = [];
    let truncated = true;
    for (let t = enc.T; t < L && resp[b * L + t]; t++) {
      if (all[b * L + t] !== tok.eosId) ids.push(all[b * L + t]);
      else truncated = false;
    }
    return { prompt, response: tok.decode(ids), score: scores?.[b] ?? NaN, truncated };
  });
  for (const t of [out.tokens, out.attentionMask, out.responseMask, out.logprobs]) t.dispose();
  return samples;
}

/** A trained store whose full state (parameters, AdamW moments, step) PPO checkpoints. */
export interface StateFile {
  /** File name under the run, e.g. "ppo/actor_state.safetensors". */
  name: string;
  store: ParamStore;
}

/**
 * Runs PPO iterations until `iterations`, checkpointing every `checkpointEvery` iterations and
 * at the end (model states first, the trainer state last, so a trainer state always has its
 * models). With `resume`, continues after the last trainer state found through `hooks`.
 * Returns the last iteration's metrics.
 */
export async function runPpoLoop(
  trainer: PpoTrainer,
  states: StateFile[],
  o: { iterations: number; checkpointEvery: number },
  hooks: PipelineHooks,
  opts: { resume?: boolean; stopAfterIteration?: number },
  gold?: (s: RolloutSample) => number,
): Promise<Metrics> {
  const saved = opts.resume ? await hooks.loadState?.("ppo/trainer_state.json") : undefined;
  if (typeof saved === "string") {
    const bytes = await Promise.all(states.map((s) => hooks.loadState!(s.name)));
    bytes.forEach((b, i) => {
      if (!(b instanceof Uint8Array)) {
        throw new Error(`resume: ppo/trainer_state.json exists but ${states[i].name} is missing`);
      }
    });
    bytes.forEach((b, i) => states[i].store.loadState(b as Uint8Array));
    trainer.restore(JSON.parse(saved) as PpoTrainerState);
    hooks.log?.(`resume: PPO continues after iteration ${trainer.iteration}`);
  }
  const checkpoint = async () => {
    if (!hooks.saveState) return;
    for (const s of states) await hooks.saveState(s.name, await s.store.saveState());
    await hooks.saveState("ppo/trainer_state.json", JSON.stringify(trainer.state()));
  };
  let last: Metrics = {};
  while (trainer.iteration < o.iterations) {
    last = await trainer.step();
    hooks.onProgress?.("ppo", trainer.iteration, o.iterations, last);
    hooks.onSamples?.("ppo", trainer.lastSamples.map((s) => ({ ...s, gold: gold?.(s) ?? NaN })));
    await hooks.onMetrics?.("ppo", last);
    if (trainer.iteration % o.checkpointEvery === 0) await checkpoint();
    if (opts.stopAfterIteration !== undefined && trainer.iteration >= opts.stopAfterIteration) {
      break;
    }
  }
  await checkpoint();
  return last;
}
