/**
 * A small command-line parser: `--key value`, `--key=value` and boolean `--flag`, checked
 * against a spec so that unknown keys and wrong types are errors that name the flag.
 *
 * @module
 */

import { NonFiniteValueError } from "../kernels/errors.ts";
import { coerce, ConfigError, type SectionSchemas } from "../trainer/config.ts";

/** Raised for bad command-line input; `main` prints the message and exits with status 2. */
export class UsageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "UsageError";
  }
}

/** The type of each accepted flag. */
export type ArgSpec = Record<string, "string" | "number" | "int" | "boolean">;

/** Parsed flags (by spec key) and positional arguments. */
export interface ParsedArgs {
  flags: Record<string, string | number | boolean>;
  positional: string[];
}

/**
 * Parses `argv` against `spec` (keys as written on the command line, without `--`).
 *
 * @example
 * ```ts
 * import { parseArgs } from "./args.ts";
 * const a = parseArgs(["ckpt", "--top-k=5", "--greedy"], { "top-k": "int", greedy: "boolean" });
 * console.log(a.flags["top-k"], a.flags.greedy, a.positional); // 5 true ["ckpt"]
 * ```
 */
export function parseArgs(
  argv: readonly string[],
  spec: ArgSpec,
  o: {
    /**
     * Config sections: `--<section>.<key>=value` is checked against the section's schema,
     * converted to the field's type and returned under its dotted name.
     */
    sections?: SectionSchemas;
    /** Positional arguments are an error (default: allowed). */
    noPositional?: boolean;
  } = {},
): ParsedArgs {
  const flags: Record<string, string | number | boolean> = {};
  const positional: string[] = [];
  const sections = o.sections ?? {};
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (!a.startsWith("--")) {
      if (o.noPositional) throw new UsageError(`unexpected argument "${a}"`);
      positional.push(a);
      continue;
    }
    const eq = a.indexOf("=");
    const key = a.slice(2, eq < 0 ? undefined : eq);
    const dot = key.indexOf(".");
    if (dot > 0 && key.slice(0, dot) in sections) {
      const value = eq < 0 ? argv[++i] : a.slice(eq + 1);
      if (value === undefined) throw new UsageError(`--${key} needs a value`);
      flags[key] = coerce(sections[key.slice(0, dot)], key.slice(dot + 1), value) as
        | string
        | number
        | boolean;
      continue;
    }
    const type = spec[key];
    if (!type) {
      const names = Object.keys(sections);
      throw new UsageError(
        `unknown option --${key} (known: ${
          [
            ...Object.keys(spec).map((k) => `--${k}`),
            ...(names.length ? [`--<${names.join("|")}>.<key>=value`] : []),
          ].join(", ")
        })`,
      );
    }
    let raw: string | undefined = eq < 0 ? undefined : a.slice(eq + 1);
    if (type === "boolean") {
      if (raw !== undefined && raw !== "true" && raw !== "false") {
        throw new UsageError(`--${key} is a flag (true/false), got "${raw}"`);
      }
      flags[key] = raw !== "false";
      continue;
    }
    if (raw === undefined) {
      raw = argv[++i];
      if (raw === undefined) throw new UsageError(`--${key} needs a value`);
    }
    if (type === "string") flags[key] = raw;
    else {
      const n = Number(raw);
      if (raw.trim() === "" || !Number.isFinite(n) || (type === "int" && !Number.isInteger(n))) {
        throw new UsageError(
          `--${key} must be ${type === "int" ? "an integer" : "a number"}, got "${raw}"`,
        );
      }
      flags[key] = n;
    }
  }
  return { flags, positional };
}

/**
 * Runs a training CLI's `main` and turns its errors into exit codes and one line on stderr,
 * prefixed with the command's name: a bad command line or config exits 2; a non-finite value
 * (training diverged) exits 1 and says that the last good checkpoints are intact; anything else
 * exits 1 with its name and message.
 */
export async function runMain(command: string, main: () => Promise<void>): Promise<void> {
  try {
    await main();
  } catch (e) {
    const err = e as Error;
    if (e instanceof UsageError || e instanceof ConfigError) {
      console.error(`${command}: ${err.message}`);
      Deno.exit(2);
    }
    if (e instanceof NonFiniteValueError) {
      console.error(
        `${command}: stopped — ${err.name}: ${err.message} (no checkpoint was overwritten: the last good ones are intact)`,
      );
      Deno.exit(1);
    }
    console.error(`${command}: ${err.name}: ${err.message}`);
    Deno.exit(1);
  }
}
