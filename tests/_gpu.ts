/**
 * The GPU of the Deno tests, created once per test module. Its matmul path follows
 * `WEBGPU_RLHF_MATMUL_PATH` (CI's buffer lane) and its texture tiling `WEBGPU_RLHF_TILING` (CI's
 * 16-row lane; unset: the built-in 8 rows, not tuned). Where no WebGPU adapter exists, GPU tests are
 * ignored with one clear message (std's pattern), and the CPU-only checks — tokenizer,
 * safetensors, configs, data readers, graders, float64 references — still run
 * (`WEBGPU_RLHF_REQUIRE_GPU=1`, set by CI, turns a missing adapter into a failure).
 *
 * @module
 */

import { Gpu } from "../kernels/runtime.ts";
import { WebGpuUnavailableError } from "../kernels/errors.ts";
import { MATMUL_PATH_ENV, matmulPathFromEnv, tilingFromEnv } from "../cli/gpu_env.ts";

/** Set to `1` (CI does) to fail, instead of ignoring GPU tests, where no adapter exists. */
export const REQUIRE_GPU_ENV = "WEBGPU_RLHF_REQUIRE_GPU";

async function create(): Promise<Gpu | null> {
  try {
    return await Gpu.create({ matmulPath: matmulPathFromEnv(), textureTiling: tilingFromEnv() });
  } catch (e) {
    if (!(e instanceof WebGpuUnavailableError)) throw e;
    // CI sets this: there, a lane whose adapter is missing (e.g. no Vulkan driver) must fail,
    // not pass by ignoring every GPU test
    if (Deno.env.get(REQUIRE_GPU_ENV) === "1") {
      throw new WebGpuUnavailableError(`${REQUIRE_GPU_ENV}=1 but ${e.message}`);
    }
    console.warn(`%cno WebGPU adapter: GPU tests are ignored — ${e.message}`, "color: yellow");
    return null;
  }
}

const created = await create();

/** True when this machine has no WebGPU adapter: GPU tests are then ignored, not failed. */
export const noGpu: boolean = created === null;

/**
 * The shared GPU. Where none exists, any use throws (tests that use it are ignored through
 * {@link gpuTestOptions}, so only module-level code could reach it).
 */
export const gpu: Gpu = created ?? new Proxy({} as Gpu, {
  get() {
    throw new WebGpuUnavailableError("no WebGPU adapter: this test needs a GPU");
  },
});

/** Matmul path forced for this run (`WEBGPU_RLHF_MATMUL_PATH`), for test names and logs. */
export const forcedMatmulPath: string = Deno.env.get(MATMUL_PATH_ENV) || "auto";

/** Options for every `Deno.test` that needs the GPU: ignored without an adapter. */
export const gpuTestOptions = {
  ignore: noGpu,
  sanitizeOps: false,
  sanitizeResources: false,
} as const;
