/**
 * PPO for RLHF (SPEC §8) with an actor, a critic, a frozen reward model and a frozen reference
 * policy. One {@link PpoTrainer.step} is one iteration, in four phases, each a method below:
 *
 * 1. **rollout** — sample responses with the actor's KV-cache sampler (`trainer/rollout.ts`);
 * 2. **experience** — without gradients: `logp_old`, `logp_ref`, `V_old` and the sequence score
 *    (`trainer/logprobs.ts`), minus a penalty for responses without EOS;
 * 3. **advantages** — KL-shaped rewards, GAE, whitening (`trainer/advantages.ts`);
 * 4. **update** — `ppoEpochs` passes over shuffled minibatches update the actor (clipped
 *    surrogate, optional entropy bonus and PPO-ptx LM loss) and the critic (clipped value loss)
 *    with separate optimizers; an optional approx-KL target ends the epochs early.
 *
 * The iteration's statistics stay on the GPU and are read back once; β is fixed or adaptive.
 *
 * @module
 */

import { fill, scale } from "../kernels/elementwise.ts";
import { maskedStats, STAT } from "../kernels/reduce.ts";
import { ppoPolicyLoss, ppoValueLoss } from "../kernels/rl.ts";
import type { Tensor } from "../kernels/runtime.ts";
import { crossEntropy, crossEntropyBackward, logitsBackward } from "../kernels/softmax.ts";
import type { OptModel } from "../model/opt.ts";
import type { Tokenizer } from "../model/tokenizer.ts";
import { type Experience, gaeAdvantages, type GaeResult } from "./advantages.ts";
import { encodePairs, Sampler, type SamplerState } from "./batch.ts";
import type { PpoConfig } from "./config.ts";
import type { SftExample } from "./data.ts";
import { modelLogprobs, referenceLogprobs, sequenceScores, sequenceValues } from "./logprobs.ts";
import { learningRate } from "./optim.ts";
import { deriveSeed, epochSeed, mulberry32, permutation, rolloutSeed } from "./random.ts";
import { type Rollout, rollout } from "./rollout.ts";
import {
  assertFiniteLosses,
  CheckpointError,
  checkStateNumber,
  type Metrics,
  type StateFile,
  type Trainer,
} from "./types.ts";

/** The four models of PPO. `reference` may be omitted when the actor has LoRA adapters. */
export interface PpoModels {
  /** The policy being trained. */
  actor: OptModel;
  /** The value model being trained. */
  critic: OptModel;
  /** The frozen reward model that scores rollouts. */
  reward: OptModel;
  /** The frozen reference policy of the KL penalty. */
  reference?: OptModel;
}

/** What PPO trains on. */
export interface PpoData {
  /** Rollout prompts, taken `batchSize` at a time in order (wrapping around). */
  prompts: readonly string[];
  /**
   * PPO-ptx data (InstructGPT): with `ptxCoef > 0`, each actor minibatch also takes
   * `ptxCoef ×` the whole-sequence LM loss of `ptxBatchSize` of these (prompt + completion).
   */
  ptx?: readonly SftExample[];
}

/** What one rollout produced, decoded (for logging and external graders). */
export interface RolloutSample {
  /** The prompt. */
  prompt: string;
  /** The decoded response. */
  response: string;
  /** Its reward-model score. */
  score: number;
}

/** Callbacks of {@link PpoTrainer}. */
export interface PpoHooks {
  /** Extra per-iteration metrics from the decoded rollout (e.g. the built-in task's gold score). */
  scoreRollout?: (samples: RolloutSample[]) => Metrics;
}

/** The trainer's own resumable state (see {@link PpoTrainer.state}). */
export interface PpoTrainerState {
  /** Iterations done. */
  iteration: number;
  /** Current KL coefficient (adaptive control changes it). */
  beta: number;
  /** Seed of the prompt order. */
  orderSeed: number;
  /** The PPO-ptx sampler's state. */
  ptx?: SamplerState;
}

/** Columns of the per-minibatch statistics (each the mean of a stats tensor). */
const MB = {
  policyLoss: 0,
  clipfrac: 1,
  approxKl: 2,
  valueLoss: 3,
  valueClipfrac: 4,
  entropy: 5,
  ptxLoss: 6,
} as const;
const MB_COLUMNS = Object.keys(MB).length;

