/**
 * Runs one of the project's CLIs (`cli/*.ts`) as a `deno run` subprocess, as a user would, and
 * collects its exit code and output (Deno only).
 *
 * @module
 */

/** What a CLI run left: its exit code, stdout and stderr. */
export interface CliResult {
  code: number;
  out: string;
  err: string;
}

/**
 * Runs `cli/<name>.ts` with `args`, reading and (with `write`, the default) writing files;
 * `cwd` is the working directory (default: this process's).
 */
export async function runCli(
  name: string,
  args: string[],
  o: { write?: boolean; cwd?: string; env?: Record<string, string> } = {},
): Promise<CliResult> {
  const path = new URL(`../cli/${name}.ts`, import.meta.url).pathname;
  const perms = ["--allow-env", "--allow-read", ...(o.write === false ? [] : ["--allow-write"])];
  const { code, stdout, stderr } = await new Deno.Command(Deno.execPath(), {
    args: ["run", ...perms, path, ...args],
    cwd: o.cwd,
    env: o.env,
    stdout: "piped",
    stderr: "piped",
  }).output();
  return { code, out: new TextDecoder().decode(stdout), err: new TextDecoder().decode(stderr) };
}
