/**
 * GRPO on the GPU: the first iteration sees policy = reference (no KL, no clipping), the frozen
 * reference never changes, a grader's reward rises on two seeds, tied groups can be dropped,
 * bad setups are named errors; and `deno task train --method=grpo` end to end with a built-in
 * grader, a user's grader module and bad `--reward` values.
 */
import { join } from "node:path";
import { OPT_PRESETS } from "../model/config.ts";
import { OptModel } from "../model/opt.ts";
import { ByteTokenizer } from "../model/tokenizer.ts";
import { defaults, SFT_SCHEMA } from "../trainer/config.ts";
import type { Grader } from "../trainer/graders.ts";
import { GRPO_SCHEMA, GrpoTrainer } from "../trainer/grpo.ts";
import { graderReward } from "../trainer/reward.ts";
import { RLOO_SCHEMA, RlooTrainer } from "../trainer/rloo.ts";
import {
  REJECTION_SAMPLING_SCHEMA,
  RejectionSamplingTrainer,
} from "../trainer/rejection_sampling.ts";
import { trainSft } from "../trainer/sft.ts";
import { CheckpointError } from "../trainer/types.ts";
import { REINFORCE_PP_SCHEMA, ReinforcePpTrainer } from "../trainer/reinforce_pp.ts";
import type { Metrics } from "../trainer/types.ts";
import { assert, assertEquals, assertThrows } from "./assert.ts";
import { gpu, gpuTestOptions, noGpu } from "./_gpu.ts";
import { runCli } from "./_cli.ts";

const tok = new ByteTokenizer();
const opts = gpuTestOptions;
const prompts = ["What is 1 + 2?", "Say a word:", "Count: 1 2 3", "Hello"];
const cfg = {
  ...defaults(GRPO_SCHEMA),
  iterations: 12,
  promptsPerIteration: 4,
  numGenerations: 4,
  miniBatchSize: 8,
  maxNewTokens: 6,
  lr: 1e-2,
  lrDecay: "constant" as const,
};
/** The share of response bytes below 0x40 (digits, spaces, punctuation): varied, learnable. */
const lowBytes: Grader = (_p, r) => {
  const b = new TextEncoder().encode(r);
  return b.length ? b.filter((x) => x < 0x40).length / b.length : 0;
};
const reward = graderReward(lowBytes, "low-bytes");

function same(a: Float32Array, b: Float32Array): boolean {
  return a.length === b.length && a.every((v, i) => v === b[i]);
}

Deno.test({
  ...opts,
  name: "grpo: the first iteration has no KL and no clipping; the reference never changes",
  async fn() {
    const policy = OptModel.create(gpu, OPT_PRESETS.tiny, { seed: 3 });
    const reference = policy.copy({ frozen: true });
    const refBefore = await gpu.readF32(reference.store.params);
    const polBefore = await gpu.readF32(policy.store.params);
    // one minibatch of all 16 samples, one pass: its loss sees logp = logp_old = logp_ref
    const t = new GrpoTrainer(policy, reference, reward, tok, { prompts }, {
      ...cfg,
      miniBatchSize: 16,
    });
    const m = await t.step();
    assert(m.frac_reward_zero_std < 1, `rewards vary: ${JSON.stringify(m)}`);
    assert(Math.abs(m.kl) < 1e-6, `kl ${m.kl}`);
    assertEquals([m["clip_ratio/low_mean"], m["clip_ratio/high_mean"]], [0, 0]);
    // the next iteration starts from the updated policy: KL to the reference appears
    const m2 = await t.step();
    assert(m2.kl > 1e-4, `kl after one update ${m2.kl}`);
    assertEquals(
      m2["clip_ratio/region_mean"],
      m2["clip_ratio/low_mean"] + m2["clip_ratio/high_mean"],
    );
    assert(m["completions/mean_length"] > 0 && m["completions/mean_length"] <= cfg.maxNewTokens);
    assertEquals(t.lastSamples.length, 16);
    // the G samples of a prompt are adjacent
    for (let i = 0; i < 16; i++) assertEquals(t.lastSamples[i].prompt, prompts[Math.floor(i / 4)]);
    assert(same(await gpu.readF32(reference.store.params), refBefore), "reference unchanged");
    assert(!same(await gpu.readF32(policy.store.params), polBefore), "policy changed");
    for (const x of [policy, reference]) x.store.dispose();
  },
});

