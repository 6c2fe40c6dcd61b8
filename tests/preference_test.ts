/**
 * The direct preference trainers on the GPU: DPO's first step sees a policy equal to its
 * reference (loss log 2, zero rewards), frozen weights never change, the precomputed and the
 * LoRA-off references give the same step, SimPO needs no reference, KTO's reference point.
 */
import { OPT_PRESETS } from "../model/config.ts";
import { OptModel } from "../model/opt.ts";
import { ByteTokenizer } from "../model/tokenizer.ts";
import { defaults } from "../trainer/config.ts";
import { DataError, type KtoExample, type PairExample } from "../trainer/data.ts";
import { DPO_SCHEMA, DpoTrainer } from "../trainer/dpo.ts";
import { PREFERENCE_PRESETS, resolveDpoConfig } from "../trainer/builtin_preference.ts";
import { PRESETS } from "../trainer/registry.ts";
import { KTO_SCHEMA, KtoTrainer } from "../trainer/kto.ts";
import { makeBuiltinTask } from "../trainer/task.ts";
import { checkpointPreferencePipeline } from "../trainer/checkpoint_preference.ts";
import { labelComparisons, labelExamples, samplePolicy } from "../trainer/comparisons.ts";
import { actionMaskOf, encodePairBatch } from "../trainer/batch.ts";
import { logitsBackward } from "../kernels/softmax.ts";
import { assert, assertEquals, assertThrows } from "./assert.ts";
import { gpu, gpuTestOptions } from "./_gpu.ts";

const tok = new ByteTokenizer();
const opts = gpuTestOptions;
const pairs: PairExample[] = makeBuiltinTask(1, { pairs: 64 }).pairs;
const cfg = { ...defaults(DPO_SCHEMA), steps: 4, batchSize: 8, lr: 1e-3, warmupRatio: 0 };

function same(a: Float32Array, b: Float32Array): boolean {
  return a.length === b.length && a.every((v, i) => v === b[i]);
}

Deno.test({
  ...opts,
  name:
    "dpo: the first step sees policy = reference (loss log 2, zero rewards); the frozen reference never changes; the policy does",
  async fn() {
    const policy = OptModel.create(gpu, OPT_PRESETS.tiny, { seed: 3 });
    const reference = policy.copy({ frozen: true });
    const refBefore = await gpu.readF32(reference.store.params);
    const polBefore = await gpu.readF32(policy.store.params);
    const t = new DpoTrainer(policy, reference, tok, pairs, cfg);
    const m = (await t.step(true))!;
    assert(Math.abs(m["dpo/loss"] - Math.LN2) < 1e-6, `loss ${m["dpo/loss"]} vs log 2`);
    assertEquals([m["rewards/chosen"], m["rewards/rejected"], m["rewards/margins"]], [0, 0, 0]);
    assert(m["logps/chosen"] < 0 && m["logps/rejected"] < 0, "summed log-probs are negative");
    const m2 = (await t.step(true))!;
    assert(m2["dpo/loss"] !== Math.LN2 && m2["rewards/margins"] !== 0, "the policy moved");
    assert(same(await gpu.readF32(reference.store.params), refBefore), "reference unchanged");
    assert(!same(await gpu.readF32(policy.store.params), polBefore), "policy changed");
    for (const x of [policy, reference]) x.store.dispose();
  },
});

