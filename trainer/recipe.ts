/**
 * RLHF on real checkpoints: the Simple_RLHF_tiny recipe (SPEC §1, §8) — a reward model trained
 * from a Hugging Face OPT checkpoint (OPT-125m) with the token-level loss on hh-rlhf pairs, then
 * PPO of a LoRA-adapted actor (OPT-350m, r = α = 128 on q,k,v,out_proj,fc1,fc2) with the critic
 * started from the reward model and the reference policy = the actor with adapters disabled.
 *
 * Runtime-agnostic: files are read through {@link RecipeIo} (the CLI reads the disk, a page can
 * `fetch`), checkpoints and state go through the same {@link PipelineHooks} as the built-in
 * pipeline, so `--resume`, `--stage` and the report work the same way.
 *
 * @module
 */

import type { Gpu } from "../kernels/runtime.ts";
import { loadOptModel, saveOptModel } from "../model/checkpoint.ts";
import { parseOptConfig } from "../model/config.ts";
import type { LoraTarget } from "../model/lora.ts";
import type { OptModel } from "../model/opt.ts";
import { savePeftAdapter } from "../model/peft.ts";
import { BpeTokenizer, type Tokenizer } from "../model/tokenizer.ts";
import {
  type CheckpointConfig,
  checkpointFields,
  ConfigError,
  defaults,
  PPO_SCHEMA,
  type PpoConfig,
  resolveSections,
  RM_SCHEMA,
  type RmConfig,
  runNameField,
  type Schema,
  type SectionSchemas,
} from "./config.ts";
import {
  DataError,
  decodeText,
  type PairExample,
  type RankedExample,
  readPairs,
  readPrompts,
  readRanked,
  readSft,
} from "./data.ts";
import {
  type PipelineDefinition,
  type PipelineHooks,
  type PipelineSummary,
  type RunOptions,
  runPipeline,
  type Stage,
  type StageContext,
} from "./pipeline.ts";
import { PpoTrainer } from "./ppo.ts";
import { deriveSeed } from "./random.ts";
import {
  evaluateRanking,
  evaluateRewardModel,
  rankedK,
  RankingRewardTrainer,
  RewardTrainer,
} from "./rm.ts";
import { sampleAndScore } from "./rollout.ts";

/** Run-level settings of a recipe. */
export interface RecipeRunConfig extends CheckpointConfig {
  /**
   * run name (output under <out>/<name>/): letters, digits, '.', '_', '-' (default
   * "simple-rlhf-tiny")
   */
  name: string;
  /** seed of adapter initialisation and sampling (default 1) */
  seed: number;
  /** held-out prompts sampled and scored before and after PPO (default 16) */
  evalPrompts: number;
  /** temperature of the evaluation samples (default 0.7) */
  evalTemperature: number;
}

/** Where the recipe's checkpoints and data are (paths for the CLI, URLs in a page). */
export interface RecipeDataConfig {
  /**
   * actor checkpoint folder (HF OPT: config.json, model.safetensors), e.g. opt-350m (default "")
   */
  actor: string;
  /**
   * critic/reward base checkpoint folder (HF OPT), e.g. opt-125m; a v_head is added (default "")
   */
  critic: string;
  /** folder with vocab.json and merges.txt (default: the actor folder) (default "") */
  tokenizer: string;
  /** preference pairs JSONL (hh-rlhf or {prompt,chosen,rejected}; .gz ok) (default "") */
  pairs: string;
  /** held-out pairs JSONL (default: the last heldOutPairs records of pairs) (default "") */
  evalPairs: string;
  /** pairs held out of `pairs` when evalPairs is not given (default 64) */
  heldOutPairs: number;
  /** PPO prompts JSONL ({prompt} or hh-rlhf; default: the training pairs' prompts) (default "") */
  prompts: string;
  /** PPO-ptx data JSONL ({prompt, completion}); needed when ppo.ptxCoef > 0 (default "") */
  ptx: string;
}

/** LoRA adapters of the actor. */
export interface RecipeLoraConfig {
  /** LoRA rank r (default 128) */
  r: number;
  /** LoRA α (the update is scaled by α/r) (default 128) */
  alpha: number;
  /** comma-separated adapted linears (default "q_proj,k_proj,v_proj,out_proj,fc1,fc2") */
  targets: string;
}

