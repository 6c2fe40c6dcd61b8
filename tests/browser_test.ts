/**
 * Headless Chromium (Debian's `chromium` + npm `playwright-core`; WebGPU on SwiftShader):
 * the repository is served on 127.0.0.1, then
 * 1. `web/tests.html` runs the shared kernel cases (the very list `kernels_test.ts` runs in
 *    Deno) from the committed bundle, against the same float64 references — all must pass;
 * 2. the committed library bundle is imported from its URL by plain page code and runs a kernel;
 * 3. the demo trains a short pipeline in its worker: loss falls, all charts draw, samples show,
 *    pause holds the run, the PPO checkpoint downloads; a screenshot is saved;
 * 4. a browser without WebGPU gets the explanatory banner.
 */
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";
import { serveDirectory } from "../cli/serve.ts";
import { ALL_CASES } from "./cases/all.ts";
import { assert, assertEquals } from "./assert.ts";

const ROOT = fileURLToPath(new URL("..", import.meta.url));
const CHROMIUM = "/usr/bin/chromium";
export const SCREENSHOT = join(ROOT, "runs", "browser", "demo.png");

const ARGS = [
  "--enable-unsafe-webgpu",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  "--no-first-run",
  "--disable-quic",
];

interface KernelState {
  done: boolean;
  total: number;
  results: { name: string; ok: boolean; ms: number; error?: string }[];
  adapter: string;
  error: string;
}

interface DemoProbe {
  state: string;
  records: { stage: string; m: Record<string, number> }[];
  charts(): { title: string; points: number[]; canvas: boolean }[];
  lastSamples: unknown[];
  summary?: Record<string, number>;
  error?: string;
}

