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
import { pairwiseRewardLoss, rankingRewardLoss, tokenPairRewardLoss } from "../kernels/rl.ts";
import { STAT } from "../kernels/reduce.ts";
import type { Tensor } from "../kernels/runtime.ts";
import type { OptModel } from "../model/opt.ts";
import type { Tokenizer } from "../model/tokenizer.ts";
import { encodePairBatch, encodePairs, type HostBatch } from "./batch.ts";
import type { RmConfig } from "./config.ts";
import type { PairExample, RankedExample } from "./data.ts";
import { sequenceScores } from "./logprobs.ts";
import { runLoop } from "./loop.ts";
import { optimizerStep } from "./optim.ts";
import { SupervisedTrainer } from "./supervised.ts";
import { assertFiniteLosses, type Metrics, type TrainHooks } from "./types.ts";

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

/** Reward-model training as a resumable `Trainer`: one optimizer step per {@link step}. */
export class RewardTrainer extends SupervisedTrainer<PairExample, RmConfig> {
  /**
   * Creates the trainer (no GPU work until the first step).
   * @param model the reward model (with a value head)
   * @param tok its tokenizer
   * @param pairs preference pairs
   * @param cfg the `rm.` section
   * @param stateFile checkpoint file of the trained store
   */
  constructor(
    model: OptModel,
    tok: Tokenizer,
    pairs: readonly PairExample[],
    cfg: RmConfig,
    stateFile = "rm/model_state.safetensors",
  ) {
    super(model, tok, pairs, cfg, stateFile);
    if (cfg.loss === "kwise") {
      throw new Error(
        "RewardTrainer: rm.loss=kwise trains on ranked examples (RankingRewardTrainer)",
      );
    }
  }

  /** One batch of pairs: scores, loss, backward, AdamW; metrics when `log`. */
  step(log: boolean): Promise<Metrics | undefined> {
    const { model, cfg, store } = this, gpu = model.gpu;
    return gpu.scope(async () => {
      const batch = this.nextBatch();
      const P = batch.length;
      const b = encodePairBatch(this.tok, batch, cfg.maxLength);
      const mask = gpu.fromArray(b.mask, [2 * P, b.T]);
      store.zeroGrads();
      const acts = model.forward(gpu.fromArray(b.tokens, [2 * P, b.T]), mask);
      const values = model.values(acts).intoShape([2 * P, b.T]);
      const l = cfg.loss === "pairwise"
        ? pairwiseLoss(values, mask, batch)
        : tokenLoss(values, b, P);
      model.backward(acts, { dvalues: l.dvalues.reshape([2 * P * b.T]) });
      const { lr } = optimizerStep(store, cfg, this.iteration, cfg.steps);
      const step = ++this.iteration;
      if (!log) return undefined;
      const loss = (await gpu.readF32(l.loss))[STAT.mean];
      assertFiniteLosses(`RM step ${step}`, { loss });
      const m: Metrics = { step, "rm/loss": loss, "rm/lr": lr };
      if (l.accuracy) m["rm/train_accuracy"] = (await gpu.readF32(l.accuracy))[STAT.mean];
      return m;
    });
  }
}

/** The loss of one batch and the gradient of the values `(2P, T)` it leaves. */
interface PairLoss {
  loss: Tensor;
  accuracy?: Tensor;
  dvalues: Tensor;
}

/** Pairwise loss on sequence scores (the value at each sequence's last real token). */
function pairwiseLoss(values: Tensor, mask: Tensor, batch: readonly PairExample[]): PairLoss {
  const gpu = values.gpu, P = batch.length, T = values.shape[1];
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
  const dvalues = gpu.empty([2 * P, T]);
  gpu.copy(lastMaskedValuesBackward(gpu, dscore, s.index, T), dvalues);
  return { loss: l.loss, accuracy: l.accuracy, dvalues };
}

/** DeepSpeed-Chat's token-level loss over the span where chosen and rejected differ. */
function tokenLoss(values: Tensor, b: HostBatch, P: number): PairLoss {
  const gpu = values.gpu, T = b.T;
  const vw = gpu.empty([P, T]), vl = gpu.empty([P, T]);
  gpu.copyRange(values, 0, vw, 0, P * T);
  gpu.copyRange(values, P * T, vl, 0, P * T);
  const l = tokenPairRewardLoss(gpu, vw, vl, gpu.fromArray(spans(b, P), [P, T]));
  const dvalues = gpu.empty([2 * P, T]);
  gpu.copyRange(l.dchosen, 0, dvalues, 0, P * T);
  gpu.copyRange(l.drejected, 0, dvalues, P * T, P * T);
  return { loss: l.loss, dvalues };
}

/** The `P·K` rows of ranked examples, example-major (`[p0 best … p0 worst, p1 best …]`). */
function rankedBatch(tok: Tokenizer, xs: readonly RankedExample[], maxLength: number): HostBatch {
  return encodePairs(
    tok,
    xs.flatMap((x) => x.responses.map((response) => ({ prompt: x.prompt, response }))),
    { maxLength },
  );
}

/** The one K of a ranked data set (the K-wise loss takes a `(P, K)` score matrix). */
export function rankedK(xs: readonly RankedExample[], what = "ranked data"): number {
  const K = xs[0]?.responses.length ?? 0;
  const bad = xs.findIndex((x) => x.responses.length !== K);
  if (K < 2 || bad >= 0) {
    throw new Error(
      `${what}: the K-wise loss needs the same number (≥ 2) of responses in every example; ` +
        `example 0 has ${K}` + (bad >= 0 ? `, example ${bad} has ${xs[bad].responses.length}` : ""),
    );
  }
  return K;
}

