/**
 * `report.html`: a self-contained page (inline SVG, no scripts). The gold view comes first: the
 * reward-model score and the hidden gold score of the PPO rollouts on one chart (an axis each,
 * same iterations), the reward-hacking verdict with its iterations shaded, and the split of the
 * gold score into its parts; then the training curves and samples before/after side by side.
 *
 * @module
 */

import { describeVerdict } from "./hacking.ts";
import type { Comparison } from "./compare.ts";
import type { PipelineSummary, ReportSample } from "./pipeline.ts";

/** One metric record with its stage, as written to `metrics.jsonl`. */
export type MetricRecord = { stage: string } & Record<string, number | string>;

const esc = (s: string) =>
  s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;");

interface Line {
  label: string;
  points: [number, number][];
  color: string;
  /** Plotted against the right axis (dual-axis charts). */
  right?: boolean;
}

const W = 420, H = 220, PAD_L = 46, PAD_R = 46, PAD_T = 12, PAD_B = 40;

function range(ys: number[], fixed?: [number, number]): [number, number] {
  if (fixed) return fixed;
  let [y0, y1] = [Math.min(...ys), Math.max(...ys)];
  if (y0 === y1) [y0, y1] = [y0 - 1, y1 + 1];
  return [y0, y1];
}

/** Axes of a {@link lineChart}. */
interface ChartAxes {
  x: string;
  yLeft: string;
  yRight?: string;
  leftRange?: [number, number];
  rightRange?: [number, number];
  shade?: number[];
}

/** Maps data to SVG coordinates: x over all lines, y per axis. */
interface Frame {
  x0: number;
  x1: number;
  step: number;
  lr: [number, number];
  rr: [number, number];
  hasRight: boolean;
  sx(x: number): number;
  sy(y: number, r: [number, number]): number;
}

function frame(drawn: Line[], axes: ChartAxes): Frame {
  const xs = drawn.flatMap((l) => l.points.map((p) => p[0]));
  const [x0, x1] = [Math.min(...xs), Math.max(...xs)];
  const left = drawn.filter((l) => !l.right), right = drawn.filter((l) => l.right);
  const lr = range(left.flatMap((l) => l.points.map((p) => p[1])), axes.leftRange);
  const rr = right.length
    ? range(right.flatMap((l) => l.points.map((p) => p[1])), axes.rightRange)
    : lr;
  return {
    x0,
    x1,
    lr,
    rr,
    hasRight: right.length > 0,
    step: xs.length > 1 ? (x1 - x0) / Math.max(1, new Set(xs).size - 1) : 1,
    sx: (x) => PAD_L + ((x - x0) / Math.max(1e-12, x1 - x0)) * (W - PAD_L - PAD_R),
    sy: (y, [y0, y1]) => H - PAD_B + ((y0 - y) / (y1 - y0)) * (H - PAD_T - PAD_B),
  };
}

/** The lines as SVG paths, and shaded x spans (e.g. iterations flagged as reward hacking). */
function plotArea(drawn: Line[], f: Frame, shade: number[]): string {
  const paths = drawn.map((l) => {
    const r = l.right ? f.rr : f.lr;
    const d = l.points.map((p, i) =>
      `${i ? "L" : "M"}${f.sx(p[0]).toFixed(1)},${f.sy(p[1], r).toFixed(1)}`
    ).join(" ");
    return `<path d="${d}" fill="none" stroke="${l.color}" stroke-width="1.8"/>`;
  }).join("\n");
  const span = (W - PAD_L - PAD_R) / Math.max(1e-12, f.x1 - f.x0);
  const shaded = shade.map((x) =>
    `<rect x="${(f.sx(x) - (f.step / 2) * span).toFixed(1)}" ` +
    `y="${PAD_T}" width="${(f.step * span).toFixed(1)}" ` +
    `height="${H - PAD_T - PAD_B}" fill="#fecaca" opacity="0.6"/>`
  ).join("");
  return `<rect x="${PAD_L}" y="${PAD_T}" width="${W - PAD_L - PAD_R}" height="${
    H - PAD_T - PAD_B
  }" fill="#fafafa" stroke="#ccc"/>${shaded}\n${paths}`;
}

/** An x tick: integers (steps, iterations) as they are, fractions with 3 digits. */
const xTick = (v: number) => (Number.isInteger(v) ? String(v) : v.toPrecision(3));

