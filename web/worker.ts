/**
 * The demo's training worker: runs a built-in pipeline (SFT → reward model → PPO, or SFT → DPO /
 * SimPO / KTO) off the
 * page's main thread, streams metrics, progress and samples to the page, and keeps the run's
 * checkpoints and resumable state in the origin-private file system (OPFS; in memory where
 * the browser has none), so a run can be resumed after a reload and checkpoints downloaded.
 *
 * @module
 */

import {
  ByteTokenizer,
  generate,
  Gpu,
  leftPad,
  loadOptModel,
  type PipelineHooks,
  PIPELINES,
  PRESETS,
  resolveSections,
  runPipeline,
  tuneTextureTiling,
} from "../mod.ts";
import type { FromWorker, ToWorker } from "./protocol.ts";

const scope = self as unknown as {
  postMessage(m: FromWorker, transfer?: Transferable[]): void;
  onmessage: ((e: MessageEvent<ToWorker>) => void) | null;
};
const post = (m: FromWorker, transfer: Transferable[] = []) => scope.postMessage(m, transfer);

/** Key-value file storage for one run: OPFS when available, else memory. */
interface RunStorage {
  kind: string;
  write(path: string, data: Uint8Array | string): Promise<void>;
  read(path: string): Promise<Uint8Array | undefined>;
  /** Removes a file or folder (a superseded checkpoint). */
  remove(path: string): Promise<void>;
}

function memoryStorage(): RunStorage {
  const files = new Map<string, Uint8Array>();
  return {
    kind: "memory (this browser has no OPFS: checkpoints last until the tab closes)",
    write: (p, d) => {
      files.set(p, typeof d === "string" ? new TextEncoder().encode(d) : d.slice());
      return Promise.resolve();
    },
    read: (p) => Promise.resolve(files.get(p)),
    remove: (p) => {
      for (const k of [...files.keys()]) if (k === p || k.startsWith(p + "/")) files.delete(k);
      return Promise.resolve();
    },
  };
}

async function opfsStorage(): Promise<RunStorage> {
  const root = await navigator.storage.getDirectory();
  const runs = await root.getDirectoryHandle("webgpu-rlhf-run", { create: true });
  const parent = async (path: string, create: boolean) => {
    const parts = path.split("/");
    let dir = runs;
    for (const p of parts.slice(0, -1)) dir = await dir.getDirectoryHandle(p, { create });
    return { dir, name: parts.at(-1)! };
  };
  return {
    kind: "OPFS (origin-private file system: survives reloads)",
    async write(path, data) {
      const { dir, name } = await parent(path, true);
      const handle = await dir.getFileHandle(name, { create: true });
      // a writable stream writes to a swap file that replaces the old one on close()
      const w = await handle.createWritable();
      await w.write(typeof data === "string" ? data : new Uint8Array(data));
      await w.close();
    },
    async read(path) {
      try {
        const { dir, name } = await parent(path, false);
        const file = await (await dir.getFileHandle(name)).getFile();
        return new Uint8Array(await file.arrayBuffer());
      } catch {
        return undefined;
      }
    },
    async remove(path) {
      try {
        const { dir, name } = await parent(path, false);
        await dir.removeEntry(name, { recursive: true });
      } catch {
        // already gone
      }
    },
  };
}

let gpu: Gpu | undefined;
let storage: RunStorage | undefined;
let paused = false;
let wake: (() => void) | undefined;

async function setup(): Promise<{ gpu: Gpu; storage: RunStorage }> {
  if (!gpu) {
    gpu = await Gpu.create();
    await tuneTextureTiling(gpu); // the fastest texture tiling on this CPU (same bits)
  }
  if (!storage) {
    try {
      storage = await opfsStorage();
    } catch {
      storage = memoryStorage();
    }
    const l = gpu.limits;
    post({
      type: "adapter",
      description: gpu.adapterDescription,
      matmulPath: gpu.matmulPath,
      limits: {
        maxStorageBufferBindingSize: l.maxStorageBufferBindingSize,
        maxBufferSize: l.maxBufferSize,
        maxComputeWorkgroupSizeX: l.maxComputeWorkgroupSizeX,
        maxComputeInvocationsPerWorkgroup: l.maxComputeInvocationsPerWorkgroup,
        maxTextureDimension2D: l.maxTextureDimension2D,
        maxTextureArrayLayers: l.maxTextureArrayLayers,
      },
      storage: storage.kind,
    });
  }
  return { gpu, storage };
}

/** Resolves at once, or when the page presses continue. */
function gate(): Promise<void> {
  return paused ? new Promise((r) => (wake = r)) : Promise.resolve();
}

/** No files in the browser: the demo runs the built-in task's pipelines only. */
const NO_FILES = { read: () => Promise.reject(new Error("the demo reads no files")) };

