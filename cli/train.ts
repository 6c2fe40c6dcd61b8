/**
 * `deno task train [--method=NAME | --preset=NAME] [--config file.json] [--section.key=value …]`:
 * runs a registered pipeline (`trainer/registry.ts`; default: SFT → reward model → PPO on the
 * built-in task; `--method=dpo|ipo|hinge|robust|simpo|kto`: SFT → that method, sections `run.`,
 * `task.`, `data.`, `sft.`, `dpo.`/`kto.`) and writes `runs/<name>/`: the resolved `config.json`, `metrics.jsonl`, a
 * checkpoint per stage (`sft/`, `rm/`, `ppo/`, HF layout, written atomically), resumable state
 * (`<stage>/*_state.*`, `<stage>/trainer_state.json`), `summary.json` and `report.html`.
 * `--stage=X` runs stage X alone (earlier ones load their checkpoints from the run
 * directory). `--resume --run.name=N` continues run N: finished stages are loaded, the
 * unfinished one continues after its last state checkpoint; `--stop-after=K` ends PPO after
 * iteration K (checkpointed). Overrides use the pipeline's config sections (built-in: `run.`,
 * `task.`, `sft.`, `rm.`, `ppo.`, e.g. `--ppo.iterations=50 --sft.lr=1e-3`); unknown keys and
 * wrong types are errors. `--preset=simple-rlhf-tiny` runs the checkpoint recipe
 * (trainer/recipe.ts: RM from a local OPT checkpoint, then PPO of a LoRA actor) with the
 * sections `run.`, `data.`, `lora.`, `rm.`, `ppo.` (`--data.actor=DIR --data.critic=DIR
 * --data.pairs=FILE` are required).
 *
 * @module
 */

import { join } from "node:path";
import type { Gpu } from "../kernels/runtime.ts";
import { ConfigError, resolveSections } from "../trainer/config.ts";
import { describeVerdict } from "../trainer/hacking.ts";
import {
  type PipelineDefinition,
  type PipelineHooks,
  type PipelineSummary,
  runPipeline,
} from "../trainer/pipeline.ts";
import { pipelineOf, PIPELINES, PRESETS } from "../trainer/registry.ts";
import { type MetricRecord, renderReport } from "../trainer/report.ts";
import { writeAdapterDir, writeCheckpointDir, writeFileAtomic } from "./checkpoint_files.ts";
import { type ArgSpec, parseArgs, runMain, UsageError } from "./args.ts";
import { createGpu } from "./gpu_env.ts";
import { LOCAL_IO } from "./local_io.ts";

const SPEC: ArgSpec = {
  config: "string",
  preset: "string",
  method: "string",
  out: "string",
  resume: "boolean",
  overwrite: "boolean",
  stage: "string",
  "stop-after": "int",
};

/** The training methods of `--method`, each a preset of the built-in task. */
export const METHODS: Record<string, string> = {
  ppo: "builtin",
  dpo: "dpo",
  ipo: "ipo",
  hinge: "hinge",
  robust: "robust",
  simpo: "simpo",
  kto: "kto",
  grpo: "grpo",
  rloo: "rloo",
  "reinforce++": "reinforce++",
  rs: "rs",
};

/** The value of `--name` on a command line, if any. */
function flagOf(argv: string[], name: string): string | undefined {
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === `--${name}`) return argv[i + 1];
    if (argv[i].startsWith(`--${name}=`)) return argv[i].slice(name.length + 3);
  }
  return undefined;
}

/**
 * The preset a command line selects (it decides the config sections): `--preset=NAME`, or
 * `--method=ppo|dpo|ipo|hinge|robust|simpo|kto` (the method's preset on the built-in task, or
 * with `--data.policy=DIR` on your own checkpoint and data).
 */
