/**
 * `deno task train [--config file.json] [--section.key=value …]`: runs SFT → reward model →
 * PPO on the built-in task and writes `runs/<name>/`: the resolved `config.json`,
 * `metrics.jsonl`, a checkpoint per stage (`sft/`, `rm/`, `ppo/`, HF layout, written
 * atomically), resumable PPO state (`ppo/*_state.*`), `summary.json` and `report.html`.
 * `--stage=sft|rm|ppo` runs one stage (rm and ppo load the earlier stages' checkpoints from the
 * run directory). `--resume --run.name=N` continues run N from its checkpoints (finished stages are loaded, PPO
 * resumes after its last state checkpoint); `--stop-after=K` ends PPO after iteration K
 * (checkpointed). Overrides use the config sections
 * `run.`, `sft.`, `rm.`, `ppo.` (e.g. `--ppo.iterations=50 --sft.lr=1e-3`); unknown keys and
 * wrong types are errors. `--preset=simple-rlhf-tiny` runs the checkpoint recipe instead
 * (trainer/recipe.ts: RM from a local OPT checkpoint, then PPO of a LoRA actor) with the
 * sections `run.`, `data.`, `lora.`, `rm.`, `ppo.` (`--data.actor=DIR --data.critic=DIR
 * --data.pairs=FILE` are required).
 *
 * @module
 */

import { join } from "node:path";
import { Gpu } from "../kernels/runtime.ts";
import { coerce, ConfigError, type Schema } from "../trainer/config.ts";
import { PPO_SCHEMA, RM_SCHEMA, SFT_SCHEMA } from "../trainer/config.ts";
import {
  PIPELINE_PRESETS,
  type PipelineConfig,
  type PipelineHooks,
  type PipelineStage,
  resolvePipelineConfig,
  RUN_SCHEMA,
  runBuiltinPipeline,
  TASK_SCHEMA,
} from "../trainer/pipeline.ts";
import {
  RECIPE_PRESETS,
  RECIPE_SCHEMAS,
  type RecipeConfig,
  resolveRecipeConfig,
  runRecipePipeline,
} from "../trainer/recipe.ts";
import { describeVerdict } from "../trainer/hacking.ts";
import { type MetricRecord, renderReport } from "../trainer/report.ts";
import { NonFiniteLossError } from "../trainer/sft.ts";
import { writeCheckpointDir, writeFileAtomic } from "./checkpoint_files.ts";
import { UsageError } from "./args.ts";

const BUILTIN_SCHEMAS: Record<string, Schema<unknown>> = {
  run: RUN_SCHEMA as Schema<unknown>,
  task: TASK_SCHEMA as Schema<unknown>,
  sft: SFT_SCHEMA as Schema<unknown>,
  rm: RM_SCHEMA as Schema<unknown>,
  ppo: PPO_SCHEMA as Schema<unknown>,
};

const RECIPE_SECTIONS = RECIPE_SCHEMAS as unknown as Record<string, Schema<unknown>>;

/** The `--preset` value on a command line, if any. */
function presetOf(argv: string[]): string | undefined {
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === "--preset") return argv[i + 1];
    if (argv[i].startsWith("--preset=")) return argv[i].slice("--preset=".length);
  }
  return undefined;
}

/**
 * Parses the command line into pipeline overrides. A checkpoint recipe preset
 * (`--preset=simple-rlhf-tiny`) switches to the recipe's sections (`run.`, `data.`, `lora.`,
 * `rm.`, `ppo.`); `recipe` names it.
 */
export async function parseTrainArgs(
  argv: string[],
): Promise<
  {
    overrides: Record<string, unknown>;
    out: string;
    resume: boolean;
    stopAfter?: number;
    stage: PipelineStage;
    recipe?: string;
  }
