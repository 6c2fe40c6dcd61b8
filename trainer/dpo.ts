/**
 * Direct preference optimisation (SPEC §9) on `{prompt, chosen, rejected}` pairs: DPO with the
 * `sigmoid` (cDPO label smoothing), `hinge`, `ipo` and `robust` losses on sequence log-ratios
 * `ρ = ℓ_θ − ℓ_ref`, and SimPO (`lossType: "simpo"`: length-normalised, reference-free, margin
 * γ). Chosen and rejected go through one forward as one batch of 2B rows (TRL's concatenated
 * forward); the reference is a frozen copy, the actor with its LoRA adapters off, or its
 * sequence log-probs precomputed once (`precomputeReference`: no reference pass while training).
 *
 * Metrics (TRL's names, on the batch before the step's update): `dpo/loss`, `rewards/chosen`,
 * `rewards/rejected` (mean `β·ρ`; SimPO `β·ℓ̄`), `rewards/accuracies`, `rewards/margins`,
 * `logps/chosen`, `logps/rejected` (mean summed response log-probs, EOS included); with RPO
 * (`rpoAlpha` > 0, TRL's `rpo_alpha`) the loss adds `α·NLL` of the chosen responses and
 * `nll_loss` is logged.
 *
 * @module
 */

import {
  PREFERENCE_METRIC,
  preferenceLoss,
  type PreferenceLossType,
  sequenceLogprobs,
  sequenceLogprobsBackward,
} from "../kernels/preference.ts";
import { add } from "../kernels/elementwise.ts";
import type { Tensor } from "../kernels/runtime.ts";
import { logitsBackward } from "../kernels/softmax.ts";
import type { OptModel } from "../model/opt.ts";
import type { Tokenizer } from "../model/tokenizer.ts";
import { actionMaskOf, encodePairBatch } from "./batch.ts";
import { type Schema, type SupervisedConfig, supervisedFields } from "./config.ts";
import { DataError, type PairExample } from "./data.ts";
import { modelLogprobs, referenceLogprobs } from "./logprobs.ts";
import { optimizerStep } from "./optim.ts";
import { SupervisedTrainer } from "./supervised.ts";
import { assertFiniteLosses, type Metrics } from "./types.ts";

/** DPO / SimPO hyperparameters. */
export interface DpoConfig extends SupervisedConfig {
  /** β: strength of the implicit KL to the reference (SimPO: reward scale, 2.0) (default 0.1) */
  beta: number;
  /** sigmoid (DPO, cDPO with labelSmoothing) · hinge · ipo · robust · simpo (default "sigmoid") */
  lossType: PreferenceLossType;
  /** assumed label-flip rate ε of sigmoid/robust/simpo, in [0, 0.5) (default 0) */
  labelSmoothing: number;
  /** SimPO's target reward margin γ (default 0.5) */
  gamma: number;
  /** compute the reference log-probs of every pair once, before training (default false) */
  precomputeReference: boolean;
  /**
   * RPO's α (TRL's `rpo_alpha`): adds `α·NLL` of the chosen responses (mean over their tokens)
   * to the loss, against the likelihood displacement of chosen responses (0 = off) (default 0)
   */
  rpoAlpha: number;
}

/**
 * The DPO schema. Defaults as TRL documents them where they transfer (β 0.1, `sigmoid`, no
 * label smoothing); SimPO's paper uses β 2.0 and γ 0.5 (`--method=simpo` sets β 2.0). The
 * learning rate suits the built-in task's tiny model (TRL's 1e-6 is for billion-parameter
 * models): measured on seed 1 (300 steps of 16 pairs), 1e-4 drove the policy to KL 5.3 and lost
 * correct answers (0.686 → 0.607, gold +0.05; β 0.5 did not help: +0.08, KL 3.7), 3e-5 kept KL
 * at 0.8 and raised both (gold 0.677 → 0.817, correct 0.686 → 0.740).
 */
