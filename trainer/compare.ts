/**
 * Comparing methods on the built-in task (`deno task compare`): every method starts from one
 * SFT checkpoint and gets the same budget of sampled completions — PPO's and the group methods'
 * rollouts, rejection sampling's candidates, and the SFT samples the direct methods label into
 * preference data — each of at most the same number of new tokens. This module holds the
 * runtime-agnostic parts: which config keys spend the budget, the rows and the gold curves of
 * `compare.json`; the CLI runs the pipelines and `renderComparison` draws `compare.html`.
 *
 * @module
 */

import type { PipelineSummary } from "./pipeline.ts";
import type { MetricRecord } from "./report.ts";

/** A method `deno task compare` runs: its `--method` name, config section and training stage. */
export interface ComparedMethod {
  /** `--method` name (ppo, grpo, rloo, reinforce++, rs, dpo, simpo, kto). */
  method: string;
  /** The run folder's name (a safe path segment). */
  folder: string;
  /** The method's config section (`ppo.`, `grpo.`, … `dpo.` for SimPO). */
  section: string;
  /** The stage that trains it (its metric records' tag). */
  stage: string;
  /** Online (samples during training) or direct (trains on labelled SFT samples). */
  kind: "online" | "direct";
}

/** Every method, in the order `compare` runs them. */
export const COMPARED_METHODS: readonly ComparedMethod[] = [
  { method: "ppo", folder: "ppo", section: "ppo", stage: "ppo", kind: "online" },
  { method: "grpo", folder: "grpo", section: "grpo", stage: "grpo", kind: "online" },
  { method: "rloo", folder: "rloo", section: "rloo", stage: "rloo", kind: "online" },
  {
    method: "reinforce++",
    folder: "reinforce",
    section: "reinforce",
    stage: "reinforce",
    kind: "online",
  },
  { method: "rs", folder: "rs", section: "rs", stage: "rs", kind: "online" },
  { method: "dpo", folder: "dpo", section: "dpo", stage: "dpo", kind: "direct" },
  { method: "ipo", folder: "ipo", section: "dpo", stage: "dpo", kind: "direct" },
  { method: "simpo", folder: "simpo", section: "dpo", stage: "dpo", kind: "direct" },
  { method: "kto", folder: "kto", section: "kto", stage: "kto", kind: "direct" },
];

/** The budget keys of a method, resolved against its config. */
export interface MethodBudget {
  /** Dotted overrides that spend the budget (iterations, prompts, new tokens). */
  overrides: Record<string, number>;
  /** Completions the method will sample with them (the budget, rounded to whole batches). */
  completions: number;
}

const num = (
  cfg: Record<string, Record<string, unknown>>,
  section: string,
  key: string,
): number => {
  const v = cfg[section]?.[key];
  if (typeof v !== "number") throw new RangeError(`compare: ${section}.${key} is not a number`);
  return v;
};

/**
 * The overrides that give `m` a budget of `completions` sampled completions of at most
 * `maxNewTokens` tokens, given its resolved config (batch shapes stay the method's own):
 * PPO's iterations of `ppo.batchSize` rollouts; the group methods' iterations of
 * `promptsPerIteration × numGenerations`; rejection sampling's prompts per round
 * (`rounds × promptsPerRound × samplesPerPrompt`); the direct methods' prompts whose
 * `samplesPerPrompt` SFT samples become their preference data.
 *
 * @example
 * ```ts
 * import { COMPARED_METHODS, methodBudget } from "../mod.ts";
 * const grpo = COMPARED_METHODS.find((m) => m.method === "grpo")!;
 * const cfg = { grpo: { promptsPerIteration: 16, numGenerations: 8 } };
 * const b = methodBudget(grpo, cfg, 2000, 16);
 * console.log(b.overrides["grpo.iterations"], b.completions); // 16 2048 (whole iterations)
 * ```
 */
export function methodBudget(
  m: ComparedMethod,
  cfg: Record<string, Record<string, unknown>>,
  completions: number,
  maxNewTokens: number,
): MethodBudget {
  if (!(completions >= 1) || !(maxNewTokens >= 1)) {
    throw new RangeError(`compare: a budget needs ≥ 1 completion of ≥ 1 token`);
  }
  const s = m.section, whole = (per: number) => Math.max(1, Math.round(completions / per));
  switch (m.method) {
    case "ppo": {
      const per = num(cfg, s, "batchSize"), it = whole(per);
      return {
        overrides: { "ppo.iterations": it, "ppo.maxNewTokens": maxNewTokens },
        completions: it * per,
      };
    }
    case "grpo":
    case "rloo":
    case "reinforce++": {
      const per = num(cfg, s, "promptsPerIteration") * num(cfg, s, "numGenerations");
      const it = whole(per);
      return {
        overrides: { [`${s}.iterations`]: it, [`${s}.maxNewTokens`]: maxNewTokens },
        completions: it * per,
      };
    }
    case "rs": {
      const per = num(cfg, s, "rounds") * num(cfg, s, "samplesPerPrompt"), p = whole(per);
      return {
        overrides: { "rs.promptsPerRound": p, "rs.maxNewTokens": maxNewTokens },
        completions: p * per,
      };
    }
    default: {
      const per = num(cfg, "data", "samplesPerPrompt"), p = whole(per);
      return {
        overrides: { "data.prompts": p, "data.maxNewTokens": maxNewTokens },
        completions: p * per,
      };
    }
  }
}

