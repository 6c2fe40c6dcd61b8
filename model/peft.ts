/**
 * LoRA adapters in the form people share them: a PEFT adapter folder, `adapter_config.json`
 * (`peft_type: "LORA"`, `r`, `lora_alpha`, `target_modules`, `base_model_name_or_path`) and
 * `adapter_model.safetensors` with PEFT's tensor names —
 * `base_model.model.model.decoder.layers.N.self_attn.q_proj.lora_A.weight` for an
 * `OPTForCausalLM` base (PEFT's `base_model.model.` prefix, then the HF module path, without the
 * adapter name "default"). Only the adapter is stored; the base checkpoint stays where it is.
 * Runtime-agnostic: text and bytes in and out (folders live in `cli/`).
 *
 * @module
 */

import { ModelConfigError } from "./config.ts";
import type { LoraTarget } from "./lora.ts";
import { loraLinearName } from "./lora.ts";
import type { OptModel } from "./opt.ts";
import { parseSafetensors, toFloat32, writeSafetensors } from "./safetensors.ts";
import { NonFiniteValueError } from "../kernels/errors.ts";

/** PEFT's prefix of every adapter tensor name (`PeftModel.base_model.model` = the HF model). */
export const PEFT_PREFIX = "base_model.model.";

const TARGETS: readonly LoraTarget[] = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"];

/** The two files of a PEFT adapter folder. */
export interface PeftAdapterFiles {
  /** `adapter_config.json` text. */
  config: string;
  /** `adapter_model.safetensors` bytes. */
  weights: Uint8Array;
}

/** PEFT tensor name of a LoRA parameter of ours (`model.decoder.layers.0.fc1.lora_A.weight`). */
export function peftTensorName(name: string): string {
  return PEFT_PREFIX + name;
}

/**
 * Serialises the LoRA adapters attached to `model` as a PEFT adapter (config text + safetensors
 * bytes). Merged or not, the adapter is `A` and `B` as trained. Throws `ModelConfigError` when
 * the model has no adapters and `NonFiniteValueError` when one holds NaN or ±∞.
 *
 * @example Train-free round trip
 * ```ts
 * import { Gpu, loadPeftAdapter, OPT_PRESETS, OptModel, savePeftAdapter } from "../mod.ts";
 * const gpu = await Gpu.create();
 * const model = OptModel.create(gpu, OPT_PRESETS.tiny, { seed: 1 });
 * model.attachLora({ r: 4, alpha: 8, targets: ["q_proj", "v_proj"] }, 7);
 * const files = await savePeftAdapter(model, { baseModel: "runs/demo/sft" });
 * const other = OptModel.create(gpu, OPT_PRESETS.tiny, { seed: 1 });
 * loadPeftAdapter(other, files.config, files.weights);
 * console.log(JSON.parse(files.config).target_modules); // ["q_proj", "v_proj"]
 * ```
 */
export async function savePeftAdapter(
  model: OptModel,
  opts: { baseModel?: string } = {},
): Promise<PeftAdapterFiles> {
  const lora = model.lora;
  if (!lora) throw new ModelConfigError("savePeftAdapter: the model has no LoRA adapters");
  const host = await lora.store.toHost("params", { finite: true });
  const weights = writeSafetensors(
    [...host].map(([name, data]) => ({
      name: peftTensorName(name),
      shape: lora.store.slots.get(name)!.spec.shape,
      data,
    })),
    { format: "pt" },
  );
  const config = JSON.stringify(
    {
      peft_type: "LORA",
      task_type: "CAUSAL_LM",
      base_model_name_or_path: opts.baseModel ?? null,
      r: lora.config.r,
      lora_alpha: lora.config.alpha,
      target_modules: [...lora.config.targets],
      lora_dropout: 0,
      bias: "none",
      fan_in_fan_out: false,
      inference_mode: true,
      use_rslora: false,
      use_dora: false,
      modules_to_save: null,
      layers_to_transform: null,
    },
    null,
    2,
  );
  return { config, weights };
}

/** The LoRA settings of an `adapter_config.json`, checked against what this library runs. */
export interface PeftAdapterConfig {
  /** LoRA rank r. */
  r: number;
  /** `lora_alpha`: the update is scaled by alpha / r. */
  alpha: number;
  /** The adapted OPT linears. */
  targets: LoraTarget[];
  /** `base_model_name_or_path` as written (`null` when absent). */
  baseModel: string | null;
}

/**
 * Parses `adapter_config.json`. Anything that would change the adapter's arithmetic and is not
 * supported — another `peft_type`, rsLoRA, DoRA, bias training, per-layer rank or α patterns,
 * `layers_to_transform`, `fan_in_fan_out`, `modules_to_save`, regex `target_modules`, a module
 * OPT does not have — is a `ModelConfigError` that names it, never a silently different model.
 */
