/**
 * The demo page: starts, pauses and resets the training worker, draws live uPlot charts — first
 * the gold view (reward-model score and gold score of the rollouts, an axis each), the gold
 * parts, then loss, KL and entropy —, shows the reward-hacking verdict and sample generations as PPO
 * learns, the adapter, and checkpoint download/upload. A method selector runs PPO, GRPO, DPO, SimPO
 * or KTO after SFT. Query parameters prefill the hyperparameters
 * (`?ppo.iterations=5&autostart=1`, `?method=dpo&m.steps=40`).
 *
 * @module
 */

import uPlot from "uplot";
import type { Metrics, ReportSample } from "../mod.ts";
import type { FromWorker, ToWorker } from "./protocol.ts";

const $ = <T extends HTMLElement = HTMLElement>(id: string) => document.getElementById(id) as T;

const FIELDS = [
  "task.policyPrompts",
  "sft.steps",
  "sft.lr",
  "rm.steps",
  "ppo.iterations",
  "ppo.klCoef",
  "ppo.actorLr",
  "m.steps",
  "m.lr",
  "m.beta",
  "data.prompts",
  "grpo.iterations",
  "grpo.numGenerations",
  "grpo.lr",
  "grpo.beta",
  "run.evalSamples",
  "run.seed",
];

/** Fields whose value is a choice (a string), not a number. */
const CHOICE_FIELDS = ["rm.loss"];

/** The config section of a method's own fields (`m.steps` → `dpo.steps`). */
const SECTION: Record<string, string> = { dpo: "dpo", simpo: "dpo", kto: "kto" };

/**
 * A chart: title, axis labels and the (stage, metric, colour, y-scale) series it plots against
 * a shared record counter. Series on the `right` scale use the right-hand axis.
 */
interface ChartSpec {
  /** The methods whose runs show it (all when absent). */
  methods?: string[];
  title: string;
  x: string;
  y: string;
  yRight?: string;
  series: [stage: string, key: string, color: string, scale?: "right"][];
}

/**
 * The proxy a method optimises, beside gold: PPO's reward model, DPO/KTO's implicit reward,
 * GRPO's grader.
 */
const PROXY: [stage: string, color: string, key: string][] = [
  ["ppo", "#2563eb", "objective/scores"],
  ["dpo", "#0891b2", "objective/scores"],
  ["kto", "#4f46e5", "objective/scores"],
  ["grpo", "#059669", "reward"],
];

const CHARTS: ChartSpec[] = [
  {
    title:
      "Gold view: the optimised score (RM score; DPO/KTO: implicit reward; GRPO: grader) vs hidden gold",
    x: "PPO / GRPO iteration, preference step (every 20)",
    y: "RM score (logits) / implicit reward β·(ℓ_θ − ℓ_SFT) (nats) / grader (0–1)",
    yRight: "gold score (0–1)",
    series: PROXY.flatMap(([stage, color, key]) =>
      [
        [stage, key, color],
        [stage, "gold/rollout", "#d97706", "right"],
      ] as ChartSpec["series"]
    ),
  },
  {
    title: "Gold parts: share of samples correct / with period / concise",
    x: "PPO / GRPO iteration, preference step (every 20)",
    y: "share of samples (0–1)",
    series: PROXY.flatMap(([stage]) =>
      [
        [stage, "gold/correct", "#16a34a"],
        [stage, "gold/period", "#9333ea"],
        [stage, "gold/concise", "#db2777"],
      ] as ChartSpec["series"]
    ),
  },
  {
    title: "loss",
    x: "logged step (SFT, then RM / DPO / KTO)",
    y: "loss (nats)",
    series: [
      ["sft", "sft/loss", "#1f77b4"],
      ["rm", "rm/loss", "#ff7f0e"],
      ["dpo", "dpo/loss", "#0891b2"],
      ["dpo", "simpo/loss", "#0d9488"],
      ["kto", "kto/loss", "#4f46e5"],
      ["grpo", "loss", "#059669"],
    ],
  },
  {
    methods: ["grpo"],
    title: "GRPO: reward spread within groups",
    x: "GRPO iteration",
    y: "reward std in a group (0–1) / share of groups whose rewards all tie (0–1)",
    series: [
      ["grpo", "reward_std", "#059669"],
      ["grpo", "frac_reward_zero_std", "#dc2626"],
    ],
  },
  {
    methods: ["dpo", "simpo", "kto"],
    title: "preference: reward margin and accuracy of the batch (DPO, SimPO, KTO)",
    x: "logged step",
    y: "margin β·(ρ_w − ρ_l) (nats) / accuracy (0–1)",
    series: [
      ["dpo", "rewards/margins", "#0891b2"],
      ["dpo", "rewards/accuracies", "#16a34a"],
      ["kto", "rewards/margins", "#4f46e5"],
    ],
  },
  {
    methods: ["ppo", "dpo", "simpo", "kto"],
    title: "KL to the reference (objective/kl)",
    x: "PPO iteration / preference step (every 20)",
    y: "KL per sequence (nats)",
    series: [
      ["ppo", "objective/kl", "#9467bd"],
      ["dpo", "objective/kl", "#9467bd"],
      ["kto", "objective/kl", "#9467bd"],
    ],
  },
  {
    methods: ["grpo"],
    title: "GRPO: KL to the reference per token (k3) and entropy",
    x: "GRPO iteration",
    y: "nats per token",
    series: [
      ["grpo", "kl", "#9467bd"],
      ["grpo", "entropy", "#8c564b"],
    ],
  },
  {
    methods: ["ppo"],
    title: "policy entropy (objective/entropy)",
    x: "PPO iteration",
    y: "entropy per token (nats)",
    series: [["ppo", "objective/entropy", "#8c564b"]],
  },
];

