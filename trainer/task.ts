/**
 * The built-in task (SPEC §10): a small synthetic dialogue task generated deterministically
 * from a seed, in hh-rlhf format, with a hidden **gold** preference function computable from
 * text. The human asks a small addition (operands 0–4); the gold score of a response is
 *
 * - 0.6 when its first integer is the right answer,
 * - + 0.2 when it ends with a period (style),
 * - + 0.2 when it is concise (at most {@link CONCISE_CHARS} characters),
 *
 * so `" 7."` scores 1 while `" 7, I am sure."` and `" 7"` score 0.8 and `" 6."` 0.4. The SFT
 * demonstrations mix good, verbose, unpunctuated and wrong answers (mean gold ≈ 0.74; the most
 * common style, verbose, scores 0.8), so the SFT model starts well below the best reachable
 * score of 1; preference pairs are labelled by the
 * gold function with label noise.
 *
 * @module
 */

import type { PairExample, RankedExample, SftExample } from "./data.ts";
import { mulberry32 } from "./random.ts";

/** Responses longer than this many characters are not "concise". */
export const CONCISE_CHARS = 8;

/** A question of the task. */
export interface TaskQuestion {
  /** First operand. */
  a: number;
  /** Second operand. */
  b: number;
  /** The operation. */
  op: "+" | "-";
  /** The correct result. */
  answer: number;
  /** The hh-rlhf-style prompt, ending with "\n\nAssistant:". */
  prompt: string;
}

/** The three parts of the gold score: each 1 when the response has the property, else 0. */
export interface GoldParts {
  /** The first integer of the response is the right answer (weight 0.6). */
  correct: number;
  /** The response ends with a period (weight 0.2). */
  period: number;
  /** The response has at most {@link CONCISE_CHARS} characters (weight 0.2). */
  concise: number;
}

/** Which parts of the gold score `response` earns on `q`. */
export function goldParts(q: Pick<TaskQuestion, "answer">, response: string): GoldParts {
  const m = response.match(/-?\d+/);
  return {
    correct: m !== null && Number(m[0]) === q.answer ? 1 : 0,
    period: response.trimEnd().endsWith(".") ? 1 : 0,
    concise: response.length <= CONCISE_CHARS ? 1 : 0,
  };
}

/** The gold score of `response` to `q`, in [0, 1]: `0.6·correct + 0.2·period + 0.2·concise`. */
export function goldScore(q: Pick<TaskQuestion, "answer">, response: string): number {
  const g = goldParts(q, response);
  return 0.6 * g.correct + 0.2 * g.period + 0.2 * g.concise;
}

/**
 * Operands are drawn from 0..MAX_OPERAND: 25 distinct additions, which the task model learns
 * in a few hundred SFT steps (measured; 0..9 with subtraction did not converge in 500).
 */
export const MAX_OPERAND = 4;

/** The next question of a seeded stream. */
export function makeQuestion(r: () => number): TaskQuestion {
  const a = Math.floor(r() * (MAX_OPERAND + 1)), b = Math.floor(r() * (MAX_OPERAND + 1));
  const op = "+";
  const answer = a + b;
  return { a, b, op, answer, prompt: `\n\nHuman: What is ${a} ${op} ${b}?\n\nAssistant:` };
}

function wrong(q: TaskQuestion, r: () => number): number {
  const d = 1 + Math.floor(r() * 3);
  return r() < 0.5 || q.answer - d < 0 ? q.answer + d : q.answer - d;
}

/** Response styles with their mixture weights in the SFT demonstrations. */
const STYLES: { weight: number; make: (q: TaskQuestion, r: () => number) => string }[] = [
  { weight: 0.20, make: (q) => ` ${q.answer}.` }, // gold 1.0
  { weight: 0.35, make: (q) => ` ${q.answer}, I am sure.` }, // 0.8 (verbose)
  { weight: 0.25, make: (q) => ` ${q.answer}` }, // 0.8 (no period)
  { weight: 0.12, make: (q, r) => ` ${wrong(q, r)}.` }, // 0.4
  { weight: 0.08, make: (q, r) => ` ${wrong(q, r)}` }, // 0.2
];
// (every style states the number first: the model learns the sum at one position)

function sampleStyle(q: TaskQuestion, r: () => number): string {
  let u = r();
  for (const s of STYLES) {
    if (u < s.weight) return s.make(q, r);
    u -= s.weight;
  }
  return STYLES[0].make(q, r);
}

/** Everything the pipeline needs, generated from one seed. */
export interface BuiltinTask {
  /** SFT demonstrations. */
  sft: SftExample[];
  /** Reward-model comparisons (noisy gold labels). */
  pairs: PairExample[];
  /** Held-out pairs labelled by the gold function without noise (RM accuracy). */
  heldOutPairs: PairExample[];
  /** Prompts for PPO rollouts. */
  prompts: TaskQuestion[];
  /** Held-out prompts for the gold evaluation before and after PPO. */
  evalPrompts: TaskQuestion[];
  /**
   * Held-out prompts whose policy samples test the reward model where PPO will use it (on the
   * policy's own, possibly truncated, responses).
   */
  policyEvalPrompts: TaskQuestion[];
}

/** Sizes of {@link makeBuiltinTask}. */
export interface TaskSizes {
  /** SFT demonstrations. */
  sft?: number;
  /** Reward-model training pairs. */
  pairs?: number;
  /** Held-out reward-model pairs. */
  heldOutPairs?: number;
  /** PPO rollout prompts. */
  prompts?: number;
  /** Held-out evaluation prompts. */
  evalPrompts?: number;
  /** Held-out prompts for the reward model's on-policy test. */
  policyEvalPrompts?: number;
  /** Fraction of training pairs whose label is flipped (default 0.1). */
  labelNoise?: number;
  /**
   * Llama 2's preference-strength margin: each training pair carries
   * `margin = pairMargin · |gold(chosen) − gold(rejected)|`, which the pairwise loss
   * `−log σ(r_w − r_l − margin)` asks the reward model to exceed (default 0: no margin).
   */
  pairMargin?: number;
}