/** A complete recipe configuration. */
export interface RecipeConfig {
  /** The `run.` section. */
  run: RecipeRunConfig;
  /** The `data.` section (checkpoint folders and data files). */
  data: RecipeDataConfig;
  /** The `lora.` section. */
  lora: RecipeLoraConfig;
  /** The `rm.` section. */
  rm: RmConfig;
  /** The `ppo.` section. */
  ppo: PpoConfig;
}

/** The run section's schema. */
export const RECIPE_RUN_SCHEMA: Schema<RecipeRunConfig> = {
  name: runNameField("simple-rlhf-tiny"),
  seed: { default: 1, doc: "seed of adapter initialisation and sampling", integer: true },
  ...checkpointFields(100, "reward-model"),
  evalPrompts: {
    default: 16,
    doc: "held-out prompts sampled and scored before and after PPO",
    min: 1,
    integer: true,
  },
  evalTemperature: { default: 0.7, doc: "temperature of the evaluation samples", min: 0 },
};

/** The data section's schema. */
export const RECIPE_DATA_SCHEMA: Schema<RecipeDataConfig> = {
  actor: {
    default: "",
    doc: "actor checkpoint folder (HF OPT: config.json, model.safetensors), e.g. opt-350m",
  },
  critic: {
    default: "",
    doc: "critic/reward base checkpoint folder (HF OPT), e.g. opt-125m; a v_head is added",
  },
  tokenizer: {
    default: "",
    doc: "folder with vocab.json and merges.txt (default: the actor folder)",
  },
  pairs: {
    default: "",
    doc: "preference pairs JSONL (hh-rlhf or {prompt,chosen,rejected}; .gz ok)",
  },
  evalPairs: {
    default: "",
    doc: "held-out pairs JSONL (default: the last heldOutPairs records of pairs)",
  },
  heldOutPairs: {
    default: 64,
    doc: "pairs held out of `pairs` when evalPairs is not given",
    min: 1,
    integer: true,
  },
  prompts: {
    default: "",
    doc: "PPO prompts JSONL ({prompt} or hh-rlhf; default: the training pairs' prompts)",
  },
  ptx: {
    default: "",
    doc: "PPO-ptx data JSONL ({prompt, completion}); needed when ppo.ptxCoef > 0",
  },
};

/** The LoRA section's schema. */
export const RECIPE_LORA_SCHEMA: Schema<RecipeLoraConfig> = {
  r: { default: 128, doc: "LoRA rank r", min: 1, integer: true },
  alpha: { default: 128, doc: "LoRA α (the update is scaled by α/r)", min: 0 },
  targets: {
    default: "q_proj,k_proj,v_proj,out_proj,fc1,fc2",
    doc: "comma-separated adapted linears",
  },
};

/** The section schemas of a recipe config. */
export const RECIPE_SCHEMAS = {
  run: RECIPE_RUN_SCHEMA,
  data: RECIPE_DATA_SCHEMA,
  lora: RECIPE_LORA_SCHEMA,
  rm: RM_SCHEMA,
  ppo: PPO_SCHEMA,
} as const;

/**
 * Simple_RLHF_tiny: OPT-350m actor + LoRA r = α = 128 on q,k,v,out_proj,fc1,fc2; OPT-125m
 * critic/reward with the token-level RM loss; γ = 1, λ = 0.95, β = 0.1 (k1), score clip ±5,
 * ratio clip 0.2 (0.8–1.2), value clip 0.2, actor lr 1e-5, critic lr 5e-5, batch 4. The number
 * of steps and sequence lengths are ours (the seed trains the RM for an epoch of 60k pairs).
 */
export const SIMPLE_RLHF_TINY: RecipeConfig = {
  run: defaults(RECIPE_RUN_SCHEMA),
  data: defaults(RECIPE_DATA_SCHEMA),
  lora: defaults(RECIPE_LORA_SCHEMA),
  rm: {
    ...defaults(RM_SCHEMA),
    loss: "token",
    steps: 2000,
    batchSize: 4,
    lr: 5e-5,
    maxLength: 256,
  },
  ppo: {
    ...defaults(PPO_SCHEMA),
    iterations: 500,
    batchSize: 4,
    miniBatchSize: 2,
    ppoEpochs: 2,
    maxNewTokens: 64,
    maxPromptLength: 192,
    temperature: 1.0,
    actorLr: 1e-5,
    criticLr: 5e-5,
    gamma: 1,
    lambda: 0.95,
    klCoef: 0.1,
    klEstimator: "k1",
    scoreClip: 5,
    clipRange: 0.2,
    clipRangeValue: 0.2,
    ptxBatchSize: 2,
    ptxMaxLength: 256,
  },
};

