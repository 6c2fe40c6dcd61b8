/**
 * Advantages of a rollout. PPO (SPEC §8): the reward-model score at the last response token
 * minus β times the per-token KL to the reference, then GAE(γ, λ) against the critic's values,
 * optionally whitened over the batch's valid tokens. Group-normalised (GRPO) and leave-one-out
 * (RLOO) baselines belong here next.
 *
 * @module
 */

import {
  explainedVariance,
  gae,
  type KlEstimator,
  klPenalty,
  shapedRewards,
  whiten,
} from "../kernels/rl.ts";
import type { Gpu, Tensor } from "../kernels/runtime.ts";

/** The no-gradient experience of one rollout, all `(B, T)` except `scores` `(B)`. */
export interface Experience {
  logpOld: Tensor;
  logpRef: Tensor;
  values: Tensor;
  scores: Tensor;
  actionMask: Tensor;
}

/** Settings of {@link gaeAdvantages} (fields of the PPO config). */
export interface GaeSettings {
  klEstimator: KlEstimator;
  scoreClip: number;
  gamma: number;
  lambda: number;
  whitenAdvantages: boolean;
}

/** Per-token KL, shaped rewards, advantages, returns and the critic's explained variance. */
export interface GaeResult {
  kl: Tensor;
  rewards: Tensor;
  advantages: Tensor;
  returns: Tensor;
  /** `[1]`: 1 − Var(returns − values) / Var(returns). */
  explainedVariance: Tensor;
}

/** KL-shaped rewards and GAE advantages of `e` with KL coefficient `beta`. */
export function gaeAdvantages(gpu: Gpu, e: Experience, beta: number, o: GaeSettings): GaeResult {
  const kl = klPenalty(gpu, e.logpOld, e.logpRef, e.actionMask, o.klEstimator);
  const rewards = shapedRewards(gpu, kl, e.scores, e.actionMask, {
    beta,
    scoreClip: o.scoreClip,
  });
  const g = gae(gpu, rewards, e.values, e.actionMask, { gamma: o.gamma, lambda: o.lambda });
  const advantages = o.whitenAdvantages ? whiten(gpu, g.advantages, e.actionMask) : g.advantages;
  return {
    kl,
    rewards,
    advantages,
    returns: g.returns,
    explainedVariance: explainedVariance(gpu, e.values, g.returns, e.actionMask),
  };
}