/** A minibatch's rows of the rollout, and its count of action tokens. */
interface Minibatch {
  seq: Tensor;
  am: Tensor;
  act: Tensor;
  count: number;
}

/** The rollout and its no-gradient experience, as one update phase sees them. */
interface Batch {
  r: Rollout;
  exp: Experience;
  adv: GaeResult;
}

/**
 * A PPO trainer over prompts (strings). Each {@link step} is one iteration and returns
 * TRL-named metrics (`objective/kl`, `objective/scores`, `policy/clipfrac_avg`, …).
 *
 * @example Two iterations on a tiny random model
 * ```ts
 * import { ByteTokenizer, defaults, Gpu, OPT_PRESETS, OptModel, PPO_SCHEMA, PpoTrainer } from "../mod.ts";
 * const gpu = await Gpu.create();
 * const actor = OptModel.create(gpu, OPT_PRESETS.tiny, { seed: 1 });
 * const critic = OptModel.create(gpu, OPT_PRESETS.tiny, { seed: 2, valueHead: true });
 * const models = { actor, critic, reward: critic.copy({ frozen: true }), reference: actor.copy({ frozen: true }) };
 * const cfg = { ...defaults(PPO_SCHEMA), batchSize: 2, miniBatchSize: 2, iterations: 2 };
 * const trainer = new PpoTrainer(models, new ByteTokenizer(), { prompts: ["Q: 1+1?"] }, cfg);
 * console.log((await trainer.step())["objective/kl"]); // ≈ 0: the actor equals the reference
 * ```
 */
export class PpoTrainer implements Trainer<PpoTrainerState> {
  /** Current KL coefficient β. */
  beta: number;
  iteration = 0;
  /** The decoded samples of the last rollout. */
  lastSamples: RolloutSample[] = [];
  #orderSeed: number;
  #ptx?: Sampler;