function presetOf(argv: string[]): string | undefined {
  const preset = flagOf(argv, "preset"), method = flagOf(argv, "method");
  if (method === undefined) return preset;
  if (preset !== undefined) throw new UsageError("give --preset or --method, not both");
  if (!(method in METHODS)) {
    throw new UsageError(
      `--method ${method}: known methods are ${Object.keys(METHODS).join(", ")}`,
    );
  }
  // your own checkpoint and data: the method's checkpoint pipeline
  if (flagOf(argv, "data.policy") !== undefined) {
    if (method === "ppo") {
      throw new UsageError("--method=ppo on your own checkpoints is --preset=simple-rlhf-tiny");
    }
    if (!PRESETS[`checkpoint-${METHODS[method]}`]) {
      throw new UsageError(`--method=${method} runs on the built-in task only (no --data.policy)`);
    }
    return `checkpoint-${method}`;
  }
  return METHODS[method];
}

/** `--reward=X` (and `--reward X`) is `--reward.source=X` where the pipeline has a reward section. */
function rewardAlias(argv: string[], has: boolean, preset: string): string[] {
  const out: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a !== "--reward" && !a.startsWith("--reward=")) {
      out.push(a);
      continue;
    }
    if (!has) {
      throw new UsageError(`--reward: the ${preset} pipeline takes no reward (it has no reward.)`);
    }
    const v = a === "--reward" ? argv[++i] : a.slice("--reward=".length);
    if (v === undefined) throw new UsageError("--reward needs a value");
    out.push(`--reward.source=${v}`);
  }
  return out;
}

/** A parsed `deno task train` command line. */
export interface TrainArgs {
  /** The registered pipeline (`trainer/registry.ts`) the preset selects. */
  pipeline: string;
  /** Dotted overrides: the preset's, then `--config`'s, then the flags'. */
  overrides: Record<string, unknown>;
  /** The dotted keys set by `--config` or flags (not by the preset). */
  given: string[];
  out: string;
  resume: boolean;
  /** Replace an existing run of the same name. */
  overwrite: boolean;
  stopAfter?: number;
  stage: string;
}

/**
 * Parses the command line. `--preset` selects the pipeline and its config sections (the
 * built-in task: `run.`, `task.`, `sft.`, `rm.`, `ppo.`; the checkpoint recipe: `run.`,
 * `data.`, `lora.`, `rm.`, `ppo.`); a preset and `--config` set defaults, flags win.
 */
export async function parseTrainArgs(argv: string[]): Promise<TrainArgs> {
  const presetName = presetOf(argv) ?? "builtin";
  const preset = PRESETS[presetName];
  if (!preset) {
    throw new UsageError(
      `--preset ${presetName}: known presets are ${Object.keys(PRESETS).join(", ")}`,
    );
  }
  const def = PIPELINES[preset.pipeline]({ read: () => Promise.reject(new Error("no files")) });
  argv = rewardAlias(argv, "reward" in def.sections, presetName);
  const { flags } = parseArgs(argv, SPEC, { sections: def.sections, noPositional: true });
  const overrides: Record<string, unknown> = { ...preset.overrides };
  const given = new Set<string>();
  if (typeof flags.config === "string") {
    let parsed: unknown;
    try {
      parsed = JSON.parse(await Deno.readTextFile(flags.config));
    } catch (e) {
      throw new UsageError(`--config ${flags.config}: ${(e as Error).message}`);
    }
    if (typeof parsed !== "object" || parsed === null) {
      throw new UsageError(`--config ${flags.config}: not an object`);
    }
    for (const [sec, obj] of Object.entries(parsed)) {
      if (!(sec in def.sections) || typeof obj !== "object" || obj === null) {
        throw new UsageError(
          `--config ${flags.config}: unknown section "${sec}" (${
            Object.keys(def.sections).join(", ")
          })`,
        );
      }
      for (const [k, v] of Object.entries(obj)) {
        overrides[`${sec}.${k}`] = v;
        given.add(`${sec}.${k}`);
      }
    }
  }
  for (const [k, v] of Object.entries(flags)) {
    if (k.includes(".")) {
      overrides[k] = v;
      given.add(k);
    }
  }
  const stages = def.stages.map((s) => s.name);
  const stage = (flags.stage as string | undefined) ?? "all";
  if (stage !== "all" && !stages.includes(stage)) {
    throw new UsageError(`--stage must be all or one of ${stages.join(", ")}, got "${stage}"`);
  }
  const stopAfter = flags["stop-after"] as number | undefined;
  if (flags.resume === true && flags.overwrite === true) {
    throw new UsageError("--resume continues a run and --overwrite replaces it: give one");
  }
  if (stopAfter !== undefined && stopAfter < 1) {
    throw new UsageError(`--stop-after must be a PPO iteration ≥ 1, got "${stopAfter}"`);
  }
  return {
    pipeline: preset.pipeline,
    overrides,
    given: [...given],
    out: (flags.out as string | undefined) ?? "runs",
    resume: flags.resume === true,
    overwrite: flags.overwrite === true,
    stopAfter,
    stage,
  };
}

