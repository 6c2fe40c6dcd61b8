/**
 * PPO for RLHF (SPEC §8) with an actor, a critic, a frozen reward model and a frozen reference
 * policy. Per iteration: sample responses with the actor's KV-cache sampler; compute the
 * experience without gradients (`logp_old`, `logp_ref`, `V_old`, the sequence score); shape the
 * rewards with the per-token KL, run GAE, whiten the advantages; then `ppoEpochs` passes over
 * shuffled minibatches update the actor (clipped surrogate, optional entropy bonus) and the
 * critic (clipped value loss) with separate optimizers. β is fixed or adaptive; an optional
 * approx-KL target stops an iteration's epochs early.
 *
 * Alignment: for a sequence `s` of length T, position t carries the action `s[t + 1]`:
 * `logp[t] = log π(s[t+1] | s[≤t])`, `V[t]` is the critic's value there, and the action mask is
 * the response mask shifted left by one.
 *
 * @module
 */

import { fill, scale } from "../kernels/elementwise.ts";
import { learningRate } from "../kernels/optimizer.ts";
import { maskedStats } from "../kernels/reduce.ts";
import {
  explainedVariance,
  gae,
  klPenalty,
  ppoPolicyLoss,
  ppoValueLoss,
  shapedRewards,
  whiten,
} from "../kernels/rl.ts";
import type { Gpu, Tensor } from "../kernels/runtime.ts";
import { crossEntropy, crossEntropyBackward, logitsBackward } from "../kernels/softmax.ts";
import { generate } from "../model/generate.ts";
import type { OptModel } from "../model/opt.ts";
import type { Tokenizer } from "../model/tokenizer.ts";
import { encodePairs, Sampler } from "./batch.ts";
import type { PpoConfig } from "./config.ts";
import type { SftExample } from "./data.ts";
import { type Metrics, NonFiniteLossError } from "./sft.ts";

/** The four models of PPO. `reference` may be omitted when the actor has LoRA adapters. */
export interface PpoModels {
  actor: OptModel;
  critic: OptModel;
  reward: OptModel;
  reference?: OptModel;
}

/** What one rollout produced, decoded (for logging and external graders). */
export interface RolloutSample {
  prompt: string;
  response: string;
  score: number;
}

/** Callbacks and extra data of {@link PpoTrainer}. */
export interface PpoHooks {
  /** Extra per-iteration metrics from the decoded rollout (e.g. the built-in task's gold score). */
  scoreRollout?: (samples: RolloutSample[]) => Metrics;
  /**
   * PPO-ptx data (InstructGPT): with `ptxCoef > 0`, each actor minibatch also takes
   * `ptxCoef ×` the whole-sequence LM loss of `ptxBatchSize` of these (prompt + completion).
   */
  ptxData?: readonly SftExample[];
}

/** The trainer's own resumable state (see {@link PpoTrainer.state}). */
export interface PpoTrainerState {
  iteration: number;
  beta: number;
  orderSeed: number;
  ptx?: { s: number; pos: number; order: number[] };
}

/** `[BOS] + last (max − 1) tokens` of an encoded prompt longer than `max`. */
export function truncatePrompt(ids: number[], max: number): number[] {
  return ids.length <= max ? ids : [ids[0], ...ids.slice(ids.length - (max - 1))];
}

/** Left-pads encoded prompts into a `(B, Tp)` batch. */
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

function gatherRows(gpu: Gpu, t: Tensor, rows: number[], T: number): Tensor {
  const out = gpu.empty([rows.length, T], t.dtype);
  rows.forEach((r, i) => gpu.copyRange(t, r * T, out, i * T, T));
  return out;
}

/**
 * A PPO trainer over prompts (strings). Call {@link step} once per iteration; it returns TRL-named
 * metrics (`objective/kl`, `objective/scores`, `policy/clipfrac_avg`, …).
 */
export class PpoTrainer {
  /** Current KL coefficient β. */
  beta: number;
  iteration = 0;
  #orderSeed: number;

