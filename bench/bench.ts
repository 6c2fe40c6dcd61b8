/**
 * `deno task bench [--json] [--quick]`: GFLOP/s of our matmul (NN and NT at 256/512/1024) and
 * causal attention forward (B=4, H=4, T=128, Dh=32), beside TensorFlow.js's WebGPU backend
 * doing the same math on the same adapter in the same run, with the ratio.
 *
 * Timing: each op runs once to compile, then `reps` times back to back with one readback of the
 * last result at the end (the same for both libraries); the best of three rounds is reported.
 */

import * as tf from "@tensorflow/tfjs-core";
import "@tensorflow/tfjs-backend-webgpu";
import { attentionForward, Gpu, matmul, randomUniform, type Tensor } from "../mod.ts";

const json = Deno.args.includes("--json");
const quick = Deno.args.includes("--quick");
const unknown = Deno.args.filter((a) => a !== "--json" && a !== "--quick");
if (unknown.length) {
  console.error(`bench: unknown argument(s) ${unknown.join(" ")} (known: --json, --quick)`);
  Deno.exit(2);
}

interface Row {
  op: string;
  shape: string;
  ours_gflops: number;
  tfjs_gflops: number;
  ratio: number;
}

async function best(rounds: number, fn: () => Promise<number>): Promise<number> {
  let t = Infinity;
  for (let r = 0; r < rounds; r++) t = Math.min(t, await fn());
  return t;
}

const gpu = await Gpu.create();
await tf.setBackend("webgpu");
await tf.ready();
if (!json) {
  console.log(
    `adapter: ${gpu.adapterDescription} (fallback: ${gpu.isFallbackAdapter}, ` +
      `matmul path: ${gpu.matmulPath}); peer: TensorFlow.js ${tf.version_core} ${tf.getBackend()}`,
  );
}

/** Seconds per call of `ours` (recording `reps` calls, then one readback). */
async function timeOurs(reps: number, call: () => Tensor): Promise<number> {
  await gpu.read(call());
  return await best(quick ? 1 : 3, async () => {
    const t0 = performance.now();
    let out: Tensor | undefined;
    for (let i = 0; i < reps; i++) {
      out?.dispose();
      out = call();
    }
    await gpu.read(out!);
    out!.dispose();
    return (performance.now() - t0) / reps / 1000;
  });
}

async function timeTf(reps: number, call: () => tf.Tensor): Promise<number> {
  const w = call();
  await w.data();
  w.dispose();
  return await best(quick ? 1 : 3, async () => {
    const t0 = performance.now();
    let out: tf.Tensor | undefined;
    for (let i = 0; i < reps; i++) {
      out?.dispose();
      out = call();
    }
    await out!.data();
    out!.dispose();
    return (performance.now() - t0) / reps / 1000;
  });
}

const rows: Row[] = [];
function report(op: string, shape: string, flops: number, ours: number, theirs: number) {
  const row: Row = {
    op,
    shape,
    ours_gflops: +(flops / ours / 1e9).toFixed(2),
    tfjs_gflops: +(flops / theirs / 1e9).toFixed(2),
    ratio: +(theirs / ours).toFixed(2),
  };
  rows.push(row);
  if (json) console.log(JSON.stringify(row));
  else {
    console.log(
      `${op.padEnd(18)} ${shape.padEnd(22)} ours ${
        row.ours_gflops.toFixed(2).padStart(7)
      } GFLOP/s` +
        `   tfjs ${row.tfjs_gflops.toFixed(2).padStart(6)} GFLOP/s   ratio ${
          row.ratio.toFixed(1).padStart(5)
        }×`,
    );
  }
}

for (const n of quick ? [256] : [256, 512, 1024]) {
  for (const transB of [false, true]) {
    const reps = n >= 1024 ? 3 : n >= 512 ? 6 : 12;
    const a = randomUniform(gpu, [n, n], { seed: 1 }), b = randomUniform(gpu, [n, n], { seed: 2 });
    const ours = await timeOurs(reps, () => matmul(gpu, a, b, { transB }));
    a.dispose();
    b.dispose();
    const ta = tf.randomUniform([n, n]), tb = tf.randomUniform([n, n]);
    const theirs = await timeTf(reps, () => tf.matMul(ta, tb, false, transB));
    ta.dispose();
    tb.dispose();
    report(`matmul ${transB ? "NT" : "NN"}`, `${n}x${n}x${n}`, 2 * n ** 3, ours, theirs);
  }
}

{
  const B = 4, H = 4, T = 128, Dh = 32;
  const shape = [B, H, T, Dh];
  const reps = quick ? 2 : 8;
  const q = randomUniform(gpu, shape, { seed: 3 }), k = randomUniform(gpu, shape, { seed: 4 });
  const v = randomUniform(gpu, shape, { seed: 5 });
  const ours = await timeOurs(reps, () => {
    const r = attentionForward(gpu, q, k, v, { causal: true });
    r.lse.dispose();
    return r.out;
  });
  // the same math in tfjs: scores, causal mask, softmax, weighted sum
  const tq = tf.randomUniform(shape), tk = tf.randomUniform(shape), tv = tf.randomUniform(shape);
  const causal = tf.linalg.bandPart(tf.ones([T, T]), -1, 0);
  const maskBias = tf.mul(tf.sub(1, causal), -1e9);
  const theirs = await timeTf(reps, () =>
    tf.tidy(() => {
      const s = tf.add(tf.mul(tf.matMul(tq, tk, false, true), 1 / Math.sqrt(Dh)), maskBias);
      return tf.matMul(tf.softmax(s), tv);
    }));
  // FLOPs of the two batched matmuls (QKᵀ and PV), unmasked count for both libraries
  report("attention fwd", `B${B} H${H} T${T} Dh${Dh}`, 4 * B * H * T * T * Dh, ours, theirs);
}

if (!json) {
  const mm = rows.filter((r) => r.op.startsWith("matmul") && !r.shape.startsWith("256"));
  const worst = Math.min(...mm.map((r) => r.ratio));
  console.log(`\nworst matmul ratio at 512/1024: ${worst.toFixed(1)}×`);
}
gpu.destroy();
Deno.exit(0);
