/**
 * `deno task bench:learning`: the default run over a matrix of seeds × numerics (WebGPU backend,
 * matmul path), one `deno task train` process per cell, one row per run, each checked against
 * the learning bounds of `learning_bounds.ts`. Learning only counts when every row passes.
 *
 * ```sh
 * deno task bench:learning                                   # seeds 1–4 × gl, vulkan
 * deno task bench:learning --seeds=1,2 --backends=gl --paths=texture,buffer --json
 * deno task bench:learning --seeds=3 -- --ppo.iterations=40  # flags after -- go to train
 * ```
 *
 * Exit status 1 when a row misses a bound.
 *
 * @module
 */

import { join } from "node:path";
import type { PipelineSummary } from "../trainer/pipeline.ts";
import { correctChange, learningFailures } from "./learning_bounds.ts";

/** One run of the matrix. */
export interface Cell {
  seed: number;
  backend: string;
  path: string;
}

/** A finished run: its summary and the bounds it missed. */
export interface Row extends Cell {
  summary?: PipelineSummary;
  failures: string[];
  wall: number;
}

function list(argv: string[], key: string, fallback: string): string[] {
  const a = argv.find((x) => x.startsWith(`--${key}=`));
  return (a ? a.slice(key.length + 3) : fallback).split(",").map((x) => x.trim()).filter((x) => x);
}

/**
 * Runs the default pipeline for one cell in its own process (the WebGPU backend is chosen per
 * process) under `out/learning-s<seed>-<backend>-<path>/`, and checks its summary.
 */
export async function runCell(c: Cell, out: string, extra: string[] = []): Promise<Row> {
  const name = `learning-s${c.seed}-${c.backend}-${c.path}`;
  const env: Record<string, string> = {
    DENO_WEBGPU_BACKEND: c.backend,
    WEBGPU_RLHF_MATMUL_PATH: c.path,
  };
  const xdg = Deno.env.get("XDG_RUNTIME_DIR");
  if (!xdg) env.XDG_RUNTIME_DIR = "/tmp";
  const t0 = performance.now();
  const cmd = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "--allow-env",
      "--allow-read",
      "--allow-write",
      new URL("../cli/train.ts", import.meta.url).pathname,
      `--out=${out}`,
      `--run.name=${name}`,
      `--run.seed=${c.seed}`,
      "--overwrite", // a cell is measured afresh each time
      ...extra,
    ],
    env,
    stdout: "piped",
    stderr: "piped",
  });
  const res = await cmd.output();
  const wall = (performance.now() - t0) / 1000;
  if (!res.success) {
    const err = new TextDecoder().decode(res.stderr).trim().split("\n").slice(-3).join(" | ");
    return { ...c, wall, failures: [`train exited ${res.code}: ${err}`] };
  }
  const summary = JSON.parse(
    await Deno.readTextFile(join(out, name, "summary.json")),
  ) as PipelineSummary;
  return { ...c, summary, wall, failures: learningFailures(summary) };
}

/** "+0.056 ± 0.029": the correct-answer change and its standard error. */
function change(s: PipelineSummary): string {
  const c = correctChange(s);
  return `${c.delta >= 0 ? "+" : "−"}${Math.abs(c.delta).toFixed(3)} ± ${c.se.toFixed(3)}`;
}

/** The row of a finished run, as a Markdown table row. */
export function format(r: Row): string {
  const s = r.summary;
  const f = (x: number | undefined, d = 3) => (x === undefined ? "—" : x.toFixed(d));
  const cells = [
    String(r.seed),
    r.backend,
    r.path,
    f(s?.["rm/accuracy"]),
    f(s?.["rm/policy_accuracy"]),
    s ? `${f(s["gold/before"])} → ${f(s["gold/after"])}` : "—",
    s ? `${f(s["gold/correct/before"])} → ${f(s["gold/correct/after"])} (${change(s)})` : "—",
    f(s?.["objective/kl"], 2),
    s?.reward_hacking?.detected ? `yes (it. ${s.reward_hacking.started ?? "eval"})` : "no",
    r.wall.toFixed(0),
    r.failures.length ? `FAIL: ${r.failures.join("; ")}` : "pass",
  ];
  return `| ${cells.join(" | ")} |`;
}

if (import.meta.main) {
  const dash = Deno.args.indexOf("--");
  const argv = dash < 0 ? Deno.args : Deno.args.slice(0, dash);
  const extra = dash < 0 ? [] : Deno.args.slice(dash + 1);
  const known = ["--seeds=", "--backends=", "--paths=", "--out=", "--json"];
  for (const a of argv) {
    if (!known.some((k) => a === k || a.startsWith(k))) {
      console.error(
        `bench:learning: unknown option ${a} (${known.join(" ")}; train flags after --)`,
      );
      Deno.exit(2);
    }
  }
  const seeds = list(argv, "seeds", "1,2,3,4").map(Number);
  const backends = list(argv, "backends", "gl,vulkan");
  const paths = list(argv, "paths", "texture");
  const out = list(argv, "out", "runs")[0];
  const json = argv.includes("--json");
  const cells: Cell[] = [];
  for (const path of paths) {
    for (const backend of backends) for (const seed of seeds) cells.push({ seed, backend, path });
  }
  const header = [
    "| seed | backend | matmul | RM acc (held-out) | RM acc (SFT samples) | gold before → after " +
    "| correct before → after | KL | hacking | wall s | bounds |",
    "|---|---|---|---|---|---|---|---|---|---|---|",
  ];
  if (!json) console.log(header.join("\n"));
  const rows: Row[] = [];
  for (const c of cells) {
    const r = await runCell(c, out, extra);
    rows.push(r);
    if (!json) console.log(format(r));
  }
  if (json) {
    console.log(JSON.stringify(
      rows.map((r) => {
        const { samples_before: _b, samples_after: _a, ...numbers } = r.summary ??
          {} as Partial<PipelineSummary>;
        return {
          seed: r.seed,
          backend: r.backend,
          path: r.path,
          wall: r.wall,
          pass: r.failures.length === 0,
          failures: r.failures,
          ...numbers,
        };
      }),
      null,
      2,
    ));
  } else {
    const failed = rows.filter((r) => r.failures.length).length;
    console.log(`\n${rows.length - failed}/${rows.length} runs inside the bounds`);
  }
  if (rows.some((r) => r.failures.length)) Deno.exit(1);
}
