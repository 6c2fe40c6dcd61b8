/**
 * LoRA adapters (Hu et al. 2021, PEFT naming) for the OPT linears: for a targeted linear,
 * `y = x·Wᵀ + b + (α/r)·(x·Aᵀ)·Bᵀ` with `A` `[r, in]` (random) and `B` `[out, r]` (zero), so a
 * fresh adapter leaves the model unchanged. The base weights stay frozen: only `A` and `B` get
 * gradients, in their own {@link ParamStore} (their own AdamW state). Adapters can be disabled
 * (the base model, e.g. PPO's reference policy without a weight copy), merged into the base
 * weights (`W += (α/r)·B·A`, for export or fast inference) and unmerged.
 *
 * @module
 */

import { ShapeError } from "../kernels/errors.ts";
import type { OptConfig, ParamSpec } from "./config.ts";

/** LoRA hyperparameters. */
export interface LoraConfig {
  /** Rank r. */
  r: number;
  /** Scale numerator α (the update is scaled by α/r). */
  alpha: number;
  /** Target modules among q_proj, k_proj, v_proj, out_proj, fc1, fc2. */
  targets: LoraTarget[];
}

/** Linears LoRA can adapt. */
export type LoraTarget = "q_proj" | "k_proj" | "v_proj" | "out_proj" | "fc1" | "fc2";

const TARGETS: LoraTarget[] = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"];

/** HF name of a targeted linear (without `.weight`) in layer `l`. */
export function loraLinearName(l: number, t: LoraTarget): string {
  const p = `model.decoder.layers.${l}.`;
  return t === "fc1" || t === "fc2" ? `${p}${t}` : `${p}self_attn.${t}`;
}

/**
 * Parameter specs of the adapters: `<linear>.lora_A.weight` `[r, in]` ~ N(0, 1/√in) and
 * `<linear>.lora_B.weight` `[out, r]` = 0, for every targeted linear of every layer.
 */
export function loraParamSpecs(c: OptConfig, lora: LoraConfig): ParamSpec[] {
  if (!Number.isInteger(lora.r) || lora.r < 1) {
    throw new ShapeError(`LoRA rank must be ≥ 1, got ${lora.r}`);
  }
  if (!Number.isFinite(lora.alpha)) throw new ShapeError(`LoRA alpha must be finite`);
  for (const t of lora.targets) {
    if (!TARGETS.includes(t)) {
      throw new ShapeError(`unknown LoRA target "${t}" (known: ${TARGETS.join(", ")})`);
    }
  }
  const C = c.hidden_size, F = c.ffn_dim;
  const dims: Record<LoraTarget, [number, number]> = {
    q_proj: [C, C],
    k_proj: [C, C],
    v_proj: [C, C],
    out_proj: [C, C],
    fc1: [C, F],
    fc2: [F, C],
  };
  const specs: ParamSpec[] = [];
  for (let l = 0; l < c.num_hidden_layers; l++) {
    for (const t of lora.targets) {
      const [inp, out] = dims[t], name = loraLinearName(l, t);
      specs.push({
        name: `${name}.lora_A.weight`,
        shape: [lora.r, inp],
        decay: true,
        init: "normal",
        std: 1 / Math.sqrt(inp),
      });
      specs.push({
        name: `${name}.lora_B.weight`,
        shape: [out, lora.r],
        decay: true,
        init: "zeros",
      });
    }
  }
  return specs;
}
