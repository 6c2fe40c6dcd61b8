/**
 * Smoke test of `deno task bench --quick --json`: the benchmark runs beside TensorFlow.js and
 * prints one well-formed JSON object per line. (Speed is reported by the benchmark, never
 * asserted here.)
 */
import { assert, assertEquals } from "./assert.ts";
import { noGpu } from "./_gpu.ts";

Deno.test({
  name: "bench: --quick --json prints one result object per line with ours, tfjs and ratio",
  ignore: noGpu,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const cmd = new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "--allow-env",
        "--allow-read",
        "--allow-net",
        "--allow-sys",
        new URL("../bench/bench.ts", import.meta.url).pathname,
        "--quick",
        "--json",
      ],
      stdout: "piped",
      stderr: "piped",
    });
    const { code, stdout, stderr } = await cmd.output();
    const err = new TextDecoder().decode(stderr);
    assertEquals(code, 0, `bench exited with ${code}: ${err.slice(-2000)}`);
    const lines = new TextDecoder().decode(stdout).trim().split("\n")
      .filter((l) => l.startsWith("{"));
    assertEquals(lines.length, 3, "matmul NN, matmul NT, attention");
    for (const line of lines) {
      const r = JSON.parse(line);
      assertEquals(Object.keys(r), ["op", "shape", "ours_gflops", "tfjs_gflops", "ratio"]);
      assert(r.ours_gflops > 0 && r.tfjs_gflops > 0, line);
      assert(Math.abs(r.ratio - r.ours_gflops / r.tfjs_gflops) < 0.02 * r.ratio + 0.01, line);
    }
  },
});

Deno.test({
  name: "bench:learning: one tiny cell prints a JSON row, names the missed bounds, exits 1",
  ignore: noGpu,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const out = await Deno.makeTempDir();
    const cmd = new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "-A",
        new URL("../bench/learning.ts", import.meta.url).pathname,
        "--seeds=5",
        "--backends=gl",
        `--out=${out}`,
        "--json",
        "--",
        "--sft.steps=10",
        "--rm.steps=5",
        "--ppo.iterations=2",
        "--ppo.batchSize=8",
        "--ppo.miniBatchSize=4",
        "--task.policyPrompts=4",
        "--rm.loss=pairwise",
      ],
      stdout: "piped",
      stderr: "piped",
    });
    const { code, stdout, stderr } = await cmd.output();
    const text = new TextDecoder().decode(stdout);
    assertEquals(
      code,
      1,
      `a 10-step run cannot meet the bounds: ${new TextDecoder().decode(stderr)}`,
    );
    const rows = JSON.parse(text);
    assertEquals(rows.length, 1);
    const r = rows[0];
    assertEquals([r.seed, r.backend, r.path, r.pass], [5, "gl", "texture", false]);
    assert(r.failures.some((f: string) => f.startsWith("RM held-out accuracy")), r.failures);
    for (const k of ["gold/before", "gold/after", "gold/correct/before", "gold/correct/after"]) {
      assert(Number.isFinite(r[k]), `${k} = ${r[k]}`);
    }
  },
});

Deno.test({
  name: "profile: --json times every dispatch of a step by kernel; the profiled GPU time is the " +
    "sum of the rows and the counts add up to the step's dispatches",
  ignore: noGpu,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const { code, stdout, stderr } = await new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "--allow-env",
        "--allow-read",
        new URL("../bench/profile.ts", import.meta.url).pathname,
        "--workload=sft,generate",
        "--reps=1",
        "--json",
      ],
      stdout: "piped",
      stderr: "piped",
    }).output();
    assertEquals(code, 0, new TextDecoder().decode(stderr).slice(-2000));
    const rows = new TextDecoder().decode(stdout).trim().split("\n").map((l) => JSON.parse(l));
    assertEquals(rows.map((r) => r.workload), ["sft", "generate"]);
    for (const r of rows) {
      const kernels = r.kernels as { kernel: string; site: string; count: number; ms: number }[];
      const sum = kernels.reduce((a, k) => a + k.ms, 0);
      assert(Math.abs(sum - r.gpuMs) < 1e-3 * kernels.length + 1e-3, `${sum} vs ${r.gpuMs}`);
      assertEquals(kernels.reduce((a, k) => a + k.count, 0), r.dispatches, r.workload);
      assert(kernels.every((k) => k.ms >= 0 && k.kernel !== "?"), JSON.stringify(kernels));
      assert(r.wallMs > 0 && r.submits >= 1, JSON.stringify(r));
    }
    const sft = rows[0].kernels.map((k: { kernel: string }) => k.kernel);
    for (const k of ["matmul/runTexture", "layernormForward", "adamwStep", "crossEntropy"]) {
      assert(sft.some((s: string) => s === k || s.startsWith(`${k}/`)), `${k} in ${sft}`);
    }
  },
});
