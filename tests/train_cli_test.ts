/**
 * `deno task train` end to end with a tiny budget: the run directory's files, their contents,
 * checkpoints that load, and named errors for bad flags. (Learning itself is asserted in
 * trainer_test.ts; the full default run is measured, not tested.)
 */
import { join } from "node:path";
import { loadOptModel } from "../model/checkpoint.ts";
import { readCheckpointDir } from "../cli/checkpoint_files.ts";
import { PRESETS } from "../trainer/registry.ts";
import { makeBuiltinTask } from "../trainer/task.ts";
import { assert, assertEquals } from "./assert.ts";
import { gpu, noGpu } from "./_gpu.ts";
import { runCli } from "./_cli.ts";

const train = (args: string[]) => runCli("train", args);

Deno.test({
  name: "train CLI: a tiny run writes config, metrics, checkpoints, summary and report",
  ignore: noGpu,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const out = await Deno.makeTempDir();
    const r = await train([
      `--out=${out}`,
      "--run.name=tiny",
      "--sft.steps=20",
      "--task.policyPrompts=8",
      "--rm.loss=pairwise",
      "--rm.steps=10",
      "--ppo.iterations=2",
      "--ppo.batchSize=8",
      "--ppo.miniBatchSize=4",
    ]);
    assertEquals(r.code, 0, r.err.slice(-2000));
    const dir = join(out, "tiny");
    const cfg = JSON.parse(await Deno.readTextFile(join(dir, "config.json")));
    assertEquals([cfg.sft.steps, cfg.rm.steps, cfg.ppo.iterations, cfg.ppo.batchSize], [
      20,
      10,
      2,
      8,
    ]);
    const lines = (await Deno.readTextFile(join(dir, "metrics.jsonl"))).trim().split("\n").map((
      l,
    ) => JSON.parse(l));
    assertEquals(lines.filter((l) => l.stage === "sft").length, 2, "SFT logs every 10 steps");
    assertEquals(lines.filter((l) => l.stage === "ppo").length, 2, "one record per PPO iteration");
    assert(
      lines.some((l) => l.stage === "rm" && "rm/accuracy" in l),
      "held-out RM accuracy logged",
    );
    const summary = JSON.parse(await Deno.readTextFile(join(dir, "summary.json")));
    for (
      const k of [
        "wall_seconds",
        "rm/accuracy",
        "gold/before",
        "gold/after",
        "score/before",
        "score/after",
        "objective/kl",
        "rm/policy_accuracy",
        "gold/correct/before",
        "gold/correct/after",
        "gold/period/after",
        "gold/concise/after",
      ]
    ) {
      assert(
        typeof summary[k] === "number" && Number.isFinite(summary[k]),
        `summary.${k} = ${summary[k]}`,
      );
    }
    assertEquals(typeof summary.reward_hacking.detected, "boolean", "reward-hacking verdict");
    assert(r.out.includes("reward hacking:"), "the CLI prints the verdict");
    const html = await Deno.readTextFile(join(dir, "report.html"));
    assert(
      html.includes("<svg") && html.includes("before PPO") && html.includes("objective/kl") &&
        html.includes("Gold view") && html.includes("PPO iteration") &&
        html.includes("gold score (0–1)"),
      "report: gold view with labelled axes",
    );

    for (const stage of ["sft", "rm", "ppo"]) {
      const files = await readCheckpointDir(join(dir, stage));
      const { model } = loadOptModel(gpu, files.config, files.weights);
      assertEquals(model.hasValueHead, stage === "rm", `${stage} checkpoint loads`);
    }
    gpu.destroy();
    await Deno.remove(out, { recursive: true });
  },
});