export const DPO_SCHEMA: Schema<DpoConfig> = {
  ...supervisedFields(300, "preference pairs per step", 3e-5),
  beta: {
    default: 0.1,
    doc: "β: strength of the implicit KL to the reference (SimPO: reward scale, 2.0)",
    min: 0,
  },
  lossType: {
    default: "sigmoid",
    doc: "sigmoid (DPO, cDPO with labelSmoothing) · hinge · ipo · robust · simpo",
    choices: ["sigmoid", "hinge", "ipo", "robust", "simpo"],
  },
  labelSmoothing: {
    default: 0,
    doc: "assumed label-flip rate ε of sigmoid/robust/simpo, in [0, 0.5)",
    min: 0,
    max: 0.49,
  },
  gamma: { default: 0.5, doc: "SimPO's target reward margin γ", min: 0 },
  precomputeReference: {
    default: false,
    doc: "compute the reference log-probs of every pair once, before training",
  },
  rpoAlpha: {
    default: 0,
    doc: "RPO's α: weight of the chosen responses' NLL (token mean) added to the loss (0 = off)",
    min: 0,
  },
};

/**
 * Checks pairs before training: a pair whose chosen equals its rejected (same text, both ended
 * or both cut) has a zero gradient and is a labelling mistake — `DataError` naming the first
 * one. Empty responses are legal (a policy may answer with EOS alone, and that is worth
 * preferring against) but unusual in a data file: returned as warnings.
 */
export function checkPairs(pairs: readonly PairExample[]): string[] {
  if (pairs.length === 0) throw new DataError("preference data: no pairs");
  let empty = -1, count = 0;
  pairs.forEach((p, i) => {
    if (p.chosen === p.rejected && !!p.chosenTruncated === !!p.rejectedTruncated) {
      throw new DataError(`preference pair ${i}: chosen and rejected are the same response`);
    }
    if (p.chosen.length === 0 || p.rejected.length === 0) {
      count++;
      if (empty < 0) empty = i;
    }
  });
  return count
    ? [`${count} preference pair(s) have an empty response (EOS alone), the first is pair ${empty}`]
    : [];
}

/** Length-mean log-probs (IPO, SimPO) instead of sums. */
function averaged(t: PreferenceLossType): boolean {
  return t === "ipo" || t === "simpo";
}

/** The `[chosen…, rejected…]` rows of a pair batch, with their response mask in logp space. */
function pairRows(tok: Tokenizer, pairs: readonly PairExample[], maxLength: number) {
  const b = encodePairBatch(tok, pairs, maxLength);
  return { b, act: actionMaskOf(b) };
}

/**
 * DPO / SimPO as a resumable `Trainer` (one optimizer step per {@link step}). `reference` is a
 * frozen model; without one the actor's LoRA adapters are switched off for the reference pass
 * (SimPO needs none).
 */
export class DpoTrainer extends SupervisedTrainer<PairExample, DpoConfig> {
  /** What is odd about the data but not fatal (a pipeline logs these). */
  readonly warnings: string[];
  #reference: OptModel | undefined;
  /** Reference ℓ of every pair, `[chosen_i, rejected_i]` at `2i` (precomputeReference). */
  #cache: Float32Array | undefined;

  /**
   * Builds the trainer; pairs are checked first (a pair whose chosen equals its rejected is a `DataError`).
   * @param model the policy trained
   * @param reference the frozen reference; `undefined` uses the LoRA actor with adapters off, or none for SimPO
   * @param tok the policy's tokenizer
   * @param pairs preference pairs
   * @param cfg the `dpo.` section
   * @param stateFile checkpoint file of the trained store
   */
  constructor(
    model: OptModel,
    reference: OptModel | undefined,
    tok: Tokenizer,
    pairs: readonly PairExample[],
    cfg: DpoConfig,
    stateFile = "dpo/model_state.safetensors",
  ) {
    super(model, tok, pairs, cfg, stateFile);
    this.warnings = checkPairs(pairs);
    this.#reference = reference;
    if (cfg.lossType !== "simpo" && !reference && !model.lora) {
      throw new Error("DpoTrainer: give a reference model or an actor with LoRA adapters");
    }
  }

  /** Needs a reference pass (every loss but SimPO). */
  get usesReference(): boolean {
    return this.cfg.lossType !== "simpo";
  }

