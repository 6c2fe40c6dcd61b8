/**
 * The direct preference methods on your own data: DPO (any loss type, SimPO included) or KTO of
 * a Hugging Face OPT checkpoint (`data.policy`) against a frozen reference (`data.reference`,
 * default: the policy's own starting weights; SimPO loads none), on `{prompt, chosen,
 * rejected}` / hh-rlhf pairs (`data.pairs`) or `{prompt, completion, label}` examples
 * (`data.kto`). The tokenizer comes from `vocab.json`/`merges.txt` (`data.tokenizer`, default
 * the policy folder), or is the byte tokenizer for a 260-token vocabulary.
 *
 * Reported (no gold score on real data): the implicit reward model on held-out pairs before and
 * after (`eval/rewards/accuracies`, `eval/rewards/margins`; DPO only), fresh samples on held-out
 * prompts with their implicit reward `β·(ℓ_θ − ℓ_ref)` before and after, and the KL to the
 * reference. `deno task train --method=dpo|ipo|hinge|robust|simpo|kto --data.policy=DIR …`.
 *
 * @module
 */

import type { Gpu } from "../kernels/runtime.ts";
import { loadOptModel, saveOptModel } from "../model/checkpoint.ts";
import type { OptModel } from "../model/opt.ts";
import { BpeTokenizer, ByteTokenizer, type Tokenizer } from "../model/tokenizer.ts";
import {
  type CheckpointConfig,
  checkpointFields,
  ConfigError,
  defaults,
  runNameField,
  type Schema,
  type SectionSchemas,
} from "./config.ts";
import {
  DataError,
  decodeText,
  type KtoExample,
  type PairExample,
  readKto,
  readPairs,
} from "./data.ts";
import { DPO_SCHEMA, type DpoConfig, DpoTrainer, evaluatePreferences } from "./dpo.ts";
import { KTO_SCHEMA, type KtoConfig, KtoTrainer } from "./kto.ts";
import { implicitReward } from "./logprobs.ts";
import type { PipelineDefinition, Stage, StageContext } from "./pipeline.ts";
import { deriveSeed } from "./random.ts";
import { RECIPE_RUN_SCHEMA, type RecipeIo } from "./recipe.ts";
import { sampleAndScore, type ScoredSample } from "./rollout.ts";
import type { Trainer } from "./types.ts";

/** Run-level settings. */
export interface PreferenceRunConfig extends CheckpointConfig {
  /**
   * run name (output under <out>/<name>/): letters, digits, '.', '_', '-' (default
   * "checkpoint-dpo")
   */
  name: string;
  /** seed of the data order and the samples (default 1) */
  seed: number;
  /** held-out prompts sampled and scored before and after PPO (default 16) */
  evalPrompts: number;
  /** temperature of the evaluation samples (default 0.7) */
  evalTemperature: number;
  /** token budget of the evaluation samples (default 32) */
  maxNewTokens: number;
}

/** Where the checkpoints and data are. */
export interface PreferenceFilesConfig {
  /** policy checkpoint folder (HF OPT: config.json, model.safetensors) (default "") */
  policy: string;
  /** reference checkpoint folder (default: the policy's) (default "") */
  reference: string;
  /**
   * folder with vocab.json and merges.txt (default: the policy folder; none for a 260-token byte
   * vocabulary) (default "")
   */
  tokenizer: string;
  /** DPO pairs JSONL ({prompt,chosen,rejected} or hh-rlhf; .gz ok) (default "") */
  pairs: string;
  /** KTO examples JSONL ({prompt, completion, label}; .gz ok) (default "") */
  kto: string;
  /**
   * held-out pairs / examples (default: the last data.heldOut records of the training file)
   * (default "")
   */
  evalPairs: string;
  /** records held out when evalPairs is not given (default 64) */
  heldOut: number;
}

