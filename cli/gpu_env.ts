/**
 * The environment variable that forces the matmul path of every GPU the command-line tools,
 * benchmarks and Deno tests create — how CI runs the whole suite on the storage-buffer path that
 * real GPUs take, on a software adapter (`WEBGPU_RLHF_MATMUL_PATH=buffer deno task test`).
 * Read here, never by the core (`kernels/`, `model/`, `trainer/` stay runtime-agnostic).
 *
 * @module
 */

import { UsageError } from "./args.ts";

/** Name of the variable: `texture` or `buffer`; unset or empty lets the runtime pick. */
export const MATMUL_PATH_ENV = "WEBGPU_RLHF_MATMUL_PATH";

/**
 * The matmul path forced by {@link MATMUL_PATH_ENV}, or `undefined` when it is unset (the runtime
 * then picks by adapter: texture on software adapters, buffer on real GPUs).
 *
 * @example
 * ```ts ignore
 * import { Gpu } from "../mod.ts";
 * const gpu = await Gpu.create({ matmulPath: matmulPathFromEnv() });
 * ```
 */
export function matmulPathFromEnv(): "texture" | "buffer" | undefined {
  const v = Deno.env.get(MATMUL_PATH_ENV);
  if (v === undefined || v === "") return undefined;
  if (v !== "texture" && v !== "buffer") {
    throw new UsageError(`${MATMUL_PATH_ENV} must be texture or buffer, got "${v}"`);
  }
  return v;
}
