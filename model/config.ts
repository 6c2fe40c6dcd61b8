/**
 * OPT model configuration with Hugging Face `OPTConfig` field names, validation with named
 * errors, and presets.
 *
 * @module
 */

/** Raised for an invalid model configuration or checkpoint that does not fit it. */
export class ModelConfigError extends Error {
  /**
   * Creates the error.
   * @param message the offending field and its value
   */
  constructor(message: string) {
    super(message);
    this.name = "ModelConfigError";
  }
}

/** The fields of HF `OPTConfig` this implementation uses (same names, same meaning). */
export interface OptConfig {
  /** Token vocabulary size (rows of the embedding and of the tied LM head). */
  vocab_size: number;
  /** Width of the decoder stream. */
  hidden_size: number;
  /** Decoder layers. */
  num_hidden_layers: number;
  /** Attention heads (hidden_size must divide by it). */
  num_attention_heads: number;
  /** Width of each layer's feed-forward block. */
  ffn_dim: number;
  /** Positions the learned position table holds (OPT adds an offset of 2). */
  max_position_embeddings: number;
  /** Pre-LN blocks (OPT-125m) when true; post-LN (OPT-350m) when false. */
  do_layer_norm_before: boolean;
  /** Token embedding width; `project_in`/`project_out` exist when it differs from hidden. */
  word_embed_proj_dim: number;
  /** The feed-forward activation (OPT uses ReLU). */
  activation_function: "relu";
  /** Padding token id. */
  pad_token_id: number;
  /** Beginning-of-sequence token id. */
  bos_token_id: number;
  /** End-of-sequence token id. */
  eos_token_id: number;
}

/** Tiny configs for tests and the built-in task. */
export const OPT_PRESETS: Record<string, OptConfig> = {
  /** 2 layers, hidden 32, 4 heads, ffn 64, 128 positions, byte vocabulary (260). */
  "tiny": {
    vocab_size: 260,
    hidden_size: 32,
    num_hidden_layers: 2,
    num_attention_heads: 4,
    ffn_dim: 64,
    max_position_embeddings: 128,
    do_layer_norm_before: true,
    word_embed_proj_dim: 32,
    activation_function: "relu",
    pad_token_id: 1,
    bos_token_id: 2,
    eos_token_id: 2,
  },
  /** OPT-125m's shape (random weights unless loaded). */
  "opt-125m": {
    vocab_size: 50272,
    hidden_size: 768,
    num_hidden_layers: 12,
    num_attention_heads: 12,
    ffn_dim: 3072,
    max_position_embeddings: 2048,
    do_layer_norm_before: true,
    word_embed_proj_dim: 768,
    activation_function: "relu",
    pad_token_id: 1,
    bos_token_id: 2,
    eos_token_id: 2,
  },
  /** OPT-350m's shape: post-LN, 512-wide embeddings projected to 1024. */
  "opt-350m": {
    vocab_size: 50272,
    hidden_size: 1024,
    num_hidden_layers: 24,
    num_attention_heads: 16,
    ffn_dim: 4096,
    max_position_embeddings: 2048,
    do_layer_norm_before: false,
    word_embed_proj_dim: 512,
    activation_function: "relu",
    pad_token_id: 1,
    bos_token_id: 2,
    eos_token_id: 2,
  },
};

const INT_FIELDS = [
  "vocab_size",
  "hidden_size",
  "num_hidden_layers",
  "num_attention_heads",
  "ffn_dim",
  "max_position_embeddings",
  "word_embed_proj_dim",
  "pad_token_id",
  "bos_token_id",
  "eos_token_id",
] as const;

/**
 * Validates a config object (e.g. a parsed HF `config.json`; extra HF fields are ignored) and
 * returns a complete {@link OptConfig}. `word_embed_proj_dim` defaults to `hidden_size`.
 *
 * @example
 * ```ts
 * import { OPT_PRESETS, parseOptConfig } from "../mod.ts";
 * const cfg = parseOptConfig({ ...OPT_PRESETS.tiny, num_hidden_layers: 3 });
 * ```
 */
