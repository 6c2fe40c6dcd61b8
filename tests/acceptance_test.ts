/**
 * Issue #15 acceptance, end to end: the default built-in run (the config `deno task train`
 * uses) on two cells of the learning matrix that differ in seed and numerics — seed 1 on the GL
 * backend, seed 2 on Vulkan (lavapipe) — each in its own process. Every cell must clear the
 * bounds of `bench/learning_bounds.ts`: reward-model held-out accuracy ≥ 0.90, gold after −
 * before ≥ +0.10, the correct-answer rate does not fall, final KL ≤ 10, no reward hacking and no
 * fall of the rollouts' gold. The whole matrix (seeds 1–4 × gl, vulkan) is
 * `deno task bench:learning`; its measured table is in the README.
 */
import { format, runCell } from "../bench/learning.ts";
import { assert } from "./assert.ts";

const out = await Deno.makeTempDir({ prefix: "webgpu-rlhf-acceptance-" });

for (const cell of [{ seed: 1, backend: "gl" }, { seed: 2, backend: "vulkan" }]) {
  Deno.test({
    name: `acceptance: the default run learns (seed ${cell.seed}, ${cell.backend} backend)`,
    sanitizeOps: false,
    sanitizeResources: false,
    async fn() {
      const row = await runCell({ ...cell, path: "texture" }, out);
      console.log(format(row));
      assert(row.failures.length === 0, `seed ${cell.seed} on ${cell.backend}: ${row.failures}`);
    },
  });
}