/** Recipe presets by name. */
export const RECIPE_PRESETS: Record<string, RecipeConfig> = {
  "simple-rlhf-tiny": SIMPLE_RLHF_TINY,
};

/**
 * Builds a recipe config from a preset and overrides (nested `{ppo: {iterations: 5}}` or dotted
 * `{"ppo.iterations": 5}`); unknown sections and keys are errors naming them.
 */
export function resolveRecipeConfig(
  overrides: Record<string, unknown>,
  base: RecipeConfig = SIMPLE_RLHF_TINY,
): RecipeConfig {
  const out = resolveSections(RECIPE_SCHEMAS as unknown as SectionSchemas, overrides, base);
  loraTargets(out.lora.targets); // validate early
  return out;
}

function loraTargets(s: string): LoraTarget[] {
  const known = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"];
  const t = s.split(",").map((x) => x.trim()).filter((x) => x);
  for (const x of t) {
    if (!known.includes(x)) {
      throw new ConfigError(`lora.targets: unknown module "${x}" (known: ${known.join(", ")})`);
    }
  }
  if (!t.length) throw new ConfigError("lora.targets: name at least one module");
  return t as LoraTarget[];
}

/** How the recipe reads its inputs: bytes of a path (CLI) or URL (browser). */
export interface RecipeIo {
  /**
   * The bytes at `path`; for a missing optional file (e.g. `vocab.json`) it rejects with an error
   * named `"NotFound"` (as `Deno.readFile` does), any other rejection is reported as is.
   */
  read(path: string): Promise<Uint8Array>;
  /**
   * Imports a user's module (e.g. a grader, `--reward=./my_grader.ts`), resolving relative
   * paths against the working directory; absent where modules cannot be loaded.
   */
  importModule?(path: string): Promise<Record<string, unknown>>;
}

function join(dir: string, file: string): string {
  return dir.endsWith("/") ? dir + file : `${dir}/${file}`;
}

/** The inputs named by `cfg.data`, read and parsed. */
export interface RecipeInputs {
  /** The actor's tokenizer. */
  tokenizer: Tokenizer;
  /** Reward-model training pairs. */
  pairs: PairExample[];
  /** Held-out pairs for the reward model's accuracy. */
  evalPairs: PairExample[];
  /** With `rm.loss=kwise`: the ranked training examples and their held-out part. */
  ranked?: RankedExample[];
  /** Held-out ranked examples (with `rm.loss=kwise`). */
  evalRanked?: RankedExample[];
  /** PPO rollout prompts. */
  prompts: string[];
  /** Held-out prompts for the before/after evaluation. */
  evalPrompts: string[];
  /** PPO-ptx examples. */
  ptx?: { prompt: string; completion: string }[];
}

/**
 * Checks across fields, before anything is read or written: the required inputs are named, PPO-ptx
 * has data, the LoRA targets exist. Errors are `ConfigError`s naming the key.
 */
export function checkRecipeConfig(cfg: RecipeConfig): void {
  const d = cfg.data;
  for (const k of ["actor", "critic", "pairs"] as const) {
    if (!d[k]) {
      throw new ConfigError(
        `data.${k} is required by the checkpoint recipe (${RECIPE_DATA_SCHEMA[k].doc})`,
      );
    }
  }
  if (cfg.ppo.ptxCoef > 0 && !d.ptx) {
    throw new ConfigError("ppo.ptxCoef > 0 needs data.ptx (a {prompt, completion} JSONL file)");
  }
  loraTargets(cfg.lora.targets);
}