export function parseOptConfig(raw: unknown): OptConfig {
  if (typeof raw !== "object" || raw === null) {
    throw new ModelConfigError("config must be a JSON object");
  }
  const r = raw as Record<string, unknown>;
  const cfg: Record<string, unknown> = {
    word_embed_proj_dim: r.hidden_size,
    do_layer_norm_before: true,
    activation_function: "relu",
    pad_token_id: 1,
    bos_token_id: 2,
    eos_token_id: 2,
  };
  for (const k of Object.keys(r)) if (r[k] !== undefined && r[k] !== null) cfg[k] = r[k];
  for (const k of INT_FIELDS) {
    const v = cfg[k];
    if (!Number.isInteger(v) || (v as number) < 0) {
      throw new ModelConfigError(
        `config.${k} must be a non-negative integer, got ${JSON.stringify(v)}`,
      );
    }
  }
  if (typeof cfg.do_layer_norm_before !== "boolean") {
    throw new ModelConfigError("config.do_layer_norm_before must be a boolean");
  }
  if (cfg.activation_function !== "relu") {
    throw new ModelConfigError(
      `config.activation_function ${
        JSON.stringify(cfg.activation_function)
      } is not supported (relu)`,
    );
  }
  const c = cfg as unknown as OptConfig;
  if (c.hidden_size % c.num_attention_heads !== 0) {
    throw new ModelConfigError(
      `hidden_size ${c.hidden_size} is not divisible by num_attention_heads ${c.num_attention_heads}`,
    );
  }
  for (const k of ["vocab_size", "hidden_size", "num_attention_heads", "ffn_dim"] as const) {
    if (c[k] === 0) throw new ModelConfigError(`config.${k} must be positive`);
  }
  for (const k of ["pad_token_id", "bos_token_id", "eos_token_id"] as const) {
    if (c[k] >= c.vocab_size) {
      throw new ModelConfigError(
        `config.${k} ${c[k]} is outside the vocabulary (vocab_size ${c.vocab_size})`,
      );
    }
  }
  return {
    vocab_size: c.vocab_size,
    hidden_size: c.hidden_size,
    num_hidden_layers: c.num_hidden_layers,
    num_attention_heads: c.num_attention_heads,
    ffn_dim: c.ffn_dim,
    max_position_embeddings: c.max_position_embeddings,
    do_layer_norm_before: c.do_layer_norm_before,
    word_embed_proj_dim: c.word_embed_proj_dim,
    activation_function: "relu",
    pad_token_id: c.pad_token_id,
    bos_token_id: c.bos_token_id,
    eos_token_id: c.eos_token_id,
  };
}

/** A named parameter of the model: HF name, shape, whether AdamW decays it, initialiser. */
export interface ParamSpec {
  /** HF parameter name. */
  name: string;
  /** Shape (row-major). */
  shape: number[];
  /** Whether AdamW's weight decay applies (weight matrices yes; biases, norms no). */
  decay: boolean;
  /** How {@link ParamStore.init} fills it. */
  init: "normal" | "zeros" | "ones";
  /** Standard deviation for "normal" (default: the store's `init` std, 0.02). */
  std?: number;
}

/**
 * The parameters of an OPT decoder (HF names with the `model.` prefix), weight matrices first
 * (decayed) then biases and layernorm parameters. The LM head is tied to `embed_tokens`.
 * With `valueHead`, adds `v_head.weight` `[1, word_embed_proj_dim]` (critic / reward model).
 */
export function optParamSpecs(c: OptConfig, opts: { valueHead?: boolean } = {}): ParamSpec[] {
  const C = c.hidden_size, E = c.word_embed_proj_dim, F = c.ffn_dim;
  const d = "model.decoder.";
  const mats: ParamSpec[] = [], vecs: ParamSpec[] = [];
  const mat = (name: string, shape: number[]) =>
    mats.push({ name, shape, decay: true, init: "normal" });
  const vec = (name: string, n: number, init: "zeros" | "ones") =>
    vecs.push({ name, shape: [n], decay: false, init });
  mat(`${d}embed_tokens.weight`, [c.vocab_size, E]);
  mat(`${d}embed_positions.weight`, [c.max_position_embeddings + 2, C]);
  if (E !== C) {
    mat(`${d}project_in.weight`, [C, E]);
    mat(`${d}project_out.weight`, [E, C]);
  }
  for (let l = 0; l < c.num_hidden_layers; l++) {
    const p = `${d}layers.${l}.`;
    for (const m of ["q_proj", "k_proj", "v_proj", "out_proj"]) {
      mat(`${p}self_attn.${m}.weight`, [C, C]);
      vec(`${p}self_attn.${m}.bias`, C, "zeros");
    }
    vec(`${p}self_attn_layer_norm.weight`, C, "ones");
    vec(`${p}self_attn_layer_norm.bias`, C, "zeros");
    mat(`${p}fc1.weight`, [F, C]);
    vec(`${p}fc1.bias`, F, "zeros");
    mat(`${p}fc2.weight`, [C, F]);
    vec(`${p}fc2.bias`, C, "zeros");
    vec(`${p}final_layer_norm.weight`, C, "ones");
    vec(`${p}final_layer_norm.bias`, C, "zeros");
  }
  if (c.do_layer_norm_before) {
    vec(`${d}final_layer_norm.weight`, C, "ones");
    vec(`${d}final_layer_norm.bias`, C, "zeros");
  }
  if (opts.valueHead) mat("v_head.weight", [1, E]);
  return [...mats, ...vecs];
}