/**
 * The reward model on ranked examples with InstructGPT's K-wise loss: every example's
 * `C(K,2)` ordered pairs, `−(1/C(K,2)) Σ log σ(r_better − r_worse)`, as one resumable `Trainer`.
 * Metrics: `rm/loss`, `rm/train_accuracy` (share of the batch's pairs ordered right), `rm/lr`.
 */
export class RankingRewardTrainer extends SupervisedTrainer<RankedExample, RmConfig> {
  /** Responses per ranked example. */
  readonly K: number;

  /**
   * Creates the trainer (no GPU work until the first step).
   * @param model the reward model (with a value head)
   * @param tok its tokenizer
   * @param data ranked examples (responses best → worst, all with K responses)
   * @param cfg the `rm.` section
   * @param stateFile checkpoint file of the trained store
   */
  constructor(
    model: OptModel,
    tok: Tokenizer,
    data: readonly RankedExample[],
    cfg: RmConfig,
    stateFile = "rm/model_state.safetensors",
  ) {
    super(model, tok, data, cfg, stateFile);
    this.K = rankedK(data);
  }

  /** One batch of ranked examples: scores `(P, K)`, K-wise loss, backward, AdamW. */
  step(log: boolean): Promise<Metrics | undefined> {
    const { model, cfg, store, K } = this, gpu = model.gpu;
    return gpu.scope(async () => {
      const batch = this.nextBatch(), P = batch.length;
      const b = rankedBatch(this.tok, batch, cfg.maxLength);
      const mask = gpu.fromArray(b.mask, [P * K, b.T]);
      store.zeroGrads();
      const acts = model.forward(gpu.fromArray(b.tokens, [P * K, b.T]), mask);
      const values = model.values(acts).intoShape([P * K, b.T]);
      const s = lastMaskedValues(gpu, values, mask);
      const l = rankingRewardLoss(gpu, s.values.reshape([P, K]));
      const dvalues = lastMaskedValuesBackward(gpu, l.dscores.reshape([P * K]), s.index, b.T);
      model.backward(acts, { dvalues: dvalues.reshape([P * K * b.T]) });
      const { lr } = optimizerStep(store, cfg, this.iteration, cfg.steps);
      const step = ++this.iteration;
      if (!log) return undefined;
      const loss = (await gpu.readF32(l.loss))[STAT.mean];
      assertFiniteLosses(`RM step ${step}`, { loss });
      const acc = (await gpu.readF32(l.accuracy))[STAT.mean];
      return { step, "rm/loss": loss, "rm/train_accuracy": acc, "rm/lr": lr };
    });
  }
}

/**
 * K-wise accuracy on ranked examples: the share of all ordered pairs `(better, worse)` whose
 * scores agree with the ranking, over every example's `C(K,2)` pairs (no gradients).
 */
export async function evaluateRanking(
  model: OptModel,
  tok: Tokenizer,
  xs: readonly RankedExample[],
  o: { batchSize?: number; maxLength: number },
): Promise<{ accuracy: number }> {
  const gpu = model.gpu, bs = o.batchSize ?? 16;
  let right = 0, total = 0;
  for (let i = 0; i < xs.length; i += bs) {
    const batch = xs.slice(i, i + bs);
    const b = rankedBatch(tok, batch, o.maxLength), rows = b.B;
    const s = await gpu.scope(() =>
      gpu.readF32(
        sequenceScores(
          model,
          gpu.fromArray(b.tokens, [rows, b.T]),
          gpu.fromArray(b.mask, [rows, b.T]),
        ),
      )
    );
    let r = 0;
    for (const x of batch) {
      const K = x.responses.length;
      for (let a = 0; a < K; a++) {
        for (let c = a + 1; c < K; c++) {
          right += s[r + a] > s[r + c] ? 1 : 0;
          total++;
        }
      }
      r += K;
    }
  }
  return { accuracy: right / Math.max(1, total) };
}

/**
 * Trains the reward model for `cfg.steps` steps; returns the logged metrics (`rm/loss`,
 * `rm/train_accuracy`, `rm/lr`). The pipeline runs {@link RewardTrainer} through `runLoop`.
 */
export async function trainRewardModel(
  model: OptModel,
  tok: Tokenizer,
  pairs: readonly PairExample[],
  cfg: RmConfig,
  hooks: TrainHooks = {},
): Promise<Metrics[]> {
  const logs: Metrics[] = [];
  await runLoop(new RewardTrainer(model, tok, pairs, cfg), {
    stage: "rm",
    logEvery: hooks.logEvery ?? 10,
    checkpointEvery: 0,
  }, {
    onMetrics: async (_s, m) => {
      logs.push(m);
      await hooks.onLog?.(m);
    },
  });
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
    const b = encodePairBatch(tok, batch, o.maxLength);
    const s = await gpu.scope(() =>
      gpu.readF32(
        sequenceScores(
          model,
          gpu.fromArray(b.tokens, [2 * P, b.T]),
          gpu.fromArray(b.mask, [2 * P, b.T]),
        ),
      )
    );
    for (let j = 0; j < P; j++) {
      correct += s[j] > s[P + j] ? 1 : 0;
      margin += s[j] - s[P + j];
    }
  }
  return { accuracy: correct / pairs.length, margin: margin / pairs.length };
}