/** Reads the tokenizer and data sets that `cfg.data` names; errors name the missing key. */
export async function loadRecipeInputs(cfg: RecipeConfig, io: RecipeIo): Promise<RecipeInputs> {
  const d = cfg.data;
  checkRecipeConfig(cfg);
  const text = async (p: string) => await decodeText(await io.read(p), p);
  const tokDir = d.tokenizer || d.actor;
  const tokenizer = BpeTokenizer.fromText(
    await text(join(tokDir, "vocab.json")),
    await text(join(tokDir, "merges.txt")),
  );
  const split = await trainingPairs(cfg, text);
  const { pairs, evalPairs } = split;
  const prompts = d.prompts
    ? readPrompts(await text(d.prompts), d.prompts).map((p) => p.prompt)
    : pairs.map((p) => p.prompt);
  const evalPrompts = [...new Set(evalPairs.map((p) => p.prompt))].slice(0, cfg.run.evalPrompts);
  const ptx = d.ptx ? readSft(await text(d.ptx), d.ptx) : undefined;
  const empty: [string, unknown[] | undefined][] = [
    [`data.pairs (${d.pairs})`, pairs],
    [`data.evalPairs (${d.evalPairs || "held out of data.pairs"})`, evalPairs],
    [`data.prompts (${d.prompts || "the pairs' prompts"})`, prompts],
    [`data.ptx (${d.ptx})`, ptx],
  ];
  for (const [what, xs] of empty) {
    if (xs && xs.length === 0) throw new DataError(`${what} has no records`);
  }
  // sequence lengths the models can hold, checked before anything trains
  for (const [key, dir] of [["data.actor", d.actor], ["data.critic", d.critic]] as const) {
    const c = parseOptConfig(JSON.parse(await text(join(dir, "config.json"))));
    const need = cfg.ppo.maxPromptLength + cfg.ppo.maxNewTokens;
    if (need > c.max_position_embeddings) {
      throw new ConfigError(
        `ppo.maxPromptLength ${cfg.ppo.maxPromptLength} + ppo.maxNewTokens ${cfg.ppo.maxNewTokens} ` +
          `= ${need} exceeds ${key}'s max_position_embeddings ${c.max_position_embeddings}`,
      );
    }
    if (key === "data.critic" && cfg.rm.maxLength > c.max_position_embeddings) {
      throw new ConfigError(
        `rm.maxLength ${cfg.rm.maxLength} exceeds ${key}'s max_position_embeddings ` +
          `${c.max_position_embeddings}`,
      );
    }
  }
  return { ...split, tokenizer, prompts, evalPrompts, ptx };
}

/**
 * The reward model's data and its held-out part: pairs, or with `rm.loss=kwise` ranked examples
 * `{prompt, responses[best…worst]}` (one K throughout) — their best/worst pairs then serve the
 * pairwise held-out accuracy and the prompts.
 */
async function trainingPairs(
  cfg: RecipeConfig,
  text: (p: string) => Promise<string>,
): Promise<Pick<RecipeInputs, "pairs" | "evalPairs" | "ranked" | "evalRanked">> {
  const d = cfg.data, kwise = cfg.rm.loss === "kwise";
  const read = async (p: string) =>
    kwise ? readRanked(await text(p), p) : readPairs(await text(p), p);
  let train: (PairExample | RankedExample)[] = await read(d.pairs), held;
  if (d.evalPairs) held = await read(d.evalPairs);
  else {
    if (train.length <= d.heldOutPairs) {
      throw new ConfigError(
        `data.pairs has ${train.length} ${kwise ? "rankings" : "pairs"}: not enough to hold ` +
          `out data.heldOutPairs = ${d.heldOutPairs} (give data.evalPairs or lower it)`,
      );
    }
    held = train.slice(train.length - d.heldOutPairs);
    train = train.slice(0, train.length - d.heldOutPairs);
  }
  if (!kwise) return { pairs: train as PairExample[], evalPairs: held as PairExample[] };
  const ranked = train as RankedExample[], evalRanked = held as RankedExample[];
  if (ranked.length) rankedK(ranked, `data.pairs (${d.pairs})`);
  const ends = (xs: RankedExample[]) =>
    xs.map((x) => ({ prompt: x.prompt, chosen: x.responses[0], rejected: x.responses.at(-1)! }));
  return { pairs: ends(ranked), evalPairs: ends(evalRanked), ranked, evalRanked };
}

async function loadCheckpoint(
  gpu: Gpu,
  io: RecipeIo,
  dir: string,
  opts: { valueHead?: boolean; frozen?: boolean },
): Promise<OptModel> {
  const config = new TextDecoder().decode(await io.read(join(dir, "config.json")));
  const weights = await io.read(join(dir, "model.safetensors"));
  return loadOptModel(gpu, config, weights, opts).model;
}

