/**
 * Float64 reference implementations of every kernel, grouped by kernel family. Plain
 * TypeScript on host arrays: read them to learn what a kernel computes; the tests compare the
 * GPU against them.
 *
 * @example
 * ```ts
 * import { reference } from "../../mod.ts";
 * const c = reference.matmul.matmul([1, 2, 3, 4], [1, 0, 0, 1], { M: 2, N: 2, K: 2 });
 * console.log(c); // Float64Array [1, 2, 3, 4]
 * ```
 *
 * @module
 */

export * as attention from "./attention.ts";
export * as elementwise from "./elementwise.ts";
export * as embedding from "./embedding.ts";
export * as group from "./group.ts";
export * as layernorm from "./layernorm.ts";
export * as matmul from "./matmul.ts";
export * as optimizer from "./optimizer.ts";
export * as preference from "./preference.ts";
export * as prng from "./prng.ts";
export * as reduce from "./reduce.ts";
export * as rl from "./rl.ts";
export * as sampling from "./sampling.ts";
export * as softmax from "./softmax.ts";