Deno.test({
  ...opts,
  name:
    "dpo: a precomputed reference and a LoRA actor's adapters-off pass give the same steps as a frozen copy",
  async fn() {
    const runs: number[][] = [];
    for (const mode of ["copy", "precomputed", "lora"] as const) {
      const base = OptModel.create(gpu, OPT_PRESETS.tiny, { seed: 5 });
      let policy = base, reference: OptModel | undefined = base.copy({ frozen: true });
      if (mode === "lora") {
        policy = reference;
        reference = undefined;
        base.store.dispose();
        policy.attachLora({ r: 4, alpha: 8, targets: ["q_proj", "v_proj", "fc2"] }, 1);
      }
      const frozenBefore = await gpu.readF32(policy.store.params);
      const t = new DpoTrainer(policy, reference, tok, pairs, {
        ...cfg,
        lossType: "ipo",
        precomputeReference: mode === "precomputed",
      });
      const losses: number[] = [];
      for (let i = 0; i < 3; i++) losses.push((await t.step(true))!["dpo/loss"]);
      runs.push(losses);
      if (mode === "lora") {
        assert(same(await gpu.readF32(policy.store.params), frozenBefore), "LoRA base unchanged");
        policy.lora!.store.dispose();
      }
      policy.store.dispose();
      reference?.store.dispose();
    }
    console.log(`ipo losses: ${runs.map((r) => r.map((v) => v.toFixed(5)).join(" ")).join(" | ")}`);
    // copy vs precomputed: the same numbers (the same reference forward, batched differently)
    for (let i = 0; i < 3; i++) assert(Math.abs(runs[0][i] - runs[1][i]) < 1e-5, `step ${i}`);
    // LoRA (B = 0 at init) starts as its own reference: IPO's first loss is (1/(2β))² = 25
    assert(Math.abs(runs[2][0] - 25) < 1e-3, `lora first IPO loss ${runs[2][0]}`);
  },
});

Deno.test({
  ...opts,
  name: "simpo: trains without a reference model; DPO without one (and no LoRA) is a named error",
  async fn() {
    const policy = OptModel.create(gpu, OPT_PRESETS.tiny, { seed: 7 });
    await assertThrows(
      () => new DpoTrainer(policy, undefined, tok, pairs, cfg),
      Error,
      "give a reference model",
    );
    // one batch of 8 pairs seen every step: its margin must grow
    const t = new DpoTrainer(policy, undefined, tok, pairs.slice(0, 8), {
      ...cfg,
      lossType: "simpo",
      beta: 2,
      gamma: 0.5,
    });
    const ms = [];
    for (let i = 0; i < 4; i++) ms.push((await t.step(true))!);
    assert(ms.every((m) => Number.isFinite(m["simpo/loss"])), "finite SimPO losses");
    // SimPO's rewards are β·(length-mean ℓ): negative, and the logged logps are the sums
    assert(ms[0]["rewards/chosen"] < 0 && ms[0]["logps/chosen"] < ms[0]["rewards/chosen"] / 2);
    const margins = ms.map((m) => m["rewards/margins"]);
    assert(margins[3] > margins[0] + 0.1, `the margin grows: ${margins.join(" → ")}`);
    policy.store.dispose();
  },
});

Deno.test({
  ...opts,
  name:
    "kto: the first step has ρ = 0 and z = 0 (every example costs λ/2); on a fixed batch desirable log-ratios pass z, undesirable stay below",
  async fn() {
    const policy = OptModel.create(gpu, OPT_PRESETS.tiny, { seed: 9 });
    const reference = policy.copy({ frozen: true });
    const refBefore = await gpu.readF32(reference.store.params);
    // 8 examples from the task's pairs: the chosen desirable, the rejected undesirable
    const data: KtoExample[] = pairs.slice(0, 4).flatMap((p) => [
      { prompt: p.prompt, completion: p.chosen, label: true },
      { prompt: p.prompt, completion: p.rejected, label: false },
    ]);
    const kcfg = { ...defaults(KTO_SCHEMA), steps: 5, batchSize: 8, lr: 1e-3, warmupRatio: 0 };
    await assertThrows(
      () => new KtoTrainer(policy, reference, tok, data, { ...kcfg, batchSize: 1 }),
      Error,
      "batchSize must be ≥ 2",
    );
    const t = new KtoTrainer(policy, reference, tok, data, kcfg);
    const ms = [];
    for (let i = 0; i < 5; i++) ms.push((await t.step(true))!);
    assert(Math.abs(ms[0]["kto/loss"] - 0.5) < 1e-6, `first loss ${ms[0]["kto/loss"]}`);
    assertEquals([ms[0].kl, ms[0]["rewards/chosen"], ms[0]["rewards/rejected"]], [0, 0, 0]);
    // desirable log-ratios move above the reference point z (= kl), undesirable ones stay below
    const last = ms[4], beta = kcfg.beta;
    assert(last["rewards/chosen"] > beta * last.kl, JSON.stringify(last));
    assert(last["rewards/rejected"] < beta * last.kl, JSON.stringify(last));
    assert(last["rewards/margins"] > 0.1, JSON.stringify(last));
    assert(ms[4]["kto/loss"] < 0.5, `loss falls: ${ms[4]["kto/loss"]}`);
    assert(same(await gpu.readF32(reference.store.params), refBefore), "reference unchanged");
    for (const x of [policy, reference]) x.store.dispose();
  },
});

