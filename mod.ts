/**
 * webgpu-rlhf: RLHF on small language models with hand-written WebGPU compute shaders, for
 * Deno and browsers. This module is the public API: the GPU runtime, the kernel library and
 * the float64 reference implementations every kernel is tested against.
 *
 * @example Run a kernel
 * ```ts
 * import { Gpu, matmul } from "./mod.ts";
 * const gpu = await Gpu.create();
 * const a = gpu.fromArray(new Float32Array([1, 2, 3, 4]), [2, 2]);
 * const c = matmul(gpu, a, a);
 * console.log(await gpu.read(c)); // Float32Array [7, 10, 15, 22]
 * ```
 *
 * @module
 */

export * from "./kernels/errors.ts";
export * from "./kernels/runtime.ts";
export * from "./kernels/prng.ts";
export * from "./kernels/elementwise.ts";
export * from "./kernels/matmul.ts";
export * from "./kernels/reduce.ts";
export * from "./kernels/softmax.ts";
export * from "./kernels/layernorm.ts";
export * from "./kernels/embedding.ts";
export * from "./kernels/attention.ts";
export * from "./kernels/optimizer.ts";
export * from "./kernels/sampling.ts";
export * from "./kernels/rl.ts";
export * as reference from "./kernels/reference/mod.ts";
export * from "./model/config.ts";
export * from "./model/params.ts";
export * from "./model/opt.ts";
export * from "./model/safetensors.ts";
export * from "./model/tokenizer.ts";
export { optHiddenRef, optLogitsRef } from "./model/reference.ts";
export * from "./model/checkpoint.ts";
export * from "./model/generate.ts";
export * from "./model/lora.ts";
export * from "./trainer/data.ts";
export * from "./trainer/task.ts";
export * from "./trainer/config.ts";
export * from "./trainer/batch.ts";
export * from "./trainer/sft.ts";
export * from "./trainer/rm.ts";
export * from "./trainer/ppo.ts";
export * from "./trainer/comparisons.ts";
export * from "./trainer/hacking.ts";
export * from "./trainer/pipeline.ts";
export * from "./trainer/recipe.ts";
export * from "./trainer/report.ts";
