/**
 * `deno task profile [--workload=sft,rm,ppo,generate] [--by-site] [--json]`: where the time of
 * one step goes, by kernel. Each workload is the product's own step on the built-in task's model
 * (`TASK_MODEL_CONFIG`: 2 layers, hidden 64, FFN 256, 260 tokens): an SFT step (16 sequences),
 * a reward-model step (32 pairs), a PPO iteration (16 rollouts of 16 new tokens, actor and
 * critic updates) and a batched generation (16 prompts, 16 new tokens). For each it prints the
 * wall time per step with profiling off, the dispatches, submits and readbacks per step, the
 * operand staging (buffer → texture copies, which the GPU times leave out, and packs reused), and a
 * table of the profiled step's GPU time by kernel (count, ms, share; `--by-site` splits each
 * kernel by the model or trainer function that called it). GPU times come from timestamp
 * queries where the adapter offers them, else from one submit per dispatch (see
 * `Gpu.create({ profile: true })`). The matmul path follows `WEBGPU_RLHF_MATMUL_PATH`.
 */

import {
  ByteTokenizer,
  defaults,
  generate,
  Gpu,
  type KernelTime,
  makeBuiltinTask,
  OptModel,
  PPO_SCHEMA,
  PpoTrainer,
  RewardTrainer,
  RM_SCHEMA,
  SFT_SCHEMA,
  SftTrainer,
  TASK_MODEL_CONFIG,
} from "../mod.ts";
import { createGpu, matmulPathFromEnv } from "../cli/gpu_env.ts";
import { parseArgs } from "../cli/args.ts";

const { flags } = parseArgs(Deno.args, {
  workload: "string",
  "by-site": "boolean",
  json: "boolean",
  reps: "int",
});
const WORKLOADS = ["sft", "rm", "ppo", "generate"] as const;
type Workload = typeof WORKLOADS[number];
const chosen = String(flags.workload ?? WORKLOADS.join(",")).split(",") as Workload[];
for (const w of chosen) {
  if (!WORKLOADS.includes(w)) {
    console.error(`profile: unknown workload "${w}" (known: ${WORKLOADS.join(", ")})`);
    Deno.exit(2);
  }
}
const reps = (flags.reps as number | undefined) ?? 3;
const json = flags.json === true;
const task = makeBuiltinTask(1);
const tok = new ByteTokenizer();

/** Builds a workload on `gpu`: a function that runs one step (and never reads back). */
function build(gpu: Gpu, w: Workload): () => Promise<unknown> {
  const model = (seed: number, valueHead = false) =>
    OptModel.create(gpu, TASK_MODEL_CONFIG, { seed, valueHead });
  if (w === "sft") {
    const t = new SftTrainer(model(1), tok, task.sft, {
      ...defaults(SFT_SCHEMA),
      steps: 1000,
      batchSize: 16,
    });
    return () => t.step(false);
  }
  if (w === "rm") {
    const t = new RewardTrainer(model(2, true), tok, task.pairs, {
      ...defaults(RM_SCHEMA),
      steps: 1000,
      batchSize: 32,
    });
    return () => t.step(false);
  }
  if (w === "ppo") {
    const actor = model(3), critic = model(4, true);
    const t = new PpoTrainer(
      { actor, critic, reward: critic.copy({ frozen: true }), reference: actor.copy() },
      tok,
      { prompts: task.prompts.map((q) => q.prompt) },
      { ...defaults(PPO_SCHEMA), iterations: 1000, maxNewTokens: 16 },
    );
    return () => t.step(false);
  }
  const m = model(5);
  const prompts = task.prompts.slice(0, 16).map((q) => tok.encode(q.prompt));
  const T = Math.max(...prompts.map((p) => p.length));
  const ids = new Int32Array(16 * T).fill(tok.padId), mask = new Float32Array(16 * T);
  prompts.forEach((p, b) =>
    p.forEach((id, i) => {
      ids[b * T + T - p.length + i] = id;
      mask[b * T + T - p.length + i] = 1;
    })
  );
  const tIds = gpu.fromArray(ids, [16, T]), tMask = gpu.fromArray(mask, [16, T]);
  return async () => {
    const out = await generate(m, tIds, tMask, { maxNewTokens: 16, seed: 7, eosId: -1 });
    for (const t of [out.tokens, out.attentionMask, out.responseMask, out.logprobs]) t.dispose();
  };
}

