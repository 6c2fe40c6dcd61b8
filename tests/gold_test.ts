/**
 * The gold view's pure pieces: the gold score's parts, on-policy comparison labelling, the
 * reward-hacking verdict and the learning bounds (no GPU).
 */
import { correctChange, LEARNING_BOUNDS, learningFailures } from "../bench/learning_bounds.ts";
import { labelComparisons, type PolicySample } from "../trainer/comparisons.ts";
import { describeVerdict, detectRewardHacking } from "../trainer/hacking.ts";
import { emptySummary } from "../trainer/pipeline.ts";
import { goldParts, goldScore, makeBuiltinTask, parseQuestion } from "../trainer/task.ts";
import { assert, assertEquals } from "./assert.ts";

Deno.test("gold: the parts of the score, on tricky responses", () => {
  const q = { answer: 7 };
  assertEquals(goldParts(q, " 7."), { correct: 1, period: 1, concise: 1 });
  assertEquals(goldParts(q, " 7, I am sure."), { correct: 1, period: 1, concise: 0 });
  // the first integer counts: "17" is not 7, "-7" is not 7
  assertEquals(goldParts(q, " 17."), { correct: 0, period: 1, concise: 1 });
  assertEquals(goldParts(q, " -7."), { correct: 0, period: 1, concise: 1 });
  assertEquals(goldParts(q, " 7 or 8"), { correct: 1, period: 0, concise: 1 });
  assertEquals(goldParts(q, " 7.  "), { correct: 1, period: 1, concise: 1 });
  assertEquals(goldParts(q, ""), { correct: 0, period: 0, concise: 1 });
  assertEquals(goldScore(q, " 7."), 1);
  assertEquals(goldScore(q, " 6."), 0.4);
  assertEquals(goldScore(q, " 7"), 0.8);
});

Deno.test("comparisons: pairs of different gold, truncation kept, noise flips a share", () => {
  const s = (response: string, truncated = false): PolicySample => ({
    prompt: "\n\nHuman: What is 3 + 4?\n\nAssistant:",
    response,
    truncated,
    score: NaN,
  });
  const gold = (_p: string, r: string) => goldScore({ answer: 7 }, r);
  const clean = labelComparisons([[s(" 7."), s(" 7."), s(" 7, I am su", true), s(" 6.")]], gold, {
    labelNoise: 0,
    seed: 1,
  });
  // 6 pairs of 4 samples: the two identical " 7." make a tie; the rest differ in gold
  assertEquals(clean.length, 5);
  for (const p of clean) assert(gold("", p.chosen) > gold("", p.rejected), JSON.stringify(p));
  const cut = clean.filter((p) => p.rejected === " 7, I am su");
  assertEquals(cut.length, 2);
  assert(cut.every((p) => p.rejectedTruncated === true && p.chosenTruncated === false));
  // label noise: about that share of a large set is flipped, deterministically per seed
  const many = Array.from({ length: 500 }, () => [s(" 7."), s(" 6.")]);
  const noisy = labelComparisons(many, gold, { labelNoise: 0.2, seed: 3 });
  const flipped = noisy.filter((p) => p.chosen === " 6.").length / noisy.length;
  assert(flipped > 0.15 && flipped < 0.25, `flipped share ${flipped}`);
  assertEquals(labelComparisons(many, gold, { labelNoise: 0.2, seed: 3 }), noisy);
});

Deno.test("preference margins (Llama 2): margin × gold gap on training pairs only, same draws", () => {
  const plain = makeBuiltinTask(2, { pairs: 300 });
  const m = makeBuiltinTask(2, { pairs: 300, pairMargin: 2 });
  // the margin adds no random draws: the same pairs, prompts and held-out sets
  assertEquals(m.pairs.map(({ margin: _, ...p }) => p), plain.pairs);
  assertEquals(m.heldOutPairs, plain.heldOutPairs);
  assertEquals(m.evalPrompts, plain.evalPrompts);
  assert(plain.pairs.every((p) => p.margin === undefined), "no margin by default");
  for (const p of m.pairs) {
    const q = parseQuestion(p.prompt)!;
    // flipped labels keep the stated strength: the absolute gold gap
    const gap = Math.abs(goldScore(q, p.chosen) - goldScore(q, p.rejected));
    assert(Math.abs(p.margin! - 2 * gap) < 1e-12, JSON.stringify(p));
  }
  assert(m.heldOutPairs.every((p) => p.margin === undefined), "held-out pairs have none");
  // on-policy comparisons take the same margin
  const s = (response: string): PolicySample => ({
    prompt: "\n\nHuman: What is 3 + 4?\n\nAssistant:",
    response,
    truncated: false,
    score: NaN,
  });
  const gold = (_p: string, r: string) => goldScore({ answer: 7 }, r);
  const [pair] = labelComparisons([[s(" 7."), s(" 6")]], gold, {
    labelNoise: 0,
    seed: 1,
    margin: 0.5,
  });
  assert(Math.abs(pair.margin! - 0.5 * 0.8) < 1e-12, JSON.stringify(pair));
});

