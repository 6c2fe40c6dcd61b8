/**
 * The one training loop: it drives any {@link Trainer} to its total, logs every `logEvery`
 * steps (and the last), checkpoints every `checkpointEvery` steps and at the end, and resumes
 * from the last checkpoint. A non-finite loss stops it with `NonFiniteLossError` before
 * anything is written, so the last good checkpoint stays.
 *
 * A checkpoint of stage `s` is the trainer's stores (`s/<file>`, written first) and then
 * `s/trainer_state.json`, so a trainer state always has its stores.
 *
 * @module
 */

import type { Metrics, Trainer } from "./types.ts";

/** I/O of the loop (a subset of the pipeline's hooks). */
export interface LoopHooks {
  /** Progress: `done` of `total` steps of `stage`, with the step's metrics when logged. */
  onProgress?: (stage: string, done: number, total: number, m?: Metrics) => void;
  /** Every logged metric record, tagged with its stage. */
  onMetrics?: (stage: string, m: Metrics) => void | Promise<void>;
  /** Persists resumable state (`name` like "ppo/trainer_state.json"). */
  saveState?: (name: string, data: Uint8Array | string) => Promise<void>;
  /** Loads what `saveState` wrote; undefined if absent. */
  loadState?: (name: string) => Promise<Uint8Array | string | undefined>;
  /** Free-form log lines. */
  log?: (line: string) => void;
}

/** How {@link runLoop} runs a trainer. */
export interface LoopOptions {
  /** Stage name: metric tag and checkpoint folder. */
  stage: string;
  /** Steps between logged (read-back) steps; the last step is always logged. */
  logEvery: number;
  /** Steps between state checkpoints (also written at the end); 0 = none. */
  checkpointEvery: number;
  /** Continue after the stage's last checkpoint, if there is one. */
  resume?: boolean;
  /** Stop (after checkpointing) once this many steps are done. */
  stopAfter?: number;
  /** What a step is called in log lines (default "step"; PPO: "iteration"). */
  unit?: string;
  /** Called after each logged step, before its metrics are reported. */
  afterLog?: (m: Metrics) => void;
}

/** Restores `trainer` from the stage's last checkpoint; returns whether one was found. */
export async function restoreCheckpoint(
  trainer: Trainer,
  stage: string,
  hooks: LoopHooks,
): Promise<boolean> {
  const saved = await hooks.loadState?.(`${stage}/trainer_state.json`);
  if (typeof saved !== "string") return false;
  const files = trainer.stores();
  const bytes = await Promise.all(files.map((s) => hooks.loadState!(s.name)));
  bytes.forEach((b, i) => {
    if (!(b instanceof Uint8Array)) {
      throw new Error(`resume: ${stage}/trainer_state.json exists but ${files[i].name} is missing`);
    }
  });
  bytes.forEach((b, i) => files[i].store.loadState(b as Uint8Array));
  trainer.restore(JSON.parse(saved));
  return true;
}

/** Writes the trainer's stores, then its state (see the module doc). */
export async function saveCheckpoint(
  trainer: Trainer,
  stage: string,
  hooks: LoopHooks,
): Promise<void> {
  if (!hooks.saveState) return;
  for (const s of trainer.stores()) await hooks.saveState(s.name, await s.store.saveState());
  await hooks.saveState(`${stage}/trainer_state.json`, JSON.stringify(trainer.state()));
}

/**
 * Runs `trainer` until `trainer.total` steps are done (or `stopAfter`), and returns the last
 * logged metrics.
 *
 * @example SFT for 4 steps, logging every 2
 * ```ts
 * import { ByteTokenizer, defaults, Gpu, OPT_PRESETS, OptModel, runLoop, SFT_SCHEMA, SftTrainer } from "./mod.ts";
 * const gpu = await Gpu.create();
 * const model = OptModel.create(gpu, OPT_PRESETS.tiny, { seed: 1 });
 * const data = [{ prompt: "Q: 1+1?", completion: " 2" }];
 * const trainer = new SftTrainer(model, new ByteTokenizer(), data, { ...defaults(SFT_SCHEMA), steps: 4 });
 * const last = await runLoop(trainer, { stage: "sft", logEvery: 2, checkpointEvery: 0 });
 * console.log(last.step); // 4
 * ```
 */
export async function runLoop(
  trainer: Trainer,
  o: LoopOptions,
  hooks: LoopHooks = {},
): Promise<Metrics> {
  if (o.resume && await restoreCheckpoint(trainer, o.stage, hooks)) {
    hooks.log?.(
      `resume: ${o.stage.toUpperCase()} continues after ${o.unit ?? "step"} ${trainer.iteration}`,
    );
  }
  let last: Metrics = {};
  while (trainer.iteration < trainer.total) {
    const n = trainer.iteration + 1;
    const m = await trainer.step(n % o.logEvery === 0 || n === trainer.total);
    if (m) {
      last = m;
      hooks.onProgress?.(o.stage, trainer.iteration, trainer.total, m);
      o.afterLog?.(m);
      await hooks.onMetrics?.(o.stage, m);
    }
    if (o.checkpointEvery > 0 && trainer.iteration % o.checkpointEvery === 0) {
      await saveCheckpoint(trainer, o.stage, hooks);
    }
    if (o.stopAfter !== undefined && trainer.iteration >= o.stopAfter) break;
  }
  if (o.checkpointEvery > 0) await saveCheckpoint(trainer, o.stage, hooks);
  return last;
}
