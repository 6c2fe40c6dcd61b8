/**
 * Supervised fine-tuning: next-token cross-entropy on completion tokens (prompt tokens
 * masked), or on whole sequences (pretraining-style), with AdamW, warmup + cosine decay and
 * global-norm clipping. A non-finite loss stops training with {@link NonFiniteLossError}.
 *
 * @module
 */

import { fill } from "../kernels/elementwise.ts";
import { NonFiniteLossError } from "../kernels/errors.ts";
import { learningRate } from "../kernels/optimizer.ts";
import { crossEntropy, crossEntropyBackward } from "../kernels/softmax.ts";
import type { OptModel } from "../model/opt.ts";
import type { ParamStore } from "../model/params.ts";
import type { Tensor } from "../kernels/runtime.ts";
import type { Tokenizer } from "../model/tokenizer.ts";
import { encodePairs, Sampler } from "./batch.ts";
import type { SftConfig, SupervisedConfig } from "./config.ts";
import type { SftExample } from "./data.ts";

export { NonFiniteLossError };

/**
 * One optimizer step of a supervised stage: clip to `maxGradNorm` (0 = no clip; the norm is
 * computed either way), AdamW at the scheduled learning rate (warmup, then cosine). Returns the
 * GPU norm stats (`[0]` = pre-clip norm) and the learning rate used.
 */
export function optimizerStep(
  store: ParamStore,
  cfg: SupervisedConfig,
  step: number,
): { norm: Tensor; lr: number } {
  const norm = store.clipGradNorm(cfg.maxGradNorm > 0 ? cfg.maxGradNorm : undefined);
  const lr = learningRate(step, {
    lr: cfg.lr,
    totalSteps: cfg.steps,
    warmupRatio: cfg.warmupRatio,
  });
  store.adamw({ lr, weightDecay: cfg.weightDecay });
  return { norm, lr };
}

/** Metrics of one logged step (slash-named like TRL). */
export type Metrics = Record<string, number>;

/** Callbacks while training. */
export interface TrainHooks {
  /** Called after each logged step (every `logEvery` steps and the last). */
  onLog?: (m: Metrics) => void | Promise<void>;
  /** Steps between loss readbacks (default 10). */
  logEvery?: number;
}

/**
 * Runs SFT for `cfg.steps` steps and returns the logged losses.
 *
 * @example
 * ```ts
 * import { ByteTokenizer, Gpu, OptModel, OPT_PRESETS, SFT_SCHEMA, defaults, trainSft } from "./mod.ts";
 * const gpu = await Gpu.create();
 * const model = OptModel.create(gpu, OPT_PRESETS.tiny, { seed: 1 });
 * const data = [{ prompt: "Q: 1+1?", completion: " 2" }];
 * await trainSft(model, new ByteTokenizer(), data, { ...defaults(SFT_SCHEMA), steps: 5 });
 * ```
 */
export async function trainSft(
  model: OptModel,
  tok: Tokenizer,
  data: readonly SftExample[],
  cfg: SftConfig,
  hooks: TrainHooks = {},
): Promise<Metrics[]> {
  const gpu = model.gpu;
  const store = model.lora?.store ?? model.store;
  const sampler = new Sampler(data.length, cfg.seed);
  const logEvery = hooks.logEvery ?? 10;
  const logs: Metrics[] = [];
  for (let step = 0; step < cfg.steps; step++) {
    const rows = sampler.next(cfg.batchSize).map((i) => ({
      prompt: data[i].prompt,
      response: data[i].completion,
    }));
    const b = encodePairs(tok, rows, {
      maxLength: cfg.maxLength,
      completionOnly: cfg.completionOnly,
    });
    const count = b.targets.reduce((n, t) => n + (t >= 0 ? 1 : 0), 0);
    const tokens = gpu.fromArray(b.tokens, [b.B, b.T]), mask = gpu.fromArray(b.mask, [b.B, b.T]);
    const targets = gpu.fromArray(b.targets);
    store.zeroGrads();
    const acts = model.forward(tokens, mask);
    const logits = model.logits(acts);
    const ce = crossEntropy(gpu, logits, targets);
    const dloss = gpu.empty([b.B * b.T]);
    fill(gpu, dloss, 1 / Math.max(count, 1));
    const dlogits = crossEntropyBackward(gpu, logits, targets, ce.lse, dloss);
    model.backward(acts, { dlogits });
    const { norm, lr } = optimizerStep(store, cfg, step);
    if ((step + 1) % logEvery === 0 || step === cfg.steps - 1) {
      const l = await gpu.readF32(ce.loss);
      const loss = l.reduce((s, v) => s + v, 0) / Math.max(count, 1);
      const gn = (await gpu.readF32(norm))[0];
      if (!Number.isFinite(loss) || !Number.isFinite(gn)) {
        throw new NonFiniteLossError(`SFT step ${step + 1}: loss ${loss}, grad norm ${gn}`);
      }
      const m = { step: step + 1, "sft/loss": loss, "sft/grad_norm": gn, "sft/lr": lr };
      logs.push(m);
      await hooks.onLog?.(m);
    }
    for (const t of [tokens, mask, targets, logits, ce.loss, ce.lse, dloss, dlogits, norm]) {
      t.dispose();
    }
    model.disposeActivations(acts);
  }
  return logs;
}
