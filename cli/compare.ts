/**
 * `deno task compare [--methods=ppo,grpo,…] [--budget=N] [--seed=S] [--out=DIR] [--name=NAME]
 * [--resume | --overwrite] [--section.key=value …]`: every method on the built-in task from one
 * SFT checkpoint with equal budgets, side by side.
 *
 * It trains SFT once (`<out>/<name>/sft/`, a run of the PPO pipeline's SFT stage), then for
 * each method a normal run folder `<out>/<name>/<method>/` that starts from a copy of that
 * checkpoint (its SFT records included, so its report is whole): PPO (with its reward model),
 * GRPO, RLOO, REINFORCE++, rejection sampling, DPO, IPO, SimPO and KTO with their defaults, each
 * sampling `--budget` completions (default 2048) of at most `--max-new-tokens` (default 16)
 * tokens — rollouts for the online methods, labelled SFT samples for the direct ones
 * (`trainer/compare.ts`). After every method it rewrites `compare.json` (settings, one row per
 * method, gold curves) and `compare.html` (the table and the gold of every method's training
 * samples on one chart). `--section.key=value` sets a key in every method whose pipeline has
 * that section (`--sft.steps=300`, `--grpo.lr=5e-4`); a key no chosen method has is an error,
 * and so is a key the budget sets. `--resume` keeps finished methods and continues an
 * interrupted one; a kept run folder whose config differs from this command's plan (another
 * budget or other overrides) is refused instead of mixed into the table.
 *
 * @module
 */

import { join } from "node:path";
import type { Gpu } from "../kernels/runtime.ts";
import {
  COMPARED_METHODS,
  type ComparedMethod,
  type Comparison,
  comparisonRow,
  comparisonTable,
  goldCurve,
  methodBudget,
} from "../trainer/compare.ts";
import { resolveSections } from "../trainer/config.ts";
import type { PipelineSummary } from "../trainer/pipeline.ts";
import { PIPELINES, PRESETS } from "../trainer/registry.ts";
import { type MetricRecord, renderComparison } from "../trainer/report.ts";
import { type ArgSpec, parseArgs, runMain, UsageError } from "./args.ts";
import { writeFileAtomic } from "./checkpoint_files.ts";
import { createGpu } from "./gpu_env.ts";
import { LOCAL_IO } from "./local_io.ts";
import { METHODS, runTraining, type TrainArgs } from "./train.ts";

const SPEC: ArgSpec = {
  methods: "string",
  budget: "int",
  "max-new-tokens": "int",
  seed: "int",
  out: "string",
  name: "string",
  resume: "boolean",
  overwrite: "boolean",
};

/** A method with its pipeline and resolved overrides. */
interface Planned {
  m: ComparedMethod;
  pipeline: string;
  overrides: Record<string, unknown>;
  completions: number;
}

/** A parsed `deno task compare` command line with every method's config. */
export interface ComparePlan {
  /** The comparison's folder. */
  root: string;
  seed: number;
  budget: number;
  maxNewTokens: number;
  resume: boolean;
  overwrite: boolean;
  /** The shared SFT run's overrides (the PPO pipeline's sections). */
  sft: Record<string, unknown>;
  methods: Planned[];
}

const pipelineOfMethod = (method: string) => PRESETS[METHODS[method]];