Deno.test({
  name: "browser: kernel cases, bundle import from URL, and the demo training in headless Chromium",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn(t) {
    try {
      await Deno.stat(CHROMIUM);
    } catch {
      throw new Error(
        `${CHROMIUM} not found: install Debian's chromium (apt-get install -y chromium); ` +
          `.ci/run does this`,
      );
    }
    const server = serveDirectory(ROOT, { port: 0, quiet: true });
    const base = `http://127.0.0.1:${server.port}`;
    const browser = await chromium.launch({
      executablePath: CHROMIUM,
      headless: true,
      args: ARGS,
    });
    try {
      await t.step("the kernel cases pass in the page (same list as Deno)", async () => {
        const page = await browser.newPage();
        const errors: string[] = [];
        page.on("pageerror", (e) => errors.push(e.message));
        await page.goto(`${base}/web/tests.html`);
        await page.waitForFunction(
          () => (globalThis as unknown as { __kernelTests?: KernelState }).__kernelTests?.done,
          null,
          { timeout: 900_000, polling: 500 },
        );
        const s = await page.evaluate(() =>
          (globalThis as unknown as { __kernelTests: KernelState }).__kernelTests
        );
        assertEquals(s.error, "", "the page ran");
        assertEquals(errors, [], "no page errors");
        assertEquals(s.total, ALL_CASES.length, "the bundle holds the same case list");
        assertEquals(s.results.map((r) => r.name), ALL_CASES.map((c) => c.name));
        const failed = s.results.filter((r) => !r.ok).map((r) => `${r.name}: ${r.error}`);
        assertEquals(failed, [], "failed in the browser");
        const secs = s.results.reduce((a, r) => a + r.ms, 0) / 1000;
        console.log(
          `browser kernel cases: ${s.results.length}/${ALL_CASES.length} passed on ` +
            `${s.adapter} in ${secs.toFixed(1)} s`,
        );
        await page.close();
      });

      await t.step("plain page code imports the library bundle from its URL", async () => {
        const page = await browser.newPage();
        await page.goto(`${base}/web/tests.html?noop`);
        const r = await page.evaluate(async (url) => {
          const m = await import(url);
          const gpu = await m.Gpu.create();
          const a = gpu.fromArray(new Float32Array([1, 2, 3, 4, 5, 6]), [2, 3]);
          const w = gpu.fromArray(new Float32Array([1, 0, 0, 0, 1, 0, 0, 0, 1, 1, 1, 1]), [4, 3]);
          const y = await gpu.readF32(m.matmul(gpu, a, w, { transB: true }));
          return { y: Array.from(y), exports: Object.keys(m).length };
        }, `${base}/dist/webgpu-rlhf.js`);
        assertEquals(r.y, [1, 2, 3, 6, 4, 5, 6, 15]);
        assert(r.exports > 100, `the bundle exports the public API (${r.exports} names)`);
        await page.close();
      });

      await t.step("the demo trains in its worker: loss falls, charts draw", async () => {
        const context = await browser.newContext({
          acceptDownloads: true,
          viewport: { width: 1400, height: 1300 },
        });
        const page = await context.newPage();
        const errors: string[] = [];
        page.on("pageerror", (e) => errors.push(e.message));
        // a budget for CI: few steps, so SFT at the short-run learning rate
        const q =
          "task.policyPrompts=8&rm.loss=pairwise&sft.steps=60&sft.lr=0.003&rm.steps=30&ppo.iterations=4" +
          "&run.evalSamples=1&autostart=1";
        await page.goto(`${base}/web/?${q}`);
        const probe = () =>
          page.evaluate(() => {
            const d = (globalThis as unknown as { __demo: DemoProbe }).__demo;
            return {
              state: d.state,
              records: d.records,
              charts: d.charts(),
              samples: d.lastSamples.length,
              summary: d.summary,
              error: d.error,
            };
          });
        // pause as soon as SFT has logged: no new records while paused
        await page.waitForFunction(
          () => (globalThis as unknown as { __demo: DemoProbe }).__demo.records.length >= 1,
          null,
          { timeout: 120_000, polling: 100 },
        );
        await page.click("#pause");
        await page.waitForFunction(
          () => (globalThis as unknown as { __demo: DemoProbe }).__demo.state === "paused",
          null,
          { timeout: 10_000 },
        );
        const held = (await probe()).records.length;
        await new Promise((r) => setTimeout(r, 3000));
        assert((await probe()).records.length <= held + 1, "pause holds the run");
        await page.click("#pause"); // continue
        await page.waitForFunction(
          () => {
            const d = (globalThis as unknown as { __demo: DemoProbe }).__demo;
            return d.state === "done" || d.state === "error";
          },
          null,
          { timeout: 600_000, polling: 500 },
        );
        const s = await probe();
        assertEquals(s.error, undefined, "no error in the run");
        assertEquals(errors, [], "no page errors");
        const sft = s.records.filter((r) => r.stage === "sft").map((r) => r.m["sft/loss"]);
        assertEquals(sft.length, 6, "SFT logs every 10 steps");
        assert(sft[5] < 0.6 * sft[0], `SFT loss falls in the tab: ${sft[0]} → ${sft[5]}`);
        const ppo = s.records.filter((r) => r.stage === "ppo");
        assertEquals(ppo.length, 4, "one record per PPO iteration");
        for (const c of s.charts) {
          assert(c.canvas, `${c.title}: drawn on a canvas`);
          assert(c.points.some((n) => n >= 4), `${c.title}: has points (${c.points})`);
        }
        // the plotted lines are real pixels, not an empty canvas
        const inked = await page.evaluate(() =>
          [...document.querySelectorAll<HTMLCanvasElement>(".uplot canvas")].map((cv) => {
            const d = cv.getContext("2d")!.getImageData(0, 0, cv.width, cv.height).data;
            let n = 0;
            for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++;
            return n;
          })
        );
        assertEquals(inked.length, 5, "five charts");
        assert(inked.every((n) => n > 200), `every chart has drawn lines: ${inked}`);
        assert(s.samples > 0, "sample generations are shown");
        assert(s.summary && Number.isFinite(s.summary["gold/after"]), "the summary arrives");
        const rows = await page.locator("#samples tbody tr").count();
        assert(rows > 0, "the samples table is filled");
        // the PPO checkpoint saved in the browser (OPFS) downloads as two files
        await page.selectOption("#stage", "ppo");
        const downloads: string[] = [];
        page.on("download", (d) => downloads.push(d.suggestedFilename()));
        await page.click("#download");
        await page.waitForFunction(() => true, null, { timeout: 1000 });
        for (let i = 0; i < 50 && downloads.length < 2; i++) {
          await new Promise((r) => setTimeout(r, 100));
        }
        assertEquals(downloads.sort(), ["ppo-config.json", "ppo-model.safetensors"]);
        await Deno.mkdir(join(ROOT, "runs", "browser"), { recursive: true });
        await page.screenshot({ path: SCREENSHOT, fullPage: true });
        console.log(
          `demo in Chromium: SFT loss ${sft[0].toFixed(3)} → ${sft[5].toFixed(3)}, ` +
            `gold ${s.summary!["gold/before"].toFixed(3)} → ${
              s.summary!["gold/after"].toFixed(3)
            }, ${s.summary!.wall_seconds.toFixed(0)} s; screenshot ${SCREENSHOT}`,
        );
        await context.close();
      });

      await t.step("DPO trains in the tab with its own charts (loss, margin, gold)", async () => {
        const page = await browser.newPage({ viewport: { width: 1400, height: 1300 } });
        const errors: string[] = [];
        page.on("pageerror", (e) => errors.push(e.message));
        const q = "method=dpo&sft.steps=60&sft.lr=0.003&data.prompts=16&m.steps=40&m.lr=0.0003" +
          "&run.evalSamples=1&autostart=1";
        await page.goto(`${base}/web/?${q}`);
        await page.waitForFunction(
          () => {
            const d = (globalThis as unknown as { __demo: DemoProbe }).__demo;
            return d.state === "done" || d.state === "error";
          },
          null,
          { timeout: 600_000, polling: 500 },
        );
        const s = await page.evaluate(() => {
          const d = (globalThis as unknown as { __demo: DemoProbe }).__demo;
          return { records: d.records, charts: d.charts(), summary: d.summary, error: d.error };
        });
        assertEquals(s.error, undefined, "no error in the run");
        assertEquals(errors, [], "no page errors");
        const dpo = s.records.filter((r) => r.stage === "dpo");
        assertEquals(dpo.length, 4, "DPO logs every 10 steps");
        assert(dpo.every((r) => Number.isFinite(r.m["dpo/loss"])), "finite DPO losses");
        assertEquals(
          s.charts.map((c) => c.title.split(":")[0]),
          ["Gold view", "Gold parts", "loss", "preference", "KL to the reference (objective/kl)"],
        );
        for (const c of s.charts) {
          assert(c.canvas && c.points.some((n) => n >= 2), `${c.title}: has points (${c.points})`);
        }
        assert(s.summary && Number.isFinite(s.summary["gold/after"]), "the summary arrives");
        console.log(
          `DPO in Chromium: loss ${dpo[0].m["dpo/loss"].toFixed(3)} → ${
            dpo[3].m["dpo/loss"].toFixed(3)
          }, gold ${s.summary!["gold/before"].toFixed(3)} → ${s.summary!["gold/after"].toFixed(3)}`,
        );
        await page.close();
      });

      await t.step("GRPO trains in the tab with the math grader and its own charts", async () => {
        const page = await browser.newPage({ viewport: { width: 1400, height: 1300 } });
        const errors: string[] = [];
        page.on("pageerror", (e) => errors.push(e.message));
        const q = "method=grpo&sft.steps=60&sft.lr=0.003&grpo.iterations=3" +
          "&grpo.numGenerations=2&run.evalSamples=1&autostart=1";
        await page.goto(`${base}/web/?${q}`);
        await page.waitForFunction(
          () => {
            const d = (globalThis as unknown as { __demo: DemoProbe }).__demo;
            return d.state === "done" || d.state === "error";
          },
          null,
          { timeout: 600_000, polling: 500 },
        );
        const s = await page.evaluate(() => {
          const d = (globalThis as unknown as { __demo: DemoProbe }).__demo;
          return { records: d.records, charts: d.charts(), summary: d.summary, error: d.error };
        });
        assertEquals(s.error, undefined, "no error in the run");
        assertEquals(errors, [], "no page errors");
        const grpo = s.records.filter((r) => r.stage === "grpo");
        assertEquals(grpo.length, 3, "one record per GRPO iteration");
        assert(grpo.every((r) => Number.isFinite(r.m.reward) && Number.isFinite(r.m.loss)));
        assertEquals(
          s.charts.map((c) => c.title.split(":")[0]),
          ["Gold view", "Gold parts", "loss", "GRPO", "GRPO"],
        );
        for (const c of s.charts) {
          assert(c.canvas && c.points.some((n) => n >= 2), `${c.title}: has points (${c.points})`);
        }
        assert(s.summary && Number.isFinite(s.summary["gold/after"]), "the summary arrives");
        console.log(
          `GRPO in Chromium: reward ${grpo.map((r) => r.m.reward.toFixed(3)).join(" → ")}, gold ${
            s.summary!["gold/before"].toFixed(3)
          } → ${s.summary!["gold/after"].toFixed(3)}`,
        );
        await page.close();
      });

      await t.step("without WebGPU the demo says so", async () => {
        const page = await browser.newPage();
        await page.addInitScript(() => {
          delete (Navigator.prototype as unknown as { gpu?: unknown }).gpu;
        });
        await page.goto(`${base}/web/`);
        const banner = page.locator("#nogpu");
        await banner.waitFor({ state: "visible", timeout: 10_000 });
        assert((await banner.textContent())!.includes("no WebGPU"), "the banner explains");
        assert(await page.locator("#start").isDisabled(), "start is disabled");
        await page.close();
      });
    } finally {
      await browser.close();
      await server.shutdown();
    }
  },
});