for (const seed of [1, 2]) {
  Deno.test({
    ...opts,
    name: `grpo: a grader's reward rises over 12 iterations (seed ${seed}; bound: +0.10)`,
    async fn() {
      const policy = OptModel.create(gpu, OPT_PRESETS.tiny, { seed });
      const t = new GrpoTrainer(policy, undefined, reward, tok, { prompts }, {
        ...cfg,
        beta: 0,
        seed,
      });
      const rs: number[] = [];
      for (let i = 0; i < cfg.iterations; i++) rs.push((await t.step()).reward);
      const mean = (xs: number[]) => xs.reduce((a, v) => a + v, 0) / xs.length;
      const first = mean(rs.slice(0, 3)), last = mean(rs.slice(-3));
      console.log(`seed ${seed}: reward ${rs.map((r) => r.toFixed(2)).join(" ")}`);
      assert(last - first >= 0.1, `reward ${first.toFixed(3)} → ${last.toFixed(3)}`);
      policy.store.dispose();
    },
  });
}

Deno.test({
  ...opts,
  name: "grpo: tied groups can be dropped (no update when all tie); bad setups are named errors",
  async fn() {
    const policy = OptModel.create(gpu, OPT_PRESETS.tiny, { seed: 4 });
    const before = await gpu.readF32(policy.store.params);
    const constant = graderReward(() => 0.5, "constant");
    const t = new GrpoTrainer(policy, undefined, constant, tok, { prompts }, {
      ...cfg,
      beta: 0,
      dropTiedGroups: true,
    });
    const m = await t.step();
    assertEquals([m.frac_reward_zero_std, m["train/updated"], m.reward_std], [1, 0, 0]);
    assert(same(await gpu.readF32(policy.store.params), before), "no update");
    await assertThrows(
      () => new GrpoTrainer(policy, undefined, reward, tok, { prompts }, cfg),
      RangeError,
      "beta > 0 needs a reference",
    );
    await assertThrows(
      () =>
        new GrpoTrainer(policy, undefined, reward, tok, { prompts, references: ["1"] }, {
          ...cfg,
          beta: 0,
        }),
      RangeError,
      "1 references for 4 prompts",
    );
    await assertThrows(
      () =>
        new GrpoTrainer(policy, undefined, reward, tok, { prompts }, {
          ...cfg,
          beta: 0,
          numGenerations: 1,
        }),
      RangeError,
      "numGenerations",
    );
    const bad = new GrpoTrainer(policy, undefined, graderReward(() => 2, "bad"), tok, { prompts }, {
      ...cfg,
      beta: 0,
    });
    await assertThrows(() => bad.step(), Error, "[0, 1]");
    policy.store.dispose();
  },
});

for (const seed of [1, 2]) {
  Deno.test({
    ...opts,
    name: `rloo: a grader's reward rises over 12 iterations (seed ${seed}; bound: +0.10)`,
    async fn() {
      const policy = OptModel.create(gpu, OPT_PRESETS.tiny, { seed });
      const reference = policy.copy({ frozen: true });
      const t = new RlooTrainer(policy, reference, reward, tok, { prompts }, {
        ...defaults(RLOO_SCHEMA),
        ...cfg,
        beta: 0.05,
        seed,
      });
      const ms: Metrics[] = [];
      for (let i = 0; i < cfg.iterations; i++) ms.push(await t.step());
      const rs = ms.map((m) => m.reward);
      const mean = (xs: number[]) => xs.reduce((a, v) => a + v, 0) / xs.length;
      const first = mean(rs.slice(0, 3)), last = mean(rs.slice(-3));
      console.log(`seed ${seed}: reward ${rs.map((r) => r.toFixed(2)).join(" ")}`);
      // the first rollout is the reference's own: no KL, so r' = r
      assert(Math.abs(ms[0].kl) < 1e-5 && Math.abs(ms[0].rlhf_reward - ms[0].reward) < 1e-6);
      assert(ms[cfg.iterations - 1].kl > 0, "the policy moved from the reference");
      assert(last - first >= 0.1, `reward ${first.toFixed(3)} → ${last.toFixed(3)}`);
      for (const x of [policy, reference]) x.store.dispose();
    },
  });
}