export function parsePeftAdapterConfig(text: string): PeftAdapterConfig {
  let raw: Record<string, unknown>;
  try {
    raw = JSON.parse(text);
  } catch (e) {
    throw new ModelConfigError(`adapter_config.json is not valid JSON: ${(e as Error).message}`);
  }
  if (raw === null || typeof raw !== "object" || Array.isArray(raw)) {
    throw new ModelConfigError("adapter_config.json must hold a JSON object");
  }
  const bad = (what: string) => new ModelConfigError(`adapter_config.json: ${what}`);
  if (raw.peft_type !== "LORA") {
    throw bad(`peft_type must be "LORA", got ${JSON.stringify(raw.peft_type)}`);
  }
  const r = raw.r, alpha = raw.lora_alpha ?? 8; // PEFT's default lora_alpha
  if (typeof r !== "number" || !Number.isInteger(r) || r < 1) {
    throw bad(`r must be a positive integer, got ${JSON.stringify(r)}`);
  }
  if (typeof alpha !== "number" || !Number.isFinite(alpha)) {
    throw bad(`lora_alpha must be a number, got ${JSON.stringify(alpha)}`);
  }
  const unsupported: [string, (v: unknown) => boolean][] = [
    ["use_rslora", (v) => v === true],
    ["use_dora", (v) => v === true],
    ["fan_in_fan_out", (v) => v === true],
    ["bias", (v) => v !== undefined && v !== "none"],
    ["layers_to_transform", (v) => v !== undefined && v !== null],
    ["modules_to_save", (v) => Array.isArray(v) ? v.length > 0 : v !== undefined && v !== null],
    ["rank_pattern", (v) => v !== undefined && v !== null && Object.keys(v as object).length > 0],
    ["alpha_pattern", (v) => v !== undefined && v !== null && Object.keys(v as object).length > 0],
  ];
  for (const [key, isSet] of unsupported) {
    if (isSet(raw[key])) throw bad(`${key} = ${JSON.stringify(raw[key])} is not supported`);
  }
  const tm = raw.target_modules;
  if (typeof tm === "string") {
    throw bad(`target_modules as a regex ("${tm}") is not supported: list the modules`);
  }
  if (!Array.isArray(tm) || tm.length === 0) {
    throw bad("target_modules must be a non-empty list of module names");
  }
  const targets: LoraTarget[] = [];
  for (const m of tm) {
    if (!TARGETS.includes(m as LoraTarget)) {
      throw bad(`target module ${JSON.stringify(m)} is not an OPT linear (${TARGETS.join(", ")})`);
    }
    if (!targets.includes(m as LoraTarget)) targets.push(m as LoraTarget);
  }
  const base = raw.base_model_name_or_path;
  return { r, alpha, targets, baseModel: typeof base === "string" ? base : null };
}

/**
 * Attaches the adapter of a PEFT folder (config text + safetensors bytes) to `model`, which must
 * be the base it was trained on (same layer count and widths) with no adapters yet. Every
 * expected tensor must be present with the right shape and finite values, and the file may hold
 * no other tensors (a misnamed file is refused, not half-applied). Returns the parsed config.
 *
 * @example Apply an adapter for inference, merged into the weights
 * ```ts ignore
 * import { loadPeftAdapter } from "../mod.ts";
 * loadPeftAdapter(model, configText, weightBytes);
 * model.mergeLora();
 * ```
 */
export function loadPeftAdapter(
  model: OptModel,
  configText: string,
  weights: Uint8Array | ArrayBuffer,
): PeftAdapterConfig {
  const cfg = parsePeftAdapterConfig(configText);
  const file = parseSafetensors(weights);
  const expected = new Map<string, { name: string; shape: readonly number[] }>();
  const c = model.config;
  const dims: Record<LoraTarget, [number, number]> = {
    q_proj: [c.hidden_size, c.hidden_size],
    k_proj: [c.hidden_size, c.hidden_size],
    v_proj: [c.hidden_size, c.hidden_size],
    out_proj: [c.hidden_size, c.hidden_size],
    fc1: [c.hidden_size, c.ffn_dim],
    fc2: [c.ffn_dim, c.hidden_size],
  };
  for (let l = 0; l < c.num_hidden_layers; l++) {
    for (const t of cfg.targets) {
      const [inp, out] = dims[t], base = loraLinearName(l, t);
      expected.set(peftTensorName(`${base}.lora_A.weight`), {
        name: `${base}.lora_A.weight`,
        shape: [cfg.r, inp],
      });
      expected.set(peftTensorName(`${base}.lora_B.weight`), {
        name: `${base}.lora_B.weight`,
        shape: [out, cfg.r],
      });
    }
  }
  const missing = [...expected.keys()].filter((k) => !file.tensors.has(k));
  if (missing.length) {
    throw new ModelConfigError(
      `adapter_model.safetensors lacks ${missing.length} tensor(s): ${
        missing.slice(0, 4).join(", ")
      }${missing.length > 4 ? ", …" : ""} (is the adapter for this base model?)`,
    );
  }
  const extra = [...file.tensors.keys()].filter((k) => !expected.has(k));
  if (extra.length) {
    throw new ModelConfigError(
      `adapter_model.safetensors has ${extra.length} tensor(s) this adapter config does not ` +
        `describe: ${extra.slice(0, 4).join(", ")}${extra.length > 4 ? ", …" : ""}`,
    );
  }
  const data = new Map<string, Float32Array>();
  for (const [key, want] of expected) {
    const entry = file.tensors.get(key)!;
    if (entry.shape.join() !== want.shape.join()) {
      throw new ModelConfigError(
        `adapter tensor ${key} has shape [${entry.shape}], the base model expects [${want.shape}]`,
      );
    }
    const values = toFloat32(entry, key);
    const i = values.findIndex((v) => !Number.isFinite(v));
    if (i >= 0) throw new NonFiniteValueError(`adapter tensor ${key}[${i}] is ${values[i]}`);
    data.set(want.name, values);
  }
  const lora = model.attachLora({ r: cfg.r, alpha: cfg.alpha, targets: cfg.targets });
  for (const [name, values] of data) lora.store.set(name, values);
  return cfg;
}
