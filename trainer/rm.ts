/**
 * Reward-model training (SPEC §7) on preference pairs with a `v_head` model: the pairwise loss
 * `−log σ(r_w − r_l − m)` on sequence scores (the value at each sequence's last real token), or
 * the DeepSpeed-Chat token-level loss over the span where chosen and rejected differ. Chosen
 * and rejected are right-padded in one batch so their tokens line up. Held-out accuracy
 * `P(r_w > r_l)` and mean margin are computed by {@link evaluateRewardModel}.
 *
 * @module
 */

import { lastMaskedValues, lastMaskedValuesBackward } from "../kernels/embedding.ts";
import { pairwiseRewardLoss, tokenPairRewardLoss } from "../kernels/rl.ts";
import type { Tensor } from "../kernels/runtime.ts";
import type { OptModel } from "../model/opt.ts";
import type { Tokenizer } from "../model/tokenizer.ts";
import { encodePairs, type HostBatch, Sampler } from "./batch.ts";
import type { RmConfig } from "./config.ts";
import type { PairExample } from "./data.ts";
import { type Metrics, NonFiniteLossError, optimizerStep, type TrainHooks } from "./sft.ts";

function pairBatch(tok: Tokenizer, pairs: readonly PairExample[], maxLength: number): HostBatch {
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

/** Token-level span per pair: from the first differing token to the later of the two ends. */
function spans(b: HostBatch, P: number): Float32Array {
  const { T, tokens, mask } = b;
  const span = new Float32Array(P * T);
  for (let i = 0; i < P; i++) {
    const c = i * T, r = (P + i) * T;
    let first = 0;
    while (
      first < T && tokens[c + first] === tokens[r + first] && mask[c + first] === mask[r + first]
    ) first++;
    let end = 0;
    for (let t = 0; t < T; t++) if (mask[c + t] !== 0 || mask[r + t] !== 0) end = t + 1;
    for (let t = first; t < end; t++) span[i * T + t] = 1;
  }
  return span;
}

/** Trains the reward model; returns the logged metrics (`rm/loss`, `rm/accuracy`, …). */
export async function trainRewardModel(
  model: OptModel,
  tok: Tokenizer,
  pairs: readonly PairExample[],
  cfg: RmConfig,
  hooks: TrainHooks = {},
): Promise<Metrics[]> {
  const gpu = model.gpu;
  const store = model.lora?.store ?? model.store;
  const sampler = new Sampler(pairs.length, cfg.seed);
  const logEvery = hooks.logEvery ?? 10;
  const logs: Metrics[] = [];
  for (let step = 0; step < cfg.steps; step++) {
    const batch = sampler.next(cfg.batchSize).map((i) => pairs[i]);
    const P = batch.length;
    const b = pairBatch(tok, batch, cfg.maxLength);
    const tokens = gpu.fromArray(b.tokens, [2 * P, b.T]),
      mask = gpu.fromArray(b.mask, [2 * P, b.T]);
    store.zeroGrads();
    const acts = model.forward(tokens, mask);
    const values = model.values(acts).intoShape([2 * P, b.T]);
    const temps: Tensor[] = [tokens, mask, values];
    let loss: Tensor, acc: Tensor | undefined;
    const dvalues = gpu.empty([2 * P, b.T]);
    if (cfg.loss === "pairwise") {
      const s = lastMaskedValues(gpu, values, mask);
      const chosen = gpu.empty([P]), rejected = gpu.empty([P]);
      gpu.copyRange(s.values, 0, chosen, 0, P);
      gpu.copyRange(s.values, P, rejected, 0, P);
      const margins = batch.some((p) => p.margin !== undefined)
        ? gpu.fromArray(Float32Array.from(batch, (p) => p.margin ?? 0))
        : undefined;
      const l = pairwiseRewardLoss(gpu, chosen, rejected, margins);
      const dscore = gpu.empty([2 * P]);
      gpu.copyRange(l.dchosen, 0, dscore, 0, P);
      gpu.copyRange(l.drejected, 0, dscore, P, P);
      const dv = lastMaskedValuesBackward(gpu, dscore, s.index, b.T);
      gpu.copy(dv, dvalues);
      loss = l.loss;
      acc = l.accuracy;
      temps.push(s.values, s.index, chosen, rejected, dscore, dv, l.dchosen, l.drejected, l.margin);
      if (margins) temps.push(margins);
    } else {
      const vw = gpu.empty([P, b.T]), vl = gpu.empty([P, b.T]);
      gpu.copyRange(values, 0, vw, 0, P * b.T);
      gpu.copyRange(values, P * b.T, vl, 0, P * b.T);
      const span = gpu.fromArray(spans(b, P), [P, b.T]);
      const l = tokenPairRewardLoss(gpu, vw, vl, span);
      gpu.copyRange(l.dchosen, 0, dvalues, 0, P * b.T);
      gpu.copyRange(l.drejected, 0, dvalues, P * b.T, P * b.T);
      loss = l.loss;
      temps.push(vw, vl, span, l.dchosen, l.drejected);
    }
    model.backward(acts, { dvalues: dvalues.reshape([2 * P * b.T]) });
    const { norm, lr } = optimizerStep(store, cfg, step);
    if ((step + 1) % logEvery === 0 || step === cfg.steps - 1) {
      const lv = (await gpu.readF32(loss))[2];
      if (!Number.isFinite(lv)) throw new NonFiniteLossError(`RM step ${step + 1}: loss ${lv}`);
      const m: Metrics = { step: step + 1, "rm/loss": lv, "rm/lr": lr };
      if (acc) m["rm/train_accuracy"] = (await gpu.readF32(acc))[2];
      logs.push(m);
      await hooks.onLog?.(m);
    }
    for (const t of [...temps, loss, dvalues, norm, ...(acc ? [acc] : [])]) t.dispose();
    model.disposeActivations(acts);
  }
  return logs;
}

/**
 * Held-out evaluation: accuracy `P(r_w > r_l)` and mean margin `r_w − r_l` of the sequence
 * scores, in batches (no gradients).
 */
export async function evaluateRewardModel(
  model: OptModel,
  tok: Tokenizer,
  pairs: readonly PairExample[],
  o: { batchSize?: number; maxLength: number },
): Promise<{ accuracy: number; margin: number }> {
  const gpu = model.gpu;
  const bs = o.batchSize ?? 32;
  let correct = 0, margin = 0;
  for (let i = 0; i < pairs.length; i += bs) {
    const batch = pairs.slice(i, i + bs), P = batch.length;
    const b = pairBatch(tok, batch, o.maxLength);
    const tokens = gpu.fromArray(b.tokens, [2 * P, b.T]),
      mask = gpu.fromArray(b.mask, [2 * P, b.T]);
    const acts = model.forward(tokens, mask);
    const s = await gpu.readF32(model.sequenceScores(acts));
    for (let j = 0; j < P; j++) {
      correct += s[j] > s[P + j] ? 1 : 0;
      margin += s[j] - s[P + j];
    }
    model.disposeActivations(acts);
    tokens.dispose();
    mask.dispose();
  }
  return { accuracy: correct / pairs.length, margin: margin / pairs.length };
}
