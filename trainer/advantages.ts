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
  /** Log-probs of the rollout's actions under the policy that sampled them `(B, T−1)`. */
  logpOld: Tensor;
  /** Log-probs of the same actions under the reference policy `(B, T−1)`. */
  logpRef: Tensor;
  /** Critic values of the rollout's states `(B, T−1)`. */
  values: Tensor;
  /** Reward-model score of each sequence `(B)`. */
  scores: Tensor;
  /** 1 where position t's action is a response token `(B, T−1)`. */
  actionMask: Tensor;
}

/** Settings of {@link gaeAdvantages} (fields of the PPO config). */
export interface GaeSettings {
  /** KL estimator of the per-token penalty. */
  klEstimator: KlEstimator;
  /** Scores are clipped to ±scoreClip. */
  scoreClip: number;
  /** Discount γ. */
  gamma: number;
  /** GAE λ. */
  lambda: number;
  /** Whiten advantages over the response tokens of the batch. */
  whitenAdvantages: boolean;
}

/** Per-token KL, shaped rewards, advantages, returns and the critic's explained variance. */
export interface GaeResult {
  /** Per-token KL estimate `(B, T−1)`. */
  kl: Tensor;
  /** KL-shaped per-token rewards (score added at the last response token) `(B, T−1)`. */
  rewards: Tensor;
  /** GAE advantages `(B, T−1)` (whitened if asked). */
  advantages: Tensor;
  /** Returns = advantages + values (before whitening) `(B, T−1)`. */
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