Deno.test({
  ...opts,
  name:
    "preference data: a pair whose chosen equals its rejected is a DataError; empty responses, one-label and unbalanced KTO data warn",
  async fn() {
    const policy = OptModel.create(gpu, OPT_PRESETS.tiny, { seed: 11 });
    const p = { prompt: "\n\nHuman: What is 1 + 1?\n\nAssistant:", chosen: " 2.", rejected: " 3" };
    await assertThrows(
      () => new DpoTrainer(policy, policy, tok, [p, { ...p, rejected: " 2." }], cfg),
      DataError,
      "pair 1: chosen and rejected are the same response",
    );
    const e = new DpoTrainer(policy, policy, tok, [p, { ...p, chosen: "" }], cfg);
    assertEquals(e.warnings, [
      "1 preference pair(s) have an empty response (EOS alone), the first is pair 1",
    ]);
    // the same text, once cut at the token budget (no EOS) and once ended, is a real pair
    new DpoTrainer(policy, policy, tok, [{ ...p, rejected: " 2.", rejectedTruncated: true }], cfg);
    const kcfg = { ...defaults(KTO_SCHEMA), batchSize: 2 };
    const good = [
      { prompt: p.prompt, completion: " 2.", label: true },
      { prompt: p.prompt, completion: " 2", label: true },
    ];
    const t = new KtoTrainer(policy, policy, tok, good, kcfg);
    assert(t.warnings.some((w) => w.includes("every example is desirable")), t.warnings.join());
    const k = new KtoTrainer(policy, policy, tok, [{ ...good[0], completion: "" }, good[1]], kcfg);
    assert(k.warnings.some((w) => w.startsWith("1 KTO example(s) have an empty completion")));
    // one desirable against three undesirable: λ_D·n_D / λ_U·n_U = 1/3, the fix is λ_D = 3
    const bad = { prompt: p.prompt, completion: " 3", label: false };
    const skewed = new KtoTrainer(policy, policy, tok, [good[0], bad, bad, bad], kcfg);
    assert(
      skewed.warnings.some((w) => w.includes("= 0.33, outside") && w.includes("Weight=3.00")),
      skewed.warnings.join(),
    );
    const balanced = new KtoTrainer(policy, policy, tok, [good[0], bad, bad, bad], {
      ...kcfg,
      desirableWeight: 3,
    });
    assertEquals(balanced.warnings, []);
    policy.store.dispose();
  },
});

Deno.test({
  ...gpuTestOptions,
  name: "checkpoint preference data: a vocab.json that exists but cannot be read is reported, " +
    "not mistaken for a missing one; a missing one with a 260-token policy is the byte tokenizer",
  async fn() {
    const enc = new TextEncoder();
    const pairs = makeBuiltinTask(3, { pairs: 4 }).pairs.map((p) => JSON.stringify(p)).join("\n");
    const files: Record<string, Uint8Array> = {
      "/data/pairs.jsonl": enc.encode(pairs + "\n"),
      "/policy/config.json": enc.encode(JSON.stringify({ vocab_size: 260 })),
    };
    const named = (name: string, message: string) => Object.assign(new Error(message), { name });
    const io = (vocab: () => Promise<Uint8Array>) => ({
      read: (p: string) =>
        p.endsWith("vocab.json")
          ? vocab()
          : files[p]
          ? Promise.resolve(files[p])
          : Promise.reject(named("NotFound", `no such file: ${p}`)),
    });
    const init = (vocab: () => Promise<Uint8Array>) => {
      const def = checkpointPreferencePipeline(io(vocab), "dpo");
      const cfg = {
        ...def.defaults,
        data: { ...def.defaults.data, policy: "/policy", pairs: "/data/pairs.jsonl", heldOut: 1 },
      };
      return def.init(gpu, cfg);
    };
    await assertThrows(
      () => init(() => Promise.reject(named("PermissionDenied", "vocab.json: permission denied"))),
      Error,
      "permission denied",
    );
    await assertThrows(
      () => init(() => Promise.resolve(new Uint8Array([0xff, 0xfe, 0x7b]))),
      Error,
      "vocab.json",
    );
    const state = await init(() => Promise.reject(named("NotFound", "no vocab.json")));
    assert(state.tok instanceof ByteTokenizer, "the byte tokenizer for a 260-token policy");
  },
});

