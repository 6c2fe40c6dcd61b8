/**
 * Checkpoints in the Hugging Face layout: `model.safetensors` with HF OPT parameter names and a
 * `config.json` beside it. Loading accepts keys with or without the `model.` prefix (HF OPT
 * files often store `decoder.layers.0…`), ignores a tied `lm_head.weight`, converts F16/BF16,
 * and names every missing or mis-shaped tensor. Runtime-agnostic: bytes in, bytes out (file
 * paths live in `cli/`).
 *
 * @module
 */

import { NonFiniteValueError } from "../kernels/errors.ts";
import type { Gpu } from "../kernels/runtime.ts";
import { ModelConfigError, type OptConfig, optParamSpecs, parseOptConfig } from "./config.ts";
import { OptModel } from "./opt.ts";
import { ParamStore } from "./params.ts";
import {
  parseSafetensors,
  type SafetensorsFile,
  toFloat32,
  writeSafetensors,
} from "./safetensors.ts";

/** What {@link loadWeights} did. */
export interface LoadReport {
  /** Model parameters copied from the file. */
  loaded: string[];
  /** Tensors in the file the model does not use (e.g. a tied `lm_head.weight`). */
  ignored: string[];
  /** Model parameters absent from the file that `allowMissing` permitted (left as they were). */
  missing: string[];
}

/** Tensors a checkpoint may hold that a model does not load. */
const IGNORABLE = new Set(["lm_head.weight", "v_head.weight"]);

function candidates(name: string): string[] {
  return name.startsWith("model.") ? [name, name.slice("model.".length)] : [name, `model.${name}`];
}

/**
 * Copies tensors from a parsed safetensors file into a parameter store by HF name.
 * Throws {@link ModelConfigError} naming missing tensors (unless listed in `allowMissing`) and
 * shape mismatches.
 */
export function loadWeights(
  store: ParamStore,
  file: SafetensorsFile,
  opts: { allowMissing?: string[] } = {},
): LoadReport {
  const used = new Set<string>();
  const report: LoadReport = { loaded: [], ignored: [], missing: [] };
  const missing: string[] = [];
  for (const [name, slot] of store.slots) {
    const key = candidates(name).find((k) => file.tensors.has(k));
    if (!key) {
      if (opts.allowMissing?.includes(name)) report.missing.push(name);
      else missing.push(name);
      continue;
    }
    const entry = file.tensors.get(key)!;
    if (entry.shape.join() !== slot.spec.shape.join()) {
      throw new ModelConfigError(
        `checkpoint tensor ${key} has shape [${entry.shape}], the model expects [${slot.spec.shape}]`,
      );
    }
    const data = toFloat32(entry, key);
    const bad = data.findIndex((v) => !Number.isFinite(v));
    if (bad >= 0) {
      throw new NonFiniteValueError(`checkpoint tensor ${key}[${bad}] is ${data[bad]}: refused`);
    }
    store.set(name, data);
    used.add(key);
    report.loaded.push(name);
  }
  if (missing.length) {
    throw new ModelConfigError(
      `checkpoint lacks ${missing.length} parameter(s): ${missing.slice(0, 8).join(", ")}${
        missing.length > 8 ? ", …" : ""
      }`,
    );
  }
  for (const k of file.tensors.keys()) if (!used.has(k)) report.ignored.push(k);
  // a tied LM head and a value head the model does not use are expected; anything else (a
  // layer the config does not have, a misspelt name) means the file is not this model
  const unexpected = report.ignored.filter((k) => !IGNORABLE.has(k.replace(/^model\./, "")));
  if (unexpected.length) {
    throw new ModelConfigError(
      `checkpoint has ${unexpected.length} tensor(s) this model does not use: ${
        unexpected.slice(0, 8).join(", ")
      }${unexpected.length > 8 ? ", …" : ""} (does config.json match the weights?)`,
    );
  }
  return report;
}

/**
 * Loads an OPT model from `config.json` text and `model.safetensors` bytes (e.g. fetched or
 * uploaded in a browser). With `valueHead`, a missing `v_head.weight` is initialised to zero
 * (a critic started from a language model). With `frozen` the store holds parameters only (no
 * gradient or AdamW buffers): for a frozen reward or reference model, or a LoRA base.
 *
 * @example
 * ```ts
 * import { Gpu, loadOptModel, saveOptModel, OptModel, OPT_PRESETS } from "../mod.ts";
 * const gpu = await Gpu.create();
 * const files = await saveOptModel(OptModel.create(gpu, OPT_PRESETS.tiny));
 * const { model } = loadOptModel(gpu, files.config, files.weights);
 * ```
 */
export function loadOptModel(
  gpu: Gpu,
  configJson: string,
  weights: Uint8Array | ArrayBuffer,
  opts: { valueHead?: boolean; frozen?: boolean } = {},
): { model: OptModel; report: LoadReport; config: OptConfig } {
  let raw: unknown;
  try {
    raw = JSON.parse(configJson);
  } catch (e) {
    throw new ModelConfigError(`config.json is not valid JSON: ${(e as Error).message}`);
  }
  const config = parseOptConfig(raw);
  const file = parseSafetensors(weights);
  const valueHead = opts.valueHead ?? (file.tensors.has("v_head.weight"));
  const store = new ParamStore(gpu, optParamSpecs(config, { valueHead }), {
    frozen: opts.frozen,
  });
  const report = loadWeights(store, file, { allowMissing: ["v_head.weight"] });
  return { model: new OptModel(gpu, config, store), report, config };
}

/**
 * Serialises a model as `{ config, weights }`: HF `config.json` text (with `model_type`
 * and `architectures`) and safetensors bytes with HF names (`model.decoder.…`, `v_head.weight`).
 * Throws `NonFiniteValueError` when a parameter is NaN or infinite (a diverged model is never
 * written over a good checkpoint).
 */
export async function saveOptModel(
  model: OptModel,
  metadata: Record<string, string> = {},
): Promise<{ config: string; weights: Uint8Array }> {
  // a diverged model is an error, never a checkpoint
  const host = await model.store.toHost("params", { finite: true });
  const weights = writeSafetensors(
    [...host].map(([name, data]) => ({
      name,
      shape: model.store.slots.get(name)!.spec.shape,
      data,
    })),
    { format: "pt", ...metadata },
  );
  const config = JSON.stringify(
    { ...model.config, model_type: "opt", architectures: ["OPTForCausalLM"] },
    null,
    2,
  );
  return { config, weights };
}
