/**
 * Private helpers shared by the kernel files: the 1-D launch convention and the WGSL
 * preprocessor tag.
 *
 * @module
 */

// Full npm: specifier (not the deno.json alias) so that importing mod.ts by URL works.
export { wgsl } from "npm:wgsl-preprocessor@1.0.1/wgsl-preprocessor.js";
import { GpuLimitError } from "./errors.ts";
import type { Gpu } from "./runtime.ts";

/**
 * Loop iterations one invocation may run on a software adapter. Mesa's llvmpipe and lavapipe cap
 * the loop back-edges of an invocation at 65535 in total (one counter for all its loops) and then
 * leave every loop early — no error, a wrong result (measured: a loop of 70 000 stops at 65 535;
 * after it, a nested loop of 65 × 1 000 runs one iteration). Kernels with one invocation doing a
 * whole row or column take that form only while its loops stay within this budget (some margin
 * below the cap); otherwise the workgroup form.
 */
export const SOFTWARE_LOOP_BUDGET = 60000;

/**
 * Throws a {@link GpuLimitError} when one invocation of a row-per-invocation form would run more
 * loop iterations than {@link SOFTWARE_LOOP_BUDGET} on a software adapter (a forced form: the
 * defaults never pick one that does) — a named error instead of a silently wrong result.
 */
export function checkLoopBudget(gpu: Gpu, iterations: number, what: string): void {
  if (!gpu.isFallbackAdapter || iterations <= SOFTWARE_LOOP_BUDGET) return;
  throw new GpuLimitError(
    `${what}: ${iterations} loop iterations per invocation exceed a software adapter's budget ` +
      `(${SOFTWARE_LOOP_BUDGET}; Mesa's llvmpipe and lavapipe leave loops after 65 535): use the ` +
      "workgroup form",
  );
}

/**
 * Row ranges `[r0, r1)` of at most {@link SOFTWARE_LOOP_BUDGET} rows covering `rows`: column
 * kernels (one invocation per column, looping over the rows) run one dispatch per range and carry
 * their running sums from one to the next, so every column is still summed in row order — the
 * bits of a single pass, within the loop cap. One range (`[0, rows)`) for the usual sizes.
 */
export function rowRanges(rows: number): [number, number][] {
  const out: [number, number][] = [];
  for (let r0 = 0; r0 < rows; r0 += SOFTWARE_LOOP_BUDGET) {
    out.push([r0, Math.min(rows, r0 + SOFTWARE_LOOP_BUDGET)]);
  }
  return out.length > 0 ? out : [[0, 0]];
}

/** Threads per workgroup of the 1-D elementwise kernels (well under every device limit). */
export const WG = 256;

/** WGSL entry-point header of a 1-D kernel in `wg`-wide workgroups: declares `i`. */
function mainHeader(wg: number): string {
  return `@compute @workgroup_size(${wg})
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u,
        @builtin(local_invocation_index) lid: u32) {
  let i = (wid.x + wid.y * nwg.x) * ${wg}u + lid;`;
}

/**
 * WGSL entry-point header for 1-D kernels launched with `gpu.grid(ceil(n / WG))`: declares
 * `i`, the linear invocation index.
 */
export const LINEAR_MAIN = mainHeader(WG);

/** Number of workgroups for `n` invocations of a 1-D kernel. */
export function groups(n: number): number {
  return Math.ceil(n / WG);
}

/**
 * Threads per workgroup of the column kernels (one invocation per column, each looping over
 * every row: bias and layernorm parameter gradients). There are only as many invocations as
 * columns (64–256 in small models), and a software adapter runs each workgroup on one CPU
 * thread: 256-wide groups put the whole sum on one core, 8-wide ones spread it over all of
 * them (llvmpipe, 2 cores: the reward-model step's column sums 9.0 → 4.6 ms). Every column is
 * still summed by one invocation in row order, so the size never changes a result.
 */
export const COLUMN_WG = 8;

/** WGSL entry-point header for column kernels launched with `gpu.grid(columnGroups(n))`: `i`. */
export const COLUMN_MAIN = mainHeader(COLUMN_WG);

/** Number of workgroups for `n` invocations of a column kernel. */
export function columnGroups(n: number): number {
  return Math.ceil(n / COLUMN_WG);
}
