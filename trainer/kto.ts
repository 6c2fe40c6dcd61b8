/**
 * KTO (SPEC §9) on unpaired `{prompt, completion, label}` examples: desirable completions
 * `λ_D·(1 − σ(β(ρ − z)))`, undesirable `λ_U·(1 − σ(β(z − ρ)))`, `ρ = ℓ_θ − ℓ_ref` (summed
 * response log-probs), against the reference point `z = max(0, mean(ℓ_θ(y'|x) − ℓ_ref(y'|x)))`
 * estimated on mismatched pairs — each prompt with the next example's completion in the batch —
 * without gradient, logged as `kl`.
 *
 * Metrics (TRL's names, on the batch before the step's update): `kto/loss`, `kl`,
 * `rewards/chosen` and `rewards/rejected` (mean `β·ρ` of desirable / undesirable examples; NaN
 * when the batch has none), `rewards/margins`, `logps/chosen`, `logps/rejected`.
 *
 * @module
 */

import {
  KTO_SUM,
  ktoLoss,
  ktoReferencePoint,
  sequenceLogprobs,
  sequenceLogprobsBackward,
} from "../kernels/preference.ts";
import type { Tensor } from "../kernels/runtime.ts";
import { logitsBackward } from "../kernels/softmax.ts";
import type { OptModel } from "../model/opt.ts";
import type { Tokenizer } from "../model/tokenizer.ts";
import { actionMaskOf, encodePairs } from "./batch.ts";
import { type Schema, type SupervisedConfig, supervisedFields } from "./config.ts";
import { DataError, type KtoExample } from "./data.ts";
import { modelLogprobs, referenceLogprobs } from "./logprobs.ts";
import { optimizerStep } from "./optim.ts";
import { SupervisedTrainer } from "./supervised.ts";
import { assertFiniteLosses, type Metrics } from "./types.ts";

/** KTO hyperparameters. */
export interface KtoConfig extends SupervisedConfig {
  /** β: strength of the implicit KL to the reference (default 0.1) */
  beta: number;
  /** λ_D, weight of desirable examples (default 1) */
  desirableWeight: number;
  /** λ_U, weight of undesirable examples (default 1) */
  undesirableWeight: number;
}

/** The KTO schema; β and the weights are TRL's defaults. */
export const KTO_SCHEMA: Schema<KtoConfig> = {
  ...supervisedFields(300, "examples per step (≥ 2: the reference point needs a mismatch)", 3e-5),
  beta: { default: 0.1, doc: "β: strength of the implicit KL to the reference", min: 0 },
  desirableWeight: { default: 1, doc: "λ_D, weight of desirable examples", min: 0 },
  undesirableWeight: { default: 1, doc: "λ_U, weight of undesirable examples", min: 0 },
};

/** Rows of `(prompt, completion)` with their response mask in logp space. */
function rows(
  tok: Tokenizer,
  xs: readonly { prompt: string; response: string; truncated?: boolean }[],
  max: number,
) {
  const b = encodePairs(tok, xs, { maxLength: max, completionOnly: true });
  return { b, act: actionMaskOf(b) };
}

/**
 * KTO as a resumable `Trainer` (one optimizer step per {@link step}). `reference` is a frozen
 * model; without one the actor's LoRA adapters are switched off for the reference pass.
 */
export class KtoTrainer extends SupervisedTrainer<KtoExample, KtoConfig> {
  /** What is odd about the data but not fatal (a pipeline logs these). */
  readonly warnings: string[] = [];

  /**
   * Builds the trainer; the data is checked first.
   * @param model the policy trained
   * @param reference the frozen reference; `undefined` uses the LoRA actor with adapters off
   * @param tok the policy's tokenizer
   * @param data labelled completions
   * @param cfg the `kto.` section
   * @param stateFile checkpoint file of the trained store
   */
  constructor(
    model: OptModel,
    readonly reference: OptModel | undefined,
    tok: Tokenizer,
    data: readonly KtoExample[],
    cfg: KtoConfig,
    stateFile = "kto/model_state.safetensors",
  ) {
    super(model, tok, data, cfg, stateFile);
    if (!reference && !model.lora) {
      throw new Error("KtoTrainer: give a reference model or an actor with LoRA adapters");
    }
    if (cfg.batchSize < 2) throw new Error("KtoTrainer: batchSize must be ≥ 2 (mismatched pairs)");
    if (data.length < 2) throw new DataError("KTO data: at least 2 examples are needed");
    const empty = data.filter((x) => x.completion.length === 0).length;
    if (empty) this.warnings.push(`${empty} KTO example(s) have an empty completion (EOS alone)`);
    const good = data.filter((x) => x.label).length;
    if (good === 0 || good === data.length) {
      this.warnings.push(
        `KTO data: every example is ${good ? "desirable" : "undesirable"}; KTO still trains ` +
          `(against the reference point z) but rewards/${good ? "rejected" : "chosen"} is NaN`,
      );
    } else {
      // the KTO paper's advice: λ_D·n_D / (λ_U·n_U) in [1, 4/3], else the larger side dominates
      const bad = data.length - good;
      const ratio = (cfg.desirableWeight * good) / (cfg.undesirableWeight * bad);
      if (ratio < 1 || ratio > 4 / 3) {
        const lambda = (cfg.undesirableWeight * bad) / good;
        this.warnings.push(
          `KTO data: ${good} desirable and ${bad} undesirable examples give λ_D·n_D / λ_U·n_U = ` +
            `${ratio.toFixed(2)}, outside the KTO paper's [1, 4/3] (the larger side dominates ` +
            `the update): kto.desirableWeight=${lambda.toFixed(2)} balances them`,
        );
      }
    }
  }