function bar(
  stage: string,
  done: number,
  total: number,
  t0: number,
  m?: Record<string, number>,
): string {
  const w = 24, f = Math.round((done / total) * w);
  const el = (performance.now() - t0) / 1000, eta = done > 0 ? (el / done) * (total - done) : 0;
  const keys = [
    "sft/loss",
    "rm/loss",
    "rm/train_accuracy",
    "dpo/loss",
    "simpo/loss",
    "kto/loss",
    "rewards/accuracies",
    "rewards/margins",
    "objective/scores",
    "objective/kl",
    "gold/rollout",
  ];
  const info = m ? keys.filter((k) => k in m).map((k) => `${k}=${m[k].toFixed(3)}`).join(" ") : "";
  return `[${stage.padEnd(3)}] ${"█".repeat(f)}${"░".repeat(w - f)} ${done}/${total} ${
    el.toFixed(0)
  }s ETA ${eta.toFixed(0)}s ${info}`;
}

/** The run's saved config, validated against its pipeline's schema like a fresh one. */
async function savedRun(dir: string, name: string) {
  let text: string;
  try {
    text = await Deno.readTextFile(join(dir, "config.json"));
  } catch {
    throw new UsageError(`--resume: ${dir}/config.json not found (no run named ${name})`);
  }
  let saved: Record<string, unknown>;
  try {
    saved = JSON.parse(text);
  } catch (e) {
    throw new ConfigError(`${dir}/config.json: not JSON (${(e as Error).message})`);
  }
  if (typeof saved !== "object" || saved === null || Array.isArray(saved)) {
    throw new ConfigError(`${dir}/config.json: not an object`);
  }
  const { pipeline: _, ...sections } = saved;
  const def = PIPELINES[pipelineOf(saved)](LOCAL_IO);
  try {
    return { def, cfg: resolveSections(def.sections, sections, def.defaults) };
  } catch (e) {
    throw new ConfigError(`${dir}/config.json: ${(e as Error).message}`);
  }
}

/** Removes the temporary files of interrupted atomic writes below `dir`. */
async function removeStaleTemporaries(dir: string): Promise<void> {
  for await (const e of Deno.readDir(dir)) {
    const path = join(dir, e.name);
    if (e.isDirectory) await removeStaleTemporaries(path);
    else if (/\.tmp-[0-9a-f]{8}$/.test(e.name)) await Deno.remove(path);
  }
}

/**
 * Drops the metric records a resumed stage will log again: those of `stage` after `iteration`
 * (or without a step), and those of later stages.
 */
async function truncateMetrics(
  path: string,
  stages: string[],
  stage: string,
  iteration: number,
): Promise<void> {
  const at = stages.indexOf(stage);
  const lines = (await Deno.readTextFile(path)).split("\n").filter((l) => l.trim());
  const kept = lines.filter((l) => {
    const r = JSON.parse(l) as Record<string, unknown>;
    const i = stages.indexOf(r.stage as string);
    if (i !== at) return i < at;
    const step = (r.step ?? r.iteration) as number | undefined;
    return step !== undefined && step <= iteration;
  });
  if (kept.length !== lines.length) {
    await writeFileAtomic(path, kept.map((l) => l + "\n").join(""));
  }
}

/**
 * Where the run goes: its folder, resolved config and pipeline. A fresh run never reuses a
 * folder silently: an existing run needs `--resume`, `--overwrite`, or (for `--stage` runs of
 * the same config) the identical config.
 */
