/**
 * `deno task generate <checkpoint-dir> [options]`: loads `config.json` + `model.safetensors`
 * (and `vocab.json` + `merges.txt` when present; a 260-token vocabulary uses the byte-level
 * tokenizer) and samples a continuation.
 *
 * Options: --prompt TEXT | --prompt-ids 2,31,7, --max-new-tokens N (32), --temperature T (1),
 * --top-k K (0 = off), --top-p P (1 = off), --greedy, --seed S (0), --json (prints
 * `{"ids", "text", "logprobs"}`: generated ids, their text, and each token's log-probability
 * under the model), --adapter DIR (a PEFT LoRA adapter folder — `adapter_config.json` +
 * `adapter_model.safetensors`, as `deno task train` writes for LoRA runs — applied to the
 * checkpoint and merged into its weights), --best-of N with --reward DIR|grader:NAME|module.ts
 * (samples N responses to `--prompt`, scores each with a reward-model checkpoint folder or a
 * grader against `--reference TEXT`, prints every sample with its score and marks the best; with
 * `--json`: `{"best", "samples": [{"text", "score", "truncated"}]}`).
 *
 * @module
 */

import { Gpu } from "../kernels/runtime.ts";
import { loadOptModel } from "../model/checkpoint.ts";
import { generate } from "../model/generate.ts";
import { loadPeftAdapter } from "../model/peft.ts";
import { BpeTokenizer, ByteTokenizer, type Tokenizer } from "../model/tokenizer.ts";
import { parseArgs, UsageError } from "./args.ts";
import { readAdapterDir, readCheckpointDir } from "./checkpoint_files.ts";
import { matmulPathFromEnv } from "./gpu_env.ts";
import { LOCAL_IO } from "./local_io.ts";
import type { OptModel } from "../model/opt.ts";
import { graderFromSpec } from "../trainer/graders.ts";
import { graderReward, modelReward, type Reward } from "../trainer/reward.ts";
import { rollout } from "../trainer/rollout.ts";

const SPEC = {
  model: "string",
  prompt: "string",
  "prompt-ids": "string",
  "max-new-tokens": "int",
  temperature: "number",
  "top-k": "int",
  "top-p": "number",
  greedy: "boolean",
  seed: "int",
  json: "boolean",
  adapter: "string",
  "best-of": "int",
  reward: "string",
  reference: "string",
  help: "boolean",
} as const;

async function main(argv: string[]): Promise<void> {
  const { flags, positional } = parseArgs(argv, SPEC);
  if (flags.help) {
    console.log(
      "usage: deno task generate <checkpoint-dir> (--prompt TEXT | --prompt-ids 2,31,7) " +
        "[--max-new-tokens N] [--temperature T] [--top-k K] [--top-p P] [--greedy] [--seed S] " +
        "[--adapter DIR] [--best-of N --reward DIR|grader:NAME|module.ts [--reference TEXT]] " +
        "[--json]",
    );
    return;
  }
  const dir = (flags.model as string | undefined) ?? positional[0];
  if (!dir) throw new UsageError("give the checkpoint directory (positional or --model DIR)");
  if (positional.length > (flags.model ? 0 : 1)) {
    throw new UsageError(
      `unexpected argument(s): ${positional.slice(flags.model ? 0 : 1).join(" ")}`,
    );
  }
  if ((flags.prompt === undefined) === (flags["prompt-ids"] === undefined)) {
    throw new UsageError("give exactly one of --prompt TEXT or --prompt-ids 2,31,7");
  }
  const files = await readCheckpointDir(dir);
  const adapter = flags.adapter ? await readAdapterDir(String(flags.adapter)) : undefined;
  const gpu = await Gpu.create({ matmulPath: matmulPathFromEnv() });
  // parameters only: no gradients or AdamW moments for inference
  const { model, config } = loadOptModel(gpu, files.config, files.weights, { frozen: true });
  if (adapter) {
    loadPeftAdapter(model, adapter.config, adapter.weights);
    model.mergeLora(); // inference at the base model's cost
  }
  let tokenizer: Tokenizer | undefined;
  if (files.vocab && files.merges) tokenizer = BpeTokenizer.fromText(files.vocab, files.merges);
  else if (config.vocab_size === 260) tokenizer = new ByteTokenizer();
  let ids: number[];
  if (flags["prompt-ids"] !== undefined) {
    ids = String(flags["prompt-ids"]).split(",").map((s) => {
      const n = s.trim() === "" ? NaN : Number(s.trim()); // "2,,5": an empty item is no id
      if (!Number.isInteger(n) || n < 0 || n >= config.vocab_size) {
        throw new UsageError(`--prompt-ids: "${s}" is not a token id in [0, ${config.vocab_size})`);
      }
      return n;
    });
  } else {
    if (!tokenizer) {
      throw new UsageError(`${dir} has no vocab.json/merges.txt: use --prompt-ids`);
    }
    ids = tokenizer.encode(String(flags.prompt));
  }
  if (ids.length === 0) throw new UsageError("the prompt is empty");
  const maxNew = (flags["max-new-tokens"] as number | undefined) ?? 32;
  if (maxNew < 1) throw new UsageError("--max-new-tokens must be ≥ 1");
  if (flags["best-of"] !== undefined) {
    await bestOf(gpu, model, tokenizer, String(flags.prompt ?? ""), maxNew, flags);
    gpu.destroy();
    return;
  }
  const out = await generate(
    model,
    gpu.fromArray(Int32Array.from(ids), [1, ids.length]),
    gpu.fromArray(new Float32Array(ids.length).fill(1), [1, ids.length]),
    {
      maxNewTokens: maxNew,
      temperature: flags.temperature as number | undefined,
      topK: flags["top-k"] as number | undefined,
      topP: flags["top-p"] as number | undefined,
      greedy: flags.greedy as boolean | undefined,
      seed: flags.seed as number | undefined,
    },
  );
  const all = await gpu.read(out.tokens) as Int32Array;
  const resp = await gpu.readF32(out.responseMask);
  const lps = await gpu.readF32(out.logprobs);
  const P = out.promptLength;
  const gen: number[] = [], logprobs: number[] = [];
  for (let t = 0; t < out.generated; t++) {
    if (resp[P + t] === 0) break;
    gen.push(all[P + t]);
    logprobs.push(lps[t]);
  }
  const text = tokenizer ? tokenizer.decode(gen) : null;
  if (flags.json) console.log(JSON.stringify({ ids: gen, text, logprobs }));
  else console.log(text ?? gen.join(","));
  gpu.destroy();
}