async function start(
  method: string,
  overrides: Record<string, unknown>,
  resume: boolean,
): Promise<void> {
  const { gpu, storage } = await setup();
  let name: string, cfg: { run: { name: string } };
  if (resume) {
    const saved = await storage.read("config.json");
    if (!saved) throw new Error("no saved run in this browser's storage to resume");
    const { pipeline, ...sections } = JSON.parse(new TextDecoder().decode(saved));
    name = pipeline ?? "builtin";
    cfg = sections;
  } else {
    const preset = PRESETS[method === "ppo" ? "builtin" : method];
    if (!preset) throw new Error(`unknown method ${method}`);
    name = preset.pipeline;
    const def = PIPELINES[name](NO_FILES);
    cfg = resolveSections(def.sections, { ...preset.overrides, ...overrides }, def.defaults);
    await storage.write("config.json", JSON.stringify({ pipeline: name, ...cfg }, null, 2));
  }
  const def = PIPELINES[name](NO_FILES);
  post({ type: "config", config: cfg });
  const hooks: PipelineHooks = {
    onMetrics: async (stage, m) => {
      post({ type: "metrics", stage, m });
      await gate();
    },
    onProgress: (stage, done, total) => post({ type: "progress", stage, done, total }),
    onSamples: (when, samples) => post({ type: "samples", when, samples }),
    log: (line) => post({ type: "log", line }),
    saveCheckpoint: async (stage, files) => {
      await storage.write(`${stage}/config.json`, files.config);
      await storage.write(`${stage}/model.safetensors`, files.weights);
      post({ type: "checkpoint", stage, bytes: files.weights.byteLength });
    },
    saveState: (name, data) => storage.write(name, data),
    removeState: (name) => storage.remove(name),
    loadState: async (name) => {
      const bytes = await storage.read(name);
      if (!bytes) return undefined;
      return name.endsWith(".json") ? new TextDecoder().decode(bytes) : bytes;
    },
  };
  const summary = await runPipeline(def, gpu, cfg, hooks, { resume });
  const { samples_before: _b, samples_after: _a, ...numbers } = summary;
  post({ type: "done", summary: numbers });
}

async function download(stage: string): Promise<void> {
  const { storage } = await setup();
  const config = await storage.read(`${stage}/config.json`);
  const weights = await storage.read(`${stage}/model.safetensors`);
  if (!config || !weights) throw new Error(`no ${stage} checkpoint saved yet`);
  const buf = weights.buffer.slice(weights.byteOffset, weights.byteOffset + weights.byteLength);
  post({
    type: "file",
    stage,
    config: new TextDecoder().decode(config),
    weights: buf as ArrayBuffer,
  }, [buf as ArrayBuffer]);
}

/** Samples from an uploaded checkpoint (byte-tokenizer models, like the demo's). */
async function tryCheckpoint(config: string, weights: ArrayBuffer, prompts: string[]) {
  const { gpu } = await setup();
  const { model } = loadOptModel(gpu, config, new Uint8Array(weights));
  const tok = new ByteTokenizer();
  if (model.config.vocab_size !== tok.vocabSize) {
    model.store.dispose();
    throw new Error(
      `this checkpoint has a ${model.config.vocab_size}-token vocabulary; the demo samples ` +
        `byte-tokenizer models (${tok.vocabSize} tokens) such as its own checkpoints`,
    );
  }
  const enc = leftPad(prompts.map((p) => tok.encode(p)), tok.padId);
  const B = prompts.length;
  const out = await generate(
    model,
    gpu.fromArray(enc.tokens, [B, enc.T]),
    gpu.fromArray(enc.mask, [B, enc.T]),
    { maxNewTokens: 16, temperature: 0.7, seed: Date.now() % 100000 },
  );
  const ids = await gpu.read(out.tokens), resp = await gpu.readF32(out.responseMask);
  const L = enc.T + out.generated;
  const samples = prompts.map((prompt, b) => {
    const r: number[] = [];
    for (let t = enc.T; t < L && resp[b * L + t]; t++) r.push(ids[b * L + t]);
    return { prompt, response: tok.decode(r) };
  });
  for (const t of [out.tokens, out.attentionMask, out.responseMask, out.logprobs]) t.dispose();
  model.store.dispose();
  post({ type: "tried", samples });
}

scope.onmessage = (e) => {
  const msg = e.data;
  const fail = (err: unknown) => {
    const x = err as Error;
    post({ type: "error", name: x?.name ?? "Error", message: x?.message ?? String(err) });
  };
  switch (msg.type) {
    case "start":
      start(msg.method, msg.overrides, msg.resume).catch(fail);
      break;
    case "pause":
      paused = true;
      post({ type: "paused" });
      break;
    case "continue":
      paused = false;
      wake?.();
      wake = undefined;
      post({ type: "continued" });
      break;
    case "download":
      download(msg.stage).catch(fail);
      break;
    case "try":
      tryCheckpoint(msg.config, msg.weights, msg.prompts).catch(fail);
      break;
  }
};
