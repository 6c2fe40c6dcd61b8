/**
 * `deno task bench:model --vs-torch [--json]`: the four small-model workloads of the speed
 * issue, ours and PyTorch-CPU's in the same run, side by side with the ratio.
 *
 * - `sft-tiny`: one SFT step of the tiny OPT (L2, hidden 32, 4 heads, FFN 64, V 260) on 16
 *   sequences of 40 tokens — forward, next-token cross-entropy, backward, grad-norm clip 1.0,
 *   AdamW (`bench/torch/torch_sft_step.py`).
 * - `ppo-L2H64` / `ppo-L4H128`: a PPO-shaped iteration (`bench/torch/torch_ppo_iter.py`): a
 *   KV-cached rollout of 32 new tokens for 16 prompts of 32 tokens, then 4 epochs of actor
 *   (−mean log-prob of the response) and critic (mean squared value) forward + backward + AdamW
 *   over the 16 × 64 sequences.
 * - `rollout-L2H64`: the rollout part of the L2/H64 iteration, in new tokens/s.
 *
 * The PPO rows alternate ours and the peer's iterations, five pairs: each side's median and the
 * median (and range) of the pairs' ratios.
 *
 * The peer runs as a PyTorch user would on a small CPU: `OPENBLAS_NUM_THREADS=1`, two torch
 * threads (both at 2 oversubscribe two cores and make PyTorch look 2–10× slower than it is).
 * The interpreter is `WEBGPU_RLHF_PYTHON` or `python3`; when it cannot import `torch`, the
 * bench says so and prints ours alone. Python appears only
 * here, never in the product.
 *
 * @module
 */

import {
  crossEntropy,
  crossEntropyBackward,
  generate,
  type Gpu,
  mul,
  OPT_PRESETS,
  type OptConfig,
  OptModel,
  type Tensor,
} from "../mod.ts";

/** One workload's figures: ours, the peer's (null when unavailable), and what they count. */
export interface VsTorchRow {
  workload: string;
  detail: string;
  unit: "ms" | "s" | "new tok/s";
  ours: number;
  torch: number | null;
  /**
   * ours ÷ torch for times, torch ÷ ours for rates: how many times slower we are (the PPO rows:
   * the median of the alternating pairs' ratios).
   */
  slowdown: number | null;
  /** The PPO rows with the peer: the lowest and highest of the pairs' ratios. */
  slowdownRange?: readonly [number, number];
  dispatches?: number;
  submits?: number;
}

const PEER_DIR = new URL("./torch/", import.meta.url);
/** The peer's interpreter: `WEBGPU_RLHF_PYTHON`, else `python3` on the PATH. */
const PYTHON = Deno.env.get("WEBGPU_RLHF_PYTHON") || "python3";

/** Runs a peer script; returns its stdout, or null with the reason when Python/torch is missing. */
async function runPeer(script: string, args: number[]): Promise<string | { missing: string }> {
  const path = new URL(script, PEER_DIR).pathname;
  try {
    const out = await new Deno.Command(PYTHON, {
      args: [path, ...args.map(String)],
      env: { OPENBLAS_NUM_THREADS: "1" },
      stdout: "piped",
      stderr: "piped",
    }).output();
    const text = new TextDecoder().decode(out.stdout);
    if (!out.success) {
      const err = new TextDecoder().decode(out.stderr).trim().split("\n").pop() ?? "";
      return { missing: `${script} failed: ${err}` };
    }
    return text;
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return { missing: `${PYTHON} is not installed` };
    throw e;
  }
}

/** Whether the peer can run: `python3` importing `torch`. */
export async function peerStatus(): Promise<string | null> {
  try {
    const out = await new Deno.Command(PYTHON, {
      args: ["-c", "import torch; print(torch.__version__)"],
      stdout: "piped",
      stderr: "piped",
    }).output();
    if (!out.success) {
      return `${PYTHON} cannot import torch (apt-get install python3-torch, or point ` +
        "WEBGPU_RLHF_PYTHON at an interpreter that has it)";
    }
    return null;
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return `${PYTHON} is not installed`;
    throw e;
  }
}

