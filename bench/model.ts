/**
 * `deno task bench:model [--json] [--opt125m] [--vs-torch]`: model-level throughput on this
 * adapter — batched KV-cache generation (B=8, 64 new tokens) and forward+backward tokens/s for
 * the tiny config, and (with --opt125m) forward+backward and generation for an OPT-125m-shaped
 * model with random weights. `--vs-torch` instead runs the small-model workloads of
 * `bench/vs_torch.ts` side by side with PyTorch-CPU (when `python3` has `torch`).
 */

import { crossEntropy, crossEntropyBackward, fill } from "../mod.ts";
import { generate, OPT_PRESETS, type OptConfig, OptModel } from "../mod.ts";
import { createGpu } from "../cli/gpu_env.ts";
import { peerStatus, vsTorch } from "./vs_torch.ts";

const json = Deno.args.includes("--json");
const big = Deno.args.includes("--opt125m");
const tilingLines: string[] = [];
const gpu = await createGpu((l) => tilingLines.push(l));

function report(name: string, value: number, unit: string, detail: string) {
  if (json) console.log(JSON.stringify({ name, value: +value.toFixed(2), unit, detail }));
  else console.log(`${name.padEnd(34)} ${value.toFixed(1).padStart(9)} ${unit}   ${detail}`);
}

async function fwdBwd(c: OptConfig, B: number, T: number, reps: number, label: string) {
  const model = OptModel.create(gpu, c, { seed: 1 });
  const tokens = gpu.fromArray(Int32Array.from({ length: B * T }, (_, i) => 4 + (i * 7) % 200), [
    B,
    T,
  ]);
  const mask = gpu.fromArray(new Float32Array(B * T).fill(1), [B, T]);
  const targets = gpu.fromArray(Int32Array.from({ length: B * T }, (_, i) => 4 + (i * 13) % 200));
  const dloss = gpu.empty([B * T]);
  fill(gpu, dloss, 1 / (B * T));
  const step = () => {
    model.store.zeroGrads();
    const acts = model.forward(tokens, mask);
    const logits = model.logits(acts);
    const ce = crossEntropy(gpu, logits, targets);
    const dl = crossEntropyBackward(gpu, logits, targets, ce.lse, dloss);
    model.backward(acts, { dlogits: dl });
    model.store.adamw({ lr: 1e-4 });
    for (const t of [logits, ce.loss, ce.lse, dl]) t.dispose();
    model.disposeActivations(acts);
  };
  step();
  await gpu.sync();
  const t0 = performance.now();
  for (let i = 0; i < reps; i++) step();
  await gpu.sync();
  const s = (performance.now() - t0) / 1000 / reps;
  report(
    `${label} fwd+bwd+AdamW`,
    (B * T) / s,
    "tokens/s",
    `B=${B} T=${T}, ${(s * 1000).toFixed(0)} ms/step`,
  );
  model.store.dispose();
}

async function gen(c: OptConfig, B: number, Tp: number, G: number, label: string) {
  const model = OptModel.create(gpu, c, { seed: 2 });
  const prompt = gpu.fromArray(Int32Array.from({ length: B * Tp }, (_, i) => 4 + (i * 5) % 200), [
    B,
    Tp,
  ]);
  const mask = gpu.fromArray(new Float32Array(B * Tp).fill(1), [B, Tp]);
  const opts = { maxNewTokens: G, temperature: 1, topK: 50, seed: 3, eosId: -1 };
  await generate(model, prompt, mask, { ...opts, maxNewTokens: 2 });
  const t0 = performance.now();
  const out = await generate(model, prompt, mask, opts);
  await gpu.read(out.tokens);
  const s = (performance.now() - t0) / 1000;
  report(
    `${label} generation`,
    (B * out.generated) / s,
    "tokens/s",
    `B=${B}, prompt ${Tp}, ${out.generated} new tokens, ${s.toFixed(2)} s`,
  );
  model.store.dispose();
}

if (!json) {
  console.log(`adapter: ${gpu.adapterDescription} · matmul path ${gpu.matmulPath}`);
  for (const l of tilingLines) console.log(l);
}
if (Deno.args.includes("--vs-torch")) {
  const missing = await peerStatus();
  if (missing) console.error(`bench:model --vs-torch: no PyTorch peer (${missing}); ours alone`);
  const rows = await vsTorch(gpu, missing === null);
  for (const r of rows) {
    if (json) {
      console.log(JSON.stringify({ ...r, ours: +r.ours.toFixed(4), torch: r.torch }));
      continue;
    }
    const f = (v: number | null) =>
      v === null ? "—" : r.unit === "new tok/s" ? v.toFixed(0) : v.toFixed(r.unit === "s" ? 3 : 1);
    const per = r.dispatches === undefined
      ? ""
      : `   ${r.dispatches} dispatches, ${r.submits} submits`;
    console.log(
      `${r.workload.padEnd(15)} ${r.unit.padStart(9)}  ours ${f(r.ours).padStart(7)}  torch ${
        f(r.torch).padStart(7)
      }  ${r.slowdown === null ? "" : `${r.slowdown.toFixed(2)}× slower`.padStart(14)}${
        r.slowdownRange
          ? ` (pairs ${r.slowdownRange[0].toFixed(2)}–${r.slowdownRange[1].toFixed(2)})`
          : ""
      }   ${r.detail}${per}`,
    );
  }
  gpu.destroy();
  Deno.exit(0);
}
await gen(OPT_PRESETS.tiny, 8, 8, 64, "tiny (L2 H32)");
await fwdBwd(OPT_PRESETS.tiny, 8, 64, 5, "tiny (L2 H32)");
if (big) {
  await fwdBwd(OPT_PRESETS["opt-125m"], 1, 8, 2, "OPT-125m-shaped");
  await gen(OPT_PRESETS["opt-125m"], 8, 8, 16, "OPT-125m-shaped");
}
gpu.destroy();