for (const seed of [1, 2]) {
  Deno.test({
    ...opts,
    name: `reinforce++: a grader's reward rises over 12 iterations (seed ${seed}; bound: +0.10)`,
    async fn() {
      const policy = OptModel.create(gpu, OPT_PRESETS.tiny, { seed });
      const reference = policy.copy({ frozen: true });
      const t = new ReinforcePpTrainer(policy, reference, reward, tok, { prompts }, {
        ...defaults(REINFORCE_PP_SCHEMA),
        ...cfg,
        seed,
      });
      const ms: Metrics[] = [];
      for (let i = 0; i < cfg.iterations; i++) ms.push(await t.step());
      const rs = ms.map((m) => m.reward);
      const mean = (xs: number[]) => xs.reduce((a, v) => a + v, 0) / xs.length;
      const first = mean(rs.slice(0, 3)), last = mean(rs.slice(-3));
      console.log(`seed ${seed}: reward ${rs.map((r) => r.toFixed(2)).join(" ")}`);
      // the first rollout is the reference's own (no KL) and its only pass starts at ratio 1
      assert(Math.abs(ms[0].kl) < 1e-4, `first kl ${ms[0].kl}`);
      assert(last - first >= 0.1, `reward ${first.toFixed(3)} → ${last.toFixed(3)}`);
      for (const x of [policy, reference]) x.store.dispose();
    },
  });
}

Deno.test({
  ...opts,
  name: "rejection sampling keeps each prompt's best uncut sample above minScore; state resumes",
  async fn() {
    const policy = OptModel.create(gpu, OPT_PRESETS.tiny, { seed: 6 });
    // a few SFT steps so that samples end with EOS within the budget
    const words = [" 12", " ab", " 3c", " x.", " 7", " q9"];
    await trainSft(
      policy,
      tok,
      prompts.flatMap((p) => words.map((w) => ({ prompt: p, completion: w }))),
      {
        ...defaults(SFT_SCHEMA),
        steps: 40,
        batchSize: 24,
        lr: 3e-3,
      },
    );
    const rcfg = {
      ...defaults(REJECTION_SAMPLING_SCHEMA),
      rounds: 2,
      promptsPerRound: 4,
      samplesPerPrompt: 4,
      stepsPerRound: 3,
      batchSize: 4,
      maxNewTokens: 6,
      minScore: 0.2,
    };
    const t = new RejectionSamplingTrainer(policy, reward, tok, { prompts }, rcfg);
    const m = (await t.step(true))!;
    const samples = t.lastSamples, K = rcfg.samplesPerPrompt;
    assertEquals(samples.length, 16);
    const want: string[] = [];
    for (let j = 0; j < 4; j++) {
      const group = samples.slice(j * K, (j + 1) * K).filter((x) => !x.truncated);
      if (group.length === 0) continue;
      const best = group.reduce((a, x) => (x.score > a.score ? x : a));
      if (best.score > rcfg.minScore) want.push(best.response);
    }
    const st = t.state();
    assertEquals(st.examples.map((x) => x.completion), want);
    assertEquals(m["rs/selected"], want.length / 4);
    assert(want.length > 0, "some prompt's best sample is kept");
    // a restored trainer continues the round with the same data (no resampling)
    const u = new RejectionSamplingTrainer(policy, reward, tok, { prompts }, rcfg);
    u.restore(JSON.parse(JSON.stringify(st)));
    const m2 = (await u.step(true))!;
    assertEquals([m2["rs/round"], m2.step, u.lastSamples.length], [1, 2, 0]);
    assertEquals(u.state().examples, st.examples);
    await assertThrows(
      () => u.restore({ ...st, examples: [{ prompt: "p" }] as never }),
      CheckpointError,
      "examples[0]",
    );
    policy.store.dispose();
  },
});