/** Parses the command line and resolves every chosen method's config (errors before training). */
export function planComparison(argv: string[]): ComparePlan {
  const chosen = (() => {
    const at = argv.findIndex((a) => a === "--methods" || a.startsWith("--methods="));
    const flag = at < 0
      ? undefined
      : argv[at] === "--methods"
      ? argv[at + 1] ?? ""
      : argv[at].slice(10);
    if (flag === undefined) return COMPARED_METHODS;
    return flag.split(",").map((name) => {
      const m = COMPARED_METHODS.find((x) => x.method === name);
      if (!m) {
        throw new UsageError(
          `--methods: unknown method "${name}" (known: ${
            COMPARED_METHODS.map((x) => x.method).join(", ")
          })`,
        );
      }
      return m;
    });
  })();
  if (chosen.length === 0) throw new UsageError("--methods: give at least one method");
  const defs = chosen.map((m) => {
    const preset = pipelineOfMethod(m.method);
    return { m, preset, def: PIPELINES[preset.pipeline](LOCAL_IO) };
  });
  const sections = Object.assign({}, ...defs.map((d) => d.def.sections));
  const { flags } = parseArgs(argv, SPEC, { sections, noPositional: true });
  const budget = (flags.budget as number | undefined) ?? 2048;
  const maxNewTokens = (flags["max-new-tokens"] as number | undefined) ?? 16;
  if (budget < 1) throw new UsageError(`--budget must be ≥ 1 completion, got ${budget}`);
  if (maxNewTokens < 1) throw new UsageError(`--max-new-tokens must be ≥ 1, got ${maxNewTokens}`);
  const seed = (flags.seed as number | undefined) ?? 1;
  const dotted = Object.entries(flags).filter(([k]) => k.includes("."));
  for (const [k] of dotted) {
    if (k === "run.name" || k === "run.seed") {
      throw new UsageError(`--${k}: compare names its runs; give --name and --seed`);
    }
  }
  const methods: Planned[] = defs.map(({ m, preset, def }) => {
    const own = Object.fromEntries(dotted.filter(([k]) => k.split(".")[0] in def.sections));
    const base = {
      ...preset.overrides,
      ...own,
      "run.name": m.folder,
      "run.seed": seed,
    };
    const cfg = resolveSections(def.sections, base, def.defaults);
    const b = methodBudget(m, cfg as never, budget, maxNewTokens);
    for (const k of Object.keys(b.overrides)) {
      if (k in own) throw new UsageError(`--${k}: compare sets it from --budget`);
    }
    const overrides = { ...base, ...b.overrides };
    def.validate?.(resolveSections(def.sections, overrides, def.defaults));
    return { m, pipeline: preset.pipeline, overrides, completions: b.completions };
  });
  const sftDef = PIPELINES.builtin(LOCAL_IO);
  const sft = {
    ...Object.fromEntries(dotted.filter(([k]) => ["run", "sft"].includes(k.split(".")[0]))),
    "run.name": "sft",
    "run.seed": seed,
  };
  resolveSections(sftDef.sections, sft, sftDef.defaults);
  if (flags.resume === true && flags.overwrite === true) {
    throw new UsageError("--resume continues a comparison and --overwrite replaces it: give one");
  }
  const name = (flags.name as string | undefined) ?? `compare-s${seed}`;
  if (!/^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/.test(name)) {
    throw new UsageError(`--name must be one safe path segment, got "${name}"`);
  }
  return {
    root: join((flags.out as string | undefined) ?? "runs", name),
    seed,
    budget,
    maxNewTokens,
    resume: flags.resume === true,
    overwrite: flags.overwrite === true,
    sft,
    methods,
  };
}

const exists = (path: string) =>
  Deno.stat(path).then(() => true, (e) => {
    if (e instanceof Deno.errors.NotFound) return false;
    throw e;
  });

async function readRecords(dir: string): Promise<MetricRecord[]> {
  const text = await Deno.readTextFile(join(dir, "metrics.jsonl")).catch((e) => {
    if (e instanceof Deno.errors.NotFound) return "";
    throw e;
  });
  return text.split("\n").filter((l) => l.trim()).map((l) => JSON.parse(l) as MetricRecord);
}

/** A run's config.json as `deno task train` writes it, for `pipeline` with `overrides`. */
function configText(pipeline: string, overrides: Record<string, unknown>): string {
  const def = PIPELINES[pipeline](LOCAL_IO);
  const cfg = resolveSections(def.sections, overrides, def.defaults);
  return JSON.stringify({ pipeline: def.name, ...cfg }, null, 2);
}

/**
 * A run folder kept by `--resume` must hold the planned config: a comparison continued with
 * another budget or other overrides would mix runs of two plans in one table.
 */
async function checkKept(dir: string, planned: string): Promise<void> {
  const saved = await Deno.readTextFile(join(dir, "config.json"));
  if (saved !== planned) {
    throw new UsageError(
      `--resume: ${dir} was run with another config than this command plans (budget, ` +
        `methods' or sections' values differ): repeat the first command's flags, or give ` +
        `--overwrite or another --name`,
    );
  }
}