/** Axis names, tick values at both ends of each axis, and the legend. */
function axisText(drawn: Line[], f: Frame, axes: ChartAxes): string {
  const tick = (v: number) => (Math.abs(v) >= 100 ? v.toFixed(0) : v.toPrecision(3));
  const text = (x: number, y: number, body: string, extra = "") =>
    `<text x="${x}" y="${y}" font-size="10"${extra}>${body}</text>`;
  const yl = (H - PAD_B + PAD_T) / 2, yb = H - PAD_B + 13;
  const legend = drawn.map((l, i) =>
    `<tspan fill="${l.color}">${i ? " · " : ""}— ${esc(l.label)}</tspan>`
  ).join("");
  return [
    text(PAD_L - 4, PAD_T + 8, tick(f.lr[1]), ' text-anchor="end"'),
    text(PAD_L - 4, H - PAD_B, tick(f.lr[0]), ' text-anchor="end"'),
    `<text transform="translate(12 ${yl}) rotate(-90)" font-size="10" text-anchor="middle">${
      esc(axes.yLeft)
    }</text>`,
    ...(f.hasRight
      ? [
        text(W - PAD_R + 4, PAD_T + 8, tick(f.rr[1])),
        text(W - PAD_R + 4, H - PAD_B, tick(f.rr[0])),
        `<text transform="translate(${W - 8} ${yl}) rotate(90)" font-size="10" ` +
        `text-anchor="middle">${esc(axes.yRight ?? "")}</text>`,
      ]
      : []),
    text(PAD_L, yb, xTick(f.x0)),
    text(W - PAD_R, yb, xTick(f.x1), ' text-anchor="end"'),
    text((PAD_L + W - PAD_R) / 2, yb, esc(axes.x), ' text-anchor="middle"'),
    text(PAD_L, H - 4, legend),
  ].join("\n");
}

/**
 * An SVG line chart with labelled axes: `x` label below, `yLeft` (and `yRight` for lines marked
 * `right`) beside the axes, tick values at both ends, a legend, and optional shaded x spans.
 */
function lineChart(title: string, lines: Line[], axes: ChartAxes): string {
  const drawn = lines.filter((l) => l.points.length > 0);
  if (drawn.length === 0) return "";
  const f = frame(drawn, axes);
  return `<figure><svg viewBox="0 0 ${W} ${H + 14}" width="${W}" height="${H + 14}" role="img" ` +
    `aria-label="${esc(title)}">\n${plotArea(drawn, f, axes.shade ?? [])}\n` +
    `${axisText(drawn, f, axes)}\n</svg><figcaption>${esc(title)}</figcaption></figure>`;
}

/** A one-line chart. */
function chart(title: string, points: [number, number][], x: string, y: string): string {
  return lineChart(title, [{ label: y, points, color: "#2563eb" }], { x, yLeft: y });
}

function series(
  records: MetricRecord[],
  stage: string,
  key: string,
  x: string,
): [number, number][] {
  return records.filter((r) =>
    r.stage === stage && typeof r[key] === "number" && typeof r[x] === "number"
  )
    .map((r) => [r[x] as number, r[key] as number]);
}

/** A number, or "—" where there is none (e.g. no gold score outside the built-in task). */
function fmt(v: number, digits: number): string {
  return Number.isFinite(v) ? v.toFixed(digits) : "—";
}

/** Samples before and after PPO side by side, one prompt per row. */
function samplesSideBySide(before: ReportSample[], after: ReportSample[]): string {
  const n = Math.max(before.length, after.length);
  const cell = (x?: ReportSample) =>
    x
      ? `<td><code>${esc(JSON.stringify(x.response))}</code></td><td>${fmt(x.gold, 2)}</td>` +
        `<td>${fmt(x.score, 2)}</td>`
      : "<td></td><td></td><td></td>";
  const rows = Array.from(
    { length: n },
    (_, i) =>
      `<tr><td><code>${esc((before[i] ?? after[i]).prompt.trim())}</code></td>${cell(before[i])}${
        cell(after[i])
      }</tr>`,
  ).join("\n");
  return `<table><tr><th rowspan="2">prompt</th><th colspan="3">before PPO</th>` +
    `<th colspan="3">after PPO</th></tr><tr><th>response</th><th>gold</th><th>RM score</th>` +
    `<th>response</th><th>gold</th><th>RM score</th></tr>${rows}</table>`;
}

