/**
 * The one training loop: it drives any {@link Trainer} to its total, logs every `logEvery`
 * steps (and the last), checkpoints every `checkpointEvery` steps and at the end, and resumes
 * from the last checkpoint. A non-finite loss stops it with `NonFiniteLossError` before
 * anything is written, so the last good checkpoint stays.
 *
 * A checkpoint of stage `s` at step `n` is one consistent unit: the trainer's stores are
 * written into their own folder `s/state-<n>/` (each file tagged with that folder and its role),
 * and `s/trainer_state.json` — written atomically last — commits it by naming the folder; then the
 * previous folder is removed. A process killed at any moment leaves `trainer_state.json` naming a
 * complete folder, so resume continues from the last committed step, and every file is checked to
 * belong to it. On resume, `onResume` lets the caller drop what it logged after that step.
 *
 * @module
 */

import { CheckpointError, checkStateNumber, type Metrics, type Trainer } from "./types.ts";

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
  /** Removes a state folder (a superseded checkpoint); optional. */
  removeState?: (name: string) => Promise<void>;
  /**
   * Called once a stage resumed at `iteration` (before its next step): records logged after that
   * step by the interrupted process are now stale and will be logged again.
   */
  onResume?: (stage: string, iteration: number) => void | Promise<void>;
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
  afterLog?: (m: Metrics) => void | Promise<void>;
}

/** The folder of stage `stage`'s checkpoint at step `iteration`. */
export function checkpointFolder(stage: string, iteration: number): string {
  return `${stage}/state-${String(iteration).padStart(6, "0")}`;
}

/** What `<stage>/trainer_state.json` holds: the commit record of one checkpoint. */
interface CheckpointRecord {
  format: 2;
  stage: string;
  iteration: number;
  /** The folder holding the stores' files. */
  folder: string;
  /** The stores' file names inside `folder`, in `trainer.stores()` order. */
  files: string[];
  /** `trainer.state()`. */
  trainer: unknown;
}

const baseName = (name: string) => name.slice(name.lastIndexOf("/") + 1);

/** Parses and checks a commit record against what `trainer` expects of stage `stage`. */
function checkRecord(
  saved: Uint8Array | string,
  trainer: Trainer,
  stage: string,
): { rec: Partial<CheckpointRecord>; iteration: number; folder: string; names: string[] } {
  const recordName = `${stage}/trainer_state.json`;
  let rec: Partial<CheckpointRecord>;
  try {
    rec = JSON.parse(typeof saved === "string" ? saved : new TextDecoder().decode(saved));
  } catch (e) {
    throw new CheckpointError(`${recordName}: not JSON (${(e as Error).message})`);
  }
  if (typeof rec !== "object" || rec === null || rec.format !== 2) {
    throw new CheckpointError(`${recordName}: not a checkpoint record of this version`);
  }
  const iteration = checkStateNumber(`${recordName}: iteration`, rec.iteration, {
    min: 0,
    max: trainer.total,
  });
  const folder = checkpointFolder(stage, iteration);
  const names = trainer.stores().map((f) => baseName(f.name));
  const got = [rec.stage, rec.folder, rec.files], want = [stage, folder, names];
  if (JSON.stringify(got) !== JSON.stringify(want)) {
    throw new CheckpointError(
      `${recordName}: names stage, folder and files ${JSON.stringify(got)}; expected ${
        JSON.stringify(want)
      }`,
    );
  }
  return { rec, iteration, folder, names };
}

/**
 * Restores `trainer` from the stage's last committed checkpoint; returns whether there was one.
 * Throws {@link CheckpointError} naming the file when it cannot be trusted.
 */
