/**
 * `deno task serve [--port=8000]`: serves the repository over HTTP on 127.0.0.1 — the demo at
 * `/web/`, the browser bundle at `/dist/webgpu-rlhf.js`, and `mod.ts` with its sources for
 * importing from a URL. Also used by the tests (URL import, headless Chromium).
 *
 * @module
 */

import { extname, join, normalize, resolve, sep } from "node:path";
import { UsageError } from "./args.ts";

const TYPES: Record<string, string> = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript; charset=utf-8",
  ".mjs": "text/javascript; charset=utf-8",
  ".ts": "application/typescript; charset=utf-8",
  ".json": "application/json; charset=utf-8",
  ".css": "text/css; charset=utf-8",
  ".svg": "image/svg+xml",
  ".png": "image/png",
  ".wgsl": "text/plain; charset=utf-8",
  ".md": "text/markdown; charset=utf-8",
  ".txt": "text/plain; charset=utf-8",
  ".jsonl": "text/plain; charset=utf-8",
  ".safetensors": "application/octet-stream",
};

/** A running static server. */
export interface StaticServer {
  port: number;
  shutdown(): Promise<void>;
}

/**
 * Serves the files under `root` (GET/HEAD; `index.html` for folders; `/` redirects to
 * `/web/`). Paths outside `root` — also through symbolic links — and dot-files or dot-folders
 * (`.git/`) are refused with 403; a malformed request is a 400, never a stack trace. Listens on 127.0.0.1 (`port` 0 = any free port).
 */
export function serveDirectory(
  root: string,
  opts: { port?: number; quiet?: boolean } = {},
): StaticServer {
  const top = resolve(root), realTop = Deno.realPathSync(top);
  const server = Deno.serve(
    { hostname: "127.0.0.1", port: opts.port ?? 8000, onListen: () => {} },
    async (req) => {
      if (req.method !== "GET" && req.method !== "HEAD") {
        return new Response("method not allowed", { status: 405 });
      }
      const url = new URL(req.url);
      if (url.pathname === "/") return Response.redirect(new URL("/web/", url), 302);
      let decoded: string;
      try {
        decoded = decodeURIComponent(url.pathname);
      } catch {
        return new Response("bad request: malformed percent escape", { status: 400 });
      }
      if (decoded.includes("\0")) return new Response("bad request", { status: 400 });
      // no dot-folders or dot-files (.git, .ci, …)
      if (decoded.split("/").some((part) => part.startsWith("."))) {
        return new Response("forbidden", { status: 403 });
      }
      const inside = (p: string) => p === realTop || p.startsWith(realTop + sep);
      let path = normalize(join(top, decoded));
      if (path !== top && !path.startsWith(top + sep)) {
        return new Response("forbidden", { status: 403 });
      }
      try {
        // the real path, links resolved: a symlink may not lead out of the served root
        path = await Deno.realPath(path);
        if (!inside(path)) return new Response("forbidden", { status: 403 });
        let info = await Deno.stat(path);
        if (info.isDirectory) {
          if (!url.pathname.endsWith("/")) {
            return Response.redirect(new URL(url.pathname + "/", url), 301);
          }
          path = await Deno.realPath(join(path, "index.html"));
          if (!inside(path)) return new Response("forbidden", { status: 403 });
          info = await Deno.stat(path);
        }
        const headers = {
          "content-type": TYPES[extname(path)] ?? "application/octet-stream",
          "cache-control": "no-cache",
        };
        if (req.method === "HEAD") return new Response(null, { headers });
        const file = await Deno.open(path, { read: true });
        return new Response(file.readable, { headers });
      } catch (e) {
        if (e instanceof Deno.errors.NotFound) {
          return new Response(`not found: ${url.pathname}`, { status: 404 });
        }
        return new Response("server error", { status: 500 });
      }
    },
  );
  if (!opts.quiet) {
    console.error(`serving ${top} at http://127.0.0.1:${server.addr.port}/ (demo: /web/)`);
  }
  return { port: server.addr.port, shutdown: () => server.shutdown() };
}

if (import.meta.main) {
  let port = 8000;
  for (const a of Deno.args) {
    const m = /^--port=(\d+)$/.exec(a);
    if (m) port = Number(m[1]);
    else {
      console.error(`serve: ${new UsageError(`unknown argument "${a}" (use --port=N)`).message}`);
      Deno.exit(2);
    }
  }
  serveDirectory(new URL("..", import.meta.url).pathname, { port });
}