interface LiveChart {
  spec: ChartSpec;
  plot: uPlot;
  data: (number | null)[][];
}

let charts: LiveChart[] = [];
let worker: Worker | undefined;
let state: "idle" | "running" | "paused" | "done" | "error" = "idle";
const records: { stage: string; m: Metrics }[] = [];

/** What the headless browser test reads. */
const probe = {
  get state() {
    return state;
  },
  records,
  charts: () =>
    charts.map((c) => ({
      title: c.spec.title,
      points: c.data.slice(1).map((s) => s.filter((v) => v !== null).length),
      canvas: c.plot.root.querySelector("canvas") !== null,
    })),
  lastSamples: [] as ReportSample[],
  summary: undefined as Record<string, number> | undefined,
  error: undefined as string | undefined,
};
(globalThis as unknown as { __demo: typeof probe }).__demo = probe;

function setState(s: typeof state, text?: string) {
  state = s;
  $("status").textContent = text ?? s;
  $<HTMLButtonElement>("start").disabled = s === "running" || s === "paused";
  $<HTMLButtonElement>("resume").disabled = s === "running" || s === "paused";
  const pause = $<HTMLButtonElement>("pause");
  pause.disabled = s !== "running" && s !== "paused";
  pause.textContent = s === "paused" ? "Continue" : "Pause";
}

function makeCharts() {
  const host = $("charts");
  host.replaceChildren();
  const method = $<HTMLSelectElement>("method").value;
  charts = CHARTS.filter((c) => !c.methods || c.methods.includes(method)).map((spec) => {
    const el = document.createElement("div");
    el.className = "chart";
    host.append(el);
    const data: (number | null)[][] = [[], ...spec.series.map(() => [])];
    const plot = new uPlot(
      {
        title: spec.title,
        width: 420,
        height: 220,
        scales: {
          x: { time: false },
          ...(spec.yRight ? { right: { range: [0, 1] as [number, number] } } : {}),
        },
        axes: [
          { label: spec.x },
          { label: spec.y },
          ...(spec.yRight ? [{ label: spec.yRight, scale: "right", side: 1 }] : []),
        ],
        series: [
          { label: "record" },
          ...spec.series.map(([, key, color, scale]) => ({
            label: key,
            stroke: color,
            width: 2,
            spanGaps: true,
            ...(scale ? { scale } : {}),
          })),
        ],
      },
      data as uPlot.AlignedData,
      el,
    );
    return { spec, plot, data };
  });
}

function addRecord(stage: string, m: Metrics) {
  records.push({ stage, m });
  for (const c of charts) {
    const ys = c.spec.series.map(([s, key]) => (s === stage && key in m ? m[key] : null));
    if (ys.every((y) => y === null)) continue;
    c.data[0].push(c.data[0].length + 1);
    ys.forEach((y, i) => c.data[i + 1].push(y));
    c.plot.setData(c.data as uPlot.AlignedData);
  }
}