/**
 * A method's run folder before its first start: its config, a copy of the shared SFT
 * checkpoint and of the SFT records (the pipeline then loads the stage instead of training it).
 */
async function seedRunFolder(plan: ComparePlan, p: Planned): Promise<void> {
  const dir = join(plan.root, p.m.folder), sftDir = join(plan.root, "sft");
  await Deno.mkdir(join(dir, "sft"), { recursive: true });
  for (const f of ["config.json", "model.safetensors"]) {
    await writeFileAtomic(join(dir, "sft", f), await Deno.readFile(join(sftDir, "sft", f)));
  }
  const sftLines = (await readRecords(sftDir)).filter((r) => r.stage === "sft");
  await writeFileAtomic(
    join(dir, "metrics.jsonl"),
    sftLines.map((r) => JSON.stringify(r) + "\n").join(""),
  );
  // last: a folder without config.json is seeded again
  await writeFileAtomic(join(dir, "config.json"), configText(p.pipeline, p.overrides));
}

const trainArgs = (
  root: string,
  pipeline: string,
  overrides: Record<string, unknown>,
  o: { resume: boolean; stage?: string },
): TrainArgs => ({
  pipeline,
  overrides,
  given: [],
  out: root,
  resume: o.resume,
  overwrite: false,
  stage: o.stage ?? "all",
});

/** Runs the plan on `gpu`, writing compare.json and compare.html after every method. */
export async function runComparison(plan: ComparePlan, gpu: Gpu): Promise<Comparison> {
  const { root } = plan;
  if (await exists(root)) {
    if (plan.overwrite) await Deno.remove(root, { recursive: true });
    else if (!plan.resume) {
      throw new UsageError(
        `${root} exists: continue it with --resume, replace it with --overwrite, or give --name`,
      );
    }
  }
  await Deno.mkdir(root, { recursive: true });
  const sftDir = join(root, "sft");
  const sftResume = await exists(join(sftDir, "config.json"));
  if (sftResume) await checkKept(sftDir, configText("builtin", plan.sft));
  if (!(await exists(join(sftDir, "sft", "model.safetensors")))) {
    console.error(`compare: SFT (${sftResume ? "continued" : "once, for every method"})`);
    await runTraining(
      trainArgs(root, "builtin", plan.sft, { resume: sftResume, stage: "sft" }),
      gpu,
    );
  }
  const comparison: Comparison = {
    seed: plan.seed,
    budget: plan.budget,
    maxNewTokens: plan.maxNewTokens,
    adapter: gpu.adapterDescription,
    sft: "sft/sft",
    rows: [],
    curves: {},
  };
  for (const p of plan.methods) {
    const dir = join(root, p.m.folder);
    let summary: PipelineSummary;
    if (await exists(join(dir, "config.json"))) {
      await checkKept(dir, configText(p.pipeline, p.overrides));
    }
    if (await exists(join(dir, "summary.json"))) {
      console.error(`compare: ${p.m.method} finished earlier (${dir}/summary.json)`);
      summary = JSON.parse(await Deno.readTextFile(join(dir, "summary.json")));
    } else {
      if (!(await exists(join(dir, "config.json")))) await seedRunFolder(plan, p);
      console.error(`compare: ${p.m.method} (${p.completions} completions)`);
      summary = (await runTraining(
        trainArgs(root, p.pipeline, { "run.name": p.m.folder }, { resume: true }),
        gpu,
      )).summary;
    }
    comparison.rows.push(comparisonRow(p.m, p.completions, summary));
    comparison.curves[p.m.method] = goldCurve(await readRecords(dir), p.m.stage);
    await writeFileAtomic(join(root, "compare.json"), JSON.stringify(comparison, null, 2));
    await writeFileAtomic(join(root, "compare.html"), renderComparison(comparison));
  }
  return comparison;
}

async function main(): Promise<void> {
  const plan = planComparison(Deno.args);
  const gpu = await createGpu(console.log);
  const c = await runComparison(plan, gpu);
  console.log(`\n${comparisonTable(c)}\n\ncompare: ${join(plan.root, "compare.html")}`);
  gpu.destroy();
}

if (import.meta.main) await runMain("compare", main);
