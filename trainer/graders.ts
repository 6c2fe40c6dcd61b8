/**
 * Graders: rewards computed from text instead of a learned reward model (the alignment seed's
 * reinforcement fine-tuning). A grader maps `(prompt, response, reference)` to a score in
 * [0, 1]; the online methods turn scores into advantages. Pure TypeScript, no GPU.
 *
 * | name         | score                                                                      |
 * |--------------|----------------------------------------------------------------------------|
 * | `exact`      | 1 when the trimmed response equals the trimmed reference                   |
 * | `contains`   | 1 when the response contains the trimmed reference                         |
 * | `similarity` | `1 − lev(a, b) / max(|a|, |b|)` over code points of the trimmed texts      |
 * | `math`       | 1 when the last number of the response equals the reference's numerically |
 *
 * {@link weightedGrader} combines graders; {@link graderFromSpec} resolves `grader:NAME` or a
 * user's module that exports `grade(prompt, response, reference)`.
 *
 * @module
 */

/** A grader: a score in [0, 1] for one response (async graders may return a promise). */
export type Grader = (
  prompt: string,
  response: string,
  reference: string,
) => number | Promise<number>;

/** A grader returned a score outside [0, 1], or was given input it cannot grade. */
export class GraderError extends Error {
  /** The error's name, for `catch` by name. */
  override name = "GraderError";
}

/** A grader name that is not one of {@link GRADER_NAMES}. */
export class UnknownGraderError extends Error {
  /** The error's name, for `catch` by name. */
  override name = "UnknownGraderError";
}

/**
 * 1 when the trimmed response equals the trimmed reference, else 0 (case-sensitive).
 *
 * @example
 * ```ts
 * import { exactMatch } from "../mod.ts";
 * console.log(exactMatch("", " 7. ", "7."), exactMatch("", "7", "7.")); // 1 0
 * ```
 */
export function exactMatch(_prompt: string, response: string, reference: string): number {
  return response.trim() === reference.trim() ? 1 : 0;
}

/**
 * 1 when the response contains the trimmed reference, else 0 (case-sensitive). An empty
 * reference is a {@link GraderError}: every response would contain it.
 *
 * @example
 * ```ts
 * import { contains } from "../mod.ts";
 * console.log(contains("", "It is 7, sure.", " 7")); // 1
 * ```
 */
export function contains(_prompt: string, response: string, reference: string): number {
  const ref = reference.trim();
  if (ref === "") throw new GraderError("contains: the reference is empty");
  return response.includes(ref) ? 1 : 0;
}

/**
 * Levenshtein distance between `a` and `b` over Unicode code points (insert, delete and
 * substitute cost 1), in O(|a|·|b|) time and O(|b|) memory.
 *
 * @example
 * ```ts
 * import { levenshtein } from "../mod.ts";
 * console.log(levenshtein("kitten", "sitting")); // 3
 * ```
 */
export function levenshtein(a: string, b: string): number {
  const x = Array.from(a), y = Array.from(b);
  if (x.length === 0) return y.length;
  if (y.length === 0) return x.length;
  let prev = Array.from({ length: y.length + 1 }, (_, j) => j);
  let cur = new Array<number>(y.length + 1);
  for (let i = 1; i <= x.length; i++) {
    cur[0] = i;
    for (let j = 1; j <= y.length; j++) {
      const sub = prev[j - 1] + (x[i - 1] === y[j - 1] ? 0 : 1);
      cur[j] = Math.min(sub, prev[j] + 1, cur[j - 1] + 1);
    }
    [prev, cur] = [cur, prev];
  }
  return prev[y.length];
}

/**
 * Edit-distance similarity of the trimmed texts: `1 − lev(a, b) / max(|a|, |b|)` (code points;
 * two empty texts are identical, 1).
 *
 * @example
 * ```ts
 * import { similarity } from "../mod.ts";
 * console.log(similarity("", "kitten", "sitting").toFixed(3)); // "0.571"
 * ```
 */
export function similarity(_prompt: string, response: string, reference: string): number {
  const a = response.trim(), b = reference.trim();
  const n = Math.max(Array.from(a).length, Array.from(b).length);
  return n === 0 ? 1 : 1 - levenshtein(a, b) / n;
}

