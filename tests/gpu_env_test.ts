/**
 * The environment switches of the command-line tools and test helpers (`cli/gpu_env.ts`): the
 * texture tiling a run fixes instead of tuning, and the error that names the choices.
 */
import { TILING_ENV, tilingFromEnv } from "../cli/gpu_env.ts";
import { UsageError } from "../cli/args.ts";
import { TEXTURE_TILING_CANDIDATES } from "../kernels/matmul.ts";
import { assertEquals, assertThrows } from "./assert.ts";

Deno.test("WEBGPU_RLHF_TILING: unset, empty or auto tunes; 8x2 and 16x2 fix; anything else is named", async () => {
  const saved = Deno.env.get(TILING_ENV);
  try {
    Deno.env.delete(TILING_ENV);
    assertEquals(tilingFromEnv(), undefined);
    for (const v of ["", "auto"]) {
      Deno.env.set(TILING_ENV, v);
      assertEquals(tilingFromEnv(), undefined, v);
    }
    Deno.env.set(TILING_ENV, "8x2");
    assertEquals(tilingFromEnv(), TEXTURE_TILING_CANDIDATES[0]);
    Deno.env.set(TILING_ENV, "16x2");
    assertEquals(tilingFromEnv(), TEXTURE_TILING_CANDIDATES[1]);
    for (const v of ["7x3", "16", "16×2"]) {
      Deno.env.set(TILING_ENV, v);
      await assertThrows(() => tilingFromEnv(), UsageError, "must be auto or one of 8x2, 16x2");
    }
  } finally {
    if (saved === undefined) Deno.env.delete(TILING_ENV);
    else Deno.env.set(TILING_ENV, saved);
  }
});
