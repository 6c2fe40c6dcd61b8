/**
 * Typed trainer configurations with documented defaults. A config is resolved from defaults,
 * then a preset, then overrides (a JSON file, `--key=value` flags); unknown keys and values of
 * the wrong type or outside their allowed set are errors that name the key.
 *
 * @module
 */

/** Raised for an invalid configuration; the message names the key. */
export class ConfigError extends Error {
  /**
   * Creates the error.
   * @param message the offending key and why
   */
  constructor(message: string) {
    super(message);
    this.name = "ConfigError";
  }
}

/** One field: its default, a one-line description, and optional constraints. */
export interface FieldSpec<T> {
  /** The value when nothing overrides it. */
  default: T;
  /** One-line description (shown by `--help` and in the docs). */
  doc: string;
  /** The only values allowed. */
  choices?: readonly T[];
  /** Smallest allowed number. */
  min?: number;
  /** Largest allowed number. */
  max?: number;
  /** Only integers are allowed. */
  integer?: boolean;
  /** For strings: a regular expression the whole value must match, and what it means. */
  pattern?: { regex: RegExp; doc: string };
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
 * import { resolveConfig, type Schema } from "../mod.ts";
 * const schema: Schema<{ lr: number }> = { lr: { default: 1e-3, doc: "learning rate", min: 0 } };
 * console.log(resolveConfig(schema, { lr: 5e-4 })); // { lr: 0.0005 }
 * ```
 */
export function resolveConfig<C>(
  schema: Schema<C>,
  overrides: Record<string, unknown>,
  base: C = defaults(schema),
  /** Prepended to key names in messages, e.g. "run." for a section. */
  prefix = "",
): C {
  const out = { ...base } as Record<string, unknown>;
  for (const [key, v] of Object.entries(overrides)) {
    const k = key, name = prefix + key;
    const f = (schema as Record<string, FieldSpec<unknown>>)[k];
    if (!f) {
      throw new ConfigError(
        `unknown config key "${k}" (known: ${Object.keys(schema as object).join(", ")})`,
      );
    }
    if (typeof v !== typeof f.default) {
      throw new ConfigError(`${name} must be a ${typeof f.default}, got ${JSON.stringify(v)}`);
    }
    if (f.choices && !f.choices.includes(v)) {
      throw new ConfigError(
        `${name} must be one of ${f.choices.join(", ")}, got ${JSON.stringify(v)}`,
      );
    }
    if (typeof v === "string" && f.pattern && !f.pattern.regex.test(v)) {
      throw new ConfigError(`${name} must be ${f.pattern.doc}, got ${JSON.stringify(v)}`);
    }
    if (typeof v === "number") {
      if (!Number.isFinite(v)) throw new ConfigError(`${name} must be finite`);
      if (f.integer && !Number.isInteger(v)) {
        throw new ConfigError(`${name} must be an integer, got ${v}`);
      }
      if (f.min !== undefined && v < f.min) {
        throw new ConfigError(`${name} must be ≥ ${f.min}, got ${v}`);
      }
      if (f.max !== undefined && v > f.max) {
        throw new ConfigError(`${name} must be ≤ ${f.max}, got ${v}`);
      }
    }
    out[k] = v;
  }
  return out as C;
}

/** Hyperparameters shared by the supervised stages (SFT, reward model). */
export interface SupervisedConfig {
  /** optimizer steps */
  steps: number;
  /** examples (sequences or pairs) per optimizer step */
  batchSize: number;
  /** peak learning rate */
  lr: number;
  /** fraction of steps with linear warmup */
  warmupRatio: number;
  /** learning-rate decay after warmup, to 0 at the last step */
  lrDecay: "cosine" | "linear" | "constant";
  /** AdamW decoupled weight decay on weight matrices */
  weightDecay: number;
  /** global gradient-norm clip (0 = off) */
  maxGradNorm: number;
  /** tokens per sequence (longer prompts are cut on the left) */
  maxLength: number;
  /** shuffling seed */
  seed: number;
}

/** SFT hyperparameters. */
export interface SftConfig extends SupervisedConfig {
  /** loss on completion tokens only (false: whole sequence) (default true) */
  completionOnly: boolean;
}

/** Fields shared by the supervised stages (optimizer, schedule, sequence length, seed): SFT, RM, DPO, KTO. */
export function supervisedFields(steps: number, batchDoc: string, lr: number) {
  return {
    steps: { default: steps, doc: "optimizer steps", min: 1, integer: true },
    batchSize: { default: 16, doc: batchDoc, min: 1, integer: true },
    lr: { default: lr, doc: "peak learning rate", min: 0 },
    warmupRatio: { default: 0.05, doc: "fraction of steps with linear warmup", min: 0, max: 1 },
    lrDecay: {
      default: "cosine" as const,
      doc: "learning-rate decay after warmup, to 0 at the last step",
      choices: ["cosine", "linear", "constant"] as const,
    },
    weightDecay: { default: 0.0, doc: "AdamW decoupled weight decay on weight matrices", min: 0 },
    maxGradNorm: { default: 1.0, doc: "global gradient-norm clip (0 = off)", min: 0 },
    maxLength: {
      default: 64,
      doc: "tokens per sequence (longer prompts are cut on the left)",
      min: 2,
      integer: true,
    },
    seed: { default: 0, doc: "shuffling seed", integer: true },
  };
}

/** How often a run checkpoints its resumable state (a `run.` section's fields). */
export interface CheckpointConfig {
  /** PPO iterations between resumable state checkpoints */
  checkpointEvery: number;
  /** steps of the step-counted stages (SFT, reward model, DPO, …) between resumable state checkpoints */
  stepCheckpointEvery: number;
}

/** The checkpoint fields of a `run.` section; `stepsDoc` names the stages counted in steps. */
export function checkpointFields(stepEvery: number, stepsDoc: string): Schema<CheckpointConfig> {
  return {
    checkpointEvery: {
      default: 10,
      doc: "PPO iterations between resumable state checkpoints",
      min: 1,
      integer: true,
    },
    stepCheckpointEvery: {
      default: stepEvery,
      doc: `${stepsDoc} steps between resumable state checkpoints`,
      min: 1,
      integer: true,
    },
  };
}

/** The `run.name` field: one safe path segment, so a run folder cannot escape its parent. */
export function runNameField(name: string): FieldSpec<string> {
  return {
    default: name,
    doc: "run name (output under <out>/<name>/): letters, digits, '.', '_', '-'",
    pattern: {
      regex: /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/,
      doc:
        "one folder name of 1–64 letters, digits, '.', '_' or '-' (starting with a letter or digit)",
    },
  };
}

/** The SFT schema with its documented defaults. */
export const SFT_SCHEMA: Schema<SftConfig> = {
  ...supervisedFields(300, "sequences per step", 3e-3),
  completionOnly: { default: true, doc: "loss on completion tokens only (false: whole sequence)" },
};

/** Reward-model hyperparameters. */
export interface RmConfig extends SupervisedConfig {
  /**
   * pairwise: −log σ(r_w − r_l − m); token: DeepSpeed-Chat token-level loss; kwise: InstructGPT's
   * K-wise ranking loss on ranked examples (K responses best → worst) (default "pairwise")
   */
  loss: "pairwise" | "token" | "kwise";
}

/** The reward-model schema with its documented defaults. */
export const RM_SCHEMA: Schema<RmConfig> = {
  ...supervisedFields(200, "preference pairs (rm.loss=kwise: rankings) per step", 2e-3),
  loss: {
    default: "pairwise",
    doc: "pairwise: −log σ(r_w − r_l − m); token: DeepSpeed-Chat token-level loss; " +
      "kwise: InstructGPT's K-wise ranking loss on ranked examples (K responses best → worst)",
    choices: ["pairwise", "token", "kwise"],
  },
};

/** PPO hyperparameters (SPEC §8; defaults follow the seed recipe where it names one). */
export interface PpoConfig {
  /** rollout + update iterations (default 100) */
  iterations: number;
  /** prompts per rollout (default 32) */
  batchSize: number;
  /** rows per PPO minibatch (default 8) */
  miniBatchSize: number;
  /** passes over each rollout (shuffled minibatches) (default 4) */
  ppoEpochs: number;
  /** response tokens sampled per prompt (default 8) */
  maxNewTokens: number;
  /** prompt tokens kept (longer prompts lose tokens on the left, after BOS) (default 256) */
  maxPromptLength: number;
  /** rollout sampling temperature (default 1) */
  temperature: number;
  /** rollout top-k (0 = off) (default 0) */
  topK: number;
  /** rollout top-p (1 = off) (default 1) */
  topP: number;
  /** actor learning rate (seed recipe: 1e-5 for OPT-350m) (default 0.001) */
  actorLr: number;
  /** critic learning rate (seed recipe: 5e-5) (default 0.002) */
  criticLr: number;
  /** fraction of iterations with linear warmup (default 0) */
  warmupRatio: number;
  /**
   * decay of both learning rates after warmup, to 0 at the last iteration (TRL: linear) (default
   * "linear")
   */
  lrDecay: "cosine" | "linear" | "constant";
  /** AdamW weight decay of actor and critic (default 0) */
  weightDecay: number;
  /** global gradient-norm clip per model (0 = off) (default 1) */
  maxGradNorm: number;
  /** discount γ (default 1) */
  gamma: number;
  /** GAE λ (default 0.95) */
  lambda: number;
  /** initial KL coefficient β (default 0.1) */
  klCoef: number;
  /** per-token KL estimator (default "k1") */
  klEstimator: "k1" | "abs" | "mse" | "k3";
  /** adapt β towards klTarget (Ziegler et al.) (default false) */
  adaptiveKl: boolean;
  /** target KL for the adaptive controller (default 6) */
  klTarget: number;
  /** horizon of the adaptive controller (default 10000) */
  klHorizon: number;
  /** clip of the reward-model score (default 5) */
  scoreClip: number;
  /** ratio clip ε (default 0.2) */
  clipRange: number;
  /** value clip ε_v (default 0.2) */
  clipRangeValue: number;
  /** entropy bonus coefficient (default 0) */
  entropyCoef: number;
  /** stop an iteration's epochs when approx-KL exceeds this (0 = off) (default 0) */
  targetApproxKl: number;
  /** subtracted from the score of responses without EOS (default 0) */
  missingEosPenalty: number;
  /** whiten advantages over the batch's valid tokens (default true) */
  whitenAdvantages: boolean;
  /**
   * PPO-ptx: γ_ptx, weight of the LM loss on a pretraining batch per minibatch (0 = off) (default
   * 0)
   */
  ptxCoef: number;
  /** PPO-ptx sequences per minibatch (default 4) */
  ptxBatchSize: number;
  /** PPO-ptx tokens per sequence (default 64) */
  ptxMaxLength: number;
  /** rollout sampling seed (default 0) */
  seed: number;
}

/** The PPO schema with its documented defaults. */
export const PPO_SCHEMA: Schema<PpoConfig> = {
  iterations: { default: 100, doc: "rollout + update iterations", min: 1, integer: true },
  batchSize: { default: 32, doc: "prompts per rollout", min: 1, integer: true },
  miniBatchSize: { default: 8, doc: "rows per PPO minibatch", min: 1, integer: true },
  ppoEpochs: {
    default: 4,
    doc: "passes over each rollout (shuffled minibatches)",
    min: 1,
    integer: true,
  },
  maxNewTokens: { default: 8, doc: "response tokens sampled per prompt", min: 1, integer: true },
  maxPromptLength: {
    default: 256,
    doc: "prompt tokens kept (longer prompts lose tokens on the left, after BOS)",
    min: 2,
    integer: true,
  },
  temperature: { default: 1.0, doc: "rollout sampling temperature", min: 0 },
  topK: { default: 0, doc: "rollout top-k (0 = off)", min: 0, integer: true },
  topP: { default: 1.0, doc: "rollout top-p (1 = off)", min: 0, max: 1 },
  actorLr: { default: 1e-3, doc: "actor learning rate (seed recipe: 1e-5 for OPT-350m)", min: 0 },
  criticLr: { default: 2e-3, doc: "critic learning rate (seed recipe: 5e-5)", min: 0 },
  warmupRatio: { default: 0.0, doc: "fraction of iterations with linear warmup", min: 0, max: 1 },
  lrDecay: {
    default: "linear",
    doc: "decay of both learning rates after warmup, to 0 at the last iteration (TRL: linear)",
    choices: ["cosine", "linear", "constant"],
  },
  weightDecay: { default: 0, doc: "AdamW weight decay of actor and critic", min: 0 },
  maxGradNorm: { default: 1.0, doc: "global gradient-norm clip per model (0 = off)", min: 0 },
  gamma: { default: 1.0, doc: "discount γ", min: 0, max: 1 },
  lambda: { default: 0.95, doc: "GAE λ", min: 0, max: 1 },
  klCoef: { default: 0.1, doc: "initial KL coefficient β", min: 0 },
  klEstimator: {
    default: "k1",
    doc: "per-token KL estimator",
    choices: ["k1", "abs", "mse", "k3"],
  },
  adaptiveKl: { default: false, doc: "adapt β towards klTarget (Ziegler et al.)" },
  klTarget: { default: 6.0, doc: "target KL for the adaptive controller", min: 0 },
  klHorizon: { default: 10000, doc: "horizon of the adaptive controller", min: 1 },
  scoreClip: { default: 5.0, doc: "clip of the reward-model score", min: 0 },
  clipRange: { default: 0.2, doc: "ratio clip ε", min: 0 },
  clipRangeValue: { default: 0.2, doc: "value clip ε_v", min: 0 },
  entropyCoef: { default: 0.0, doc: "entropy bonus coefficient", min: 0 },
  targetApproxKl: {
    default: 0,
    doc: "stop an iteration's epochs when approx-KL exceeds this (0 = off)",
    min: 0,
  },
  missingEosPenalty: {
    default: 0,
    doc: "subtracted from the score of responses without EOS",
    min: 0,
  },
  whitenAdvantages: { default: true, doc: "whiten advantages over the batch's valid tokens" },
  ptxCoef: {
    default: 0,
    doc: "PPO-ptx: γ_ptx, weight of the LM loss on a pretraining batch per minibatch (0 = off)",
    min: 0,
  },
  ptxBatchSize: { default: 4, doc: "PPO-ptx sequences per minibatch", min: 1, integer: true },
  ptxMaxLength: { default: 64, doc: "PPO-ptx tokens per sequence", min: 2, integer: true },
  seed: { default: 0, doc: "rollout sampling seed", integer: true },
};

/** The section schemas of a sectioned config (`{ run: RUN_SCHEMA, sft: SFT_SCHEMA, … }`). */
export type SectionSchemas = Record<string, Schema<unknown>>;

/**
 * Resolves a sectioned config: `overrides` are nested (`{ sft: { steps: 10 } }`) or dotted
 * (`{ "sft.steps": 10 }`) and are validated and merged over `base` section by section;
 * unknown sections and keys are {@link ConfigError}s naming them.
 *
 * @example
 * ```ts
 * import { resolveSections, SFT_SCHEMA, defaults } from "../mod.ts";
 * const sections = { sft: SFT_SCHEMA };
 * const cfg = resolveSections(sections, { "sft.steps": 10 }, { sft: defaults(SFT_SCHEMA) });
 * console.log(cfg.sft.steps); // 10
 * ```
 */
export function resolveSections<C>(
  schemas: SectionSchemas,
  overrides: Record<string, unknown>,
  base: C,
): C {
  const names = Object.keys(schemas);
  const nested: Record<string, Record<string, unknown>> = Object.fromEntries(
    names.map((s) => [s, {}]),
  );
  for (const [k, v] of Object.entries(overrides)) {
    const dot = k.indexOf(".");
    const sec = dot > 0 ? k.slice(0, dot) : k;
    if (!(sec in nested)) {
      throw new ConfigError(
        dot > 0
          ? `unknown config section "${sec}" in "${k}" (${names.join(", ")})`
          : `unknown config key "${k}": use a section (${names.map((n) => `${n}.`).join(", ")})`,
      );
    }
    if (dot > 0) nested[sec][k.slice(dot + 1)] = v;
    else if (typeof v === "object" && v !== null) Object.assign(nested[sec], v);
    else throw new ConfigError(`config key "${k}" must be a section object`);
  }
  const b = base as Record<string, unknown>;
  return Object.fromEntries(
    names.map((s) => [s, resolveConfig(schemas[s], nested[s], b[s], `${s}.`)]),
  ) as C;
}