/** The stage whose samples carry gold over training: PPO's rollouts, or a preference probe. */
function goldStage(records: MetricRecord[]) {
  for (
    const [stage, x, axis, score] of [
      ["ppo", "iteration", "PPO iteration", "RM score"],
      ["dpo", "step", "DPO step", "implicit reward β·(ℓ_θ − ℓ_SFT)"],
      ["kto", "step", "KTO step", "implicit reward β·(ℓ_θ − ℓ_SFT)"],
    ] as const
  ) {
    if (series(records, stage, "gold/rollout", x).length > 0) return { stage, x, axis, score };
  }
  return undefined;
}

/** The gold view: RM score vs gold of the rollouts, the gold parts, the verdict banner. */
function goldSection(records: MetricRecord[], verdict: PipelineSummary["reward_hacking"]): string {
  const g = goldStage(records);
  if (!g) return "";
  const ppo = (key: string) => series(records, g.stage, key, g.x);
  const banner = verdict
    ? `<p class="${verdict.detected ? "bad" : "good"}">${esc(describeVerdict(verdict))}</p>`
    : "";
  return `<h2>Gold view</h2>${banner}<p>The reward model is learned and can be fooled; the gold ` +
    `score is the task's hidden preference it was trained to imitate. Real improvement ` +
    `raises both lines; reward hacking raises the RM score while gold falls (shaded ` +
    `iterations).</p>` + [
    lineChart(`Gold view: the ${g.score} and the hidden gold score of fresh samples`, [
      { label: `${g.score} (left)`, points: ppo("objective/scores"), color: "#2563eb" },
      { label: "gold (right)", points: ppo("gold/rollout"), color: "#d97706", right: true },
    ], {
      x: g.axis,
      yLeft: g.stage === "ppo" ? "reward-model score (logit units)" : "implicit reward (nats)",
      yRight: "gold score (0–1)",
      rightRange: [0, 1],
      shade: verdict?.iterations,
    }),
    lineChart("What the gold score is made of: share of rollouts with each part", [
      { label: "correct answer (0.6)", points: ppo("gold/correct"), color: "#16a34a" },
      { label: "ends with a period (0.2)", points: ppo("gold/period"), color: "#9333ea" },
      { label: "≤ 8 characters (0.2)", points: ppo("gold/concise"), color: "#db2777" },
    ], { x: g.axis, yLeft: "share of samples (0–1)", leftRange: [0, 1] }),
  ].join("\n");
}

/** Loss, KL and entropy curves of the stages. */
function curves(records: MetricRecord[]): string {
  const ppo = (key: string) => series(records, "ppo", key, "iteration");
  return [
    chart("SFT loss", series(records, "sft", "sft/loss", "step"), "SFT step", "loss (nats/token)"),
    chart(
      "reward-model loss",
      series(records, "rm", "rm/loss", "step"),
      "RM step",
      "pairwise loss (nats)",
    ),
    ...["dpo/loss", "simpo/loss", "kto/loss"].map((k) => {
      const stage = k === "kto/loss" ? "kto" : "dpo";
      const pts = series(records, stage, k, "step");
      return pts.length ? chart(`${k}`, pts, `${stage.toUpperCase()} step`, "loss (nats)") : "";
    }),
    chart(
      "KL to the reference (objective/kl)",
      ppo("objective/kl"),
      "PPO iteration",
      "KL per sequence (nats)",
    ),
    chart(
      "policy entropy (objective/entropy)",
      ppo("objective/entropy"),
      "PPO iteration",
      "entropy per token (nats)",
    ),
  ].join("\n");
}

/** The summary's numbers that exist for this run, as a table. */
function summaryTable(summary: PipelineSummary): string {
  const keys = [
    "wall_seconds",
    "sft/loss",
    "rm/accuracy",
    "rm/margin",
    "rm/policy_accuracy",
    "rm/policy_gold_corr",
    "gold/before",
    "gold/after",
    "gold/correct/before",
    "gold/correct/after",
    "gold/period/before",
    "gold/period/after",
    "gold/concise/before",
    "gold/concise/after",
    "score/before",
    "score/after",
    "objective/kl",
  ] as const;
  return `<table>${
    keys.filter((k) => Number.isFinite(summary[k])).map((k) =>
      `<tr><td>${k}</td><td>${(summary[k] as number).toFixed(3)}</td></tr>`
    ).join("")
  }</table>`;
}