function config(L: number, H: number, NH: number, FFN: number, V: number, P: number): OptConfig {
  return {
    ...OPT_PRESETS.tiny,
    vocab_size: V,
    hidden_size: H,
    word_embed_proj_dim: H,
    num_hidden_layers: L,
    num_attention_heads: NH,
    ffn_dim: FFN,
    max_position_embeddings: Math.max(P, 64),
  };
}

/** Deterministic token ids in `[lo, V)`. */
function ids(n: number, V: number, lo: number, salt: number): Int32Array {
  let s = salt >>> 0;
  return Int32Array.from({ length: n }, () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return lo + (s % (V - lo));
  });
}

/** Our SFT step (the peer's `torch_sft_step.py`): mean ms over `reps` after a warm-up. */
async function oursSft(
  gpu: Gpu,
  [L, H, NH, FFN, V, B, T]: number[],
  reps: number,
): Promise<{ ms: number; dispatches: number; submits: number }> {
  const model = OptModel.create(gpu, config(L, H, NH, FFN, V, T + 2), { seed: 1 });
  const all = ids(B * T, V, 4, 7);
  const inp = new Int32Array(B * (T - 1)), tgt = new Int32Array(B * (T - 1));
  for (let b = 0; b < B; b++) {
    inp.set(all.subarray(b * T, b * T + T - 1), b * (T - 1));
    tgt.set(all.subarray(b * T + 1, b * T + T), b * (T - 1));
  }
  const N = B * (T - 1);
  const tokens = gpu.fromArray(inp, [B, T - 1]);
  const mask = gpu.fromArray(new Float32Array(N).fill(1), [B, T - 1]);
  const targets = gpu.fromArray(tgt);
  const dloss = gpu.fromArray(new Float32Array(N).fill(1 / N));
  const step = () => {
    model.store.zeroGrads();
    const acts = model.forward(tokens, mask);
    const logits = model.logits(acts);
    const ce = crossEntropy(gpu, logits, targets);
    const dl = crossEntropyBackward(gpu, logits, targets, ce.lse, dloss);
    model.backward(acts, { dlogits: dl });
    const clip = model.store.gradNorm(1.0); // clipped inside the AdamW pass, as the trainers do
    model.store.adamw({ lr: 1e-3, clip });
    clip.dispose();
    for (const t of [logits, ce.loss, ce.lse, dl]) t.dispose();
    model.disposeActivations(acts);
    gpu.flush();
  };
  for (let i = 0; i < 3; i++) step();
  await gpu.sync();
  const s0 = { ...gpu.stats }, t0 = performance.now();
  for (let i = 0; i < reps; i++) step();
  await gpu.sync();
  const ms = (performance.now() - t0) / reps;
  const r = {
    ms,
    dispatches: (gpu.stats.dispatches - s0.dispatches) / reps,
    submits: (gpu.stats.submits - s0.submits) / reps,
  };
  for (const t of [tokens, mask, targets, dloss]) t.dispose();
  model.store.dispose();
  return r;
}

/** One timed PPO-shaped iteration of ours: rollout and train seconds, and what it dispatched. */
interface OursIteration {
  rollout: number;
  train: number;
  dispatches: number;
  submits: number;
}

/**
 * Our PPO-shaped iteration (the peer's `torch_ppo_iter.py`), set up and warmed up once: each
 * `iterate()` times one more iteration (rollout, then the epochs), so that the caller can
 * alternate ours with the peer's runs.
 */