  constructor(
    readonly models: PpoModels,
    readonly tok: Tokenizer,
    readonly prompts: readonly string[],
    readonly cfg: PpoConfig,
    readonly hooks: PpoHooks = {},
  ) {
    if (!models.reference && !models.actor.lora) {
      throw new Error("PpoTrainer: give a reference model or an actor with LoRA adapters");
    }
    if (!models.critic.hasValueHead || !models.reward.hasValueHead) {
      throw new Error("PpoTrainer: the critic and the reward model need a v_head");
    }
    this.beta = cfg.klCoef;
    this.#orderSeed = cfg.seed;
    if (cfg.ptxCoef > 0) {
      if (!hooks.ptxData?.length) {
        throw new Error("PpoTrainer: ptxCoef > 0 needs ptxData (pretraining examples)");
      }
      this.#ptx = new Sampler(hooks.ptxData.length, cfg.seed + 0x5054);
    }
  }

  #ptx?: Sampler;

  /**
   * PPO-ptx: accumulates `ptxCoef ×` the mean next-token loss of one pretraining batch into the
   * actor's gradients; returns the `[sum, count, mean, var]` statistics of its token losses.
   */
  #ptxBackward(): Tensor {
    const { actor } = this.models, gpu = actor.gpu, cfg = this.cfg, data = this.hooks.ptxData!;
    const rows = this.#ptx!.next(cfg.ptxBatchSize).map((i) => ({
      prompt: data[i].prompt,
      response: data[i].completion,
    }));
    const b = encodePairs(this.tok, rows, { maxLength: cfg.ptxMaxLength, completionOnly: false });
    const counted = Float32Array.from(b.targets, (t) => (t >= 0 ? 1 : 0));
    const count = counted.reduce((a, v) => a + v, 0);
    const tokens = gpu.fromArray(b.tokens, [b.B, b.T]), mask = gpu.fromArray(b.mask, [b.B, b.T]);
    const targets = gpu.fromArray(b.targets), weights = gpu.fromArray(counted);
    const acts = actor.forward(tokens, mask);
    const logits = actor.logits(acts);
    const ce = crossEntropy(gpu, logits, targets);
    const dloss = gpu.empty([b.B * b.T]);
    fill(gpu, dloss, cfg.ptxCoef / Math.max(count, 1));
    const dlogits = crossEntropyBackward(gpu, logits, targets, ce.lse, dloss);
    actor.backward(acts, { dlogits });
    const stats = maskedStats(gpu, ce.loss, weights);
    for (const t of [tokens, mask, targets, weights, logits, ce.loss, ce.lse, dloss, dlogits]) {
      t.dispose();
    }
    actor.disposeActivations(acts);
    return stats;
  }

  #promptBatch(): string[] {
    const n = this.prompts.length, out: string[] = [];
    for (let i = 0; i < this.cfg.batchSize; i++) {
      out.push(this.prompts[(this.iteration * this.cfg.batchSize + i) % n]);
    }
    return out;
  }

  /** Per-token log-probs of `model` on `seq`, `(B, T)`. */
  #logprobs(model: OptModel, seq: Tensor, mask: Tensor): Tensor {
    const acts = model.forward(seq, mask);
    const r = model.tokenLogprobs(acts);
    for (const t of [r.entropy, r.lse, r.logits, r.targets]) t.dispose();
    model.disposeActivations(acts);
    return r.logp;
  }

  /** One rollout + `ppoEpochs` of updates. */
  async step(): Promise<Metrics> {
    const { actor, critic, reward } = this.models;
    const gpu = actor.gpu, cfg = this.cfg, tok = this.tok;
    const prompts = this.#promptBatch();
    const P = prompts.length;
    // 1. rollout
    const enc = leftPad(
      prompts.map((p) => truncatePrompt(tok.encode(p), cfg.maxPromptLength)),
      tok.padId,
    );
    const pTok = gpu.fromArray(enc.tokens, [P, enc.T]), pMask = gpu.fromArray(enc.mask, [P, enc.T]);
    const gen = await generate(actor, pTok, pMask, {
      maxNewTokens: cfg.maxNewTokens,
      temperature: cfg.temperature,
      topK: cfg.topK,
      topP: cfg.topP,
      seed: cfg.seed * 1_000_003 + this.iteration,
      eosId: tok.eosId,
      padId: tok.padId,
    });
    pTok.dispose();
    pMask.dispose();
    const T = enc.T + gen.generated;
    const seq = gen.tokens, am = gen.attentionMask;
    const hostTok = await gpu.read(seq) as Int32Array,
      hostResp = await gpu.readF32(gen.responseMask);
    const act = new Float32Array(P * T);
    for (let i = 0; i < P * T; i++) act[i] = (i % T) + 1 < T ? hostResp[i + 1] : 0;
    const actMask = gpu.fromArray(act, [P, T]);
    // 2. experience, no gradients
    const logpOld = this.#logprobs(actor, seq, am);
    let logpRef: Tensor;
    if (this.models.reference) logpRef = this.#logprobs(this.models.reference, seq, am);
    else {
      actor.lora!.enabled = false;
      logpRef = this.#logprobs(actor, seq, am);
      actor.lora!.enabled = true;
    }
    const cActs = critic.forward(seq, am);
    const vOld = critic.values(cActs).intoShape([P, T]);
    critic.disposeActivations(cActs);
    const rActs = reward.forward(seq, am);
    const scores = reward.sequenceScores(rActs);
    reward.disposeActivations(rActs);
    const hostScores = await gpu.readF32(scores);
    const samples: RolloutSample[] = [];
    for (let b = 0; b < P; b++) {
      const ids: number[] = [];
      let eos = false;
      for (let t = enc.T; t < T; t++) {
        if (hostResp[b * T + t] === 0) break;
        if (hostTok[b * T + t] === tok.eosId) eos = true;
        else ids.push(hostTok[b * T + t]);
      }
      if (!eos && cfg.missingEosPenalty > 0) hostScores[b] -= cfg.missingEosPenalty;
      samples.push({ prompt: prompts[b], response: tok.decode(ids), score: hostScores[b] });
    }
    if (cfg.missingEosPenalty > 0) gpu.write(scores, hostScores);
    // 3. shaped rewards, GAE, whitening
    const kl = klPenalty(gpu, logpOld, logpRef, actMask, cfg.klEstimator);
    const rewards = shapedRewards(gpu, kl, scores, actMask, {
      beta: this.beta,
      scoreClip: cfg.scoreClip,
    });
    const g = gae(gpu, rewards, vOld, actMask, { gamma: cfg.gamma, lambda: cfg.lambda });
    const adv = cfg.whitenAdvantages ? whiten(gpu, g.advantages, actMask) : g.advantages;
    const ev = explainedVariance(gpu, vOld, g.returns, actMask);
    // 4. PPO epochs over shuffled minibatches
    // per-minibatch statistics stay on the GPU (NS means each) and are read once per iteration
    // (and once per epoch when the approx-KL early stop needs them)
    const nMb = Math.ceil(P / cfg.miniBatchSize);
    const statBuf = gpu.zeros([cfg.ppoEpochs * nMb * NS]);
    let k = 0;
    const aStore = actor.lora?.store ?? actor.store, cStore = critic.store;
    const total = cfg.iterations;
    const aLr = learningRate(this.iteration, {
      lr: cfg.actorLr,
      totalSteps: total,
      warmupRatio: cfg.warmupRatio,
      decay: "linear",
    });
    const cLr = learningRate(this.iteration, {
      lr: cfg.criticLr,
      totalSteps: total,
      warmupRatio: cfg.warmupRatio,
      decay: "linear",
    });
    let stopped = false;
    for (let epoch = 0; epoch < cfg.ppoEpochs && !stopped; epoch++) {
      const order = shuffled(P, this.#orderSeed++ * 7919 + epoch);
      const epochStart = k;
      for (let s = 0; s < P; s += cfg.miniBatchSize) {
        const rows = order.slice(s, s + cfg.miniBatchSize), B = rows.length;
        const mb = {
          seq: gatherRows(gpu, seq, rows, T),
          am: gatherRows(gpu, am, rows, T),
          act: gatherRows(gpu, actMask, rows, T),
          old: gatherRows(gpu, logpOld, rows, T),
          adv: gatherRows(gpu, adv, rows, T),
          ret: gatherRows(gpu, g.returns, rows, T),
          vOld: gatherRows(gpu, vOld, rows, T),
        };
        const count = rows.reduce(
          (n, r) => n + act.subarray(r * T, (r + 1) * T).reduce((a, v) => a + v, 0),
          0,
        );
        // actor
        aStore.zeroGrads();
        const aActs = actor.forward(mb.seq, mb.am);
        const lp = actor.tokenLogprobs(aActs);
        const pl = ppoPolicyLoss(gpu, lp.logp, mb.old, mb.adv, mb.act, { clip: cfg.clipRange });
        let dent: Tensor | undefined;
        if (cfg.entropyCoef > 0) {
          dent = scale(gpu, mb.act, -cfg.entropyCoef / Math.max(count, 1));
        }
        const dlogits = logitsBackward(gpu, lp.logits, lp.targets, lp.lse, {
          dlogp: pl.dlogp.reshape([B * T]),
          dentropy: dent?.reshape([B * T]),
          entropy: lp.entropy.reshape([B * T]),
        });
        actor.backward(aActs, { dlogits });
        const ptx = this.#ptx ? this.#ptxBackward() : undefined;
        aStore.clipGradNorm(cfg.maxGradNorm > 0 ? cfg.maxGradNorm : undefined).dispose();
        aStore.adamw({ lr: aLr });
        const ent = maskedStats(gpu, lp.entropy, mb.act);
        // critic
        cStore.zeroGrads();
        const cActs2 = critic.forward(mb.seq, mb.am);
        const v = critic.values(cActs2).intoShape([B, T]);
        const vl = ppoValueLoss(gpu, v, mb.vOld, mb.ret, mb.act, { clip: cfg.clipRangeValue });
        critic.backward(cActs2, { dvalues: vl.dvalues.reshape([B * T]) });
        cStore.clipGradNorm(cfg.maxGradNorm > 0 ? cfg.maxGradNorm : undefined).dispose();
        cStore.adamw({ lr: cLr });
        [pl.loss, pl.clipfrac, pl.approxkl, vl.loss, vl.clipfrac, ent, ptx].forEach((t, j) => {
          if (t) gpu.copyRange(t, 2, statBuf, NS * k + j, 1);
        });
        k++;
        for (
          const t of [
            ...Object.values(mb),
            lp.logp,
            lp.entropy,
            lp.lse,
            lp.logits,
            lp.targets,
            pl.dlogp,
            pl.loss,
            pl.clipfrac,
            pl.approxkl,
            dlogits,
            ent,
            v,
            vl.dvalues,
            vl.loss,
            vl.clipfrac,
            ...(dent ? [dent] : []),
            ...(ptx ? [ptx] : []),
          ]
        ) t.dispose();
        actor.disposeActivations(aActs);
        critic.disposeActivations(cActs2);
      }
      if (cfg.targetApproxKl > 0) {
        const st = await gpu.readF32(statBuf);
        let akl = 0;
        for (let i = epochStart; i < k; i++) akl += st[NS * i + 2];
        if (akl / (k - epochStart) > cfg.targetApproxKl) stopped = true;
      }
    }
    const st = (await gpu.readF32(statBuf)).subarray(0, NS * k);
    statBuf.dispose();
    const mean = (j: number) => {
      let a = 0;
      for (let i = 0; i < k; i++) a += st[NS * i + j];
      return a / Math.max(k, 1);
    };
    const [pgAvg, clipAvg, aklAvg, vfAvg, vclipAvg, entAvg, ptxAvg] = [0, 1, 2, 3, 4, 5, 6].map(
      mean,
    );
    if (!Number.isFinite(pgAvg) || !Number.isFinite(vfAvg)) {
      throw new NonFiniteLossError(
        `PPO iteration ${this.iteration + 1}: policy loss ${pgAvg}, value loss ${vfAvg}`,
      );
    }
    // 5. statistics and the adaptive KL controller
    const klHost = await gpu.readF32(kl), evHost = (await gpu.readF32(ev))[0];
    const rows = Array.from(
      { length: P },
      (_, b) => klHost.subarray(b * T, (b + 1) * T).reduce((a, v) => a + v, 0),
    );
    const meanKl = rows.reduce((a, v) => a + v, 0) / P;
    const meanScore = hostScores.reduce((a, v) => a + v, 0) / P;
    const respLen = Array.from(
      { length: P },
      (_, b) => hostResp.subarray(b * T, (b + 1) * T).reduce((a, v) => a + v, 0),
    );
    const m: Metrics = {
      iteration: this.iteration + 1,
      "objective/kl": meanKl,
      "objective/scores": meanScore,
      "objective/rlhf_reward": meanScore - this.beta * meanKl,
      "objective/entropy": entAvg,
      "policy/approxkl_avg": aklAvg,
      "policy/clipfrac_avg": clipAvg,
      "loss/policy_avg": pgAvg,
      "loss/value_avg": vfAvg,
      "val/clipfrac_avg": vclipAvg,
      "val/explained_var": evHost,
      "val/response_length": respLen.reduce((a, v) => a + v, 0) / P,
      // byte-level vocabularies can sample byte sequences that are not UTF-8: decoded with a
      // visible U+FFFD, and counted here
      "val/invalid_text_frac": samples.filter((x) => x.response.includes("\uFFFD")).length / P,
      "train/beta": this.beta,
      "train/actor_lr": aLr,
      "train/early_stopped": stopped ? 1 : 0,
      ...(this.#ptx ? { "loss/ptx_avg": ptxAvg } : {}),
      ...(this.hooks.scoreRollout?.(samples) ?? {}),
    };
    if (cfg.adaptiveKl) {
      const e = Math.min(0.2, Math.max(-0.2, meanKl / cfg.klTarget - 1));
      this.beta *= 1 + (e * P) / cfg.klHorizon;
    }
    for (
      const t of [
        seq,
        am,
        gen.responseMask,
        gen.logprobs,
        actMask,
        logpOld,
        logpRef,
        vOld,
        scores,
        kl,
        rewards,
        g.advantages,
        g.returns,
        ev,
      ]
    ) t.dispose();
    if (adv !== g.advantages) adv.dispose();
    this.iteration++;
    this.lastSamples = samples;
    return m;
  }

  /** The decoded samples of the last rollout. */
  lastSamples: RolloutSample[] = [];

  /**
   * The trainer's own state for exact resume (the models' states are saved by their stores):
   * rollout sampling is keyed by (seed, iteration) and minibatch order by a counter.
   */
  state(): PpoTrainerState {
    return {
      iteration: this.iteration,
      beta: this.beta,
      orderSeed: this.#orderSeed,
      ...(this.#ptx ? { ptx: this.#ptx.state() } : {}),
    };
  }

  /** Restores {@link state}. */
  restore(s: PpoTrainerState): void {
    this.iteration = s.iteration;
    this.beta = s.beta;
    this.#orderSeed = s.orderSeed;
    if (this.#ptx && s.ptx) this.#ptx.restore(s.ptx);
  }
}

/** Statistics per minibatch: policy loss, clip fraction, approx-KL, value loss, value clip
 * fraction, entropy, PPO-ptx loss. */
const NS = 7;

function shuffled(n: number, seed: number): number[] {
  let s = seed >>> 0;
  const r = () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const a = Array.from({ length: n }, (_, i) => i);
  for (let i = n - 1; i > 0; i--) {
    const j = Math.floor(r() * (i + 1));
    [a[i], a[j]] = [a[j], a[i]];
  }
  return a;
}
