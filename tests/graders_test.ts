/**
 * Graders (issue #11): exact match, contains, edit-distance similarity, math answer, weighted
 * sums and user modules, on tricky strings. CPU only.
 */
import {
  contains,
  exactMatch,
  gradeAll,
  graderByName,
  GraderError,
  graderFromSpec,
  lastNumber,
  levenshtein,
  mathAnswer,
  similarity,
  UnknownGraderError,
  weightedGrader,
} from "../mod.ts";
import { assertEquals, assertThrows } from "./assert.ts";

Deno.test("exact match compares trimmed texts, case and inner spaces included", () => {
  assertEquals(exactMatch("", "  7.\n", "7."), 1);
  assertEquals(exactMatch("", "7", "7."), 0);
  assertEquals(exactMatch("", "Paris", "paris"), 0);
  assertEquals(exactMatch("", "a  b", "a b"), 0);
  assertEquals(exactMatch("", "", "   "), 1);
});

Deno.test("contains looks for the trimmed reference and refuses an empty one", async () => {
  assertEquals(contains("", "It is 7, sure.", " 7 "), 1);
  assertEquals(contains("", "It is 17.", "7"), 1); // a substring, not a token
  assertEquals(contains("", "seven", "7"), 0);
  await assertThrows(() => contains("", "anything", "  "), GraderError, "empty");
});

Deno.test("levenshtein counts code points, not UTF-16 units", () => {
  assertEquals(levenshtein("kitten", "sitting"), 3);
  assertEquals(levenshtein("", "abc"), 3);
  assertEquals(levenshtein("abc", ""), 3);
  assertEquals(levenshtein("flaw", "lawn"), 2);
  assertEquals(levenshtein("😀a", "😁a"), 1); // one emoji is two UTF-16 units
  assertEquals(levenshtein("ab", "ba"), 2); // no transposition
  // symmetric, and zero only for equal strings
  for (const [a, b] of [["sunday", "saturday"], ["", ""], ["x", "xy"]]) {
    assertEquals(levenshtein(a, b), levenshtein(b, a));
  }
});

Deno.test("similarity is 1 − lev / max length of the trimmed texts", () => {
  assertEquals(similarity("", "kitten", "sitting"), 1 - 3 / 7);
  assertEquals(similarity("", " same ", "same"), 1);
  assertEquals(similarity("", "", ""), 1);
  assertEquals(similarity("", "abc", ""), 0);
  assertEquals(similarity("", "abc", "xyz"), 0);
  assertEquals(similarity("", "😀😀", "😀"), 0.5);
});

Deno.test("lastNumber finds the last number: signs, decimals, separators, fractions", () => {
  const cases: [string, number | undefined][] = [
    ["2 + 5 = 7.", 7],
    [" 7, I am sure.", 7],
    ["owes -1,250.5 dollars", -1250.5],
    ["it is −3", -3], // Unicode minus
    ["5-3", 3], // an operator, not a sign
    ["5 - 3", 3],
    ["1,2", 2], // a list, not a thousands separator
    ["1,000,000 ants", 1000000],
    ["3/4 of it", 0.75],
    ["1/0", undefined],
    ["version v2", undefined], // part of a word
    ["x .5", 0.5],
    ["1.2.3", 1.2],
    ["007", 7],
    ["no digits here", undefined],
    ["", undefined],
    ["#### 42", 42],
    ["٣", undefined], // only ASCII digits are read
  ];
  for (const [text, want] of cases) {
    assertEquals(lastNumber(text), want, JSON.stringify(text));
  }
});

Deno.test("math answer compares the last numbers numerically", async () => {
  assertEquals(mathAnswer("", " 3 + 4 is 7.", "7"), 1);
  assertEquals(mathAnswer("", " 7.0", "#### 7"), 1);
  assertEquals(mathAnswer("", " 7, not 8", "7"), 0); // the last number counts
  assertEquals(mathAnswer("", "about 0.1+0.2 = 0.30000000000000004", "0.3"), 1);
  assertEquals(mathAnswer("", "1/2", "0.5"), 1);
  assertEquals(mathAnswer("", "I don't know", "7"), 0);
  assertEquals(mathAnswer("", "-7", "7"), 0);
  await assertThrows(() => mathAnswer("", "7", "seven"), GraderError, "no number");
});

Deno.test("graders by name, weighted sums, and scores checked to be in [0, 1]", async () => {
  assertEquals(graderByName("exact"), exactMatch);
  assertEquals(await graderByName("math")("", "12", "12"), 1);
  await assertThrows(() => graderByName("regex"), UnknownGraderError, "exact, contains");
  await assertThrows(() => graderByName("toString"), UnknownGraderError); // not a prototype key
  const g = weightedGrader([
    { grader: exactMatch, weight: 3 },
    { grader: similarity, weight: 1 },
  ]);
  assertEquals(await g("", "7.", "7"), (3 * 0 + 1 * 0.5) / 4);
  assertEquals(await g("", "7", "7"), 1);
  await assertThrows(() => weightedGrader([{ grader: exactMatch, weight: 0 }]), GraderError, "sum");
  await assertThrows(
    () => weightedGrader([{ grader: exactMatch, weight: -1 }, { grader: similarity, weight: 2 }]),
    GraderError,
    "≥ 0",
  );
  const bad = weightedGrader([{ grader: () => 2, weight: 1 }]);
  await assertThrows(() => bad("", "", ""), GraderError, "[0, 1]");
  const s = await gradeAll(mathAnswer, [
    { prompt: "1+1?", response: " 2.", reference: "2" },
    { prompt: "1+2?", response: " 4.", reference: "3" },
  ]);
  assertEquals(Array.from(s), [1, 0]);
  await assertThrows(
    () => gradeAll(() => NaN, [{ prompt: "p", response: "odd one", reference: "r" }]),
    GraderError,
    'sample 0 ("odd one")',
  );
});

Deno.test("a grader spec: a built-in by name, or a module through the loader", async () => {
  assertEquals(await graderFromSpec("grader:exact", {}), exactMatch);
  const dir = await Deno.makeTempDir();
  try {
    const good = `${dir}/grader.ts`;
    await Deno.writeTextFile(
      good,
      "export async function grade(_p: string, r: string, ref: string) {\n" +
        "  await Promise.resolve();\n  return r.trim().toLowerCase() === ref.toLowerCase() ? 1 : 0;\n}\n",
    );
    const io = { importModule: (p: string) => import(`file://${p}`) };
    const g = await graderFromSpec(good, io);
    assertEquals(await g("", " YES ", "yes"), 1);
    assertEquals(await g("", "no", "yes"), 0);
    const none = `${dir}/none.ts`;
    await Deno.writeTextFile(none, "export const score = () => 1;\n");
    await assertThrows(() => graderFromSpec(none, io), GraderError, "grade(");
    await assertThrows(() => graderFromSpec(good, {}), GraderError, "no module loader");
    await assertThrows(() => graderFromSpec("grader:nope", io), UnknownGraderError, "nope");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