async function oursPpo(
  gpu: Gpu,
  [L, H, NH, FFN, V, B, P, G, E]: number[],
): Promise<{ iterate: () => Promise<OursIteration>; dispose: () => void }> {
  const c = config(L, H, NH, FFN, V, P + G + 2);
  const actor = OptModel.create(gpu, c, { seed: 1 });
  const critic = OptModel.create(gpu, c, { seed: 2, valueHead: true });
  const prompt = gpu.fromArray(ids(B * P, V, 3, 11), [B, P]);
  const promptMask = gpu.fromArray(new Float32Array(B * P).fill(1), [B, P]);
  const T = P + G - 1, N = B * T;
  // loss weights on the response positions (the peer's lp[:, P-1:]): actor −mean, critic mean v²
  const w = new Float32Array(N), w2 = new Float32Array(N);
  for (let b = 0; b < B; b++) {
    for (let t = P - 1; t < T; t++) [w[b * T + t], w2[b * T + t]] = [1 / (B * G), 2 / (B * G)];
  }
  const dActor = gpu.fromArray(w), dCritic = gpu.fromArray(w2);
  const mask = gpu.fromArray(new Float32Array(N).fill(1), [B, T]);
  let seed = 5;
  const rollout = async () => {
    const out = await generate(actor, prompt, promptMask, {
      maxNewTokens: G,
      temperature: 1,
      seed: seed++,
      eosId: -1,
    });
    const all = await gpu.read(out.tokens) as Int32Array; // (B, P + G)
    for (const t of [out.tokens, out.attentionMask, out.responseMask, out.logprobs]) t.dispose();
    return all;
  };
  const train = async (all: Int32Array) => {
    const inp = new Int32Array(N), tgt = new Int32Array(N);
    for (let b = 0; b < B; b++) {
      inp.set(all.subarray(b * (P + G), b * (P + G) + T), b * T);
      tgt.set(all.subarray(b * (P + G) + 1, (b + 1) * (P + G)), b * T);
    }
    const tokens = gpu.fromArray(inp, [B, T]), targets = gpu.fromArray(tgt);
    for (let e = 0; e < E; e++) {
      actor.store.zeroGrads();
      const a = actor.forward(tokens, mask);
      const logits = actor.logits(a);
      const ce = crossEntropy(gpu, logits, targets);
      const dl = crossEntropyBackward(gpu, logits, targets, ce.lse, dActor);
      actor.backward(a, { dlogits: dl });
      actor.store.adamw({ lr: 1e-4 });
      for (const t of [logits, ce.loss, ce.lse, dl] as Tensor[]) t.dispose();
      actor.disposeActivations(a);
      critic.store.zeroGrads();
      const k = critic.forward(tokens, mask);
      const v = critic.values(k);
      const dv = mul(gpu, v, dCritic);
      critic.backward(k, { dvalues: dv });
      critic.store.adamw({ lr: 1e-4 });
      v.dispose();
      dv.dispose();
      critic.disposeActivations(k);
      gpu.flush();
    }
    await gpu.sync();
    tokens.dispose();
    targets.dispose();
  };
  await train(await rollout()); // warm-up, as the peer
  return {
    async iterate() {
      const s0 = { ...gpu.stats };
      const t0 = performance.now();
      const all = await rollout();
      const t1 = performance.now();
      await train(all);
      return {
        rollout: (t1 - t0) / 1000,
        train: (performance.now() - t1) / 1000,
        dispatches: gpu.stats.dispatches - s0.dispatches,
        submits: gpu.stats.submits - s0.submits,
      };
    },
    dispose() {
      for (const t of [prompt, promptMask, dActor, dCritic, mask]) t.dispose();
      actor.store.dispose();
      critic.store.dispose();
    },
  };
}

const SFT_SHAPE = [2, 32, 4, 64, 260, 16, 40];
/**
 * PPO-shaped iterations per shape: ours and the peer's alternate (one of ours, then one peer
 * process, which times one iteration), so that both sides of a pair meet the same host phase —
 * a shared 2-core machine's speed moves ±15–60 % within minutes, and timing each side in its own
 * block made the ratio swing by as much. The rows show each side's median and the median of the
 * pairs' ratios, with their range.
 */
