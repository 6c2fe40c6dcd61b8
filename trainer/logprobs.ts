/**
 * Log-probabilities of sequences under a model, without gradients: per token (`(B, T)`,
 * position t scoring the action `s[t + 1]`), and under the reference policy — a frozen copy,
 * or the actor itself with its LoRA adapters switched off.
 *
 * @module
 */

import { scale, sub } from "../kernels/elementwise.ts";
import { sequenceLogprobs } from "../kernels/preference.ts";
import type { Tensor } from "../kernels/runtime.ts";
import type { OptModel } from "../model/opt.ts";
import type { Rollout } from "./rollout.ts";

/** Per-token log-probs `log π(s[t+1] | s[≤t])` of `model` on `seq`, `(B, T)`; no gradients. */
export function modelLogprobs(model: OptModel, seq: Tensor, mask: Tensor): Tensor {
  return model.gpu.scope(() => {
    const acts = model.forward(seq, mask);
    return model.tokenLogprobs(acts).logp;
  });
}

/**
 * Per-token log-probs under the reference policy: `reference` when given (a frozen copy),
 * else `actor` with its LoRA adapters disabled for the call.
 */
export function referenceLogprobs(
  actor: OptModel,
  reference: OptModel | undefined,
  seq: Tensor,
  mask: Tensor,
): Tensor {
  if (reference) return modelLogprobs(reference, seq, mask);
  if (!actor.lora) throw new Error("referenceLogprobs: no reference model and no LoRA adapters");
  actor.lora.enabled = false;
  try {
    return modelLogprobs(actor, seq, mask);
  } finally {
    actor.lora.enabled = true;
  }
}

/** The critic's value at every position, `(B, T)`; no gradients. */
export function sequenceValues(critic: OptModel, seq: Tensor, mask: Tensor): Tensor {
  const [B, T] = seq.shape;
  return critic.gpu.scope(() => critic.values(critic.forward(seq, mask)).intoShape([B, T]));
}

/** The reward model's score of each sequence (its value at the last real token), `(B)`. */
export function sequenceScores(reward: OptModel, seq: Tensor, mask: Tensor): Tensor {
  return reward.gpu.scope(() => reward.sequenceScores(reward.forward(seq, mask)));
}

/**
 * The implicit reward of sampled sequences, `β·(ℓ_θ − ℓ_ref)` summed over the response — its
 * mean over samples of the policy, divided by β, estimates the KL to the reference.
 */
export function implicitReward(
  policy: OptModel,
  reference: OptModel,
  beta: number,
): (r: Rollout) => Tensor {
  return (r) => {
    const gpu = policy.gpu;
    const seq = (m: OptModel): Tensor =>
      sequenceLogprobs(gpu, modelLogprobs(m, r.tokens, r.attentionMask), r.actionMask);
    return scale(gpu, sub(gpu, seq(policy), seq(reference)), beta);
  };
}
