/**
 * Import from a URL in Deno: the repository is served over HTTP on 127.0.0.1 and a separate
 * `deno run` (no config file, no local paths) imports `http://127.0.0.1:PORT/mod.ts`, runs a
 * kernel against known values and a few SFT steps whose loss must fall.
 */
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { assert, assertEquals } from "./assert.ts";
import { serveDirectory } from "../cli/serve.ts";
import { noGpu } from "./_gpu.ts";

const ROOT = fileURLToPath(new URL("..", import.meta.url));

const CHILD = `
const base = Deno.args[0];
const m = await import(base + "/mod.ts");
const gpu = await m.Gpu.create();
// (2, 3) · (4, 3)ᵀ with ReLU
const x = gpu.fromArray(new Float32Array([1, 2, 3, -4, -5, -6]), [2, 3]);
const w = gpu.fromArray(new Float32Array([1, 0, 0, 0, 1, 0, 0, 0, 1, 1, 1, 1]), [4, 3]);
const y = Array.from(await gpu.readF32(m.matmul(gpu, x, w, { transB: true, relu: true })));
const model = m.OptModel.create(gpu, m.OPT_PRESETS.tiny, { seed: 1 });
const data = [{ prompt: "Q: 2+2?", completion: " 4." }, { prompt: "Q: 1+2?", completion: " 3." }];
const logs = await m.trainSft(model, new m.ByteTokenizer(), data, {
  ...m.defaults(m.SFT_SCHEMA), steps: 12, batchSize: 2, lr: 1e-2, warmupRatio: 0,
}, { logEvery: 1 });
console.log(JSON.stringify({ y, losses: logs.map((l) => l["sft/loss"]) }));
`;

Deno.test({
  name: "import from URL: a separate deno run imports mod.ts over HTTP, runs a kernel and trains",
  ignore: noGpu,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const server = serveDirectory(ROOT, { port: 0, quiet: true });
    const base = `http://127.0.0.1:${server.port}`;
    const dir = await Deno.makeTempDir();
    const script = join(dir, "child.js");
    await Deno.writeTextFile(script, CHILD);
    try {
      const r = await new Deno.Command(Deno.execPath(), {
        args: [
          "run",
          "--no-config",
          "--no-lock",
          `--allow-import=127.0.0.1:${server.port}`,
          "--allow-env",
          `--reload=${base}`,
          script,
          base,
        ],
        cwd: dir,
        stdout: "piped",
        stderr: "piped",
      }).output();
      const err = new TextDecoder().decode(r.stderr);
      assertEquals(r.code, 0, err.slice(-3000));
      const out = JSON.parse(new TextDecoder().decode(r.stdout).trim().split("\n").at(-1)!);
      assertEquals(out.y, [1, 2, 3, 6, 0, 0, 0, 0]);
      const l: number[] = out.losses;
      assertEquals(l.length, 12);
      assert(l[11] < l[0] * 0.7, `SFT loss falls: ${l[0]} → ${l[11]}`);
    } finally {
      await server.shutdown();
      await Deno.remove(dir, { recursive: true });
    }
  },
});