/** Renders the report page: gold view first, then the summary, the curves and the samples. */
export function renderReport(
  name: string,
  records: MetricRecord[],
  summary: PipelineSummary,
): string {
  return `<!doctype html><html lang="en"><head><meta charset="utf-8"><title>webgpu-rlhf run ${
    esc(name)
  }</title>
<style>body{font-family:system-ui,sans-serif;margin:2rem;max-width:1200px}figure{display:inline-block;margin:.5rem}
table{border-collapse:collapse;margin:.5rem 0}td,th{border:1px solid #ddd;padding:.25rem .5rem;text-align:left}
.bad{background:#fee2e2;padding:.5rem}.good{background:#dcfce7;padding:.5rem}</style></head>
<body><h1>webgpu-rlhf — run <code>${esc(name)}</code></h1>
${goldSection(records, summary.reward_hacking)}
<h2>Summary</h2>${summaryTable(summary)}
<h2>Curves</h2>${curves(records)}
<h2>Samples on held-out prompts</h2>${
    samplesSideBySide(summary.samples_before, summary.samples_after)
  }
</body></html>
`;
}

const METHOD_COLORS = [
  "#2563eb",
  "#dc2626",
  "#16a34a",
  "#9333ea",
  "#ea580c",
  "#0891b2",
  "#ca8a04",
  "#4b5563",
];

/**
 * `compare.html` of `deno task compare`: the table (gold and correct-answer rate before → after,
 * KL, wall time, reward hacking, completions) and the gold score of every method's training
 * samples on one chart over the fraction of its training done.
 */
export function renderComparison(c: Comparison): string {
  const f = (v: number | null, d = 3) => fmt(v ?? NaN, d);
  const rows = c.rows.map((r) =>
    `<tr><td>${esc(r.method)}</td><td>${r.kind}</td><td>${r.completions}</td><td>${
      f(r["gold/before"])
    } → <b>${f(r["gold/after"])}</b></td><td>${f(r["gold/correct/before"])} → <b>${
      f(r["gold/correct/after"])
    }</b></td><td>${f(r["objective/kl"], 2)}</td><td>${f(r["rm/accuracy"])}</td><td>${
      r.reward_hacking ? '<span class="bad">yes</span>' : "no"
    }</td><td>${f(r.wall_seconds, 0)}</td><td><a href="${esc(r.run)}/report.html">${
      esc(r.run)
    }/</a></td></tr>`
  ).join("\n");
  const lines = Object.entries(c.curves).map(([method, points], i) => ({
    label: method,
    points,
    color: METHOD_COLORS[i % METHOD_COLORS.length],
  }));
  return `<!doctype html><html lang="en"><head><meta charset="utf-8"><title>webgpu-rlhf compare (seed ${c.seed})</title>
<style>body{font-family:system-ui,sans-serif;margin:2rem;max-width:1200px}figure{display:inline-block;margin:.5rem}
table{border-collapse:collapse;margin:.5rem 0}td,th{border:1px solid #ddd;padding:.25rem .5rem;text-align:left}
.bad{background:#fee2e2;padding:0 .25rem}</style></head>
<body><h1>webgpu-rlhf — methods compared on the built-in task</h1>
<p>Seed ${c.seed}; every method starts from one SFT checkpoint (<code>${
    esc(c.sft)
  }</code>) and samples ${c.budget} completions of at most ${c.maxNewTokens} new tokens (rounded to whole batches: column
<i>completions</i>) — rollouts for the online methods, labelled SFT samples for the direct ones. Gold is the task's hidden
preference (0.6·correct + 0.2·period + 0.2·concise) on fresh samples of held-out prompts; KL is each method's sequence
log-ratio to the SFT policy; PPO's wall time includes training its reward model. Adapter: ${
    esc(c.adapter)
  }.</p>
<table><tr><th>method</th><th>kind</th><th>completions</th><th>gold before → after</th><th>correct before → after</th><th>KL</th><th>RM accuracy</th><th>reward hacking</th><th>wall s</th><th>run</th></tr>
${rows}</table>
${
    lineChart("gold score of the training samples over training", lines, {
      x: "fraction of the method's training done",
      yLeft: "gold score (0–1)",
      leftRange: [0, 1],
    })
  }
</body></html>
`;
}