Deno.test({
  name:
    "train CLI: resuming from a mid-PPO checkpoint continues with the uninterrupted run's metrics",
  ignore: noGpu,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const out = await Deno.makeTempDir();
    const common = [
      `--out=${out}`,
      "--sft.steps=20",
      "--task.policyPrompts=8",
      "--rm.loss=pairwise",
      "--rm.steps=10",
      "--ppo.iterations=4",
      "--ppo.batchSize=8",
      "--ppo.miniBatchSize=4",
      "--run.checkpointEvery=2",
    ];
    const full = await train([...common, "--run.name=full"]);
    assertEquals(full.code, 0, full.err.slice(-2000));
    const first = await train([...common, "--run.name=split", "--stop-after=2"]);
    assertEquals(first.code, 0, first.err.slice(-2000));
    const resumed = await train([`--out=${out}`, "--run.name=split", "--resume"]);
    assertEquals(resumed.code, 0, resumed.err.slice(-2000));
    assert(resumed.err.includes("PPO continues after iteration 2"), resumed.err);
    const ppo = async (name: string) =>
      (await Deno.readTextFile(join(out, name, "metrics.jsonl"))).trim().split("\n").map((l) =>
        JSON.parse(l)
      )
        .filter((l) => l.stage === "ppo");
    const a = await ppo("full"), b = await ppo("split");
    assertEquals(b.map((m) => m.iteration), [1, 2, 3, 4]);
    // bit-identical metrics: same rollouts, same minibatch order, same optimizer state
    assertEquals(b, a);
    const bad = await train([`--out=${out}`, "--run.name=split", "--resume", "--sft.steps=3"]);
    assert(bad.code === 2 && bad.err.includes("--resume uses the run's saved config"), bad.err);
    await Deno.remove(out, { recursive: true });
  },
});

Deno.test({
  name: "train CLI: --stage runs one stage at a time; later stages need the earlier checkpoints",
  ignore: noGpu,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const out = await Deno.makeTempDir();
    const base = [
      `--out=${out}`,
      "--run.name=staged",
      "--sft.steps=10",
      "--rm.steps=10",
      "--task.policyPrompts=8",
      "--rm.loss=pairwise",
    ];
    const tinyPpo = ["--ppo.iterations=1", "--ppo.batchSize=4", "--ppo.miniBatchSize=4"];
    const early = await train([...base, "--stage=ppo", ...tinyPpo]);
    assert(early.code === 1 && early.err.includes("needs the sft checkpoint"), early.err);
    for (const stage of ["sft", "rm", "ppo"]) {
      const r = await train([...base, `--stage=${stage}`, ...tinyPpo]);
      assertEquals(r.code, 0, r.err.slice(-2000));
      if (stage !== "sft") assert(r.err.includes("the sft stage is loaded"), r.err);
    }
    const stages = (await Deno.readTextFile(join(out, "staged", "metrics.jsonl"))).trim().split(
      "\n",
    )
      .map((l) => JSON.parse(l).stage);
    assertEquals([...new Set(stages)], ["sft", "rm", "ppo"], "one metrics file across the stages");
    const summary = JSON.parse(await Deno.readTextFile(join(out, "staged", "summary.json")));
    assert(Number.isFinite(summary["gold/after"]), "the ppo stage writes the summary");
    await Deno.remove(out, { recursive: true });
  },
});

Deno.test({
  name: "train CLI: unknown keys and wrong types are named errors (exit 2)",
  ignore: noGpu,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const a = await train(["--sft.stepz=3"]);
    assert(a.code === 2 && a.err.includes('unknown config key "stepz"'), a.err);
    const b = await train(["--ppo.klEstimator=k9"]);
    assert(b.code === 2 && b.err.includes("klEstimator must be one of"), b.err);
    const c = await train(["--sft.lr=fast"]);
    assert(c.code === 2 && c.err.includes("lr must be a number"), c.err);
    const d = await train(["--verbose=1"]);
    assert(d.code === 2 && d.err.includes("unknown option --verbose"), d.err);
    const e = await train(["--preset=simple-rlhf-huge"]);
    assert(
      e.code === 2 && e.err.includes(`known presets are ${Object.keys(PRESETS).join(", ")}`),
      e.err,
    );
    assert(["tiny", "trl", "dpo", "simpo", "kto", "simple-rlhf-tiny"].every((p) => p in PRESETS));
    const m = await train(["--method=orpo"]);
    assert(m.code === 2 && m.err.includes("--method orpo: known methods are ppo, dpo"), m.err);
    // the default reward model ranks 4 responses: pair-only data and margins are named errors
    const k = await train(["--task.policyPrompts=8"]);
    assert(k.code === 2 && k.err.includes("or rm.loss=pairwise with them"), k.err);
    const km = await train(["--task.pairMargin=2"]);
    assert(km.code === 2 && km.err.includes("rm.loss=kwise ranks without margins"), km.err);
    // a preset sets defaults, explicit flags win wherever they stand
    const out = await Deno.makeTempDir();
    const p = await train([
      `--out=${out}`,
      "--ppo.klCoef=0.2",
      "--preset=trl",
      "--stage=sft",
      "--sft.steps=1",
      "--task.policyPrompts=8",
      "--rm.loss=pairwise",
    ]);
    assertEquals(p.code, 0, p.err.slice(-1000));
    const cfg = JSON.parse(await Deno.readTextFile(join(out, "builtin", "config.json")));
    assertEquals([cfg.ppo.klCoef, cfg.ppo.temperature], [0.2, 0.7]);
    await Deno.remove(out, { recursive: true });
  },
});