> {
  const overrides: Record<string, unknown> = {};
  let out = "runs", resume = false, stopAfter: number | undefined;
  let stage: PipelineStage = "all";
  const preset = presetOf(argv);
  const recipe = preset !== undefined && preset in RECIPE_PRESETS ? preset : undefined;
  const SCHEMAS = recipe ? RECIPE_SECTIONS : BUILTIN_SCHEMAS;
  const sectionList = Object.keys(SCHEMAS).join(", ");
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === "--resume") {
      resume = true;
      continue;
    }
    if (!a.startsWith("--")) throw new UsageError(`unexpected argument "${a}"`);
    const eq = a.indexOf("=");
    const key = a.slice(2, eq < 0 ? undefined : eq);
    const value = eq < 0 ? argv[++i] : a.slice(eq + 1);
    if (value === undefined) throw new UsageError(`--${key} needs a value`);
    if (key === "config") {
      let parsed: unknown;
      try {
        parsed = JSON.parse(await Deno.readTextFile(value));
      } catch (e) {
        throw new UsageError(`--config ${value}: ${(e as Error).message}`);
      }
      if (typeof parsed !== "object" || parsed === null) {
        throw new UsageError(`--config ${value}: not an object`);
      }
      for (const [sec, obj] of Object.entries(parsed)) {
        if (!(sec in SCHEMAS) || typeof obj !== "object" || obj === null) {
          throw new UsageError(`--config ${value}: unknown section "${sec}" (${sectionList})`);
        }
        for (const [k, v] of Object.entries(obj)) overrides[`${sec}.${k}`] = v;
      }
    } else if (key === "preset") {
      if (recipe) continue; // a recipe preset is the base config itself
      const preset = PIPELINE_PRESETS[value];
      if (!preset) {
        throw new UsageError(
          `--preset ${value}: known presets are ${
            [...Object.keys(PIPELINE_PRESETS), ...Object.keys(RECIPE_PRESETS)].join(", ")
          }`,
        );
      }
      // a preset sets defaults; flags given anywhere on the command line still win
      for (const [k, v] of Object.entries(preset)) if (!(k in overrides)) overrides[k] = v;
    } else if (key === "out") {
      out = value;
    } else if (key === "stage") {
      if (!["all", "sft", "rm", "ppo"].includes(value)) {
        throw new UsageError(`--stage must be all, sft, rm or ppo, got "${value}"`);
      }
      stage = value as PipelineStage;
    } else if (key === "stop-after") {
      stopAfter = Number(value);
      if (!Number.isInteger(stopAfter) || stopAfter < 1) {
        throw new UsageError(`--stop-after must be a PPO iteration ≥ 1, got "${value}"`);
      }
    } else {
      const dot = key.indexOf(".");
      const sec = key.slice(0, dot), field = key.slice(dot + 1);
      if (dot < 0 || !(sec in SCHEMAS)) {
        throw new UsageError(
          `unknown option --${key} (use --config, --preset, --out, --resume, --stop-after or ` +
            `--<${Object.keys(SCHEMAS).join("|")}>.<key>=value)`,
        );
      }
      overrides[key] = coerce(SCHEMAS[sec], field, value);
    }
  }
  return { overrides, out, resume, stopAfter, stage, recipe };
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
    "objective/scores",
    "objective/kl",
    "gold/rollout",
  ];
  const info = m ? keys.filter((k) => k in m).map((k) => `${k}=${m[k].toFixed(3)}`).join(" ") : "";
  return `[${stage.padEnd(3)}] ${"█".repeat(f)}${"░".repeat(w - f)} ${done}/${total} ${
    el.toFixed(0)
  }s ETA ${eta.toFixed(0)}s ${info}`;
}

/**
 * `WEBGPU_RLHF_MATMUL_PATH=texture|buffer` forces the matmul path (CI runs the real-GPU buffer
 * path on the software adapter with it); unset, the runtime picks by adapter.
 */
function matmulPathFromEnv(): "texture" | "buffer" | undefined {
  const v = Deno.env.get("WEBGPU_RLHF_MATMUL_PATH");
  if (v === undefined || v === "") return undefined;
  if (v !== "texture" && v !== "buffer") {
    throw new UsageError(`WEBGPU_RLHF_MATMUL_PATH must be texture or buffer, got "${v}"`);
  }
  return v;
}