/**
 * Generates the task from `seed`. Pairs take two different styled responses to one question;
 * the gold-preferred one is "chosen" (flipped with probability `labelNoise` in training pairs;
 * ties are skipped).
 *
 * @example
 * ```ts
 * import { goldScore, makeBuiltinTask } from "../mod.ts";
 * const task = makeBuiltinTask(1);
 * const q = task.evalPrompts[0];
 * console.log(q.prompt, goldScore(q, ` ${q.answer}.`)); // 1
 * ```
 */
export function makeBuiltinTask(seed: number, sizes: TaskSizes = {}): BuiltinTask {
  const r = mulberry32(seed);
  const noise = sizes.labelNoise ?? 0.1;
  const sft: SftExample[] = [];
  for (let i = 0; i < (sizes.sft ?? 2000); i++) {
    const q = makeQuestion(r);
    sft.push({ prompt: q.prompt, completion: sampleStyle(q, r) });
  }
  const pairMargin = sizes.pairMargin ?? 0;
  const makePairs = (n: number, flip: number, marginScale: number) => {
    const out: PairExample[] = [];
    while (out.length < n) {
      const q = makeQuestion(r);
      const x = sampleStyle(q, r), y = sampleStyle(q, r);
      const gx = goldScore(q, x), gy = goldScore(q, y);
      if (gx === gy) continue;
      let [chosen, rejected] = gx > gy ? [x, y] : [y, x];
      if (r() < flip) [chosen, rejected] = [rejected, chosen];
      // the margin is the labeller's stated strength, so a flipped label keeps it (no extra
      // random draws: the task is the same with or without margins)
      const margin = marginScale * Math.abs(gx - gy);
      out.push(
        margin > 0 ? { prompt: q.prompt, chosen, rejected, margin } : {
          prompt: q.prompt,
          chosen,
          rejected,
        },
      );
    }
    return out;
  };
  const pairs = makePairs(sizes.pairs ?? 2000, noise, pairMargin);
  const heldOutPairs = makePairs(sizes.heldOutPairs ?? 200, 0, 0);
  const prompts = Array.from({ length: sizes.prompts ?? 1000 }, () => makeQuestion(r));
  const evalPrompts = Array.from({ length: sizes.evalPrompts ?? 64 }, () => makeQuestion(r));
  const policyEvalPrompts = Array.from(
    { length: sizes.policyEvalPrompts ?? 100 },
    () => makeQuestion(r),
  );
  return { sft, pairs, heldOutPairs, prompts, evalPrompts, policyEvalPrompts };
}

/**
 * The ranked variant of the task (InstructGPT's K-wise comparisons): per question K = 4
 * responses, one of each gold level (1.0 `" 7."`, 0.8 verbose or without period, 0.4 wrong with
 * period, 0.2 wrong), ordered best to worst, each adjacent pair swapped with probability
 * `labelNoise` (the labellers' disagreement; 0 for held-out examples). Its own PRNG stream, so
 * the rest of the task is unchanged.
 *
 * @example
 * ```ts
 * import { goldScore, makeRankedExamples, parseQuestion } from "../mod.ts";
 * const [x] = makeRankedExamples(1, 1, { labelNoise: 0 });
 * console.log(x.responses.map((r) => goldScore(parseQuestion(x.prompt)!, r))); // [1, 0.8, 0.4, 0.2]
 * ```
 */
export function makeRankedExamples(
  seed: number,
  n: number,
  o: { labelNoise: number; stream?: number },
): RankedExample[] {
  const r = mulberry32(seed * 7919 + 0x52414e4b + (o.stream ?? 0));
  return Array.from({ length: n }, () => {
    const q = makeQuestion(r);
    const middle = r() < 0.5 ? STYLES[1] : STYLES[2];
    const responses = [STYLES[0], middle, STYLES[3], STYLES[4]].map((s) => s.make(q, r));
    for (let k = 0; k + 1 < responses.length; k++) {
      if (r() < o.labelNoise) [responses[k], responses[k + 1]] = [responses[k + 1], responses[k]];
    }
    return { prompt: q.prompt, responses };
  });
}

/** The question behind an hh-style prompt of this task (for gold scoring), or null. */
export function parseQuestion(prompt: string): TaskQuestion | null {
  const m = prompt.match(/What is (\d) ([+-]) (\d)\?\n\nAssistant:$/);
  if (!m) return null;
  const a = Number(m[1]), b = Number(m[3]), op = m[2] as "+" | "-";
  return { a, b, op, answer: op === "+" ? a + b : a - b, prompt };
}

/** The task's pairs as hh-rlhf JSONL lines (`{chosen, rejected}` full dialogues). */
export function toHhJsonl(pairs: readonly PairExample[]): string {
  return pairs.map((p) =>
    JSON.stringify({ chosen: p.prompt + p.chosen, rejected: p.prompt + p.rejected })
  )
    .join("\n") + "\n";
}

/** The model the built-in task trains (byte vocabulary; 2 layers of width 64). */
export const TASK_MODEL_CONFIG = {
  vocab_size: 260,
  hidden_size: 64,
  num_hidden_layers: 2,
  num_attention_heads: 4,
  ffn_dim: 256,
  max_position_embeddings: 64,
  do_layer_norm_before: true,
  word_embed_proj_dim: 64,
  activation_function: "relu" as const,
  pad_token_id: 1,
  bos_token_id: 2,
  eos_token_id: 2,
};