Deno.test({
  name:
    "train CLI: --method=dpo|simpo|kto on the built-in task and on your own checkpoint and data run end to end; missing inputs are named",
  ignore: noGpu,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const out = await Deno.makeTempDir();
    const tiny = ["--sft.steps=10", "--data.prompts=8", "--run.evalSamples=1"];
    for (const [method, section] of [["dpo", "dpo"], ["simpo", "dpo"], ["kto", "kto"]]) {
      const r = await train([
        `--out=${out}`,
        `--method=${method}`,
        ...tiny,
        `--${section}.steps=4`,
      ]);
      assertEquals(r.code, 0, r.err.slice(-2000));
      const name = method === "simpo" ? "builtin-simpo" : `builtin-${method}`;
      const summary = JSON.parse(await Deno.readTextFile(join(out, name, "summary.json")));
      for (const k of ["gold/before", "gold/after", "gold/correct/after", "objective/kl"]) {
        assert(Number.isFinite(summary[k]), `${method}: ${k} = ${summary[k]}`);
      }
      assert(summary.reward_hacking !== null, `${method}: a hacking verdict`);
      const cfg = JSON.parse(await Deno.readTextFile(join(out, name, "config.json")));
      if (method === "simpo") assertEquals([cfg.dpo.lossType, cfg.dpo.beta], ["simpo", 2]);
      if (section === "dpo") {
        // the built-in task's DPO and SimPO add RPO's NLL term, logged as nll_loss
        assertEquals([cfg.dpo.rpoAlpha, cfg.dpo.lr], [1, 1e-4]);
        const metrics = (await Deno.readTextFile(join(out, name, "metrics.jsonl"))).trim()
          .split("\n").map((l) => JSON.parse(l)).filter((m) => m.stage === "dpo");
        assert(metrics.some((m) => Number.isFinite(m.nll_loss)), "nll_loss logged");
      }
      await readCheckpointDir(join(out, name, section)); // the method's checkpoint loads
    }
    // your own checkpoint (a 260-token vocabulary: the byte tokenizer) and JSONL data
    const policy = join(out, "builtin-dpo", "sft");
    const task = makeBuiltinTask(2, { pairs: 40 });
    const pairs = join(out, "pairs.jsonl"), kto = join(out, "kto.jsonl");
    await Deno.writeTextFile(pairs, task.pairs.map((p) => JSON.stringify(p)).join("\n") + "\n");
    await Deno.writeTextFile(
      kto,
      task.pairs.map((p, i) =>
        JSON.stringify({
          prompt: p.prompt,
          completion: i % 2 ? p.rejected : p.chosen,
          label: i % 2 === 0,
        })
      ).join("\n") + "\n",
    );
    const own = [
      `--out=${out}`,
      `--data.policy=${policy}`,
      "--data.heldOut=8",
      "--run.evalPrompts=2",
    ];
    let r = await train([...own, "--method=ipo", `--data.pairs=${pairs}`, "--dpo.steps=3"]);
    assertEquals(r.code, 0, r.err.slice(-2000));
    let summary = JSON.parse(await Deno.readTextFile(join(out, "checkpoint-dpo", "summary.json")));
    assert(Number.isFinite(summary["eval/rewards/accuracies"]), JSON.stringify(summary));
    assert(Number.isFinite(summary["objective/kl"]), "KL to the reference");
    r = await train([...own, "--method=kto", `--data.kto=${kto}`, "--kto.steps=3"]);
    assertEquals(r.code, 0, r.err.slice(-2000));
    summary = JSON.parse(await Deno.readTextFile(join(out, "checkpoint-kto", "summary.json")));
    assert(Number.isFinite(summary["score/after"]), JSON.stringify(summary));
    r = await train([...own, "--method=dpo", "--run.name=nopairs"]);
    assertEquals(r.code, 2, r.err);
    assert(r.err.includes("data.pairs is required"), r.err);
  },
});