export async function restoreCheckpoint(
  trainer: Trainer,
  stage: string,
  hooks: LoopHooks,
): Promise<boolean> {
  const recordName = `${stage}/trainer_state.json`;
  const saved = await hooks.loadState?.(recordName);
  if (saved === undefined) return false;
  const { rec, iteration, folder, names } = checkRecord(saved, trainer, stage);
  for (const [i, f] of trainer.stores().entries()) {
    const path = `${folder}/${names[i]}`;
    const bytes = await hooks.loadState!(path);
    if (!(bytes instanceof Uint8Array)) {
      throw new CheckpointError(`resume: ${recordName} commits ${folder} but ${path} is missing`);
    }
    let meta: Record<string, string>;
    try {
      meta = f.store.loadState(bytes);
    } catch (e) {
      throw new CheckpointError(`${path}: ${(e as Error).message}`);
    }
    if (meta.checkpoint !== folder || meta.file !== names[i]) {
      throw new CheckpointError(
        `${path} belongs to ${meta.checkpoint ?? "no checkpoint"}/${meta.file ?? "?"}, not ${path}`,
      );
    }
  }
  try {
    trainer.restore(rec.trainer);
  } catch (e) {
    throw new CheckpointError(`${recordName}: ${(e as Error).message}`);
  }
  if (trainer.iteration !== iteration) {
    throw new CheckpointError(
      `${recordName}: the trainer state is at step ${trainer.iteration}, the record at ${iteration}`,
    );
  }
  return true;
}

/**
 * Writes a checkpoint as one unit (see the module doc) and removes `previous`, the folder of the
 * checkpoint it supersedes. Returns its folder.
 */
export async function saveCheckpoint(
  trainer: Trainer,
  stage: string,
  hooks: LoopHooks,
  previous?: string,
): Promise<string | undefined> {
  if (!hooks.saveState) return undefined;
  const folder = checkpointFolder(stage, trainer.iteration);
  const files = trainer.stores().map((f) => ({ ...f, file: baseName(f.name) }));
  for (const f of files) {
    await hooks.saveState(
      `${folder}/${f.file}`,
      await f.store.saveState({ checkpoint: folder, file: f.file }),
    );
  }
  const rec: CheckpointRecord = {
    format: 2,
    stage,
    iteration: trainer.iteration,
    folder,
    files: files.map((f) => f.file),
    trainer: trainer.state(),
  };
  await hooks.saveState(`${stage}/trainer_state.json`, JSON.stringify(rec));
  if (previous && previous !== folder) await hooks.removeState?.(previous);
  return folder;
}

/**
 * Runs `trainer` until `trainer.total` steps are done (or `stopAfter`), and returns the last
 * logged metrics.
 *
 * @example SFT for 4 steps, logging every 2
 * ```ts
 * import { ByteTokenizer, defaults, Gpu, OPT_PRESETS, OptModel, runLoop, SFT_SCHEMA, SftTrainer } from "../mod.ts";
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
  let committed: string | undefined;
  if (o.resume) {
    if (await restoreCheckpoint(trainer, o.stage, hooks)) {
      hooks.log?.(
        `resume: ${o.stage.toUpperCase()} continues after ${o.unit ?? "step"} ${trainer.iteration}`,
      );
      committed = checkpointFolder(o.stage, trainer.iteration);
    }
    // what the interrupted process logged after this point (all of it without a checkpoint)
    await hooks.onResume?.(o.stage, trainer.iteration);
  }
  let last: Metrics = {};
  while (trainer.iteration < trainer.total) {
    const n = trainer.iteration + 1;
    const m = await trainer.step(n % o.logEvery === 0 || n === trainer.total);
    if (m) {
      last = m;
      hooks.onProgress?.(o.stage, trainer.iteration, trainer.total, m);
      await o.afterLog?.(m);
      await hooks.onMetrics?.(o.stage, m);
    }
    if (o.checkpointEvery > 0 && trainer.iteration % o.checkpointEvery === 0) {
      committed = await saveCheckpoint(trainer, o.stage, hooks, committed);
    }
    if (o.stopAfter !== undefined && trainer.iteration >= o.stopAfter) break;
  }
  if (o.checkpointEvery > 0 && committed !== checkpointFolder(o.stage, trainer.iteration)) {
    await saveCheckpoint(trainer, o.stage, hooks, committed);
  }
  return last;
}