/** The share of response bytes below 0x40 (digits, spaces, punctuation): varied and learnable. */
const lowBytes = (_p: string, r: string) => {
  const b = new TextEncoder().encode(r);
  return b.length ? b.filter((x) => x < 0x40).length / b.length : 0;
};
const learnPrompts = [
  "What is 1 + 2?",
  "Say a word:",
  "Count: 1 2 3",
  "Hello",
  "Name a color.",
  "2 * 3 =",
  "Tell me a joke",
  "Why?",
];

/** Mean `lowBytes` of 64 samples of `model` (8 per prompt) at a fixed sampling seed. */
async function lowByteRate(model: OptModel, seed: number): Promise<number> {
  const groups = await samplePolicy(model, tok, learnPrompts, {
    samplesPerPrompt: 8,
    maxNewTokens: 6,
    maxPromptLength: 32,
    temperature: 1,
    seed,
  });
  const xs = groups.flat().map((s) => lowBytes(s.prompt, s.response));
  return xs.reduce((a, v) => a + v, 0) / xs.length;
}

// Learning on the policy's own samples labelled by a grader (the built-in pipelines' flow, on a
// tiny random model): each loss must move fresh samples towards what its labels prefer. Measured
// at this lr and length (low-byte share before → after, seeds 1 / 2): DPO +0.75 / +0.48, IPO
// +0.71 / +0.27, hinge +0.74 / +0.57, SimPO +0.77 / +0.48, KTO +0.33 / +0.50; a sign error in a
// loss or its gradient makes the share fall.
const LEARNING = [
  { method: "dpo", extra: {} },
  { method: "ipo", extra: { lossType: "ipo" as const } },
  { method: "hinge", extra: { lossType: "hinge" as const } },
  { method: "simpo", extra: { lossType: "simpo" as const, beta: 2, gamma: 0.5 } },
  { method: "kto", extra: {} },
];
for (const { method, extra } of LEARNING) {
  for (const seed of [1, 2]) {
    Deno.test({
      ...opts,
      name: `${method}: fresh samples move towards the preferred responses over 48 steps on the ` +
        `policy's own labelled samples (seed ${seed}; bound: low-byte share +0.10)`,
      async fn() {
        const policy = OptModel.create(gpu, OPT_PRESETS.tiny, { seed });
        const reference = method === "simpo" ? undefined : policy.copy({ frozen: true });
        const groups = await samplePolicy(policy, tok, learnPrompts, {
          samplesPerPrompt: 8,
          maxNewTokens: 6,
          maxPromptLength: 32,
          temperature: 1,
          seed: 100 + seed,
        });
        const before = await lowByteRate(policy, 200 + seed);
        const steps = 48, batchSize = 8, lr = 3e-2;
        const t = method === "kto"
          ? new KtoTrainer(
            policy,
            reference,
            tok,
            // desirable: at least one low byte in six, about half the samples (KTO's λ_D = λ_U
            // assume balanced labels; at a threshold only a sixth reach, undesirable examples
            // dominate and the share falls)
            labelExamples(groups, lowBytes, { threshold: 0.16, labelNoise: 0, seed }),
            { ...defaults(KTO_SCHEMA), steps, batchSize, lr, warmupRatio: 0, seed },
          )
          : new DpoTrainer(
            policy,
            reference,
            tok,
            labelComparisons(groups, lowBytes, { labelNoise: 0, seed }),
            { ...cfg, ...extra, steps, batchSize, lr, seed },
          );
        for (let i = 0; i < steps; i++) await t.step(false);
        const after = await lowByteRate(policy, 200 + seed);
        console.log(
          `${method} seed ${seed}: low-byte share ${before.toFixed(3)} → ${after.toFixed(3)}`,
        );
        assert(after - before >= 0.1, `${before.toFixed(3)} → ${after.toFixed(3)}`);
        policy.store.dispose();
        reference?.store.dispose();
      },
    });
  }
}

