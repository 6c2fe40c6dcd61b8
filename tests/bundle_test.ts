/**
 * The committed browser bundles under `dist/` must equal a fresh `deno task bundle` of the
 * current sources (pages import them from a URL with no build step, so a stale bundle would
 * silently serve old code).
 */
import { join, relative } from "node:path";
import { fileURLToPath } from "node:url";
import { buildBundles, BUNDLES, normalizeBundle } from "../cli/bundle.ts";
import { assert, assertEquals } from "./assert.ts";

const DIST = fileURLToPath(new URL("../dist", import.meta.url));

Deno.test("bundle: npm cache paths in module comments become npm: specifiers", () => {
  const raw =
    "// ../../home/u/.cache/deno/npm/registry.npmjs.org/uplot/1.6.32/dist/uPlot.esm.js\n" +
    "// ../x/npm/registry.npmjs.org/@scope/pkg/2.0.0/index.js\n// kernels/matmul.ts\n";
  assertEquals(
    normalizeBundle(raw),
    "// npm:uplot@1.6.32/dist/uPlot.esm.js\n// npm:@scope/pkg@2.0.0/index.js\n// kernels/matmul.ts\n",
  );
});

Deno.test({
  name: "bundle: dist/ is up to date with the sources (run `deno task bundle` if this fails)",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const out = await Deno.makeTempDir({ prefix: "bundle_" });
    try {
      const files = await buildBundles(out);
      assertEquals(files.length, BUNDLES.length + 1, "every bundle plus uPlot's stylesheet");
      const stale: string[] = [];
      for (const f of files) {
        const rel = relative(out, f);
        let committed: Uint8Array;
        try {
          committed = await Deno.readFile(join(DIST, rel));
        } catch {
          stale.push(`dist/${rel} is missing`);
          continue;
        }
        const fresh = await Deno.readFile(f);
        if (committed.length !== fresh.length || committed.some((b, i) => b !== fresh[i])) {
          stale.push(`dist/${rel} differs from a fresh build`);
        }
      }
      assert(stale.length === 0, `stale bundles: ${stale.join("; ")}; run \`deno task bundle\``);
    } finally {
      await Deno.remove(out, { recursive: true });
    }
  },
});
