/**
 * A small assertion module (Deno's std is not reachable here): close-to-reference checks with
 * stated tolerances, exact equality, and expected errors. Runtime-agnostic, so the same cases
 * run in Deno and in a browser page.
 *
 * @module
 */

/** Raised by failed assertions. */
export class AssertionError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "AssertionError";
  }
}

/** Fails with `message` unless `cond`. */
export function assert(cond: unknown, message = "assertion failed"): asserts cond {
  if (!cond) throw new AssertionError(message);
}

/** Strict equality for primitives, element-wise for arrays. */
export function assertEquals(actual: unknown, expected: unknown, message = ""): void {
  const a = JSON.stringify(toPlain(actual));
  const e = JSON.stringify(toPlain(expected));
  if (a !== e) {
    throw new AssertionError(`${message}${message ? ": " : ""}expected ${clip(e)}, got ${clip(a)}`);
  }
}

function toPlain(v: unknown): unknown {
  if (ArrayBuffer.isView(v)) return Array.from(v as unknown as ArrayLike<number>);
  return v;
}

function clip(s: string): string {
  return s.length > 400 ? s.slice(0, 400) + "…" : s;
}

/** Tolerance of {@link assertClose}: pass when `|a − e| ≤ atol + rtol·|e|` everywhere. */
export interface Tolerance {
  atol: number;
  rtol: number;
}

/**
 * Compares `actual` with a float64 reference element-wise and reports the worst element with
 * its index, the max absolute and relative errors.
 */
export function assertClose(
  actual: ArrayLike<number>,
  expected: ArrayLike<number>,
  tol: Tolerance,
  what = "values",
): { maxAbs: number; maxRel: number } {
  if (actual.length !== expected.length) {
    throw new AssertionError(`${what}: length ${actual.length}, expected ${expected.length}`);
  }
  let maxAbs = 0, maxRel = 0, worst = -1, worstExcess = 0;
  for (let i = 0; i < actual.length; i++) {
    const a = actual[i], e = expected[i];
    if (!Number.isFinite(a) && !(Number.isNaN(a) && Number.isNaN(e)) && a !== e) {
      throw new AssertionError(`${what}[${i}] = ${a}, expected ${e}`);
    }
    const d = Math.abs(a - e);
    maxAbs = Math.max(maxAbs, d);
    if (Math.abs(e) > 0) maxRel = Math.max(maxRel, d / Math.abs(e));
    const excess = d - (tol.atol + tol.rtol * Math.abs(e));
    if (excess > worstExcess) {
      worstExcess = excess;
      worst = i;
    }
  }
  if (worst >= 0) {
    throw new AssertionError(
      `${what}[${worst}] = ${actual[worst]}, expected ${expected[worst]} ` +
        `(max abs err ${maxAbs.toExponential(2)}, max rel err ${maxRel.toExponential(2)}, ` +
        `tolerance atol ${tol.atol} rtol ${tol.rtol})`,
    );
  }
  return { maxAbs, maxRel };
}

/** Expects `fn` to throw (or reject) an error of class `cls` whose message includes `includes`. */
export async function assertThrows(
  fn: () => unknown,
  // deno-lint-ignore no-explicit-any
  cls: new (...args: any[]) => Error,
  includes = "",
): Promise<Error> {
  try {
    await fn();
  } catch (e) {
    if (!(e instanceof cls)) {
      throw new AssertionError(`expected ${cls.name}, got ${(e as Error)?.name}: ${e}`);
    }
    if (!e.message.includes(includes)) {
      throw new AssertionError(`error message "${e.message}" lacks "${includes}"`);
    }
    return e;
  }
  throw new AssertionError(`expected ${cls.name} to be thrown`);
}
