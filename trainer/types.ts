/**
 * The shapes every trainer shares: logged metrics, the {@link Trainer} interface the one
 * training loop drives (`trainer/loop.ts`), and the errors of the training layer.
 *
 * @module
 */

import { NonFiniteValueError } from "../kernels/errors.ts";
import type { ParamStore } from "../model/params.ts";

/** Metrics of one logged step, slash-named like TRL (`sft/loss`, `objective/kl`, …). */
export type Metrics = Record<string, number>;

/** Callbacks of the run-to-completion helpers (`trainSft`, `trainRewardModel`). */
export interface TrainHooks {
  /** Called after each logged step (every `logEvery` steps and the last). */
  onLog?: (m: Metrics) => void | Promise<void>;
  /** Steps between loss readbacks (default 10). */
  logEvery?: number;
}

/** A store whose full state (parameters, AdamW moments, step) a checkpoint holds. */
export interface StateFile {
  /** File name under the run, e.g. "ppo/actor_state.safetensors". */
  name: string;
  /** The parameters it updates (and their gradients and AdamW moments). */
  store: ParamStore;
}

/**
 * A resumable trainer: {@link step} advances one optimizer step (SFT, reward model) or one
 * iteration (PPO); {@link state} and {@link restore} carry its own counters (data order,
 * β, …) while {@link stores} name the parameter stores whose state is saved beside it. The
 * loop in `trainer/loop.ts` drives every trainer the same way.
 */
export interface Trainer<S = unknown> {
  /** Steps (or iterations) done so far. */
  readonly iteration: number;
  /** Steps (or iterations) of the whole run. */
  readonly total: number;
  /**
   * Runs the next step. With `log` it reads its statistics back and returns them (the one
   * readback of the step); without, it may return undefined and never waits on the GPU.
   */
  step(log: boolean): Promise<Metrics | undefined>;
  /** The trainer's own resumable state (JSON-serialisable). */
  state(): S;
  /** Restores {@link state}. */
  restore(s: S): void;
  /** The parameter stores trained, with their checkpoint file names. */
  stores(): StateFile[];
}

/**
 * Raised when a training loss or gradient norm is NaN or infinite: training stops, and no
 * checkpoint is overwritten with non-finite values, so the last good one stays.
 *
 * @example
 * ```ts
 * import { NonFiniteLossError } from "../mod.ts";
 * console.log(new NonFiniteLossError("SFT step 3: loss NaN").name); // "NonFiniteLossError"
 * ```
 */
export class NonFiniteLossError extends NonFiniteValueError {
  /**
   * Creates the error.
   * @param message the loss, its value and where
   */
  constructor(message: string) {
    super(message);
    this.name = "NonFiniteLossError";
  }
}

/** Throws {@link NonFiniteLossError} (`what: a = …, b = …`) when a named value is not finite. */
export function assertFiniteLosses(what: string, values: Record<string, number>): void {
  if (Object.values(values).every(Number.isFinite)) return;
  const list = Object.entries(values).map(([k, v]) => `${k} ${v}`).join(", ");
  throw new NonFiniteLossError(`${what}: ${list}`);
}

/**
 * Raised when a checkpoint cannot be resumed: a file is missing, belongs to another step or
 * role, or the trainer state is malformed. The message names the file and the field.
 *
 * @example
 * ```ts
 * import { CheckpointError } from "../mod.ts";
 * console.log(new CheckpointError("ppo/trainer_state.json: iteration must be an integer").name);
 * ```
 */
export class CheckpointError extends Error {
  /**
   * Creates the error.
   * @param message the file and the field
   */
  constructor(message: string) {
    super(message);
    this.name = "CheckpointError";
  }
}

/**
 * Checks a field of a restored trainer state: an integer in `[min, max]` (or any finite number
 * with `integer: false`); throws {@link CheckpointError} naming `what`.
 */
export function checkStateNumber(
  what: string,
  v: unknown,
  o: { min?: number; max?: number; integer?: boolean } = {},
): number {
  const ok = typeof v === "number" && Number.isFinite(v) &&
    (o.integer === false || Number.isInteger(v)) &&
    (o.min === undefined || v >= o.min) && (o.max === undefined || v <= o.max);
  if (!ok) {
    const range = `${o.min ?? "−∞"}…${o.max ?? "∞"}`;
    throw new CheckpointError(
      `${what} must be ${o.integer === false ? "a number" : "an integer"} in ${range}, got ${
        JSON.stringify(v)
      }`,
    );
  }
  return v as number;
}