const tilingLines: string[] = [];
const plain = await createGpu((l) => tilingLines.push(l));
// the profiled device runs the tiling the plain one chose
const profiled = await Gpu.create({
  matmulPath: matmulPathFromEnv(),
  profile: true,
  textureTiling: plain.textureTiling,
});
if (!json) {
  console.log(
    `adapter: ${plain.adapterDescription} · matmul path ${plain.matmulPath} · timing: ${profiled.profiling}`,
  );
  for (const l of tilingLines) console.log(l);
}

for (const w of chosen) {
  // wall time and counts with profiling off
  const step = build(plain, w);
  await step(); // compiles the pipelines
  await plain.sync();
  const s0 = { ...plain.stats }, t0 = performance.now();
  for (let i = 0; i < reps; i++) await step();
  await plain.sync();
  const wall = (performance.now() - t0) / reps;
  const per = (k: keyof typeof s0) => (plain.stats[k] - s0[k]) / reps;
  // one profiled step
  const pstep = build(profiled, w);
  await pstep();
  await profiled.profileReport(); // drop the warm-up
  await pstep();
  const rows = await profiled.profileReport();
  const gpuMs = rows.reduce((a, r) => a + r.ms, 0);
  const table = flags["by-site"] ? rows : byKernel(rows);
  if (json) {
    console.log(JSON.stringify({
      workload: w,
      wallMs: +wall.toFixed(2),
      dispatches: per("dispatches"),
      submits: per("submits"),
      readbacks: per("readbacks"),
      textureCopies: per("textureCopies"),
      textureCopyMiB: +(per("textureCopyBytes") / 2 ** 20).toFixed(3),
      packReuses: per("packReuses"),
      gpuMs: +gpuMs.toFixed(3),
      kernels: table.map((r) => ({ ...r, ms: +r.ms.toFixed(4) })),
    }));
    continue;
  }
  console.log(
    `\n${w}: ${wall.toFixed(1)} ms/step wall (profiling off, mean of ${reps}); ` +
      `${per("dispatches")} dispatches, ${per("submits")} submits, ${per("readbacks")} readbacks ` +
      `per step; profiled GPU time ${gpuMs.toFixed(1)} ms\n` +
      `  operand staging per step (not in the GPU time): ${per("textureCopies")} buffer → ` +
      `texture copies (${(per("textureCopyBytes") / 2 ** 20).toFixed(1)} MiB), ` +
      `${per("packReuses")} packs reused`,
  );
  const head = flags["by-site"] ? ["kernel", "called from"] : ["kernel", "top caller"];
  console.log(
    `${head[0].padEnd(34)} ${head[1].padEnd(30)} ${"count".padStart(6)} ${"ms".padStart(9)} ` +
      `${"share".padStart(6)}`,
  );
  for (const r of table) {
    console.log(
      `${r.kernel.slice(0, 34).padEnd(34)} ${r.site.slice(0, 30).padEnd(30)} ` +
        `${String(r.count).padStart(6)} ${r.ms.toFixed(2).padStart(9)} ` +
        `${(100 * r.ms / gpuMs).toFixed(1).padStart(5)}%`,
    );
  }
}
plain.destroy();
profiled.destroy();

/** Rows summed by kernel; `site` becomes the caller with the most time. */
function byKernel(rows: KernelTime[]): KernelTime[] {
  const acc = new Map<string, KernelTime & { best: number }>();
  for (const r of rows) {
    const e = acc.get(r.kernel) ?? { kernel: r.kernel, site: r.site, count: 0, ms: 0, best: 0 };
    e.count += r.count;
    e.ms += r.ms;
    if (r.ms > e.best) [e.best, e.site] = [r.ms, r.site];
    acc.set(r.kernel, e);
  }
  return [...acc.values()].map(({ best: _, ...r }) => r).sort((a, b) => b.ms - a.ms);
}
