/**
 * How the CLIs read a run's files and a user's modules on this machine (the core never touches
 * `Deno.*`: pipelines get this as their `RecipeIo`).
 *
 * @module
 */

import { resolve } from "node:path";
import { pathToFileURL } from "node:url";
import type { RecipeIo } from "../trainer/recipe.ts";

/**
 * The files and modules of a run on this machine: reads with Deno, imports a user's module
 * (`--reward=./my_grader.ts`) by its path relative to the working directory, or a URL.
 */
export const LOCAL_IO: RecipeIo = {
  read: (p) => Deno.readFile(p),
  importModule: (p) =>
    import(/^[a-z][a-z0-9+.-]*:\/\//i.test(p) ? p : pathToFileURL(resolve(p)).href),
};