/** What the recipe's stages pass on: the inputs read, the reader, the reward model. */
export interface RecipeState {
  /** How inputs are read. */
  io: RecipeIo;
  /** The inputs, read and parsed. */
  inputs: RecipeInputs;
  /** The reward model, once its stage ran or was loaded. */
  rm?: OptModel;
}

type Ctx = StageContext<RecipeConfig, RecipeState>;

/** The reward model from `data.critic` (token-level loss by default), and its held-out test. */
const RECIPE_RM_STAGE: Stage<RecipeConfig, RecipeState> = {
  name: "rm",
  doc: "reward model from a local OPT checkpoint on preference pairs",
  async run(ctx: Ctx) {
    const { gpu, cfg, state } = ctx, inputs = state.inputs, tok = inputs.tokenizer;
    let rm = await ctx.finished({ valueHead: true });
    const trained = !rm;
    if (!rm) {
      rm = await loadCheckpoint(gpu, state.io, cfg.data.critic, { valueHead: true });
      ctx.log(
        `reward model: ${cfg.data.critic} (${rm.store.total} parameters), ${inputs.pairs.length} pairs`,
      );
      ctx.own(rm);
      const rmCfg = { ...cfg.rm, seed: cfg.rm.seed + cfg.run.seed };
      await ctx.train(
        inputs.ranked
          ? new RankingRewardTrainer(rm, tok, inputs.ranked, rmCfg)
          : new RewardTrainer(rm, tok, inputs.pairs, rmCfg),
        { logEvery: 10, checkpointEvery: cfg.run.stepCheckpointEvery },
      );
      await ctx.hooks.saveCheckpoint?.("rm", await saveOptModel(rm, { stage: "rm" }));
    } else ctx.own(rm);
    state.rm = rm;
    const rmEval = await evaluateRewardModel(rm, tok, inputs.evalPairs, {
      maxLength: cfg.rm.maxLength,
      batchSize: 8,
    });
    const stats: Record<string, number> = {
      "rm/accuracy": rmEval.accuracy,
      "rm/margin": rmEval.margin,
    };
    if (inputs.evalRanked) {
      stats["rm/kwise_accuracy"] = (await evaluateRanking(rm, tok, inputs.evalRanked, {
        maxLength: cfg.rm.maxLength,
        batchSize: 4,
      })).accuracy;
      ctx.log(`reward model K-wise accuracy ${stats["rm/kwise_accuracy"].toFixed(3)} (all pairs)`);
    }
    if (trained) await ctx.hooks.onMetrics?.("rm", stats);
    ctx.log(
      `reward model held-out accuracy ${
        rmEval.accuracy.toFixed(3)
      } on ${inputs.evalPairs.length} ` +
        `pairs, margin ${rmEval.margin.toFixed(3)}`,
    );
    Object.assign(ctx.summary, stats);
  },
};

/**
 * PPO of the LoRA-adapted `data.actor` (reference = adapters disabled) with the critic started
 * from the reward model; the PPO checkpoint is the merged actor, a plain HF OPT checkpoint.
 */
