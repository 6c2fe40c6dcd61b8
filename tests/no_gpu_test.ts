/**
 * A machine without a WebGPU adapter still runs the CPU-only checks: a separate `deno test` with
 * a backend this machine lacks (`DENO_WEBGPU_BACKEND=dx12` on Linux: no adapter) ignores every
 * GPU test with one message and passes the tokenizer, safetensors, gold, config and reference
 * cases.
 */
import { assert, assertEquals } from "./assert.ts";

Deno.test({
  name: "no adapter: GPU tests are ignored with a message; CPU-only checks run and pass",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const r = await new Deno.Command(Deno.execPath(), {
      args: [
        "test",
        "-A",
        "--no-check",
        new URL("./kernels_test.ts", import.meta.url).pathname,
        new URL("./gold_test.ts", import.meta.url).pathname,
        new URL("./trainer_test.ts", import.meta.url).pathname,
      ],
      env: { DENO_WEBGPU_BACKEND: "dx12", WEBGPU_RLHF_REQUIRE_GPU: "", NO_COLOR: "1" },
      stdout: "piped",
      stderr: "piped",
    }).output();
    const out = new TextDecoder().decode(r.stdout) + new TextDecoder().decode(r.stderr);
    assertEquals(r.code, 0, out.slice(-3000));
    assert(out.includes("no WebGPU adapter: GPU tests are ignored"), "the message is printed");
    const m = out.match(/ok \| (\d+) passed[^|]*\| 0 failed \| (\d+) ignored/);
    assert(m, `summary line: ${out.slice(-500)}`);
    const [passed, ignored] = [Number(m[1]), Number(m[2])];
    assert(passed >= 15, `CPU-only checks ran: ${passed} passed`);
    assert(ignored >= 100, `GPU tests were ignored: ${ignored}`);
    for (const name of ["tokenizer: byte-level round-trips", "safetensors: malformed files"]) {
      assert(new RegExp(`${name}[^\\n]*\\.\\.\\. ok`).test(out), `${name} ran`);
    }
    assert(/sft: completion-only[^\n]*\.\.\. ignored/.test(out), "a GPU test was ignored");
  },
});
