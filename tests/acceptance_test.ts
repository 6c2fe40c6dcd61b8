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
import { noGpu } from "./_gpu.ts";

const CELLS = [{ seed: 1, backend: "gl" }, { seed: 2, backend: "vulkan" }];

Deno.test({
  name: "acceptance: the default run learns on seed 1 / gl and seed 2 / vulkan",
  ignore: noGpu,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const out = await Deno.makeTempDir({ prefix: "webgpu-rlhf-acceptance-" });
    // the two cells run side by side (separate processes: the backend is chosen per process)
    const rows = await Promise.all(CELLS.map((c) => runCell({ ...c, path: "texture" }, out)));
    for (const row of rows) console.log(format(row));
    for (const row of rows) {
      assert(row.failures.length === 0, `seed ${row.seed} on ${row.backend}: ${row.failures}`);
    }
  },
});