const RECIPE_PPO_STAGE: Stage<RecipeConfig, RecipeState> = {
  name: "ppo",
  doc: "PPO of a LoRA-adapted actor checkpoint against the reward model",
  async run(ctx: Ctx) {
    const { gpu, cfg, state } = ctx, inputs = state.inputs, tok = inputs.tokenizer;
    const actor = await loadCheckpoint(gpu, state.io, cfg.data.actor, { frozen: true });
    ctx.own(actor);
    if (actor.config.vocab_size < tok.vocabSize) {
      throw new ConfigError(
        `the tokenizer has ${tok.vocabSize} tokens but the actor's vocabulary is ` +
          `${actor.config.vocab_size}`,
      );
    }
    const lora = actor.attachLora(
      { r: cfg.lora.r, alpha: cfg.lora.alpha, targets: loraTargets(cfg.lora.targets) },
      cfg.run.seed,
    );
    // the critic starts from the RM with fresh AdamW moments; the reward model is frozen
    const critic = state.rm!.copy(), reward = state.rm!.copy({ frozen: true });
    ctx.own(critic, reward);
    state.rm!.store.dispose(); // copied twice: free the original now
    const evalOpts = {
      temperature: cfg.run.evalTemperature,
      seed: deriveSeed(cfg.run.seed, "evaluation"),
      maxNewTokens: cfg.ppo.maxNewTokens,
      maxPromptLength: cfg.ppo.maxPromptLength,
    };
    const mean = (s: { score: number }[]) => s.reduce((a, x) => a + x.score, 0) / s.length;
    const noGold = (s: { prompt: string; response: string; score: number }[]) =>
      s.map((x) => ({ prompt: x.prompt, response: x.response, score: x.score, gold: NaN }));
    const before = await sampleAndScore(actor, reward, tok, inputs.evalPrompts, evalOpts);
    ctx.log(`before PPO: reward-model score ${mean(before).toFixed(3)}`);
    ctx.hooks.onSamples?.("before", noGold(before));
    const trainer = new PpoTrainer(
      { actor, critic, reward },
      tok,
      { prompts: inputs.prompts, ptx: inputs.ptx },
      { ...cfg.ppo, seed: cfg.ppo.seed + cfg.run.seed },
    );
    const last = await ctx.train(trainer, {
      unit: "iteration",
      logEvery: 1,
      checkpointEvery: cfg.run.checkpointEvery,
      stopAfter: ctx.opts.stopAfterIteration,
      afterLog: () => ctx.hooks.onSamples?.("ppo", noGold(trainer.lastSamples)),
    });
    const after = await sampleAndScore(actor, reward, tok, inputs.evalPrompts, evalOpts);
    ctx.log(`after PPO: reward-model score ${mean(after).toFixed(3)}`);
    ctx.hooks.onSamples?.("after", noGold(after));
    await ctx.hooks.saveAdapter?.(
      "ppo",
      await savePeftAdapter(actor, { baseModel: cfg.data.actor }),
    );
    actor.mergeLora();
    await ctx.hooks.saveCheckpoint?.("ppo", await saveOptModel(actor, { stage: "ppo" }));
    lora.store.dispose();
    Object.assign(ctx.summary, {
      "score/before": mean(before),
      "score/after": mean(after),
      "objective/kl": last["objective/kl"] ?? 0,
      samples_before: noGold(before.slice(0, 8)),
      samples_after: noGold(after.slice(0, 8)),
    });
  },
};

/** The checkpoint recipe as a pipeline (its inputs are read through `io`). */
export function recipePipeline(io: RecipeIo): PipelineDefinition<RecipeConfig, RecipeState> {
  return {
    name: "simple-rlhf-tiny",
    doc: "reward model from a local OPT checkpoint → PPO of a LoRA-adapted OPT actor",
    sections: RECIPE_SCHEMAS as unknown as SectionSchemas,
    defaults: SIMPLE_RLHF_TINY,
    stages: [RECIPE_RM_STAGE, RECIPE_PPO_STAGE],
    init: async (_gpu, cfg) => ({ io, inputs: await loadRecipeInputs(cfg, io) }),
    validate: checkRecipeConfig,
  };
}

/**
 * Runs the recipe: reward model (from `data.critic`, token-level loss by default) → PPO of the
 * LoRA-adapted `data.actor`. Returns the same summary as the built-in pipeline, without gold
 * scores (real data has none): the reward-model score of fresh samples on held-out prompts
 * before and after PPO, the RM's held-out accuracy and margin, and the final KL.
 *
 * @example A recipe run over files (paths are read through `io`)
 * ```ts ignore
 * import { Gpu, resolveRecipeConfig, runRecipePipeline } from "../mod.ts";
 * const gpu = await Gpu.create();
 * const cfg = resolveRecipeConfig({
 *   "data.actor": "opt-350m", "data.critic": "opt-125m", "data.pairs": "hh-rlhf/train.jsonl.gz",
 * });
 * const summary = await runRecipePipeline(gpu, cfg, { read: (p) => Deno.readFile(p) });
 * ```
 */
export function runRecipePipeline(
  gpu: Gpu,
  cfg: RecipeConfig,
  io: RecipeIo,
  hooks: PipelineHooks = {},
  opts: RunOptions = {},
): Promise<PipelineSummary> {
  return runPipeline(recipePipeline(io), gpu, cfg, hooks, opts);
}
