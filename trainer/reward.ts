/**
 * One interface for what scores a rollout: a learned reward model (raw scores) or a grader
 * (scores in [0, 1]) — GRPO, RLOO and rejection sampling take either.
 *
 * @module
 */

import type { OptModel } from "../model/opt.ts";
import { gradeAll, type Grader } from "./graders.ts";
import { sequenceScores } from "./logprobs.ts";
import type { Rollout } from "./rollout.ts";

/** Scores the samples of a rollout. */
export interface Reward {
  /** For logs and reports: `rm`, `grader:math`, a module path, … */
  readonly name: string;
  /** `unit`: scores in [0, 1] (graders); `raw`: a reward model's unbounded scores. */
  readonly range: "unit" | "raw";
  /**
   * One score per sample of `r`; `references[i]` is sample i's reference answer (graders need
   * it; a reward model ignores it).
   */
  score(r: Rollout, references: readonly string[]): Promise<Float32Array>;
}

/**
 * A grader as a {@link Reward}: each decoded response is graded against its reference.
 *
 * @example
 * ```ts
 * import { graderByName, graderReward } from "../mod.ts";
 * const reward = graderReward(graderByName("math"), "grader:math");
 * console.log(reward.name, reward.range); // grader:math unit
 * ```
 */
export function graderReward(grader: Grader, name: string): Reward {
  return {
    name,
    range: "unit",
    score(r, references) {
      if (references.length !== r.texts.length) {
        throw new RangeError(
          `${name}: ${references.length} references for ${r.texts.length} samples`,
        );
      }
      return gradeAll(
        grader,
        r.texts.map((t, i) => ({
          prompt: t.prompt,
          response: t.response,
          reference: references[i],
        })),
      );
    },
  };
}

/**
 * A reward model as a {@link Reward}: its value at each sequence's last real token.
 *
 * @example
 * ```ts
 * import { Gpu, modelReward, OPT_PRESETS, OptModel } from "../mod.ts";
 * const gpu = await Gpu.create();
 * const rm = OptModel.create(gpu, OPT_PRESETS.tiny, { seed: 1, valueHead: true });
 * console.log(modelReward(rm).range); // raw
 * ```
 */
export function modelReward(rm: OptModel, name = "rm"): Reward {
  if (!rm.hasValueHead) throw new RangeError(`${name}: a reward model needs a v_head`);
  return {
    name,
    range: "raw",
    async score(r) {
      const t = sequenceScores(rm, r.tokens, r.attentionMask);
      try {
        return await rm.gpu.readF32(t);
      } finally {
        t.dispose();
      }
    },
  };
}