function showSamples(when: string, samples: ReportSample[]) {
  probe.lastSamples = samples;
  $("samples-when").textContent = when === "ppo"
    ? "latest PPO rollout"
    : when === "rollout"
    ? "latest rollout"
    : when === "rm"
    ? "SFT samples scored by the reward model"
    : `${when} PPO`;
  const rows = samples.slice(0, 8).map((s) => {
    const tr = document.createElement("tr");
    const cells = [
      s.prompt.replace(/\s+/g, " ").trim(),
      JSON.stringify(s.response),
      s.score.toFixed(2),
      Number.isFinite(s.gold) ? s.gold.toFixed(2) : "—",
    ];
    for (const [i, text] of cells.entries()) {
      const td = document.createElement("td");
      if (i < 2) {
        const code = document.createElement("code");
        code.textContent = text;
        td.append(code);
      } else td.textContent = text;
      tr.append(td);
    }
    return tr;
  });
  $("samples").querySelector("tbody")!.replaceChildren(...rows);
}

function showProgress(stage: string, done: number, total: number) {
  let row = document.querySelector<HTMLElement>(`#progress [data-stage="${stage}"]`);
  if (!row) {
    row = document.createElement("div");
    row.className = "bar";
    row.dataset.stage = stage;
    row.innerHTML = `<span>${stage.padEnd(3, " ")}</span><progress max="1" value="0"></progress>` +
      `<span class="count"></span>`;
    $("progress").append(row);
  }
  row.querySelector("progress")!.value = done / total;
  row.querySelector(".count")!.textContent = `${done}/${total}`;
}

function log(line: string) {
  const el = $("log");
  el.textContent += line + "\n";
  el.scrollTop = el.scrollHeight;
}

function noGpu(message: string) {
  const b = $("nogpu");
  b.hidden = false;
  b.textContent = message;
}

function onMessage(msg: FromWorker) {
  switch (msg.type) {
    case "adapter":
      $("adapter").textContent = [
        `adapter: ${msg.description}`,
        `matmul path: ${msg.matmulPath}`,
        ...Object.entries(msg.limits).map(([k, v]) => `${k}: ${v}`),
        `checkpoints: ${msg.storage}`,
      ].join("\n");
      break;
    case "config":
      log(`config: ${JSON.stringify(msg.config)}`);
      break;
    case "metrics":
      addRecord(msg.stage, msg.m);
      break;
    case "progress":
      showProgress(msg.stage, msg.done, msg.total);
      if (state === "running") $("status").textContent = `running: ${msg.stage}`;
      break;
    case "samples":
      showSamples(msg.when, msg.samples);
      break;
    case "log":
      log(msg.line);
      break;
    case "checkpoint":
      log(`checkpoint ${msg.stage} saved (${(msg.bytes / 1024).toFixed(0)} KiB)`);
      break;
    case "paused":
      setState("paused", "paused (stops at the next logged step)");
      break;
    case "continued":
      setState("running");
      break;
    case "done": {
      probe.summary = msg.summary as unknown as Record<string, number>;
      const rows = Object.entries(msg.summary).filter(([, v]) => Number.isFinite(v)).map(
        ([k, v]) => `<tr><td>${k}</td><td>${(v as number).toFixed(3)}</td></tr>`,
      );
      const v = msg.summary.reward_hacking;
      if (v) {
        rows.unshift(
          `<tr class="${v.detected ? "bad" : "good"}"><td>reward_hacking</td><td>${
            v.detected
              ? `DETECTED${v.started !== undefined ? ` from iteration ${v.started}` : ""}`
              : "none detected"
          }</td></tr>`,
        );
      }
      $("summary").querySelector("tbody")!.innerHTML = rows.join("");
      setState("done", `done in ${msg.summary.wall_seconds.toFixed(0)} s`);
      break;
    }
    case "file": {
      for (
        const [name, data] of [
          ["config.json", msg.config],
          ["model.safetensors", msg.weights],
        ] as const
      ) {
        const a = document.createElement("a");
        a.href = URL.createObjectURL(new Blob([data]));
        a.download = `${msg.stage}-${name}`;
        a.click();
        setTimeout(() => URL.revokeObjectURL(a.href), 10_000);
      }
      break;
    }
    case "tried":
      showSamples(
        "uploaded checkpoint:",
        msg.samples.map((s) => ({ ...s, score: NaN, gold: NaN })),
      );
      log(`sampled ${msg.samples.length} prompts from the uploaded checkpoint`);
      break;
    case "error":
      probe.error = `${msg.name}: ${msg.message}`;
      if (msg.name === "WebGpuUnavailableError") noGpu(msg.message);
      if (state === "running" || state === "paused") setState("error", `error: ${msg.message}`);
      log(`error: ${msg.name}: ${msg.message}`);
      break;
  }
}