/** The run section. */
export const PREFERENCE_RUN_SCHEMA: Schema<PreferenceRunConfig> = {
  name: runNameField("checkpoint-dpo"),
  seed: { default: 1, doc: "seed of the data order and the samples", integer: true },
  ...checkpointFields(100, "DPO / KTO"),
  evalPrompts: RECIPE_RUN_SCHEMA.evalPrompts,
  evalTemperature: RECIPE_RUN_SCHEMA.evalTemperature,
  maxNewTokens: {
    default: 32,
    doc: "token budget of the evaluation samples",
    min: 1,
    integer: true,
  },
};

/** The data section. */
export const PREFERENCE_FILES_SCHEMA: Schema<PreferenceFilesConfig> = {
  policy: { default: "", doc: "policy checkpoint folder (HF OPT: config.json, model.safetensors)" },
  reference: { default: "", doc: "reference checkpoint folder (default: the policy's)" },
  tokenizer: {
    default: "",
    doc: "folder with vocab.json and merges.txt (default: the policy folder; none for a " +
      "260-token byte vocabulary)",
  },
  pairs: { default: "", doc: "DPO pairs JSONL ({prompt,chosen,rejected} or hh-rlhf; .gz ok)" },
  kto: { default: "", doc: "KTO examples JSONL ({prompt, completion, label}; .gz ok)" },
  evalPairs: {
    default: "",
    doc: "held-out pairs / examples (default: the last data.heldOut records of the training file)",
  },
  heldOut: {
    default: 64,
    doc: "records held out when evalPairs is not given",
    min: 1,
    integer: true,
  },
};

/** A `checkpoint-dpo` config. */
export interface CheckpointDpoConfig {
  /** The `run.` section. */
  run: PreferenceRunConfig;
  /** The `data.` section (checkpoint folders and data files). */
  data: PreferenceFilesConfig;
  /** The `dpo.` section. */
  dpo: DpoConfig;
}

/** A `checkpoint-kto` config. */
export interface CheckpointKtoConfig {
  /** The `run.` section. */
  run: PreferenceRunConfig;
  /** The `data.` section (checkpoint folders and data files). */
  data: PreferenceFilesConfig;
  /** The `kto.` section. */
  kto: KtoConfig;
}

/** The config of either checkpoint preference pipeline (`checkpoint-dpo`, `checkpoint-kto`). */
export type CheckpointPreferenceConfig = CheckpointDpoConfig | CheckpointKtoConfig;

/** What the stage starts from: the reader, the tokenizer, the data and its held-out part. */
export interface CheckpointPreferenceState {
  /** How files are read. */
  io: RecipeIo;
  /** The policy's tokenizer. */
  tok: Tokenizer;
  /** Training examples (pairs for DPO, labelled completions for KTO). */
  train: PairExample[] | KtoExample[];
  /** Held-out examples of the same kind. */
  heldOut: PairExample[] | KtoExample[];
}

type Ctx = StageContext<CheckpointPreferenceConfig, CheckpointPreferenceState>;

function join(dir: string, file: string): string {
  return dir.endsWith("/") ? dir + file : `${dir}/${file}`;
}

async function loadModel(io: RecipeIo, dir: string, gpu: Gpu, frozen: boolean): Promise<OptModel> {
  const config = new TextDecoder().decode(await io.read(join(dir, "config.json")));
  return loadOptModel(gpu, config, await io.read(join(dir, "model.safetensors")), { frozen }).model;
}

