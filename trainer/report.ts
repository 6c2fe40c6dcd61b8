/**
 * `report.html`: a self-contained page (inline SVG, no scripts) with the training curves —
 * SFT loss, reward-model loss, PPO reward, gold score, KL and entropy — and sample generations
 * before and after PPO.
 *
 * @module
 */

import type { PipelineSummary, ReportSample } from "./pipeline.ts";

/** One metric record with its stage, as written to `metrics.jsonl`. */
export type MetricRecord = { stage: string } & Record<string, number | string>;

const esc = (s: string) =>
  s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;");

function chart(title: string, points: [number, number][]): string {
  const W = 360, H = 180, pad = 34;
  if (points.length === 0) return "";
  const xs = points.map((p) => p[0]), ys = points.map((p) => p[1]);
  const [x0, x1] = [Math.min(...xs), Math.max(...xs)];
  let [y0, y1] = [Math.min(...ys), Math.max(...ys)];
  if (y0 === y1) [y0, y1] = [y0 - 1, y1 + 1];
  const sx = (x: number) => pad + ((x - x0) / Math.max(1e-12, x1 - x0)) * (W - 2 * pad);
  const sy = (y: number) => H - pad + ((y0 - y) / (y1 - y0)) * (H - 2 * pad);
  const path = points.map((p, i) => `${i ? "L" : "M"}${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`)
    .join(" ");
  return `<figure><svg viewBox="0 0 ${W} ${H}" width="${W}" height="${H}" role="img" aria-label="${
    esc(title)
  }">
<rect x="${pad}" y="${pad / 2}" width="${W - 2 * pad}" height="${
    H - 1.5 * pad
  }" fill="#fafafa" stroke="#ddd"/>
<path d="${path}" fill="none" stroke="#2563eb" stroke-width="1.8"/>
<text x="4" y="${sy(y1) + 4}" font-size="10">${y1.toPrecision(3)}</text>
<text x="4" y="${sy(y0) + 4}" font-size="10">${y0.toPrecision(3)}</text>
<text x="${pad}" y="${H - 8}" font-size="10">${x0}</text><text x="${W - pad - 20}" y="${
    H - 8
  }" font-size="10">${x1}</text>
</svg><figcaption>${esc(title)}</figcaption></figure>`;
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

function samples(title: string, s: ReportSample[]): string {
  const rows = s.map((x) =>
    `<tr><td><code>${esc(x.prompt.trim())}</code></td><td><code>${
      esc(JSON.stringify(x.response))
    }</code></td>` +
    `<td>${fmt(x.gold, 2)}</td><td>${fmt(x.score, 2)}</td></tr>`
  ).join("\n");
  return `<h3>${
    esc(title)
  }</h3><table><tr><th>prompt</th><th>response</th><th>gold</th><th>RM score</th></tr>${rows}</table>`;
}

/** Renders the report page. */
export function renderReport(
  name: string,
  records: MetricRecord[],
  summary: PipelineSummary,
): string {
  const charts = [
    chart("SFT loss", series(records, "sft", "sft/loss", "step")),
    chart("reward-model loss", series(records, "rm", "rm/loss", "step")),
    chart(
      "PPO reward-model score (objective/scores)",
      series(records, "ppo", "objective/scores", "iteration"),
    ),
    chart("PPO gold score of rollouts", series(records, "ppo", "gold/rollout", "iteration")),
    chart(
      "KL to the reference (objective/kl)",
      series(records, "ppo", "objective/kl", "iteration"),
    ),
    chart(
      "policy entropy (objective/entropy)",
      series(records, "ppo", "objective/entropy", "iteration"),
    ),
  ].join("\n");
  const keys = [
    "wall_seconds",
    "sft/loss",
    "rm/accuracy",
    "rm/margin",
    "gold/before",
    "gold/after",
    "score/before",
    "score/after",
    "objective/kl",
  ] as const;
  const table = keys.filter((k) => Number.isFinite(summary[k])).map((k) =>
    `<tr><td>${k}</td><td>${(summary[k] as number).toFixed(3)}</td></tr>`
  ).join("");
  return `<!doctype html><html lang="en"><head><meta charset="utf-8"><title>webgpu-rlhf run ${
    esc(name)
  }</title>
<style>body{font-family:system-ui,sans-serif;margin:2rem;max-width:1200px}figure{display:inline-block;margin:.5rem}
table{border-collapse:collapse;margin:.5rem 0}td,th{border:1px solid #ddd;padding:.25rem .5rem;text-align:left}</style></head>
<body><h1>webgpu-rlhf — run <code>${esc(name)}</code></h1>
<h2>Summary</h2><table>${table}</table>
<h2>Curves</h2>${charts}
<h2>Samples on held-out prompts</h2>${samples("before PPO", summary.samples_before)}${
    samples("after PPO", summary.samples_after)
  }
</body></html>
`;
}