const train = (args: string[]) => runCli("train", args);

const TINY = [
  "--method=grpo",
  "--sft.steps=10",
  "--grpo.iterations=2",
  "--grpo.promptsPerIteration=2",
  "--grpo.numGenerations=4",
  "--grpo.maxNewTokens=6",
  "--run.evalSamples=1",
];

Deno.test({
  name:
    "train CLI --method=grpo|rloo|reinforce++|rs: grader:math, a user's grader module, a reward model trained in the run; bad rewards are named",
  ignore: noGpu,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const out = await Deno.makeTempDir();
    const r = await train([`--out=${out}`, "--run.name=g", ...TINY]);
    assertEquals(r.code, 0, r.err.slice(-2000));
    const dir = join(out, "g");
    const cfg = JSON.parse(await Deno.readTextFile(join(dir, "config.json")));
    assertEquals([cfg.pipeline, cfg.reward.source, cfg.grpo.iterations], [
      "builtin-grpo",
      "grader:math",
      2,
    ]);
    const lines = (await Deno.readTextFile(join(dir, "metrics.jsonl"))).trim().split("\n")
      .map((l) => JSON.parse(l)).filter((l) => l.stage === "grpo");
    assertEquals(lines.length, 2, "one record per iteration");
    for (
      const k of [
        "reward",
        "reward_std",
        "frac_reward_zero_std",
        "kl",
        "entropy",
        "clip_ratio/low_mean",
        "clip_ratio/high_mean",
        "clip_ratio/region_mean",
        "completions/mean_length",
        "completions/clipped_ratio",
        "gold/rollout",
        "gold/correct",
      ]
    ) assert(Number.isFinite(lines[1][k]), `metric ${k}: ${lines[1][k]}`);
    const summary = JSON.parse(await Deno.readTextFile(join(dir, "summary.json")));
    for (
      const k of ["gold/before", "gold/after", "gold/correct/before", "gold/correct/after"]
    ) assert(Number.isFinite(summary[k]), `summary ${k}`);
    assert(summary.reward_hacking && "detected" in summary.reward_hacking, "verdict");
    // a user's grader module, by a path relative to the working directory
    await Deno.writeTextFile(
      join(out, "my_grader.ts"),
      "export const grade = (_p: string, r: string) => (r.includes('.') ? 1 : 0);\n",
    );
    const mod = await runCli(
      "train",
      [`--out=${out}`, "--run.name=m", ...TINY, "--reward=./my_grader.ts"],
      { cwd: out },
    );
    assertEquals(mod.code, 0, mod.err.slice(-2000));
    const m = JSON.parse(await Deno.readTextFile(join(out, "m", "config.json")));
    assertEquals(m.reward.source, "./my_grader.ts");
    // RLOO through the same pipeline shape
    const rl = await train([
      `--out=${out}`,
      "--run.name=r",
      "--method=rloo",
      "--sft.steps=10",
      "--rloo.iterations=2",
      "--rloo.promptsPerIteration=2",
      "--rloo.maxNewTokens=6",
      "--run.evalSamples=1",
    ]);
    assertEquals(rl.code, 0, rl.err.slice(-2000));
    const rcfg = JSON.parse(await Deno.readTextFile(join(out, "r", "config.json")));
    assertEquals([rcfg.pipeline, rcfg.rloo.numGenerations], ["builtin-rloo", 4]);
    const rlines = (await Deno.readTextFile(join(out, "r", "metrics.jsonl"))).trim().split("\n")
      .map((l) => JSON.parse(l)).filter((l) => l.stage === "rloo");
    assertEquals(rlines.length, 2);
    for (const k of ["reward", "kl", "rlhf_reward", "clip_ratio", "loss", "gold/correct"]) {
      assert(Number.isFinite(rlines[1][k]), `rloo metric ${k}: ${rlines[1][k]}`);
    }
    const rp = await train([
      `--out=${out}`,
      "--run.name=p",
      "--method=reinforce++",
      "--sft.steps=10",
      "--reinforce.iterations=2",
      "--reinforce.promptsPerIteration=2",
      "--reinforce.maxNewTokens=6",
      "--run.evalSamples=1",
    ]);
    assertEquals(rp.code, 0, rp.err.slice(-2000));
    const plines = (await Deno.readTextFile(join(out, "p", "metrics.jsonl"))).trim().split("\n")
      .map((l) => JSON.parse(l)).filter((l) => l.stage === "reinforce");
    assertEquals(plines.length, 2);
    for (const k of ["reward", "kl", "clip_ratio", "approx_kl", "loss", "gold/correct"]) {
      assert(Number.isFinite(plines[1][k]), `reinforce++ metric ${k}: ${plines[1][k]}`);
    }
    const rs = await train([
      `--out=${out}`,
      "--run.name=s",
      "--method=rs",
      "--sft.steps=10",
      "--rs.rounds=2",
      "--rs.stepsPerRound=10",
      "--rs.promptsPerRound=4",
      "--rs.samplesPerPrompt=2",
      "--run.evalSamples=1",
    ]);
    assertEquals(rs.code, 0, rs.err.slice(-2000));
    const slines = (await Deno.readTextFile(join(out, "s", "metrics.jsonl"))).trim().split("\n")
      .map((l) => JSON.parse(l)).filter((l) => l.stage === "rs");
    assertEquals(slines.map((l) => l["rs/round"]), [1, 2]);
    // --reward=rm: the PPO pipeline's reward-model stage trains, GRPO optimises its scores
    const rm = await train([
      `--out=${out}`,
      "--run.name=w",
      ...TINY,
      "--reward=rm",
      "--rm.steps=10",
      "--task.pairs=200",
    ]);
    assertEquals(rm.code, 0, rm.err.slice(-2000));
    const wlines = (await Deno.readTextFile(join(out, "w", "metrics.jsonl"))).trim().split("\n")
      .map((l) => JSON.parse(l));
    assertEquals(wlines.filter((l) => l.stage === "rm" && "step" in l).length, 1, "RM steps");
    assertEquals(wlines.filter((l) => l.stage === "grpo").length, 2);
    const wsum = JSON.parse(await Deno.readTextFile(join(out, "w", "summary.json")));
    for (const k of ["rm/accuracy", "rm/policy_accuracy", "score/before", "score/after"]) {
      assert(Number.isFinite(wsum[k]), `summary ${k}: ${wsum[k]}`);
    }
    await Deno.stat(join(out, "w", "rm", "model.safetensors"));
    // a grader run trains no reward model: no rm records or folder, and --stage=rm is an error
    const glines = (await Deno.readTextFile(join(dir, "metrics.jsonl"))).trim().split("\n")
      .map((l) => JSON.parse(l));
    assertEquals(glines.filter((l) => l.stage === "rm").length, 0);
    await assertThrows(() => Deno.stat(join(dir, "rm")), Deno.errors.NotFound);
    const only = await train([`--out=${out}`, "--run.name=g", ...TINY, "--stage=rm"]);
    assert(only.code !== 0 && only.err.includes("reward.source=rm"), only.err.slice(-500));
    // bad values, before any training
    const nope = await train([`--out=${out}`, "--run.name=x", ...TINY, "--reward=grader:nope"]);
    assert(nope.code !== 0 && nope.err.includes('unknown grader "nope"'), nope.err.slice(-500));
    const shape = await train([`--out=${out}`, "--run.name=y", ...TINY, "--reward=rm-ish"]);
    assert(shape.code !== 0 && shape.err.includes("grader:NAME"), shape.err.slice(-500));
    const ppo = await train([`--out=${out}`, "--reward=grader:math"]);
    assert(ppo.code !== 0 && ppo.err.includes("takes no reward"), ppo.err.slice(-500));
    const own = await train([`--out=${out}`, "--method=grpo", "--data.policy=/nowhere"]);
    assert(own.code !== 0 && own.err.includes("built-in task only"), own.err.slice(-500));
    await Deno.remove(out, { recursive: true });
  },
});
