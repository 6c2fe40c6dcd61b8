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
      assert(r.textureCopies >= 0 && r.textureCopyMiB >= 0 && r.packReuses >= 0, JSON.stringify(r));
      if (r.workload === "sft" && Deno.env.get("WEBGPU_RLHF_MATMUL_PATH") !== "buffer") {
        // the texture path stages operands by copies, and a backward reuses dY's pack
        assert(r.textureCopies > 0 && r.textureCopyMiB > 0 && r.packReuses > 0, JSON.stringify(r));
      }
    }
    const sft = rows[0].kernels.map((k: { kernel: string }) => k.kernel);
    for (const k of ["matmul/runTexture", "layernormForward", "adamwStep", "crossEntropy"]) {
      assert(sft.some((s: string) => s === k || s.startsWith(`${k}/`)), `${k} in ${sft}`);
    }
  },
});

Deno.test({
  name: "bench:model --vs-torch: four workloads side by side with the peer's figures and the " +
    "slowdown; without PyTorch it says so and prints ours alone",
  ignore: noGpu,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    // a stand-in interpreter printing the peer scripts' output lines (parsing is what is tested)
    const dir = await Deno.makeTempDir();
    const fake = `${dir}/python3`;
    await Deno.writeTextFile(
      fake,
      `#!/bin/sh
case "$1" in
  -c) echo 1.13.1 ;;
  *torch_sft_step.py) echo "torch 1.13.1 threads=2 SFT step L=2 H=32 NH=4 FFN=64 V=260 B=16 T=40: 6.90 ms/step" ;;
  *torch_ppo_iter.py) echo "torch 1.13.1 threads=2 L=$2 H=$3: rollout 0.040s (12800 new tok/s) | train 0.125s (16384 tok/s fwd+bwd) | iteration 0.165s" ;;
esac
`,
    );
    await Deno.chmod(fake, 0o755);
    const run = async (python: string) => {
      const { code, stdout, stderr } = await new Deno.Command(Deno.execPath(), {
        args: [
          "run",
          "--allow-env",
          "--allow-read",
          "--allow-run",
          new URL("../bench/model.ts", import.meta.url).pathname,
          "--vs-torch",
          "--json",
        ],
        env: { WEBGPU_RLHF_PYTHON: python },
        stdout: "piped",
        stderr: "piped",
      }).output();
      const err = new TextDecoder().decode(stderr);
      assertEquals(code, 0, err.slice(-2000));
      const rows = new TextDecoder().decode(stdout).trim().split("\n").map((l) => JSON.parse(l));
      return { rows, err };
    };
    try {
      const { rows } = await run(fake);
      assertEquals(rows.map((r) => r.workload), [
        "sft-tiny",
        "ppo-L2H64",
        "rollout-L2H64",
        "ppo-L4H128",
      ]);
      assertEquals(rows.map((r) => r.torch), [6.9, 0.165, 12800, 0.165]);
      for (const r of rows) {
        assert(r.ours > 0, JSON.stringify(r));
        // the peer's figures are constant here: the median pair ratio is ours' median ÷ theirs
        const want = r.unit === "new tok/s" ? r.torch / r.ours : r.ours / r.torch;
        assert(Math.abs(r.slowdown - want) < 1e-3 * want, JSON.stringify(r));
        if (r.workload !== "sft-tiny") {
          const [lo, hi] = r.slowdownRange;
          assert(lo <= r.slowdown && r.slowdown <= hi, JSON.stringify(r));
        }
      }
      assert(rows[0].dispatches > 0 && rows[0].submits >= 1, JSON.stringify(rows[0]));
      const missing = await run(`${dir}/no-such-python`);
      assert(missing.err.includes("no PyTorch peer"), missing.err);
      assertEquals(missing.rows.map((r) => [r.torch, r.slowdown]), Array(4).fill([null, null]));
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});