/** BPE from vocab.json/merges.txt, or the byte tokenizer for a 260-token vocabulary. */
async function loadTokenizer(io: RecipeIo, cfg: CheckpointPreferenceConfig): Promise<Tokenizer> {
  const dir = cfg.data.tokenizer || cfg.data.policy;
  const text = async (p: string) => await decodeText(await io.read(p), p);
  let vocab: string | undefined;
  try {
    vocab = await text(join(dir, "vocab.json"));
  } catch (e) {
    // absent means "no BPE files here"; unreadable or not UTF-8 is the user's error to see
    if ((e as Error)?.name !== "NotFound") throw e;
  }
  if (vocab !== undefined) return BpeTokenizer.fromText(vocab, await text(join(dir, "merges.txt")));
  const config = JSON.parse(await text(join(cfg.data.policy, "config.json")));
  if (config.vocab_size === 260) return new ByteTokenizer();
  throw new ConfigError(
    `no vocab.json in ${dir} and the policy's vocabulary is ${config.vocab_size} tokens ` +
      `(the byte tokenizer needs 260): give data.tokenizer`,
  );
}

/** Reads the training file and its held-out part; errors name the key. */
async function loadData(io: RecipeIo, cfg: CheckpointPreferenceConfig, method: "dpo" | "kto") {
  const d = cfg.data, file = method === "dpo" ? d.pairs : d.kto;
  const read = async (p: string) => {
    const t = await decodeText(await io.read(p), p);
    return method === "dpo" ? readPairs(t, p) : readKto(t, p);
  };
  let train = await read(file);
  let heldOut;
  if (d.evalPairs) heldOut = await read(d.evalPairs);
  else {
    if (train.length <= d.heldOut) {
      throw new ConfigError(
        `data.${method === "dpo" ? "pairs" : "kto"} has ${train.length} records: not enough to ` +
          `hold out data.heldOut = ${d.heldOut} (give data.evalPairs or lower it)`,
      );
    }
    heldOut = train.slice(train.length - d.heldOut);
    train = train.slice(0, train.length - d.heldOut);
  }
  if (heldOut.length === 0) throw new DataError(`data.evalPairs (${d.evalPairs}) has no records`);
  return { train, heldOut } as { train: PairExample[] | KtoExample[]; heldOut: typeof train };
}

/** Checks before anything is read: the method's inputs are named. */
function checkConfig(method: "dpo" | "kto") {
  return (cfg: CheckpointPreferenceConfig) => {
    const need = ["policy", method === "dpo" ? "pairs" : "kto"] as const;
    for (const k of need) {
      if (!cfg.data[k]) {
        throw new ConfigError(
          `data.${k} is required by --method=${method} on your own data ` +
            `(${PREFERENCE_FILES_SCHEMA[k].doc})`,
        );
      }
    }
  };
}

