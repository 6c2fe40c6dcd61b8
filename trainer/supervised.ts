/**
 * What the offline trainers share (SFT, the reward model, and next the preference methods): a
 * model trained on a fixed data set drawn in a resumable shuffled order, one optimizer step per
 * {@link SupervisedTrainer.step}. Subclasses write only `step`.
 *
 * @module
 */

import type { OptModel } from "../model/opt.ts";
import type { ParamStore } from "../model/params.ts";
import type { Tokenizer } from "../model/tokenizer.ts";
import { Sampler, type SamplerState } from "./batch.ts";
import type { SupervisedConfig } from "./config.ts";
import { checkStateNumber, type Metrics, type StateFile, type Trainer } from "./types.ts";

/** The resumable state of a {@link SupervisedTrainer}: steps done and the data order. */
export interface SupervisedTrainerState {
  /** Steps done. */
  iteration: number;
  /** The data sampler's state. */
  sampler: SamplerState;
}

/** A trainer over a fixed data set (see the module doc). */
export abstract class SupervisedTrainer<Row, C extends SupervisedConfig>
  implements Trainer<SupervisedTrainerState> {
  iteration = 0;
  readonly #sampler: Sampler;

  /**
   * Creates the trainer (no GPU work until the first step).
   * @param model the model trained
   * @param tok its tokenizer
   * @param data the training rows
   * @param cfg the stage's section
   * @param stateFile checkpoint file of the trained store
   */
  constructor(
    readonly model: OptModel,
    readonly tok: Tokenizer,
    readonly data: readonly Row[],
    readonly cfg: C,
    /** Checkpoint file of the trained store, e.g. "sft/model_state.safetensors". */
    readonly stateFile: string,
  ) {
    this.#sampler = new Sampler(data.length, cfg.seed);
  }

  get total(): number {
    return this.cfg.steps;
  }

  /** The trained store: the LoRA adapters when the model has them, else all parameters. */
  get store(): ParamStore {
    return this.model.lora?.store ?? this.model.store;
  }

  /** The next `cfg.batchSize` rows in the shuffled order. */
  protected nextBatch(): Row[] {
    return this.nextIndices().map((i) => this.data[i]);
  }

  /** The data indices of the next `cfg.batchSize` rows (for per-row caches). */
  protected nextIndices(): number[] {
    return this.#sampler.next(this.cfg.batchSize);
  }

  abstract step(log: boolean): Promise<Metrics | undefined>;

  state(): SupervisedTrainerState {
    return { iteration: this.iteration, sampler: this.#sampler.state() };
  }

  /** Restores {@link state}, checked field by field (`CheckpointError` names the bad one). */
  restore(s: SupervisedTrainerState): void {
    const it = checkStateNumber("iteration", s?.iteration, { min: 0, max: this.total });
    this.#sampler.restore(s.sampler);
    this.iteration = it;
  }

  stores(): StateFile[] {
    return [{ name: this.stateFile, store: this.store }];
  }
}
