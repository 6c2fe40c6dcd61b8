/**
 * The environment variables that force the matmul path and tiling of every GPU the command-line tools,
 * benchmarks and Deno tests create — how CI runs the whole suite on the storage-buffer path that
 * real GPUs take, on a software adapter (`WEBGPU_RLHF_MATMUL_PATH=buffer deno task test`).
 * Read here, never by the core (`kernels/`, `model/`, `trainer/` stay runtime-agnostic).
 *
 * @module
 */

import { UsageError } from "./args.ts";
import { Gpu } from "../kernels/runtime.ts";
import {
  TEXTURE_TILING,
  TEXTURE_TILING_CANDIDATES,
  type TextureTiling,
  tuneTextureTiling,
} from "../kernels/matmul.ts";

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

/**
 * The variable that fixes the texture-path matmul's register tiling instead of timing the
 * candidates ({@link createGpu}): `8x2` or `16x2` (rows × texels); unset, empty or `auto` tunes.
 */
export const TILING_ENV = "WEBGPU_RLHF_TILING";

/**
 * The tiling {@link TILING_ENV} fixes, or `undefined` when it is unset, empty or `auto` (tune).
 * Throws a `UsageError` naming the choices for anything else. The Deno tests' GPU uses it too
 * (CI runs the kernel cases once with `16x2`).
 *
 * @example
 * ```ts ignore
 * const gpu = await Gpu.create({ textureTiling: tilingFromEnv() });
 * ```
 */
export function tilingFromEnv(): TextureTiling | undefined {
  const v = Deno.env.get(TILING_ENV) ?? "";
  if (v === "" || v === "auto") return undefined;
  const fixed = TEXTURE_TILING_CANDIDATES.find((t) => `${t.rows}x${t.texels}` === v);
  if (!fixed) {
    const names = TEXTURE_TILING_CANDIDATES.map((t) => `${t.rows}x${t.texels}`).join(", ");
    throw new UsageError(`${TILING_ENV} must be auto or one of ${names}, got "${v}"`);
  }
  return fixed;
}

/**
 * `Gpu.create` with the matmul path of {@link MATMUL_PATH_ENV}, then the texture-path tiling:
 * the one {@link TILING_ENV} names, else the fastest of `tuneTextureTiling` (the same bits either
 * way). `log` receives one line saying which tiling runs and what the candidates took.
 *
 * @example
 * ```ts ignore
 * const gpu = await createGpu(console.log);
 * ```
 */
export async function createGpu(log: (line: string) => void = () => {}): Promise<Gpu> {
  const fixed = tilingFromEnv();
  const gpu = await Gpu.create({ matmulPath: matmulPathFromEnv(), textureTiling: fixed });
  if (gpu.matmulPath !== "texture") return gpu;
  const name = (t: TextureTiling) => `${t.rows}×${t.texels}`;
  if (fixed) {
    log(`matmul tiling ${name(fixed)} (${TILING_ENV})`);
    return gpu;
  }
  const trials = await tuneTextureTiling(gpu);
  const times = trials.map((t, i) =>
    `${name(t.tiling)} ${t.ms.toFixed(2)} ms${i > 0 ? ` (${t.ratio.toFixed(2)}×)` : ""}`
  ).join(", ");
  log(`matmul tiling ${name(gpu.textureTiling ?? TEXTURE_TILING)} (timed side by side: ${times})`);
  return gpu;
}