  /**
   * Computes the reference's sequence log-probs of every pair once (batches of `batchSize`
   * pairs); afterwards no reference forward runs and the reference model may be freed.
   */
  async precomputeReference(): Promise<void> {
    if (!this.usesReference || this.#cache) return;
    const gpu = this.model.gpu, bs = this.cfg.batchSize, n = this.data.length;
    const cache = new Float32Array(2 * n);
    for (let i = 0; i < n; i += bs) {
      const pairs = this.data.slice(i, i + bs), P = pairs.length;
      const l = await gpu.scope(() => gpu.readF32(this.#referenceSeq(pairs)));
      for (let j = 0; j < P; j++) {
        cache[2 * (i + j)] = l[j];
        cache[2 * (i + j) + 1] = l[P + j];
      }
    }
    this.#cache = cache;
    this.#reference = undefined;
  }

  /** Reference ℓ `(2P)` of `pairs`, from the reference pass. */
  #referenceSeq(pairs: readonly PairExample[]): Tensor {
    const gpu = this.model.gpu, P = pairs.length;
    const { b, act } = pairRows(this.tok, pairs, this.cfg.maxLength);
    const seq = gpu.fromArray(b.tokens, [2 * P, b.T]), am = gpu.fromArray(b.mask, [2 * P, b.T]);
    const logp = referenceLogprobs(this.model, this.#reference, seq, am);
    return sequenceLogprobs(gpu, logp, gpu.fromArray(act, [2 * P, b.T]), {
      average: averaged(this.cfg.lossType),
    });
  }

  /** One batch of pairs: concatenated forward, preference loss, backward, AdamW. */
  step(log: boolean): Promise<Metrics | undefined> {
    const { model, cfg, store } = this, gpu = model.gpu;
    return gpu.scope(async () => {
      if (cfg.precomputeReference) await this.precomputeReference();
      const idx = this.nextIndices(), pairs = idx.map((i) => this.data[i]), P = pairs.length;
      const refSeq = this.usesReference ? this.#referenceFor(idx, pairs) : undefined;
      const { b, act } = pairRows(this.tok, pairs, cfg.maxLength);
      const mask = gpu.fromArray(act, [2 * P, b.T]), average = averaged(cfg.lossType);
      store.zeroGrads();
      const acts = model.forward(
        gpu.fromArray(b.tokens, [2 * P, b.T]),
        gpu.fromArray(b.mask, [2 * P, b.T]),
      );
      const lp = model.tokenLogprobs(acts);
      const l = preferenceLoss(gpu, sequenceLogprobs(gpu, lp.logp, mask, { average }), refSeq, {
        lossType: cfg.lossType,
        beta: cfg.beta,
        labelSmoothing: cfg.labelSmoothing,
        gamma: cfg.gamma,
      });
      const nll = cfg.rpoAlpha > 0 ? rpoGradient(act, P, b.T, cfg.rpoAlpha, average) : undefined;
      if (nll) add(gpu, l.dpolicy, gpu.fromArray(nll.dseq), l.dpolicy);
      const dlogp = sequenceLogprobsBackward(gpu, l.dpolicy, mask, { average });
      model.backward(acts, {
        dlogits: logitsBackward(gpu, lp.logits, lp.targets, lp.lse, {
          dlogp: dlogp.reshape([2 * P * b.T]),
        }),
      });
      const { lr } = optimizerStep(store, cfg, this.iteration, cfg.steps);
      const step = ++this.iteration;
      if (!log) return undefined;
      return this.#metrics(
        step,
        lr,
        l.metrics,
        average ? sequenceLogprobs(gpu, lp.logp, mask) : undefined,
        nll ? { chosenTokens: nll.chosenTokens, pairs: P } : undefined,
      );
    });
  }

  /** Reference ℓ of the batch: from the cache, or a reference pass. */
  #referenceFor(idx: readonly number[], pairs: readonly PairExample[]): Tensor {
    const c = this.#cache;
    if (!c) return this.#referenceSeq(pairs);
    const P = idx.length, out = new Float32Array(2 * P);
    idx.forEach((i, j) => {
      out[j] = c[2 * i];
      out[P + j] = c[2 * i + 1];
    });
    return this.model.gpu.fromArray(out);
  }

  /**
   * The logged metrics, read in one readback (`sums`: summed ℓ when the loss used means;
   * `rpo`: with RPO, the batch's pairs and chosen-response tokens, for `nll_loss`).
   */
  async #metrics(
    step: number,
    lr: number,
    metrics: Tensor,
    sums?: Tensor,
    rpo?: { chosenTokens: number; pairs: number },
  ): Promise<Metrics> {
    const gpu = this.model.gpu, n = metrics.size, P = sums ? sums.size / 2 : 0;
    const packed = gpu.empty([n + 2 * P]);
    gpu.copyRange(metrics, 0, packed, 0, n);
    if (sums) gpu.copyRange(sums, 0, packed, n, 2 * P);
    const v = await gpu.readF32(packed), M = PREFERENCE_METRIC;
    const mean = (a: number) => v.subarray(n + a, n + a + P).reduce((s, x) => s + x, 0) / P;
    const logpsChosen = sums ? mean(0) : v[M.logpChosen];
    // RPO: the loss is the preference loss plus α·NLL, NLL = −Σ ℓ_w / (chosen tokens)
    const nll = rpo?.chosenTokens ? -logpsChosen * rpo.pairs / rpo.chosenTokens : undefined;
    const loss = v[M.loss] + (nll === undefined ? 0 : this.cfg.rpoAlpha * nll);
    assertFiniteLosses(`DPO step ${step}`, { loss });
    const name = this.cfg.lossType === "simpo" ? "simpo/loss" : "dpo/loss";
    return {
      step,
      [name]: loss,
      ...(nll === undefined ? {} : { nll_loss: nll }),
      "rewards/chosen": v[M.rewardChosen],
      "rewards/rejected": v[M.rewardRejected],
      "rewards/accuracies": v[M.accuracy],
      "rewards/margins": v[M.margin],
      "logps/chosen": logpsChosen,
      "logps/rejected": sums ? mean(P) : v[M.logpRejected],
      "dpo/lr": lr,
    };
  }
}