// A number: optional sign (ASCII or Unicode minus) when it does not follow a digit or letter,
// digits with optional thousands separators, an optional decimal part, an optional fraction.
const NUMBER =
  /(?<![\p{L}\p{N}.])([-\u2212])?((?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+)(?:\/(\d+(?:\.\d+)?))?/gu;

/**
 * The last number written in `text`, or `undefined`: integers, decimals, thousands separators
 * (`1,234`), a leading minus that is a sign rather than an operator (`-3`, `−3`, but `5-3`
 * is 5 and 3), fractions (`3/4`); a sentence's final period is not a decimal point.
 *
 * @example
 * ```ts
 * import { lastNumber } from "../mod.ts";
 * console.log(lastNumber("2 + 5 = 7."), lastNumber("owes -1,250.5"), lastNumber("none")); // 7 -1250.5 undefined
 * ```
 */
export function lastNumber(text: string): number | undefined {
  let last: number | undefined;
  for (const m of text.matchAll(NUMBER)) {
    let v = Number(m[2].replaceAll(",", ""));
    if (m[3] !== undefined) {
      const d = Number(m[3]);
      if (d === 0) continue; // "1/0" is not a number
      v /= d;
    }
    last = m[1] ? -v : v;
  }
  return last;
}

/**
 * 1 when the last number of the response equals the reference's last number (GSM8K's
 * `#### 42` works as a reference), compared with relative tolerance 1e-9; 0 when the
 * response has no number. A reference without a number is a {@link GraderError}.
 *
 * @example
 * ```ts
 * import { mathAnswer } from "../mod.ts";
 * console.log(mathAnswer("", " 3 + 4 is 7.", "7"), mathAnswer("", " 7.0", "#### 7")); // 1 1
 * ```
 */
export function mathAnswer(_prompt: string, response: string, reference: string): number {
  const want = lastNumber(reference);
  if (want === undefined) {
    throw new GraderError(`math: the reference ${JSON.stringify(reference)} has no number`);
  }
  const got = lastNumber(response);
  if (got === undefined) return 0;
  return Math.abs(got - want) <= 1e-9 * Math.max(1, Math.abs(want)) ? 1 : 0;
}

/** The built-in graders by name. */
export const GRADERS: Readonly<Record<string, Grader>> = {
  exact: exactMatch,
  contains,
  similarity,
  math: mathAnswer,
};

/** The names `graderByName` accepts. */
export const GRADER_NAMES: readonly string[] = Object.keys(GRADERS);

/**
 * A built-in grader by name; a {@link UnknownGraderError} lists the names otherwise.
 *
 * @example
 * ```ts
 * import { graderByName } from "../mod.ts";
 * console.log(graderByName("math")("", "It is 12", "12")); // 1
 * ```
 */
export function graderByName(name: string): Grader {
  const g = Object.hasOwn(GRADERS, name) ? GRADERS[name] : undefined;
  if (!g) {
    throw new UnknownGraderError(
      `unknown grader "${name}" (built-in: ${GRADER_NAMES.join(", ")}; or a module path)`,
    );
  }
  return g;
}

/**
 * The weighted mean `Σ wᵢ·gᵢ / Σ wᵢ` of graders (weights ≥ 0, not all 0), so it stays in
 * [0, 1].
 *
 * @example Half exact match, half similarity
 * ```ts
 * import { exactMatch, similarity, weightedGrader } from "../mod.ts";
 * const g = weightedGrader([{ grader: exactMatch, weight: 1 }, { grader: similarity, weight: 1 }]);
 * console.log(await g("", "7.", "7")); // 0.25
 * ```
 */
export function weightedGrader(parts: readonly { grader: Grader; weight: number }[]): Grader {
  const total = parts.reduce((s, p) => s + p.weight, 0);
  for (const p of parts) {
    if (!(Number.isFinite(p.weight) && p.weight >= 0)) {
      throw new GraderError(`weightedGrader: weight ${p.weight} is not a finite number ≥ 0`);
    }
  }
  if (!(total > 0)) throw new GraderError("weightedGrader: the weights sum to 0");
  return async (prompt, response, reference) => {
    let s = 0;
    for (const p of parts) {
      if (p.weight > 0) s += p.weight * checkScore(await p.grader(prompt, response, reference));
    }
    return s / total;
  };
}

function checkScore(v: unknown, where = ""): number {
  if (typeof v !== "number" || !(v >= 0 && v <= 1)) {
    throw new GraderError(`grader returned ${String(v)}${where}; scores must be numbers in [0, 1]`);
  }
  return v;
}

/**
 * Grades every sample and checks every score is a number in [0, 1] (a {@link GraderError}
 * names the sample otherwise).
 *
 * @example
 * ```ts
 * import { gradeAll, mathAnswer } from "../mod.ts";
 * const s = await gradeAll(mathAnswer, [{ prompt: "1+1?", response: " 2.", reference: "2" }]);
 * console.log(s); // Float32Array [ 1 ]
 * ```
 */
export async function gradeAll(
  grader: Grader,
  samples: readonly { prompt: string; response: string; reference: string }[],
): Promise<Float32Array> {
  const out = new Float32Array(samples.length);
  for (let i = 0; i < samples.length; i++) {
    const s = samples[i];
    out[i] = checkScore(
      await grader(s.prompt, s.response, s.reference),
      ` for sample ${i} (${JSON.stringify(s.response.slice(0, 40))})`,
    );
  }
  return out;
}

/**
 * The grader a spec names: `grader:NAME` (a built-in), or a module path or URL loaded with
 * `io.importModule` that exports `grade(prompt, response, reference)`. A missing export is a
 * {@link GraderError}; no module loader (e.g. in a browser tab) a {@link GraderError} too.
 *
 * @example A module from a data URL, through a loader
 * ```ts
 * import { graderFromSpec } from "../mod.ts";
 * const src = "export const grade = (_p, r, ref) => (r.includes(ref) ? 1 : 0);";
 * const io = { importModule: (p: string) => import(p) };
 * const g = await graderFromSpec(`data:text/javascript,${encodeURIComponent(src)}`, io);
 * console.log(await g("", "yes 7", "7")); // 1
 * ```
 */
export async function graderFromSpec(
  spec: string,
  io: { importModule?(path: string): Promise<Record<string, unknown>> },
): Promise<Grader> {
  if (spec.startsWith("grader:")) return graderByName(spec.slice("grader:".length));
  if (!io.importModule) {
    throw new GraderError(`${spec}: grader modules cannot be loaded here (no module loader)`);
  }
  const mod = await io.importModule(spec);
  if (typeof mod.grade !== "function") {
    throw new GraderError(`${spec} does not export a function grade(prompt, response, reference)`);
  }
  return mod.grade as Grader;
}