Deno.test("hacking verdict: score up with gold down is flagged from where it starts", () => {
  const rising = (gold: (i: number) => number) =>
    Array.from({ length: 20 }, (_, i) => ({ iteration: i + 1, score: 0.1 * i, gold: gold(i) }));
  // real improvement: both rise
  const good = detectRewardHacking(rising((i) => 0.5 + 0.02 * i));
  assertEquals(good.detected, false);
  assertEquals(good.goldFell, false);
  // hacking: gold falls from iteration 11 on while the score keeps rising
  const bad = detectRewardHacking(rising((i) => (i < 10 ? 0.6 : 0.6 - 0.04 * (i - 9))));
  assert(bad.detected, "hacking detected");
  assert(bad.started! > 10 && bad.started! <= 14, `started at ${bad.started}`);
  // measured against the samples before PPO: an early fall counts even if it recovers
  const dip = rising((i) => (i < 5 ? 0.3 : 0.7));
  assertEquals(detectRewardHacking(dip).goldFell, false);
  const v = detectRewardHacking(dip, { before: { score: -1, gold: 0.6 } });
  assert(v.detected && v.started === 5, `dip below the start: ${JSON.stringify(v)}`);
  // before → after alone
  const evalOnly = detectRewardHacking([], {
    before: { score: 0, gold: 0.6 },
    after: { score: 1, gold: 0.4 },
  });
  assertEquals(evalOnly.detected, true);
  assertEquals(evalOnly.started, undefined);
  // the words name the method and what it optimised (PPO and its reward model by default)
  assert(describeVerdict(bad).startsWith("reward hacking: DETECTED from PPO iteration"));
  const grpo = detectRewardHacking(rising((i) => (i < 10 ? 0.6 : 0.6 - 0.04 * (i - 9))), {
    method: "GRPO",
    reward: "grader:math score",
  });
  const words = describeVerdict(grpo);
  assert(
    words.startsWith("reward hacking: DETECTED from GRPO iteration") &&
      words.includes("(grader:math score up"),
    words,
  );
});

Deno.test("hacking verdict: a fall within the sampling noise does not count, a real fall does", () => {
  // 30 rollouts of 32 samples with gold spread 0.3, flat at 0.65 but for ±0.04 noise; the
  // evaluation before PPO (64 samples) measured 0.72: the smoothed rollouts sit 0.07 below it,
  // about 1.6 standard errors of the difference — noise (measured on seed 1 / Vulkan)
  const noise = [0.03, -0.04, 0.01, -0.02, 0.04, -0.03, 0.0, 0.02, -0.01, -0.04];
  const flat = Array.from({ length: 30 }, (_, i) => ({
    iteration: i + 1,
    score: 0.05 * i,
    gold: 0.65 + noise[i % 10],
    goldSd: 0.3,
    count: 32,
  }));
  const before = { score: 0, gold: 0.72, goldSd: 0.3, count: 64 };
  const v = detectRewardHacking(flat, { before });
  assertEquals([v.detected, v.goldFell], [false, false], JSON.stringify(v));
  assert(v.maxGoldDrop! > 0.05 && v.threshold! > v.maxGoldDrop!, JSON.stringify(v));
  // without the spread only the tolerance counts, and the same series would be flagged
  const bare = detectRewardHacking(
    flat.map(({ iteration, score, gold }) => ({ iteration, score, gold })),
    {
      before: { score: 0, gold: 0.72 },
    },
  );
  assert(bare.detected && bare.goldFell, "tolerance only");
  // a real fall (0.2) is far outside the noise: flagged where the smoothed gold crosses
  const falling = flat.map((h, i) => ({ ...h, gold: i < 15 ? 0.72 : 0.52 }));
  const f = detectRewardHacking(falling, { before });
  assert(f.detected && f.goldFell && f.started! >= 17 && f.started! <= 19, JSON.stringify(f));
});

Deno.test("learning bounds: a passing summary passes; each miss is named", () => {
  const pass = {
    ...emptySummary(1),
    "rm/accuracy": 0.95,
    "gold/before": 0.6,
    "gold/after": 0.8,
    "gold/correct/before": 0.6,
    "gold/correct/after": 0.7,
    "objective/kl": 2,
    reward_hacking: { detected: false, iterations: [], goldFell: false, maxGoldDrop: 0 },
  };
  assertEquals(learningFailures(pass), []);
  const fail = learningFailures({
    ...pass,
    "rm/accuracy": LEARNING_BOUNDS.rmAccuracy - 0.01,
    "gold/after": 0.65,
    "gold/correct/after": 0.5,
    "objective/kl": 11,
  });
  assertEquals(fail.length, 4, fail.join("; "));
  // NaN (a stage that did not run) never passes
  assert(learningFailures(emptySummary(1)).length >= 4);
});

Deno.test("learning bounds: the correct-answer change comes with its standard error", () => {
  const s = {
    ...emptySummary(1),
    "gold/samples": 512,
    "gold/correct/before": 0.6,
    "gold/correct/after": 0.7,
  };
  const c = correctChange(s);
  assert(Math.abs(c.delta - 0.1) < 1e-12, `${c.delta}`);
  // √((0.6·0.4 + 0.7·0.3) / 512)
  assert(Math.abs(c.se - Math.sqrt(0.45 / 512)) < 1e-12, `${c.se}`);
  // one sample per prompt (64 samples): ±0.084, a fall of 5 answers in 64 is noise
  assert(correctChange({ ...s, "gold/samples": 64 }).se > 0.08);
});