async function prepareRun(args: TrainArgs) {
  let def = PIPELINES[args.pipeline](LOCAL_IO);
  let cfg = resolveSections(def.sections, args.overrides, def.defaults);
  const dir = join(args.out, cfg.run.name);
  if (!args.resume) def.validate?.(cfg); // before the run folder exists
  if (args.resume) {
    // the run's own resolved config; only its name (and the output folder) come from the flags
    const given = args.given.filter((k) => k !== "run.name");
    if (given.length) {
      throw new UsageError(`--resume uses the run's saved config; drop ${given.join(", ")}`);
    }
    ({ def, cfg } = await savedRun(dir, cfg.run.name));
    await removeStaleTemporaries(dir);
    return { def, cfg, dir };
  }
  const text = JSON.stringify({ pipeline: def.name, ...cfg }, null, 2);
  let existing: string | undefined;
  try {
    existing = await Deno.readTextFile(join(dir, "config.json"));
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  }
  if (existing !== undefined && args.overwrite) await Deno.remove(dir, { recursive: true });
  else if (existing !== undefined && !(args.stage !== "all" && existing === text)) {
    throw new UsageError(
      `run "${cfg.run.name}" already exists in ${dir}: continue it with --resume, replace it ` +
        `with --overwrite, or choose another --run.name` +
        (args.stage !== "all" ? " (a --stage run needs the run's exact config)" : ""),
    );
  }
  await Deno.mkdir(dir, { recursive: true });
  await writeFileAtomic(join(dir, "config.json"), text);
  return { def, cfg, dir };
}

/**
 * `WEBGPU_RLHF_PAUSE_AT_WRITE=K` (or `K:mid`) stops the process before its K-th state write
 * (or after that write's temporary file, before its rename) and waits there, so that a test can
 * kill it with SIGKILL at exactly that point (`tests/reliability_test.ts`).
 */
function writePauser() {
  const spec = Deno.env.get("WEBGPU_RLHF_PAUSE_AT_WRITE");
  const m = spec?.match(/^(\d+)(:mid)?$/);
  if (spec && !m) {
    throw new UsageError(`WEBGPU_RLHF_PAUSE_AT_WRITE must be K or K:mid, got "${spec}"`);
  }
  let n = 0;
  const pause = (name: string) => {
    console.error(`paused at state write ${n} (${name})`);
    return new Promise<void>(() => setInterval(() => {}, 1 << 30));
  };
  return {
    before: (name: string) => {
      n++;
      return m && !m[2] && n === Number(m[1]) ? pause(name) : Promise.resolve();
    },
    beforeRename: (name: string) =>
      m && m[2] && n === Number(m[1]) ? pause(name) : Promise.resolve(),
  };
}

/** What {@link runTraining} did: the run's folder, config, pipeline and summary. */
export interface TrainingRun {
  /** The run folder. */
  dir: string;
  /** The pipeline that ran. */
  // deno-lint-ignore no-explicit-any
  def: PipelineDefinition<any, any>;
  /** Its resolved config. */
  cfg: { run: { name: string } };
  /** The summary (also written as summary.json when the last stage ran). */
  summary: PipelineSummary;
}

/**
 * Runs one parsed `deno task train` command on `gpu`: prepares the run folder (or resumes it),
 * runs the pipeline with the folder's hooks (metrics.jsonl, checkpoints, resumable state,
 * progress on stderr) and writes summary.json and report.html when the last stage ran.
 */
