/**
 * Typed trainer configurations with documented defaults. A config is resolved from defaults,
 * then a preset, then overrides (a JSON file, `--key=value` flags); unknown keys and values of
 * the wrong type or outside their allowed set are errors that name the key.
 *
 * @module
 */

/** Raised for an invalid configuration; the message names the key. */
export class ConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ConfigError";
  }
}

/** One field: its default, a one-line description, and optional constraints. */
export interface FieldSpec<T> {
  default: T;
  doc: string;
  choices?: readonly T[];
  min?: number;
  max?: number;
  integer?: boolean;
}

/** A config schema: a spec per field. */
export type Schema<C> = { [K in keyof C]: FieldSpec<C[K]> };

/** The defaults of a schema. */
export function defaults<C>(schema: Schema<C>): C {
  const out: Record<string, unknown> = {};
  for (const [k, f] of Object.entries(schema)) out[k] = (f as FieldSpec<unknown>).default;
  return out as C;
}

/** Converts a `--key=value` string to the type of the field's default. */
export function coerce(schema: Schema<unknown>, key: string, raw: string): unknown {
  const f = (schema as Record<string, FieldSpec<unknown>>)[key];
  if (!f) throw new ConfigError(`unknown config key "${key}"`);
  const d = f.default;
  if (typeof d === "number") {
    const n = Number(raw);
    if (raw.trim() === "" || !Number.isFinite(n)) {
      throw new ConfigError(`${key} must be a number, got "${raw}"`);
    }
    return n;
  }
  if (typeof d === "boolean") {
    if (raw !== "true" && raw !== "false") {
      throw new ConfigError(`${key} must be true or false, got "${raw}"`);
    }
    return raw === "true";
  }
  return raw;
}

/**
 * Validates `overrides` against `schema` and merges them over `base` (default: the schema's
 * defaults).
 *
 * @example
 * ```ts
 * import { resolveConfig, type Schema } from "./mod.ts";
 * const schema: Schema<{ lr: number }> = { lr: { default: 1e-3, doc: "learning rate", min: 0 } };
 * console.log(resolveConfig(schema, { lr: 5e-4 })); // { lr: 0.0005 }
 * ```
 */
export function resolveConfig<C>(
  schema: Schema<C>,
  overrides: Record<string, unknown>,
  base: C = defaults(schema),
): C {
  const out = { ...base } as Record<string, unknown>;
  for (const [k, v] of Object.entries(overrides)) {
    const f = (schema as Record<string, FieldSpec<unknown>>)[k];
    if (!f) {
      throw new ConfigError(
        `unknown config key "${k}" (known: ${Object.keys(schema as object).join(", ")})`,
      );
    }
    if (typeof v !== typeof f.default) {
      throw new ConfigError(`${k} must be a ${typeof f.default}, got ${JSON.stringify(v)}`);
    }
    if (f.choices && !f.choices.includes(v)) {
      throw new ConfigError(
        `${k} must be one of ${f.choices.join(", ")}, got ${JSON.stringify(v)}`,
      );
    }
    if (typeof v === "number") {
      if (!Number.isFinite(v)) throw new ConfigError(`${k} must be finite`);
      if (f.integer && !Number.isInteger(v)) {
        throw new ConfigError(`${k} must be an integer, got ${v}`);
      }
      if (f.min !== undefined && v < f.min) {
        throw new ConfigError(`${k} must be ≥ ${f.min}, got ${v}`);
      }
      if (f.max !== undefined && v > f.max) {
        throw new ConfigError(`${k} must be ≤ ${f.max}, got ${v}`);
      }
    }
    out[k] = v;
  }
  return out as C;
}

/** SFT hyperparameters. */
export interface SftConfig {
  steps: number;
  batchSize: number;
  lr: number;
  warmupRatio: number;
  weightDecay: number;
  maxGradNorm: number;
  maxLength: number;
  completionOnly: boolean;
  seed: number;
}

/** The SFT schema with its documented defaults. */
export const SFT_SCHEMA: Schema<SftConfig> = {
  steps: { default: 300, doc: "optimizer steps", min: 1, integer: true },
  batchSize: { default: 16, doc: "sequences per step", min: 1, integer: true },
  lr: { default: 3e-3, doc: "peak learning rate (cosine decay after warmup)", min: 0 },
  warmupRatio: { default: 0.05, doc: "fraction of steps with linear warmup", min: 0, max: 1 },
  weightDecay: { default: 0.0, doc: "AdamW decoupled weight decay on weight matrices", min: 0 },
  maxGradNorm: { default: 1.0, doc: "global gradient-norm clip (0 = off)", min: 0 },
  maxLength: {
    default: 64,
    doc: "tokens per sequence (longer prompts are cut on the left)",
    min: 2,
    integer: true,
  },
  completionOnly: { default: true, doc: "loss on completion tokens only (false: whole sequence)" },
  seed: { default: 0, doc: "shuffling seed", integer: true },
};

/** Reward-model hyperparameters. */
export interface RmConfig {
  steps: number;
  batchSize: number;
  lr: number;
  warmupRatio: number;
  weightDecay: number;
  maxGradNorm: number;
  maxLength: number;
  loss: "pairwise" | "token";
  seed: number;
}

/** The reward-model schema with its documented defaults. */
export const RM_SCHEMA: Schema<RmConfig> = {
  steps: { default: 200, doc: "optimizer steps", min: 1, integer: true },
  batchSize: { default: 16, doc: "preference pairs per step", min: 1, integer: true },
  lr: { default: 2e-3, doc: "peak learning rate", min: 0 },
  warmupRatio: { default: 0.05, doc: "fraction of steps with linear warmup", min: 0, max: 1 },
  weightDecay: { default: 0.0, doc: "AdamW weight decay", min: 0 },
  maxGradNorm: { default: 1.0, doc: "global gradient-norm clip (0 = off)", min: 0 },
  maxLength: { default: 64, doc: "tokens per sequence", min: 2, integer: true },
  loss: {
    default: "pairwise",
    doc: "pairwise: −log σ(r_w − r_l − m); token: DeepSpeed-Chat token-level loss",
    choices: ["pairwise", "token"],
  },
  seed: { default: 0, doc: "shuffling seed", integer: true },
};