const ITERATIONS = 5;
const PPO_SHAPES: Record<string, number[]> = {
  "L2H64": [2, 64, 4, 256, 300, 16, 32, 32, 4],
  "L4H128": [4, 128, 4, 512, 512, 16, 32, 32, 4],
};

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[xs.length >> 1];

function num(re: RegExp, text: string): number | null {
  const m = text.match(re);
  return m ? Number(m[1]) : null;
}

/** Runs the four workloads; `peer` false skips PyTorch. Returns the rows in table order. */
export async function vsTorch(gpu: Gpu, peer: boolean, reps = 10): Promise<VsTorchRow[]> {
  const rows: VsTorchRow[] = [];
  const ratio = (ours: number, torch: number | null, rate = false) =>
    torch === null ? null : rate ? torch / ours : ours / torch;
  const sft = await oursSft(gpu, SFT_SHAPE, reps);
  let tSft: number | null = null;
  if (peer) {
    const out = await runPeer("torch_sft_step.py", SFT_SHAPE);
    if (typeof out === "string") tSft = num(/: ([\d.]+) ms\/step/, out);
  }
  rows.push({
    workload: "sft-tiny",
    detail: "L2 H32 FFN64 V260, B16 T40: fwd+bwd+clip+AdamW",
    unit: "ms",
    ours: sft.ms,
    torch: tSft,
    slowdown: ratio(sft.ms, tSft),
    dispatches: sft.dispatches,
    submits: sft.submits,
  });
  let pairing = peer;
  for (const [name, shape] of Object.entries(PPO_SHAPES)) {
    const session = await oursPpo(gpu, shape);
    const mine: OursIteration[] = [], theirs: { it: number; tok: number }[] = [];
    for (let i = 0; i < ITERATIONS; i++) {
      mine.push(await session.iterate());
      if (!pairing) continue;
      const out = await runPeer("torch_ppo_iter.py", shape);
      const it = typeof out === "string" ? num(/iteration ([\d.]+)s/, out) : null;
      const tok = typeof out === "string" ? num(/\(([\d.]+) new tok\/s\)/, out) : null;
      if (it === null || tok === null) {
        pairing = false; // a peer that fails once is not asked again
        continue;
      }
      theirs.push({ it, tok });
    }
    session.dispose();
    // pairs only where the peer answered every time
    const paired = theirs.length === ITERATIONS;
    const ours = {
      iteration: median(mine.map((t) => t.rollout + t.train)),
      rollout: median(mine.map((t) => t.rollout)),
      dispatches: median(mine.map((t) => t.dispatches)),
      submits: median(mine.map((t) => t.submits)),
    };
    const it = paired ? median(theirs.map((t) => t.it)) : null;
    const tok = paired ? median(theirs.map((t) => t.tok)) : null;
    const pairRatios = (f: (o: OursIteration, t: { it: number; tok: number }) => number) => {
      const r = mine.map((o, i) => f(o, theirs[i]));
      return { slowdown: median(r), slowdownRange: [Math.min(...r), Math.max(...r)] as const };
    };
    const [L, H, , FFN, V, B, P, G, E] = shape;
    rows.push({
      workload: `ppo-${name}`,
      detail: `L${L} H${H} FFN${FFN} V${V}, B${B} P${P} G${G}, ${E} epochs actor+critic`,
      unit: "s",
      ours: ours.iteration,
      torch: it,
      ...(paired
        ? pairRatios((o, t) => (o.rollout + o.train) / t.it)
        : { slowdown: ratio(ours.iteration, it) }),
      dispatches: ours.dispatches,
      submits: ours.submits,
    });
    if (name === "L2H64") {
      const rate = (B * G) / ours.rollout;
      rows.push({
        workload: `rollout-${name}`,
        detail: `${G} new tokens × ${B} prompts of ${P}, KV cache`,
        unit: "new tok/s",
        ours: rate,
        torch: tok,
        ...(paired
          ? pairRatios((o, t) => t.tok / ((B * G) / o.rollout))
          : { slowdown: ratio(rate, tok, true) }),
      });
    }
  }
  return rows;
}