Deno.test({
  ...opts,
  name: "dpo with rpoAlpha: the gradient is DPO's plus α times the chosen responses' token-mean " +
    "NLL gradient (computed separately), and the loss adds α·nll_loss",
  async fn() {
    const model = OptModel.create(gpu, OPT_PRESETS.tiny, { seed: 13 });
    const reference = model.copy({ frozen: true });
    const batch = pairs.slice(0, 4), alpha = 0.5;
    // lr 0 and no clipping: the step leaves the weights and its gradients stay readable
    const c = { ...cfg, steps: 1, batchSize: 4, lr: 0, maxGradNorm: 0, seed: 3 };
    const run = async (rpoAlpha: number) => {
      const t = new DpoTrainer(model, reference, tok, batch, { ...c, rpoAlpha });
      const m = (await t.step(true))!;
      return { m, g: await gpu.readF32(model.store.grads) };
    };
    const plain = await run(0), rpo = await run(alpha);
    // the NLL gradient by another route: token-level dlogp on the chosen rows
    const b = encodePairBatch(tok, batch, c.maxLength), act = actionMaskOf(b), P = batch.length;
    const N = act.subarray(0, P * b.T).reduce((a, v) => a + v, 0);
    const dlogp = act.map((v, i) => (i < P * b.T ? -v / N : 0));
    model.store.zeroGrads();
    const nll = await gpu.scope(async () => {
      const acts = model.forward(
        gpu.fromArray(b.tokens, [2 * P, b.T]),
        gpu.fromArray(b.mask, [2 * P, b.T]),
      );
      const lp = model.tokenLogprobs(acts);
      model.backward(acts, {
        dlogits: logitsBackward(gpu, lp.logits, lp.targets, lp.lse, {
          dlogp: gpu.fromArray(dlogp),
        }),
      });
      const logp = await gpu.readF32(lp.logp);
      return logp.reduce((a, v, i) => a + v * dlogp[i], 0); // −Σ ℓ_w / N
    });
    const gN = await gpu.readF32(model.store.grads);
    const scale = Math.max(...rpo.g.map(Math.abs));
    let worst = 0;
    for (let i = 0; i < gN.length; i++) {
      worst = Math.max(worst, Math.abs(rpo.g[i] - plain.g[i] - alpha * gN[i]));
    }
    assert(worst <= 1e-5 * scale, `max |g_rpo − g_dpo − α·g_nll| ${worst} (scale ${scale})`);
    assert(Math.abs(rpo.m.nll_loss - nll) < 1e-5 * Math.abs(nll), `${rpo.m.nll_loss} vs ${nll}`);
    const added = rpo.m["dpo/loss"] - plain.m["dpo/loss"];
    assert(Math.abs(added - alpha * nll) < 1e-5, `loss adds ${added}, α·nll ${alpha * nll}`);
    assert(!("nll_loss" in plain.m), "nll_loss is logged only with RPO");
    for (const x of [model, reference]) x.store.dispose();
  },
});

Deno.test("presets: the built-in DPO and SimPO use RPO (α 1) at lr 1e-4; IPO, hinge and robust the plain settings; checkpoint presets add neither", () => {
  const cfg = (name: string) => {
    const { "run.name": _, ...o } = PREFERENCE_PRESETS[name].overrides;
    return resolveDpoConfig(o).dpo;
  };
  for (const m of ["dpo", "simpo"]) assertEquals([cfg(m).rpoAlpha, cfg(m).lr], [1, 1e-4], m);
  for (const m of ["ipo", "hinge", "robust"]) assertEquals([cfg(m).rpoAlpha, cfg(m).lr], [0, 3e-5]);
  for (const m of ["dpo", "simpo"]) {
    const o = PRESETS[`checkpoint-${m}`].overrides;
    assert(!("dpo.rpoAlpha" in o) && !("dpo.lr" in o), JSON.stringify(o));
  }
});