async function main(): Promise<void> {
  const { overrides, out, resume, stopAfter, stage, recipe } = await parseTrainArgs(Deno.args);
  let cfg: PipelineConfig | RecipeConfig = recipe
    ? resolveRecipeConfig(overrides, RECIPE_PRESETS[recipe])
    : resolvePipelineConfig(overrides);
  const dir = join(out, cfg.run.name);
  if (resume) {
    // the run's own resolved config; only its name (and the output folder) come from the flags
    const extra = Object.keys(overrides).filter((k) => k !== "run.name");
    if (extra.length) {
      throw new UsageError(`--resume uses the run's saved config; drop ${extra.join(", ")}`);
    }
    let saved: string;
    try {
      saved = await Deno.readTextFile(join(dir, "config.json"));
    } catch {
      throw new UsageError(`--resume: ${dir}/config.json not found (no run named ${cfg.run.name})`);
    }
    cfg = JSON.parse(saved);
  } else {
    await Deno.mkdir(dir, { recursive: true });
    await writeFileAtomic(join(dir, "config.json"), JSON.stringify(cfg, null, 2));
  }
  if (stage !== "all") {
    await Deno.writeTextFile(join(dir, "metrics.jsonl"), "", { append: true });
  }
  const metricsPath = join(dir, "metrics.jsonl");
  // a fresh full run starts a new metrics file; resumed and single-stage runs append
  if (!resume && stage === "all") await Deno.writeTextFile(metricsPath, "");
  const gpu = await Gpu.create({ matmulPath: matmulPathFromEnv() });
  const tty = Deno.stderr.isTerminal();
  const enc = new TextEncoder();
  const starts: Record<string, number> = {};
  let lastStage = "";
  const isRecipe = "data" in cfg;
  console.error(
    `webgpu-rlhf: ${
      isRecipe ? "checkpoint recipe" : "built-in task"
    } on ${gpu.adapterDescription} (${gpu.matmulPath} matmul path); writing ${dir}/`,
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
    saveState: async (name, data) => {
      await Deno.mkdir(join(dir, name, ".."), { recursive: true });
      await writeFileAtomic(join(dir, name), data);
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
    log: (line) => console.error((tty ? "\n" : "") + line),
  };
  const runOpts = { resume, stopAfterIteration: stopAfter, stage };
  const summary = "data" in cfg
    ? await runRecipePipeline(gpu, cfg, { read: (p) => Deno.readFile(p) }, hooks, runOpts)
    : await runBuiltinPipeline(gpu, cfg, hooks, runOpts);
  if (tty) Deno.stderr.writeSync(enc.encode("\n"));
  const { samples_before, samples_after, reward_hacking, ...numbers } = summary;
  const shown = Object.entries(numbers).filter(([, v]) => Number.isFinite(v));
  if (stage === "all" || stage === "ppo") {
    // the run's records (earlier single-stage runs included) feed the report's curves
    const all = (await Deno.readTextFile(metricsPath)).trim().split("\n").filter((l) => l)
      .map((l) => JSON.parse(l) as MetricRecord);
    await writeFileAtomic(
      join(dir, "summary.json"),
      JSON.stringify({ ...numbers, reward_hacking, samples_before, samples_after }, null, 2),
    );
    await writeFileAtomic(join(dir, "report.html"), renderReport(cfg.run.name, all, summary));
  }
  console.log(`\nsummary (${stage})`);
  for (const [k, v] of shown) console.log(`  ${k.padEnd(20)} ${v.toFixed(3)}`);
  if (reward_hacking) console.log(`\n${describeVerdict(reward_hacking)}`);
  if (stage === "all" || stage === "ppo") console.log(`\nreport: ${join(dir, "report.html")}`);
  gpu.destroy();
}

if (import.meta.main) {
  try {
    await main();
  } catch (e) {
    const err = e as Error;
    if (e instanceof UsageError || e instanceof ConfigError) {
      console.error(`train: ${err.message}`);
      Deno.exit(2);
    }
    if (e instanceof NonFiniteLossError) {
      console.error(
        `train: stopped — ${err.name}: ${err.message} (no checkpoint was overwritten: the last good ones are intact)`,
      );
      Deno.exit(1);
    }
    console.error(`train: ${err.name}: ${err.message}`);
    Deno.exit(1);
  }
}