/**
 * `--best-of N`: N samples of the prompt in one batch, scored by `--reward`; prints them all
 * with their scores and marks the best (ties: the first).
 */
async function bestOf(
  gpu: Gpu,
  model: OptModel,
  tokenizer: Tokenizer | undefined,
  prompt: string,
  maxNew: number,
  flags: Record<string, unknown>,
): Promise<void> {
  const n = flags["best-of"] as number;
  if (n < 1) throw new UsageError("--best-of must be ≥ 1");
  if (flags["prompt-ids"] !== undefined || !tokenizer) {
    throw new UsageError("--best-of needs --prompt TEXT and a checkpoint with a tokenizer");
  }
  if (typeof flags.reward !== "string") {
    throw new UsageError(
      "--best-of needs --reward DIR (a reward model) or grader:NAME | module.ts",
    );
  }
  const spec = flags.reward;
  let reward: Reward;
  if (spec.startsWith("grader:") || /\.(ts|js|mjs)$/.test(spec)) {
    reward = graderReward(await graderFromSpec(spec, LOCAL_IO), spec);
  } else {
    const files = await readCheckpointDir(spec);
    const { model: rm } = loadOptModel(gpu, files.config, files.weights, { frozen: true });
    if (!rm.hasValueHead) throw new UsageError(`--reward ${spec}: not a reward model (no v_head)`);
    reward = modelReward(rm, spec);
  }
  const samples = await gpu.scope(async () => {
    const r = await rollout(model, tokenizer, Array(n).fill(prompt), {
      maxNewTokens: maxNew,
      maxPromptLength: model.config.max_position_embeddings - maxNew,
      temperature: (flags.temperature as number | undefined) ?? 1,
      greedy: flags.greedy as boolean | undefined,
      topK: flags["top-k"] as number | undefined,
      topP: flags["top-p"] as number | undefined,
      seed: (flags.seed as number | undefined) ?? 0,
    });
    const scores = await reward.score(r, Array(n).fill(String(flags.reference ?? "")));
    return r.texts.map((t, i) => ({ text: t.response, score: scores[i], truncated: t.truncated }));
  });
  let best = 0;
  samples.forEach((x, i) => {
    if (x.score > samples[best].score) best = i;
  });
  if (flags.json) {
    console.log(JSON.stringify({ best, samples }));
    return;
  }
  samples.forEach((x, i) =>
    console.log(
      `${i === best ? "*" : " "} ${x.score.toFixed(4)}  ${JSON.stringify(x.text)}${
        x.truncated ? " (cut)" : ""
      }`,
    )
  );
  console.log(`best of ${n} (${reward.name}): ${samples[best].text}`);
}

if (import.meta.main) {
  try {
    await main(Deno.args);
  } catch (e) {
    if (e instanceof UsageError) {
      console.error(`generate: ${e.message}`);
      Deno.exit(2);
    }
    console.error(`generate: ${(e as Error).name}: ${(e as Error).message}`);
    Deno.exit(1);
  }
}
