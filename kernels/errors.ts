/**
 * Named errors raised by the runtime and kernels. Every error says what was wrong and where,
 * so a bad shape or an exceeded device limit never turns into a silent wrong answer.
 *
 * @module
 */

/**
 * Thrown when `navigator.gpu` is missing or no adapter/device can be obtained.
 *
 * @example Catching a missing WebGPU
 * ```ts
 * import { Gpu, WebGpuUnavailableError } from "../mod.ts";
 * try {
 *   await Gpu.create();
 * } catch (e) {
 *   if (e instanceof WebGpuUnavailableError) console.error(e.message);
 * }
 * ```
 */
export class WebGpuUnavailableError extends Error {
  /**
   * Creates the error.
   * @param message what is missing and how to get it
   */
  constructor(message: string) {
    super(message);
    this.name = "WebGpuUnavailableError";
  }
}

/**
 * Thrown when tensor shapes or dtypes do not fit a kernel's contract.
 *
 * @example
 * ```ts
 * import { ShapeError } from "../mod.ts";
 * const e = new ShapeError("matmul: inner dims differ (A: [2, 3], B: [4, 5])");
 * console.log(e.name); // "ShapeError"
 * ```
 */
export class ShapeError extends Error {
  /**
   * Creates the error.
   * @param message the offending shapes or dtypes, named
   */
  constructor(message: string) {
    super(message);
    this.name = "ShapeError";
  }
}

/**
 * Thrown when a request exceeds a `device.limits` value (binding size, dispatch size, texture side).
 *
 * @example
 * ```ts
 * import { GpuLimitError } from "../mod.ts";
 * const e = new GpuLimitError("buffer of 3 GiB exceeds maxBufferSize");
 * console.log(e.name); // "GpuLimitError"
 * ```
 */
export class GpuLimitError extends Error {
  /**
   * Creates the error.
   * @param message the limit and the requested value
   */
  constructor(message: string) {
    super(message);
    this.name = "GpuLimitError";
  }
}

/**
 * Thrown at the next sync point when the device reported a validation or out-of-memory error.
 *
 * @example
 * ```ts
 * import { GpuValidationError } from "../mod.ts";
 * console.log(new GpuValidationError("bad bind group").name); // "GpuValidationError"
 * ```
 */
export class GpuValidationError extends Error {
  /**
   * Creates the error.
   * @param message the validation messages the device reported
   */
  constructor(message: string) {
    super(message);
    this.name = "GpuValidationError";
  }
}

/**
 * Raised when a value that must be finite is NaN or infinite — a parameter about to be
 * checkpointed (so the last good checkpoint stays), or, as its subclass `NonFiniteLossError`
 * of the trainer layer, a training loss.
 *
 * @example
 * ```ts
 * import { NonFiniteValueError } from "../mod.ts";
 * console.log(new NonFiniteValueError("parameter w[3] is NaN").name); // "NonFiniteValueError"
 * ```
 */
export class NonFiniteValueError extends Error {
  /**
   * Creates the error.
   * @param message the tensor or value and where it was found
   */
  constructor(message: string) {
    super(message);
    this.name = "NonFiniteValueError";
  }
}

/** Throws a {@link ShapeError} with `message` when `cond` is false. */
export function checkShape(cond: boolean, message: string): asserts cond {
  if (!cond) throw new ShapeError(message);
}
