/**
 * Supervised fine-tuning: next-token cross-entropy on completion tokens (prompt tokens
 * masked), or on whole sequences (pretraining-style), with AdamW, warmup + cosine decay and
 * global-norm clipping. A non-finite loss stops training with `NonFiniteLossError`.
 *
 * @module
 */

import { fill } from "../kernels/elementwise.ts";
import { crossEntropy, crossEntropyBackward } from "../kernels/softmax.ts";
import type { OptModel } from "../model/opt.ts";
import type { Tokenizer } from "../model/tokenizer.ts";
import { encodePairs } from "./batch.ts";
import type { SftConfig } from "./config.ts";
import type { SftExample } from "./data.ts";
import { runLoop } from "./loop.ts";
import { optimizerStep } from "./optim.ts";
import { SupervisedTrainer } from "./supervised.ts";
import { assertFiniteLosses, type Metrics, type TrainHooks } from "./types.ts";

/** SFT as a resumable `Trainer`: one optimizer step per {@link step}. */
export class SftTrainer extends SupervisedTrainer<SftExample, SftConfig> {
  /**
   * Creates the trainer (no GPU work until the first step).
   * @param model the policy trained
   * @param tok its tokenizer
   * @param data demonstrations
   * @param cfg the `sft.` section
   * @param stateFile checkpoint file of the trained store
   */
  constructor(
    model: OptModel,
    tok: Tokenizer,
    data: readonly SftExample[],
    cfg: SftConfig,
    stateFile = "sft/model_state.safetensors",
  ) {
    super(model, tok, data, cfg, stateFile);
  }

  /** One batch: forward, cross-entropy, backward, AdamW; metrics when `log`. */
  step(log: boolean): Promise<Metrics | undefined> {
    const { model, cfg, store } = this, gpu = model.gpu;
    return gpu.scope(async () => {
      const rows = this.nextBatch().map((x) => ({ prompt: x.prompt, response: x.completion }));
      const b = encodePairs(this.tok, rows, {
        maxLength: cfg.maxLength,
        completionOnly: cfg.completionOnly,
      });
      const count = Math.max(1, b.targets.reduce((n, t) => n + (t >= 0 ? 1 : 0), 0));
      const targets = gpu.fromArray(b.targets);
      store.zeroGrads();
      const acts = model.forward(
        gpu.fromArray(b.tokens, [b.B, b.T]),
        gpu.fromArray(b.mask, [b.B, b.T]),
      );
      const logits = model.logits(acts);
      const ce = crossEntropy(gpu, logits, targets);
      const dloss = gpu.empty([b.B * b.T]);
      fill(gpu, dloss, 1 / count);
      model.backward(acts, { dlogits: crossEntropyBackward(gpu, logits, targets, ce.lse, dloss) });
      const { norm, lr } = optimizerStep(store, cfg, this.iteration, cfg.steps);
      const step = ++this.iteration;
      if (!log) return undefined;
      const loss = (await gpu.readF32(ce.loss)).reduce((s, v) => s + v, 0) / count;
      const gn = (await gpu.readF32(norm))[0];
      assertFiniteLosses(`SFT step ${step}`, { loss, "grad norm": gn });
      return { step, "sft/loss": loss, "sft/grad_norm": gn, "sft/lr": lr };
    });
  }
}

/**
 * Runs SFT for `cfg.steps` steps and returns the logged metrics (no checkpoints; the pipeline
 * runs {@link SftTrainer} through `runLoop` with them).
 *
 * @example
 * ```ts
 * import { ByteTokenizer, Gpu, OptModel, OPT_PRESETS, SFT_SCHEMA, defaults, trainSft } from "../mod.ts";
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
  const logs: Metrics[] = [];
  await runLoop(new SftTrainer(model, tok, data, cfg), {
    stage: "sft",
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
