/**
 * Runs every kernel case (tests/cases/*.ts) against the float64 references on this machine's
 * WebGPU adapter. The browser page runs the same case lists.
 */
import { Gpu } from "../kernels/runtime.ts";
import { ALL_CASES } from "./cases/all.ts";

const gpu = await Gpu.create();
console.log(`adapter: ${gpu.adapterDescription} (matmul path: ${gpu.matmulPath})`);

for (const c of ALL_CASES) {
  Deno.test({
    name: c.name,
    sanitizeOps: false,
    sanitizeResources: false,
    fn: () => c.run(gpu),
  });
}
