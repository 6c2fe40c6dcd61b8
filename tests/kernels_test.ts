/**
 * Runs every kernel case (tests/cases/*.ts) against the float64 references on this machine's
 * WebGPU adapter. The browser page runs the same case lists. Every WGSL module the cases compile
 * is collected, and the last test checks that each storage binding a shader only reads is
 * declared `read`.
 */
import { bufferBindings, unwrittenReadWriteBindings } from "../kernels/_bindings.ts";
import { assert } from "./assert.ts";
import { ALL_CASES } from "./cases/all.ts";
import { gpu, gpuTestOptions, noGpu } from "./_gpu.ts";

const modules = new Set<string>();
if (!noGpu) {
  const t = gpu.textureTiling;
  const tiling = t ? `, texture tiling ${t.rows}×${t.texels}` : "";
  console.log(`adapter: ${gpu.adapterDescription} (matmul path: ${gpu.matmulPath}${tiling})`);
  const createShaderModule = gpu.device.createShaderModule.bind(gpu.device);
  gpu.device.createShaderModule = (descriptor: GPUShaderModuleDescriptor) => {
    modules.add(descriptor.code);
    return createShaderModule(descriptor);
  };
}

for (const c of ALL_CASES) {
  // A case whose run takes no argument needs no GPU: it runs on any machine.
  const cpuOnly = c.run.length === 0;
  Deno.test({ ...gpuTestOptions, ignore: noGpu && !cpuOnly, name: c.name, fn: () => c.run(gpu) });
}

Deno.test({
  ...gpuTestOptions,
  name: "every storage binding a compiled shader only reads is declared read",
  fn() {
    const offenders: string[] = [];
    for (const code of modules) {
      const unwritten = unwrittenReadWriteBindings(code);
      if (unwritten.length === 0) continue;
      const entry = code.match(
        /fn\s+(\w+)\s*\([^)]*global_invocation_id|@compute[^\n]*\n\s*fn\s+(\w+)/,
      );
      const head = code.split("\n").find((l) => l.trim().length > 0)?.trim() ?? "";
      offenders.push(
        `${unwritten.map((b) => b.name).join(", ")} — in module starting "${head.slice(0, 80)}"` +
          (entry ? ` (fn ${entry[1] ?? entry[2]})` : ""),
      );
    }
    assert(modules.size > 20, `only ${modules.size} shader modules were compiled`);
    assert(
      offenders.length === 0,
      `${offenders.length} of ${modules.size} modules declare read_write bindings they never ` +
        `write:\n${offenders.join("\n")}`,
    );
  },
});

Deno.test({
  ...gpuTestOptions,
  name: "every compiled shader fits WebGPU's default limits: at most 8 storage buffers per stage",
  fn() {
    // the runtime asks for the adapter's limits, but a browser may grant only the default
    // (SwiftShader: 10; WebGPU's guaranteed minimum: 8)
    const over: string[] = [];
    for (const code of modules) {
      const n = [...bufferBindings(code).values()].filter((b) => b.access !== "uniform").length;
      if (n > 8) over.push(`${n}: ${code.split("\n").find((l) => l.trim())!.trim().slice(0, 80)}`);
    }
    assert(modules.size > 20, `only ${modules.size} shader modules were compiled`);
    assert(
      over.length === 0,
      `${over.length} modules bind more than 8 storage buffers:\n${over.join("\n")}`,
    );
  },
});