/** One method's row of `compare.json`. */
export interface ComparisonRow {
  /** `--method` name. */
  method: string;
  /** The method's run folder (relative to the comparison's folder). */
  run: string;
  /** Online or direct. */
  kind: "online" | "direct";
  /** Completions sampled under the budget. */
  completions: number;
  /** Mean gold score of fresh samples before (the shared SFT policy) and after. */
  "gold/before": number;
  /** Mean gold score after. */
  "gold/after": number;
  /** Correct-answer rate before. */
  "gold/correct/before": number;
  /** Correct-answer rate after. */
  "gold/correct/after": number;
  /** KL to the SFT policy as the method reports it (sequence log-ratio of its samples). */
  "objective/kl": number;
  /** Seconds the method's pipeline took (PPO's includes training its reward model). */
  wall_seconds: number;
  /** Whether its reward rose while gold fell (always false for a reward that is gold-exact). */
  reward_hacking: boolean;
  /** The reward model's held-out accuracy (methods that train one), else null. */
  "rm/accuracy": number | null;
}

/** A method's row from its run summary. */
export function comparisonRow(
  m: ComparedMethod,
  completions: number,
  s: PipelineSummary,
): ComparisonRow {
  return {
    method: m.method,
    run: m.folder,
    kind: m.kind,
    completions,
    "gold/before": s["gold/before"],
    "gold/after": s["gold/after"],
    "gold/correct/before": s["gold/correct/before"],
    "gold/correct/after": s["gold/correct/after"],
    "objective/kl": s["objective/kl"],
    wall_seconds: s.wall_seconds,
    reward_hacking: s.reward_hacking?.detected ?? false,
    "rm/accuracy": Number.isFinite(s["rm/accuracy"]) ? s["rm/accuracy"] : null,
  };
}

/**
 * The gold score of a method's training samples (rollouts, or the direct methods' probes) over
 * training, x as the fraction of its steps or iterations done (so every method fits one axis).
 */
export function goldCurve(records: readonly MetricRecord[], stage: string): [number, number][] {
  const pts = records.filter((r) => r.stage === stage && typeof r["gold/rollout"] === "number")
    .map((r) => [Number(r.iteration ?? r.step), r["gold/rollout"] as number] as [number, number])
    .filter(([x]) => Number.isFinite(x));
  const last = Math.max(...pts.map(([x]) => x));
  return pts.map(([x, y]) => [last > 0 ? x / last : 0, y]);
}

/** `compare.json`: the settings, one row per method and the gold curves. */
export interface Comparison {
  /** The task seed. */
  seed: number;
  /** Completions per method (before rounding to whole batches). */
  budget: number;
  /** New tokens per completion, at most. */
  maxNewTokens: number;
  /** The adapter the runs used. */
  adapter: string;
  /** The SFT checkpoint every method started from (folder, relative). */
  sft: string;
  /** One row per finished method. */
  rows: ComparisonRow[];
  /** Gold of the training samples over the fraction of training done, per method. */
  curves: Record<string, [number, number][]>;
}

/** The rows as a Markdown table (the CLI prints it). */
export function comparisonTable(c: Comparison): string {
  const f = (v: number | null, d = 3) => v === null || !Number.isFinite(v) ? "—" : v.toFixed(d);
  const head = "| method | completions | gold before → after | correct before → after | KL | " +
    "hacking | wall s |\n|---|---|---|---|---|---|---|";
  return [
    head,
    ...c.rows.map((r) =>
      `| ${r.method} | ${r.completions} | ${f(r["gold/before"])} → ${f(r["gold/after"])} | ${
        f(r["gold/correct/before"])
      } → ${f(r["gold/correct/after"])} | ${f(r["objective/kl"], 2)} | ${
        r.reward_hacking ? "yes" : "no"
      } | ${f(r.wall_seconds, 0)} |`
    ),
  ].join("\n");
}