export async function runTraining(args: TrainArgs, gpu: Gpu): Promise<TrainingRun> {
  const pauseAt = writePauser();
  const { resume, stopAfter, stage } = args;
  const { def, cfg, dir } = await prepareRun(args);
  if (stage !== "all") {
    await Deno.writeTextFile(join(dir, "metrics.jsonl"), "", { append: true });
  }
  const metricsPath = join(dir, "metrics.jsonl");
  // a fresh full run starts a new metrics file; resumed and single-stage runs append
  if (!resume && stage === "all") await Deno.writeTextFile(metricsPath, "");
  const tty = Deno.stderr.isTerminal();
  const enc = new TextEncoder();
  const starts: Record<string, number> = {};
  let lastStage = "";
  console.error(
    `webgpu-rlhf: ${def.name} pipeline on ${gpu.adapterDescription} (${gpu.matmulPath} matmul ` +
      `path); writing ${dir}/`,
  );
  const hooks: PipelineHooks = {
    onMetrics: async (stage, m) => {
      const rec = { stage, ...m };
      await Deno.writeTextFile(metricsPath, JSON.stringify(rec) + "\n", { append: true });
    },
    onProgress: (stage, done, total, m) => {
      starts[stage] ??= performance.now();
      if (stage !== lastStage && lastStage && tty) Deno.stderr.writeSync(enc.encode("\n"));
      lastStage = stage;
      const line = bar(stage, done, total, starts[stage], m);
      if (tty) Deno.stderr.writeSync(enc.encode(`\r${line}\x1b[K`));
      else if (done === total || done % Math.max(1, Math.round(total / 5)) === 0) {
        console.error(line);
      }
    },
    saveCheckpoint: (stage, files) => writeCheckpointDir(join(dir, stage), files),
    saveAdapter: (stage, files) => writeAdapterDir(join(dir, `${stage}-adapter`), files),
    saveState: async (name, data) => {
      await pauseAt.before(name);
      await Deno.mkdir(join(dir, name, ".."), { recursive: true });
      await writeFileAtomic(join(dir, name), data, () => pauseAt.beforeRename(name));
    },
    loadState: async (name) => {
      try {
        return name.endsWith(".json")
          ? await Deno.readTextFile(join(dir, name))
          : await Deno.readFile(join(dir, name));
      } catch (e) {
        if (e instanceof Deno.errors.NotFound) return undefined;
        throw e;
      }
    },
    removeState: async (name) => {
      await Deno.remove(join(dir, name), { recursive: true }).catch((e) => {
        if (!(e instanceof Deno.errors.NotFound)) throw e;
      });
    },
    onResume: (stage, iteration) =>
      truncateMetrics(metricsPath, def.stages.map((s) => s.name), stage, iteration),
    log: (line) => console.error((tty ? "\n" : "") + line),
  };
  const runOpts = { resume, stopAfterIteration: stopAfter, stage };
  const summary = await runPipeline(def, gpu, cfg, hooks, runOpts);
  if (tty) Deno.stderr.writeSync(enc.encode("\n"));
  const { samples_before, samples_after, reward_hacking, ...numbers } = summary;
  const last = def.stages.at(-1)!.name;
  if (stage === "all" || stage === last) {
    // the run's records (earlier single-stage runs included) feed the report's curves
    const all = (await Deno.readTextFile(metricsPath)).trim().split("\n").filter((l) => l)
      .map((l) => JSON.parse(l) as MetricRecord);
    await writeFileAtomic(
      join(dir, "summary.json"),
      JSON.stringify({ ...numbers, reward_hacking, samples_before, samples_after }, null, 2),
    );
    await writeFileAtomic(join(dir, "report.html"), renderReport(cfg.run.name, all, summary));
  }
  return { dir, def, cfg, summary };
}

async function main(): Promise<void> {
  const args = await parseTrainArgs(Deno.args);
  const gpu = await createGpu(console.log);
  const { dir, def, summary } = await runTraining(args, gpu);
  const { stage } = args;
  const { samples_before: _b, samples_after: _a, reward_hacking, ...numbers } = summary;
  const shown = Object.entries(numbers).filter(([, v]) => Number.isFinite(v));
  const last = def.stages.at(-1)!.name;
  console.log(`\nsummary (${stage})`);
  for (const [k, v] of shown) console.log(`  ${k.padEnd(20)} ${v.toFixed(3)}`);
  if (reward_hacking) console.log(`\n${describeVerdict(reward_hacking)}`);
  if (stage === "all" || stage === last) console.log(`\nreport: ${join(dir, "report.html")}`);
  gpu.destroy();
}

if (import.meta.main) await runMain("train", main);
