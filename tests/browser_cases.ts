/**
 * The shared kernel cases (the same list `kernels_test.ts` runs in Deno) as a browser entry:
 * bundled into `dist/kernel-tests.js` and run by `web/tests.html`, in any browser with WebGPU.
 *
 * @module
 */

import { Gpu } from "../kernels/runtime.ts";
import { ALL_CASES } from "./cases/all.ts";

/** One case's outcome. */
export interface CaseResult {
  name: string;
  ok: boolean;
  ms: number;
  error?: string;
}

/** Number of shared cases. */
export const CASE_COUNT: number = ALL_CASES.length;

/**
 * Runs every case in order on one {@link Gpu} (created unless given), reporting each result
 * to `onResult` as it finishes.
 */
export async function runKernelCases(
  onResult: (r: CaseResult, index: number, total: number) => void = () => {},
  gpu?: Gpu,
): Promise<{ adapter: string; results: CaseResult[] }> {
  const g = gpu ?? await Gpu.create();
  const results: CaseResult[] = [];
  for (const [i, c] of ALL_CASES.entries()) {
    const t0 = performance.now();
    let r: CaseResult;
    try {
      await c.run(g);
      // surface device errors raised by this case's work before the next case starts
      await g.sync();
      r = { name: c.name, ok: true, ms: performance.now() - t0 };
    } catch (e) {
      const err = e as Error;
      r = {
        name: c.name,
        ok: false,
        ms: performance.now() - t0,
        error: `${err.name}: ${err.message}`,
      };
    }
    results.push(r);
    onResult(r, i, ALL_CASES.length);
  }
  return { adapter: g.adapterDescription, results };
}