/**
 * RPO's term on the sequence-level gradient: `α·NLL` with NLL the mean over the chosen
 * responses' tokens (TRL's `rpo_alpha`) adds `−α/N` to each chosen row's `dℓ` (N = chosen
 * response tokens in the batch), or `−α·n_i/N` to `dℓ̄` when the loss uses length means.
 * `act` is the `(2P, T)` response mask of `[chosen…, rejected…]`.
 */
export function rpoGradient(
  act: Float32Array,
  P: number,
  T: number,
  alpha: number,
  average: boolean,
): { dseq: Float32Array; chosenTokens: number } {
  const n = Array.from({ length: P }, (_, i) => act.subarray(i * T, (i + 1) * T))
    .map((row) => row.reduce((a, v) => a + v, 0));
  const N = n.reduce((a, v) => a + v, 0);
  const dseq = new Float32Array(2 * P);
  for (let i = 0; i < P; i++) dseq[i] = N ? (-alpha * (average ? n[i] : 1)) / N : 0;
  return { dseq, chosenTokens: N };
}

/**
 * The implicit reward model on held-out pairs (TRL's `eval_rewards/accuracies`): the share of
 * pairs with `β·ρ_w > β·ρ_l` (SimPO: `β·ℓ̄_w − β·ℓ̄_l > 0`) and the mean margin, no gradients.
 * Before any training (policy = reference) every margin is 0 and the accuracy 0.
 */
export async function evaluatePreferences(
  policy: OptModel,
  reference: OptModel | undefined,
  tok: Tokenizer,
  pairs: readonly PairExample[],
  o: Pick<DpoConfig, "lossType" | "beta" | "maxLength"> & { batchSize?: number },
): Promise<{ accuracy: number; margin: number }> {
  const gpu = policy.gpu, bs = o.batchSize ?? 16, average = averaged(o.lossType);
  const simpo = o.lossType === "simpo";
  let right = 0, margin = 0;
  for (let i = 0; i < pairs.length; i += bs) {
    const batch = pairs.slice(i, i + bs), P = batch.length;
    const { b, act } = pairRows(tok, batch, o.maxLength);
    const l = await gpu.scope(async () => {
      const seq = gpu.fromArray(b.tokens, [2 * P, b.T]), am = gpu.fromArray(b.mask, [2 * P, b.T]);
      const mask = gpu.fromArray(act, [2 * P, b.T]);
      const ell = (logp: Tensor) => gpu.readF32(sequenceLogprobs(gpu, logp, mask, { average }));
      const pol = await ell(modelLogprobs(policy, seq, am));
      if (simpo) return pol;
      const ref = await ell(referenceLogprobs(policy, reference, seq, am));
      return pol.map((v, j) => v - ref[j]);
    });
    for (let j = 0; j < P; j++) {
      const m = o.beta * (l[j] - l[P + j]);
      right += m > 0 ? 1 : 0;
      margin += m;
    }
  }
  return { accuracy: right / pairs.length, margin: margin / pairs.length };
}