  /**
   * Creates the trainer (no GPU work until the first step).
   * @param models actor, critic, reward model and (unless the actor has LoRA) the reference
   * @param tok the tokenizer of all four
   * @param data rollout prompts (and PPO-ptx data)
   * @param cfg the `ppo.` section
   * @param hooks extra per-iteration metrics
   */
  constructor(
    readonly models: PpoModels,
    readonly tok: Tokenizer,
    readonly data: PpoData,
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
      if (!data.ptx?.length) {
        throw new Error("PpoTrainer: ptxCoef > 0 needs ptx data (pretraining examples)");
      }
      this.#ptx = new Sampler(data.ptx.length, deriveSeed(cfg.seed, "ptxOrder"));
    }
  }

  get total(): number {
    return this.cfg.iterations;
  }

  /** One iteration: rollout, experience, advantages, `ppoEpochs` of updates, statistics. */
  step(_log = true): Promise<Metrics> {
    return this.models.actor.gpu.scope(async () => {
      const r = await this.#rollout();
      const { exp, samples } = await this.#experience(r);
      const adv = gaeAdvantages(this.models.actor.gpu, exp, this.beta, this.cfg);
      const update = await this.#update({ r, exp, adv });
      const m = await this.#statistics({ r, exp, adv }, update, samples);
      this.iteration++;
      this.lastSamples = samples;
      return m;
    });
  }

  /** Phase 1: the next `batchSize` prompts, one sampled response each. */
  #rollout(): Promise<Rollout> {
    const { cfg, data } = this, n = data.prompts.length;
    const prompts = Array.from(
      { length: cfg.batchSize },
      (_, i) => data.prompts[(this.iteration * cfg.batchSize + i) % n],
    );
    return rollout(this.models.actor, this.tok, prompts, {
      maxNewTokens: cfg.maxNewTokens,
      maxPromptLength: cfg.maxPromptLength,
      temperature: cfg.temperature,
      topK: cfg.topK,
      topP: cfg.topP,
      seed: rolloutSeed(cfg.seed, this.iteration),
    });
  }

  /** Phase 2: log-probs of actor and reference, values, scores (minus the missing-EOS penalty). */
  async #experience(r: Rollout): Promise<{ exp: Experience; samples: RolloutSample[] }> {
    const { actor, critic, reward, reference } = this.models, gpu = actor.gpu;
    const seq = r.tokens, am = r.attentionMask;
    const logpOld = modelLogprobs(actor, seq, am);
    const logpRef = referenceLogprobs(actor, reference, seq, am);
    const values = sequenceValues(critic, seq, am);
    const scores = sequenceScores(reward, seq, am);
    const host = await gpu.readF32(scores);
    const penalty = this.cfg.missingEosPenalty;
    const samples = r.texts.map((x, b) => {
      if (x.truncated && penalty > 0) host[b] -= penalty;
      return { prompt: x.prompt, response: x.response, score: host[b] };
    });
    if (penalty > 0) gpu.write(scores, host);
    return { exp: { logpOld, logpRef, values, scores, actionMask: r.actionMask }, samples };
  }

  /**
   * Phase 4: `ppoEpochs` passes over shuffled minibatches. Per-minibatch statistics stay on
   * the GPU (read once per epoch only when the approx-KL early stop needs them).
   */
  async #update(batch: Batch): Promise<{ stats: Tensor; minibatches: number; stopped: boolean }> {
    const cfg = this.cfg, gpu = this.models.actor.gpu, P = cfg.batchSize;
    const stats = gpu.zeros([cfg.ppoEpochs * Math.ceil(P / cfg.miniBatchSize) * MB_COLUMNS]);
    const lr = (peak: number) =>
      learningRate(this.iteration, {
        lr: peak,
        totalSteps: cfg.iterations,
        warmupRatio: cfg.warmupRatio,
        decay: cfg.lrDecay,
      });
    const lrs = { actor: lr(cfg.actorLr), critic: lr(cfg.criticLr) };
    let k = 0, stopped = false;
    for (let epoch = 0; epoch < cfg.ppoEpochs && !stopped; epoch++) {
      const order = permutation(P, mulberry32(epochSeed(this.#orderSeed++, epoch)));
      const epochStart = k;
      for (let s = 0; s < P; s += cfg.miniBatchSize) {
        const rows = order.slice(s, s + cfg.miniBatchSize);
        gpu.scope(() => this.#minibatch(batch, rows, lrs, stats, k++));
      }
      if (cfg.targetApproxKl > 0) {
        const st = await gpu.readF32(stats);
        let akl = 0;
        for (let i = epochStart; i < k; i++) akl += st[MB_COLUMNS * i + MB.approxKl];
        stopped = akl / (k - epochStart) > cfg.targetApproxKl;
      }
    }
    return { stats, minibatches: k, stopped };
  }

  /** One minibatch: an actor step and a critic step; its statistics go to row `k` of `stats`. */
  #minibatch(
    { r, exp, adv }: Batch,
    rows: number[],
    lrs: { actor: number; critic: number },
    stats: Tensor,
    k: number,
  ): void {
    const gpu = this.models.actor.gpu, T = r.length;
    const gather = (t: Tensor) => {
      const out = gpu.empty([rows.length, T], t.dtype);
      rows.forEach((row, i) => gpu.copyRange(t, row * T, out, i * T, T));
      return out;
    };
    const mb: Minibatch = {
      seq: gather(r.tokens),
      am: gather(r.attentionMask),
      act: gather(r.actionMask),
      count: rows.reduce(
        (n, row) =>
          n + r.hostActionMask.subarray(row * T, (row + 1) * T).reduce((a, v) => a + v, 0),
        0,
      ),
    };
    const actor = this.#actorStep(mb, gather(exp.logpOld), gather(adv.advantages), lrs.actor);
    const critic = this.#criticStep(mb, gather(exp.values), gather(adv.returns), lrs.critic);
    const columns: [keyof typeof MB, Tensor | undefined][] = [
      ["policyLoss", actor.loss],
      ["clipfrac", actor.clipfrac],
      ["approxKl", actor.approxkl],
      ["valueLoss", critic.loss],
      ["valueClipfrac", critic.clipfrac],
      ["entropy", actor.entropy],
      ["ptxLoss", actor.ptx],
    ];
    for (const [name, t] of columns) {
      if (t) gpu.copyRange(t, STAT.mean, stats, MB_COLUMNS * k + MB[name], 1);
    }
  }

  /** The actor's update: clipped surrogate (+ entropy bonus) (+ PPO-ptx), clip, AdamW. */
  #actorStep(mb: Minibatch, logpOld: Tensor, advantages: Tensor, lr: number) {
    const { actor } = this.models, gpu = actor.gpu, cfg = this.cfg;
    const [B, T] = mb.seq.shape;
    const store = actor.lora?.store ?? actor.store;
    store.zeroGrads();
    const acts = actor.forward(mb.seq, mb.am);
    const lp = actor.tokenLogprobs(acts);
    const pl = ppoPolicyLoss(gpu, lp.logp, logpOld, advantages, mb.act, { clip: cfg.clipRange });
    const dent = cfg.entropyCoef > 0
      ? scale(gpu, mb.act, -cfg.entropyCoef / Math.max(mb.count, 1))
      : undefined;
    const dlogits = logitsBackward(gpu, lp.logits, lp.targets, lp.lse, {
      dlogp: pl.dlogp.reshape([B * T]),
      dentropy: dent?.reshape([B * T]),
      entropy: lp.entropy.reshape([B * T]),
    });
    actor.backward(acts, { dlogits });
    const ptx = this.#ptx ? this.#ptxBackward() : undefined;
    const clip = cfg.maxGradNorm > 0 ? store.gradNorm(cfg.maxGradNorm) : undefined;
    store.adamw({ lr, weightDecay: cfg.weightDecay, clip });
    clip?.dispose();
    return { ...pl, entropy: maskedStats(gpu, lp.entropy, mb.act), ptx };
  }

  /** The critic's update: clipped value loss, clip, AdamW. */
  #criticStep(mb: Minibatch, valuesOld: Tensor, returns: Tensor, lr: number) {
    const { critic } = this.models, gpu = critic.gpu, cfg = this.cfg;
    const [B, T] = mb.seq.shape;
    critic.store.zeroGrads();
    const acts = critic.forward(mb.seq, mb.am);
    const v = critic.values(acts).intoShape([B, T]);
    const vl = ppoValueLoss(gpu, v, valuesOld, returns, mb.act, { clip: cfg.clipRangeValue });
    critic.backward(acts, { dvalues: vl.dvalues.reshape([B * T]) });
    const clip = cfg.maxGradNorm > 0 ? critic.store.gradNorm(cfg.maxGradNorm) : undefined;
    critic.store.adamw({ lr, weightDecay: cfg.weightDecay, clip });
    clip?.dispose();
    return vl;
  }

  /**
   * PPO-ptx: accumulates `ptxCoef ×` the mean next-token loss of one pretraining batch into the
   * actor's gradients; returns the statistics of its token losses.
   */
  #ptxBackward(): Tensor {
    const { actor } = this.models, gpu = actor.gpu, cfg = this.cfg, data = this.data.ptx!;
    const rows = this.#ptx!.next(cfg.ptxBatchSize).map((i) => ({
      prompt: data[i].prompt,
      response: data[i].completion,
    }));
    const b = encodePairs(this.tok, rows, { maxLength: cfg.ptxMaxLength, completionOnly: false });
    const counted = Float32Array.from(b.targets, (t) => (t >= 0 ? 1 : 0));
    const count = counted.reduce((a, v) => a + v, 0);
    const targets = gpu.fromArray(b.targets);
    const acts = actor.forward(
      gpu.fromArray(b.tokens, [b.B, b.T]),
      gpu.fromArray(b.mask, [b.B, b.T]),
    );
    const logits = actor.logits(acts);
    const ce = crossEntropy(gpu, logits, targets);
    const dloss = gpu.empty([b.B * b.T]);
    fill(gpu, dloss, cfg.ptxCoef / Math.max(count, 1));
    actor.backward(acts, { dlogits: crossEntropyBackward(gpu, logits, targets, ce.lse, dloss) });
    return maskedStats(gpu, ce.loss, gpu.fromArray(counted));
  }

  /** The iteration's metrics (one readback of the statistics) and the adaptive KL controller. */
  async #statistics(
    { r, adv }: Batch,
    u: { stats: Tensor; minibatches: number; stopped: boolean },
    samples: RolloutSample[],
  ): Promise<Metrics> {
    const gpu = this.models.actor.gpu, cfg = this.cfg, P = samples.length, T = r.length;
    const st = await gpu.readF32(u.stats), k = u.minibatches;
    const avg = (c: keyof typeof MB) => {
      let a = 0;
      for (let i = 0; i < k; i++) a += st[MB_COLUMNS * i + MB[c]];
      return a / Math.max(k, 1);
    };
    const policyLoss = avg("policyLoss"), valueLoss = avg("valueLoss");
    assertFiniteLosses(`PPO iteration ${this.iteration + 1}`, {
      "policy loss": policyLoss,
      "value loss": valueLoss,
    });
    const klHost = await gpu.readF32(adv.kl), ev = (await gpu.readF32(adv.explainedVariance))[0];
    const perRow = (a: Float32Array) =>
      Array.from(
        { length: P },
        (_, b) => a.subarray(b * T, (b + 1) * T).reduce((s, v) => s + v, 0),
      );
    const mean = (xs: number[]) => xs.reduce((a, v) => a + v, 0) / P;
    const meanKl = mean(perRow(klHost)), meanScore = mean(samples.map((s) => s.score));
    const m: Metrics = {
      iteration: this.iteration + 1,
      "objective/kl": meanKl,
      "objective/scores": meanScore,
      "objective/rlhf_reward": meanScore - this.beta * meanKl,
      "objective/entropy": avg("entropy"),
      "policy/approxkl_avg": avg("approxKl"),
      "policy/clipfrac_avg": avg("clipfrac"),
      "loss/policy_avg": policyLoss,
      "loss/value_avg": valueLoss,
      "val/clipfrac_avg": avg("valueClipfrac"),
      "val/explained_var": ev,
      "val/response_length": mean(perRow(r.hostResponseMask)),
      // byte-level vocabularies can sample byte sequences that are not UTF-8: decoded with a
      // visible U+FFFD, and counted here
      "val/invalid_text_frac": samples.filter((x) => x.response.includes("\uFFFD")).length / P,
      "train/beta": this.beta,
      "train/actor_lr": learningRate(this.iteration, {
        lr: cfg.actorLr,
        totalSteps: cfg.iterations,
        warmupRatio: cfg.warmupRatio,
        decay: cfg.lrDecay,
      }),
      "train/early_stopped": u.stopped ? 1 : 0,
      ...(this.#ptx ? { "loss/ptx_avg": avg("ptxLoss") } : {}),
      ...(this.hooks.scoreRollout?.(samples) ?? {}),
    };
    if (cfg.adaptiveKl) {
      const e = Math.min(0.2, Math.max(-0.2, meanKl / cfg.klTarget - 1));
      this.beta *= 1 + (e * P) / cfg.klHorizon;
    }
    return m;
  }

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

  /** Restores {@link state}, checked field by field (`CheckpointError` names the bad one). */
  restore(s: PpoTrainerState): void {
    const iteration = checkStateNumber("iteration", s?.iteration, { min: 0, max: this.total });
    const beta = checkStateNumber("beta", s.beta, { min: 0, integer: false });
    const orderSeed = checkStateNumber("orderSeed", s.orderSeed);
    if (this.#ptx) {
      if (!s.ptx) throw new CheckpointError("ptx: PPO-ptx is on but the state has no ptx sampler");
      this.#ptx.restore(s.ptx);
    }
    [this.iteration, this.beta, this.#orderSeed] = [iteration, beta, orderSeed];
  }

  /** The actor's trained store (its LoRA adapters when it has them) and the critic's. */
  stores(): StateFile[] {
    const { actor, critic } = this.models;
    return [
      actor.lora
        ? { name: "ppo/actor_lora_state.safetensors", store: actor.lora.store }
        : { name: "ppo/actor_state.safetensors", store: actor.store },
      { name: "ppo/critic_state.safetensors", store: critic.store },
    ];
  }
}