function ensureWorker(): Worker {
  if (!worker) {
    worker = new Worker(new URL("./worker.js", import.meta.url), { type: "module" });
    worker.onmessage = (e: MessageEvent<FromWorker>) => onMessage(e.data);
    worker.onerror = (e) => {
      probe.error = e.message;
      setState("error", `worker error: ${e.message}`);
    };
  }
  return worker;
}

function send(msg: ToWorker, transfer: Transferable[] = []) {
  ensureWorker().postMessage(msg, transfer);
}

/** The selected method's overrides: the shared fields and its own (hidden ones are left out). */
function overrides(method: string): Record<string, unknown> {
  const o: Record<string, unknown> = {};
  for (const id of FIELDS) {
    const label = $<HTMLInputElement>(id).closest("label");
    const only = label?.dataset.method?.split(" ");
    if (only && !only.includes(method)) continue;
    const v = Number($<HTMLInputElement>(id).value);
    if (!Number.isFinite(v)) throw new Error(`${id} must be a number`);
    o[id.startsWith("m.") ? `${SECTION[method]}.${id.slice(2)}` : id] = v;
  }
  for (const id of CHOICE_FIELDS) {
    const only = $(id).closest("label")?.dataset.method?.split(" ");
    if (!only || only.includes(method)) o[id] = $<HTMLSelectElement>(id).value;
  }
  return o;
}

/** Shows the fields of the selected method only. */
function showFields() {
  const method = $<HTMLSelectElement>("method").value;
  for (const label of document.querySelectorAll<HTMLElement>("label[data-method]")) {
    label.hidden = !label.dataset.method!.split(" ").includes(method);
  }
}

function reset() {
  worker?.terminate();
  worker = undefined;
  records.length = 0;
  probe.summary = undefined;
  probe.error = undefined;
  makeCharts();
  $("progress").replaceChildren();
  $("samples").querySelector("tbody")!.replaceChildren();
  $("summary").querySelector("tbody")!.replaceChildren();
  setState("idle");
}

function begin(resume: boolean) {
  reset();
  setState("running");
  try {
    const method = $<HTMLSelectElement>("method").value;
    send({ type: "start", method, overrides: overrides(method), resume });
  } catch (e) {
    setState("error", (e as Error).message);
  }
}

function main() {
  const params = new URLSearchParams(location.search);
  for (const id of [...FIELDS, ...CHOICE_FIELDS, "method"]) {
    const v = params.get(id);
    if (v !== null) $<HTMLInputElement>(id).value = v;
  }
  $<HTMLSelectElement>("method").onchange = () => {
    showFields();
    if (state === "idle") makeCharts();
  };
  showFields();
  makeCharts();
  setState("idle");
  if (!("gpu" in navigator)) {
    noGpu(
      "This browser has no WebGPU (navigator.gpu is missing), so the demo cannot train here. " +
        "Use a recent Chrome, Edge or Safari, or Firefox with WebGPU enabled; on Linux, Chrome " +
        "may need chrome://flags/#enable-unsafe-webgpu.",
    );
    for (const id of ["start", "resume", "download"]) $<HTMLButtonElement>(id).disabled = true;
    probe.error = "no WebGPU";
    return;
  }
  $("start").onclick = () => begin(false);
  $("resume").onclick = () => begin(true);
  $("reset").onclick = () => reset();
  $("pause").onclick = () => send({ type: state === "paused" ? "continue" : "pause" });
  $("download").onclick = () => {
    send({ type: "download", stage: $<HTMLSelectElement>("stage").value });
  };
  $<HTMLInputElement>("upload").onchange = async (e) => {
    const files = [...((e.target as HTMLInputElement).files ?? [])];
    const config = files.find((f) => f.name.endsWith(".json"));
    const weights = files.find((f) => f.name.endsWith(".safetensors"));
    if (!config || !weights) {
      log("choose both a config.json and a model.safetensors");
      return;
    }
    const buf = await weights.arrayBuffer();
    const prompts = [1, 2, 3, 4].map((a) => `\n\nHuman: What is ${a} + ${4 - a}?\n\nAssistant:`);
    send({ type: "try", config: await config.text(), weights: buf, prompts }, [buf]);
  };
  if (params.get("autostart") === "1") begin(false);
}

main();
