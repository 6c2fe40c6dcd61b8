/**
 * Checkpoint directories on disk (Deno only): `config.json` + `model.safetensors`, with
 * optional `vocab.json` + `merges.txt`. Writes are atomic (write to a temporary file, then
 * rename), so an interrupted save never destroys the previous checkpoint.
 *
 * @module
 */

import { join } from "node:path";

/** The files of a checkpoint directory. */
export interface CheckpointFiles {
  config: string;
  weights: Uint8Array;
  vocab?: string;
  merges?: string;
}

async function readOptional(path: string): Promise<string | undefined> {
  try {
    return await Deno.readTextFile(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return undefined;
    throw e;
  }
}

/** Reads a checkpoint directory; a missing required file is an error that names it. */
export async function readCheckpointDir(dir: string): Promise<CheckpointFiles> {
  const need = async <T>(file: string, read: (p: string) => Promise<T>): Promise<T> => {
    try {
      return await read(join(dir, file));
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) {
        throw new Error(`checkpoint ${dir}: missing ${file}`);
      }
      throw e;
    }
  };
  return {
    config: await need("config.json", Deno.readTextFile),
    weights: await need("model.safetensors", Deno.readFile),
    vocab: await readOptional(join(dir, "vocab.json")),
    merges: await readOptional(join(dir, "merges.txt")),
  };
}

/** Writes `data` to `path` atomically (temporary file in the same directory, then rename). */
export async function writeFileAtomic(
  path: string,
  data: Uint8Array | string,
  /** Runs between the temporary file and the rename (the crash tests pause here). */
  beforeRename?: () => Promise<void>,
): Promise<void> {
  const tmp = `${path}.tmp-${crypto.randomUUID().slice(0, 8)}`;
  try {
    if (typeof data === "string") await Deno.writeTextFile(tmp, data);
    else await Deno.writeFile(tmp, data);
    await beforeRename?.();
    await Deno.rename(tmp, path);
  } catch (e) {
    await Deno.remove(tmp).catch(() => {});
    throw e;
  }
}

/** Writes a checkpoint directory (each file atomically). */
export async function writeCheckpointDir(dir: string, files: CheckpointFiles): Promise<void> {
  await Deno.mkdir(dir, { recursive: true });
  await writeFileAtomic(join(dir, "model.safetensors"), files.weights);
  await writeFileAtomic(join(dir, "config.json"), files.config);
  if (files.vocab) await writeFileAtomic(join(dir, "vocab.json"), files.vocab);
  if (files.merges) await writeFileAtomic(join(dir, "merges.txt"), files.merges);
}

/** The files of a PEFT adapter directory. */
export interface AdapterFiles {
  /** `adapter_config.json` text. */
  config: string;
  /** `adapter_model.safetensors` bytes. */
  weights: Uint8Array;
}

/** Writes a PEFT adapter directory (each file atomically; the weights before the config). */
export async function writeAdapterDir(dir: string, files: AdapterFiles): Promise<void> {
  await Deno.mkdir(dir, { recursive: true });
  await writeFileAtomic(join(dir, "adapter_model.safetensors"), files.weights);
  await writeFileAtomic(join(dir, "adapter_config.json"), files.config);
}

/** Reads a PEFT adapter directory; a missing file is an error that names it. */
export async function readAdapterDir(dir: string): Promise<AdapterFiles> {
  const need = async <T>(file: string, read: (p: string) => Promise<T>): Promise<T> => {
    try {
      return await read(join(dir, file));
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) throw new Error(`adapter ${dir}: missing ${file}`);
      throw e;
    }
  };
  return {
    config: await need("adapter_config.json", Deno.readTextFile),
    weights: await need("adapter_model.safetensors", Deno.readFile),
  };
}