/** The stage: load, evaluate, train, evaluate, save. */
function methodStage(
  method: "dpo" | "kto",
): Stage<CheckpointPreferenceConfig, CheckpointPreferenceState> {
  return {
    name: method,
    doc: method === "dpo"
      ? "DPO / IPO / hinge / robust / SimPO of a checkpoint"
      : "KTO of a checkpoint",
    async run(ctx: Ctx) {
      const { gpu, cfg, state } = ctx, d = cfg.data;
      const m = method === "dpo"
        ? (cfg as CheckpointDpoConfig).dpo
        : (cfg as CheckpointKtoConfig).kto;
      const simpo = method === "dpo" && (m as DpoConfig).lossType === "simpo";
      const policy = await loadModel(state.io, d.policy, gpu, false);
      ctx.own(policy);
      if (policy.config.vocab_size < state.tok.vocabSize) {
        throw new ConfigError(
          `the tokenizer has ${state.tok.vocabSize} tokens but the policy's vocabulary is ` +
            `${policy.config.vocab_size}`,
        );
      }
      // the reference also serves the implicit reward and KL of the samples (SimPO included)
      const reference = await loadModel(state.io, d.reference || d.policy, gpu, true);
      ctx.own(reference);
      const prompts = [...new Set(state.heldOut.map((x) => x.prompt))].slice(
        0,
        cfg.run.evalPrompts,
      );
      const sample = (p: OptModel) =>
        sampleAndScore(p, implicitReward(p, reference, m.beta), state.tok, prompts, {
          temperature: cfg.run.evalTemperature,
          seed: deriveSeed(cfg.run.seed, "evaluation"),
          maxNewTokens: cfg.run.maxNewTokens,
          maxPromptLength: Math.max(
            1,
            policy.config.max_position_embeddings - cfg.run.maxNewTokens,
          ),
        });
      const evalPairs = async () =>
        method === "dpo"
          ? await evaluatePreferences(
            policy,
            simpo ? undefined : reference,
            state.tok,
            state.heldOut as PairExample[],
            m as DpoConfig,
          )
          : undefined;
      const before = await sample(policy);
      ctx.hooks.onSamples?.("before", noGold(before));
      const trainer: Trainer = method === "dpo"
        ? new DpoTrainer(
          policy,
          simpo ? undefined : reference,
          state.tok,
          state.train as PairExample[],
          {
            ...(m as DpoConfig),
            seed: m.seed + cfg.run.seed,
          },
        )
        : new KtoTrainer(policy, reference, state.tok, state.train as KtoExample[], {
          ...(m as KtoConfig),
          seed: m.seed + cfg.run.seed,
        });
      for (const w of (trainer as { warnings?: string[] }).warnings ?? []) ctx.log(`warning: ${w}`);
      await ctx.train(trainer, { logEvery: 10, checkpointEvery: cfg.run.stepCheckpointEvery });
      await ctx.hooks.saveCheckpoint?.(method, await saveOptModel(policy, { stage: method }));
      const after = await sample(policy);
      ctx.hooks.onSamples?.("after", noGold(after));
      const held = await evalPairs();
      const mean = (s: ScoredSample[]) => s.reduce((a, x) => a + x.score, 0) / s.length;
      if (held) {
        ctx.log(
          `held-out pairs: implicit-reward accuracy ${held.accuracy.toFixed(3)}, margin ` +
            held.margin.toFixed(3),
        );
      }
      Object.assign(ctx.summary, {
        ...(held
          ? { "eval/rewards/accuracies": held.accuracy, "eval/rewards/margins": held.margin }
          : {}),
        "score/before": mean(before),
        "score/after": mean(after),
        "objective/kl": mean(after) / m.beta,
        samples_before: noGold(before.slice(0, 8)),
        samples_after: noGold(after.slice(0, 8)),
      });
    },
  };
}

function noGold(s: readonly ScoredSample[]) {
  return s.map((x) => ({ prompt: x.prompt, response: x.response, score: x.score, gold: NaN }));
}

const RUN_DEFAULTS = defaults(PREFERENCE_RUN_SCHEMA);

/** `checkpoint-dpo` (`method: "dpo"`) or `checkpoint-kto` over files read through `io`. */
export function checkpointPreferencePipeline(
  io: RecipeIo,
  method: "dpo" | "kto",
): PipelineDefinition<CheckpointPreferenceConfig, CheckpointPreferenceState> {
  const schema = method === "dpo" ? DPO_SCHEMA : KTO_SCHEMA;
  return {
    name: `checkpoint-${method}`,
    doc: `${method.toUpperCase()} of a local OPT checkpoint on your preference data`,
    sections: {
      run: PREFERENCE_RUN_SCHEMA,
      data: PREFERENCE_FILES_SCHEMA,
      [method]: schema,
    } as unknown as SectionSchemas,
    defaults: {
      run: { ...RUN_DEFAULTS, name: `checkpoint-${method}` },
      data: defaults(PREFERENCE_FILES_SCHEMA),
      [method]: { ...defaults(schema as Schema<DpoConfig>), lr: 5e-6 },
    } as unknown as CheckpointPreferenceConfig,
    stages: [methodStage(method)],
    validate: checkConfig(method),
    init: async (_gpu, cfg) => {
      checkConfig(method)(cfg);
      const { train, heldOut } = await loadData(io, cfg, method);
      return { io, tok: await loadTokenizer(io, cfg), train, heldOut };
    },
  };
}