  /** One batch: reference point, KTO loss, backward, AdamW; metrics when `log`. */
  step(log: boolean): Promise<Metrics | undefined> {
    const { model, cfg, store } = this, gpu = model.gpu;
    return gpu.scope(async () => {
      const batch = this.nextBatch(), n = batch.length;
      // matched rows, then mismatched ones (prompt i with completion i + 1)
      const all = rows(this.tok, [
        ...batch.map((x) => ({ prompt: x.prompt, response: x.completion, truncated: x.truncated })),
        ...batch.map((x, i) => {
          const y = batch[(i + 1) % n];
          return { prompt: x.prompt, response: y.completion, truncated: y.truncated };
        }),
      ], cfg.maxLength);
      const T = all.b.T,
        f32 = (a: Float32Array, from: number) => a.subarray(from * T, (from + n) * T);
      const tensors = (from: number) => ({
        seq: gpu.fromArray(all.b.tokens.subarray(from * T, (from + n) * T), [n, T]),
        am: gpu.fromArray(f32(all.b.mask, from), [n, T]),
        act: gpu.fromArray(f32(all.act, from), [n, T]),
      });
      const matched = tensors(0), mismatched = tensors(n);
      const refSeq = (r: typeof matched) =>
        sequenceLogprobs(gpu, referenceLogprobs(model, this.reference, r.seq, r.am), r.act);
      // the reference point, without gradient
      const z = ktoReferencePoint(
        gpu,
        sequenceLogprobs(gpu, modelLogprobs(model, mismatched.seq, mismatched.am), mismatched.act),
        refSeq(mismatched),
      );
      const reference = refSeq(matched);
      store.zeroGrads();
      const acts = model.forward(matched.seq, matched.am);
      const lp = model.tokenLogprobs(acts);
      const labels = gpu.fromArray(Float32Array.from(batch, (x) => (x.label ? 1 : 0)));
      const l = ktoLoss(gpu, sequenceLogprobs(gpu, lp.logp, matched.act), reference, labels, z, {
        beta: cfg.beta,
        desirableWeight: cfg.desirableWeight,
        undesirableWeight: cfg.undesirableWeight,
      });
      model.backward(acts, {
        dlogits: logitsBackward(gpu, lp.logits, lp.targets, lp.lse, {
          dlogp: sequenceLogprobsBackward(gpu, l.dpolicy, matched.act).reshape([n * T]),
        }),
      });
      const { lr } = optimizerStep(store, cfg, this.iteration, cfg.steps);
      const step = ++this.iteration;
      return log ? await this.#metrics(step, lr, n, l.sums, z) : undefined;
    });
  }

  /** The logged metrics, read in one readback. */
  async #metrics(step: number, lr: number, n: number, sums: Tensor, z: Tensor): Promise<Metrics> {
    const gpu = this.model.gpu, packed = gpu.empty([sums.size + 1]);
    gpu.copyRange(sums, 0, packed, 0, sums.size);
    gpu.copyRange(z, 0, packed, sums.size, 1);
    const v = await gpu.readF32(packed), S = KTO_SUM;
    const loss = v[S.loss] / n;
    assertFiniteLosses(`KTO step ${step}`, { loss });
    const chosen = v[S.rewardDesirable] / v[S.desirable];
    const rejected = v[S.rewardUndesirable] / v[S.undesirable];
    return {
      step,
      "kto/loss": loss,
      kl: v[sums.size],
      "rewards/chosen": chosen,
      "rewards/rejected": rejected,
      "rewards/margins": chosen - rejected,
      "logps/chosen": v[S.logpDesirable] / v[S.desirable],
      "logps/rejected": v[S.logpUndesirable] / v[S.undesirable],
      "kto/lr": lr,
    };
  }
}
