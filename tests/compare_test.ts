/**
 * `deno task compare`: the budget arithmetic per method, and a tiny comparison end to end — one
 * SFT checkpoint shared by every method (same gold before), run folders that are normal runs,
 * compare.json/compare.html after each method, `--resume` keeping finished methods, and bad
 * command lines named before anything trains.
 *
 * @module
 */

import { join } from "node:path";
import { COMPARED_METHODS, type Comparison, methodBudget } from "../trainer/compare.ts";
import { assert, assertEquals, assertThrows } from "./assert.ts";
import { noGpu } from "./_gpu.ts";
import { runCli } from "./_cli.ts";

const method = (name: string) => COMPARED_METHODS.find((m) => m.method === name)!;

Deno.test("compare budget: each method samples the same completions, rounded to whole batches", () => {
  const ppo = methodBudget(method("ppo"), { ppo: { batchSize: 32 } }, 2048, 16);
  assertEquals(ppo, {
    overrides: { "ppo.iterations": 64, "ppo.maxNewTokens": 16 },
    completions: 2048,
  });
  const grpo = methodBudget(
    method("grpo"),
    { grpo: { promptsPerIteration: 16, numGenerations: 8 } },
    2000,
    12,
  );
  assertEquals(grpo, {
    overrides: { "grpo.iterations": 16, "grpo.maxNewTokens": 12 },
    completions: 2048,
  });
  const rp = methodBudget(
    method("reinforce++"),
    { reinforce: { promptsPerIteration: 32, numGenerations: 4 } },
    2048,
    16,
  );
  assertEquals(rp.overrides, { "reinforce.iterations": 16, "reinforce.maxNewTokens": 16 });
  const rs = methodBudget(method("rs"), { rs: { rounds: 3, samplesPerPrompt: 8 } }, 2048, 16);
  assertEquals(rs, {
    overrides: { "rs.promptsPerRound": 85, "rs.maxNewTokens": 16 },
    completions: 2040,
  });
  for (const name of ["dpo", "ipo", "simpo", "kto"]) {
    const d = methodBudget(method(name), { data: { samplesPerPrompt: 4 } }, 2048, 16);
    assertEquals(d, {
      overrides: { "data.prompts": 512, "data.maxNewTokens": 16 },
      completions: 2048,
    });
  }
  // a budget smaller than one batch still runs one batch
  assertEquals(methodBudget(method("ppo"), { ppo: { batchSize: 32 } }, 3, 16).completions, 32);
  assertThrows(() => methodBudget(method("ppo"), { ppo: { batchSize: 32 } }, 0, 16), RangeError);
  assertThrows(() => methodBudget(method("ppo"), { ppo: {} }, 64, 16), RangeError, "batchSize");
});

const compare = (args: string[]) => runCli("compare", args);

const TINY = [
  "--budget=32",
  "--max-new-tokens=6",
  "--sft.steps=10",
  "--rm.steps=10",
  "--task.pairs=200",
  "--ppo.batchSize=16",
  "--ppo.miniBatchSize=4",
  "--grpo.promptsPerIteration=4",
  "--grpo.numGenerations=4",
  "--dpo.steps=5",
  "--run.evalSamples=1",
];

Deno.test({
  name: "compare CLI: one SFT checkpoint for every method, equal budgets, table and chart",
  ignore: noGpu,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const out = await Deno.makeTempDir();
    const r = await compare([`--out=${out}`, "--methods=ppo,grpo,dpo", ...TINY]);
    assertEquals(r.code, 0, r.err.slice(-2000));
    const root = join(out, "compare-s1");
    const c = JSON.parse(await Deno.readTextFile(join(root, "compare.json"))) as Comparison;
    assertEquals(c.rows.map((x) => [x.method, x.completions]), [["ppo", 32], ["grpo", 32], [
      "dpo",
      32,
    ]]);
    // the same SFT policy and evaluation prompts: the same gold before for every method
    const before = new Set(c.rows.map((x) => x["gold/before"].toFixed(6)));
    assertEquals(before.size, 1, `gold before differs: ${[...before]}`);
    for (const x of c.rows) {
      for (
        const k of ["gold/after", "gold/correct/after", "objective/kl", "wall_seconds"] as const
      ) {
        assert(Number.isFinite(x[k]), `${x.method} ${k}: ${x[k]}`);
      }
    }
    assert(c.rows[0]["rm/accuracy"] !== null, "PPO's reward model is tested");
    assertEquals(c.curves.ppo.length, 2, "PPO: 32 completions = 2 iterations of 16");
    assertEquals(c.curves.ppo.at(-1)![0], 1);
    // every method's folder is a normal run that started from the shared checkpoint
    const shared = await Deno.readFile(join(root, "sft", "sft", "model.safetensors"));
    for (const m of ["ppo", "grpo", "dpo"]) {
      const copy = await Deno.readFile(join(root, m, "sft", "model.safetensors"));
      assertEquals(copy.length, shared.length);
      assert(copy.every((b, i) => b === shared[i]), `${m}: another SFT checkpoint`);
      const cfg = JSON.parse(await Deno.readTextFile(join(root, m, "config.json")));
      assertEquals(cfg.sft.steps, 10);
      await Deno.stat(join(root, m, "report.html"));
    }
    const grpoCfg = JSON.parse(await Deno.readTextFile(join(root, "grpo", "config.json")));
    assertEquals([grpoCfg.grpo.iterations, grpoCfg.grpo.maxNewTokens], [2, 6]);
    const html = await Deno.readTextFile(join(root, "compare.html"));
    assert(html.includes("<svg") && html.includes("fraction of the method"), "the gold chart");
    assert(r.out.includes("| grpo | 32 |"), r.out);
    // finished methods are kept by --resume; an existing comparison is not replaced silently
    const again = await compare([`--out=${out}`, "--methods=ppo,grpo,dpo", ...TINY, "--resume"]);
    assertEquals(again.code, 0, again.err.slice(-2000));
    assertEquals(again.err.match(/finished earlier/g)?.length, 3, again.err);
    // --resume with another plan would mix two plans' runs in one table
    const other = await compare([
      `--out=${out}`,
      "--methods=ppo,grpo,dpo",
      ...TINY,
      "--budget=64",
      "--resume",
    ]);
    assert(other.code === 2 && other.err.includes("another config"), other.err);
    const clash = await compare([`--out=${out}`, "--methods=ppo", ...TINY]);
    assert(clash.code === 2 && clash.err.includes("--resume"), clash.err);
    // bad command lines, before any training
    for (
      const [args, says] of [
        [["--methods=ppo,nope"], 'unknown method "nope"'],
        [["--methods=grpo", "--grpo.iterations=3"], "compare sets it from --budget"],
        [["--methods=grpo", "--ppo.actorLr=1e-4"], "ppo.actorLr"],
        [["--run.seed=2"], "give --name and --seed"],
        [["--budget=0"], "--budget"],
      ] as const
    ) {
      const bad = await compare([`--out=${out}`, "--name=bad", ...args]);
      assert(bad.code === 2 && bad.err.includes(says), `${args}: ${bad.err}`);
    }
    await assertThrows(() => Deno.stat(join(out, "bad")), Deno.errors.NotFound);
    await Deno.remove(out, { recursive: true });
  },
});
