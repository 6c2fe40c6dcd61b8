/**
 * `deno task generate` end to end: a checkpoint directory written by the project, the CLI run
 * as a subprocess, its JSON compared with in-process generation; argument and file errors.
 */
import { saveOptModel } from "../model/checkpoint.ts";
import { OPT_PRESETS } from "../model/config.ts";
import { generate } from "../model/generate.ts";
import { OptModel } from "../model/opt.ts";
import { ByteTokenizer } from "../model/tokenizer.ts";
import { parseArgs, UsageError } from "../cli/args.ts";
import { readCheckpointDir, writeCheckpointDir } from "../cli/checkpoint_files.ts";
import { assert, assertClose, assertEquals, assertThrows } from "./assert.ts";
import { gpu, noGpu } from "./_gpu.ts";
import { runCli } from "./_cli.ts";

const generateCli = (args: string[]) => runCli("generate", args, { write: false });

Deno.test({
  name: "generate CLI --best-of: N samples scored by a reward model or a grader, the best marked",
  ignore: noGpu,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const dir = await Deno.makeTempDir(), rmDir = `${dir}/rm`, polDir = `${dir}/policy`;
    const policy = OptModel.create(gpu, OPT_PRESETS.tiny, { seed: 4 });
    const rm = OptModel.create(gpu, OPT_PRESETS.tiny, { seed: 5, valueHead: true });
    rm.store.init(5, 0.3);
    await writeCheckpointDir(polDir, await saveOptModel(policy));
    await writeCheckpointDir(rmDir, await saveOptModel(rm));
    const args = [polDir, "--prompt", "Q:", "--max-new-tokens=5", "--best-of=5", "--json"];
    const r = await generateCli([...args, "--reward", rmDir]);
    assertEquals(r.code, 0, r.err);
    const got = JSON.parse(r.out) as {
      best: number;
      samples: { text: string; score: number; truncated: boolean }[];
    };
    assertEquals(got.samples.length, 5);
    const scores = got.samples.map((x) => x.score);
    assertEquals(got.best, scores.indexOf(Math.max(...scores)));
    assert(new Set(scores).size > 1, `a random reward model scores samples apart: ${scores}`);
    // a grader against --reference: the scores are the grader's
    const g = await generateCli([...args, "--reward", "grader:similarity", "--reference", "abc"]);
    assertEquals(g.code, 0, g.err);
    for (const x of JSON.parse(g.out).samples) assert(x.score >= 0 && x.score <= 1, g.out);
    const plain = await generateCli([
      polDir,
      "--prompt",
      "Q:",
      "--max-new-tokens=5",
      "--best-of=3",
      "--reward=grader:exact",
      "--reference=x",
    ]);
    assert(
      plain.code === 0 && plain.out.includes("best of 3 (grader:exact)"),
      plain.out + plain.err,
    );
    const noReward = await generateCli([polDir, "--prompt", "Q:", "--best-of=3"]);
    assert(noReward.code === 2 && noReward.err.includes("--best-of needs --reward"), noReward.err);
    const notRm = await generateCli([...args, "--reward", polDir]);
    assert(notRm.code === 2 && notRm.err.includes("not a reward model"), notRm.err);
    const ids = await generateCli([
      polDir,
      "--prompt-ids",
      "2,5",
      "--best-of=2",
      "--reward=grader:exact",
    ]);
    assert(ids.code === 2 && ids.err.includes("needs --prompt TEXT"), ids.err);
    for (const m of [policy, rm]) m.store.dispose();
    await Deno.remove(dir, { recursive: true });
  },
});

Deno.test({
  name: "generate CLI: --json output equals in-process greedy generation; errors are named",
  ignore: noGpu,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const dir = await Deno.makeTempDir();

    const model = OptModel.create(gpu, OPT_PRESETS.tiny, { seed: 3 });
    model.store.init(3, 0.3);
    await writeCheckpointDir(dir, await saveOptModel(model));
    const back = await readCheckpointDir(dir);
    assert(back.weights.length > 0 && back.vocab === undefined, "written and read back");
    const tok = new ByteTokenizer();
    const ids = tok.encode("hello");
    const ref = await generate(
      model,
      gpu.fromArray(Int32Array.from(ids), [1, ids.length]),
      gpu.fromArray(new Float32Array(ids.length).fill(1), [1, ids.length]),
      { maxNewTokens: 6, greedy: true },
    );
    const all = await gpu.read(ref.tokens), lps = await gpu.readF32(ref.logprobs);
    const resp = await gpu.readF32(ref.responseMask);
    const want: number[] = [];
    for (let t = 0; t < ref.generated && resp[ids.length + t] === 1; t++) {
      want.push(all[ids.length + t]);
    }
    const r = await generateCli([
      dir,
      "--prompt",
      "hello",
      "--greedy",
      "--max-new-tokens=6",
      "--json",
    ]);
    assertEquals(r.code, 0, r.err);
    const got = JSON.parse(r.out);
    assertEquals(got.ids, want, "ids");
    assertEquals(got.text, tok.decode(want), "text");
    assertClose(
      got.logprobs,
      Array.from(lps.subarray(0, want.length)),
      { atol: 1e-6, rtol: 1e-6 },
      "logprobs",
    );
    const r2 = await generateCli([
      "--model",
      dir,
      "--prompt-ids",
      ids.join(","),
      "--greedy",
      "--max-new-tokens",
      "6",
      "--json",
    ]);
    assertEquals(JSON.parse(r2.out).ids, want, "--prompt-ids gives the same");
    const bad = await generateCli([dir, "--prompt", "x", "--topk", "3"]);
    assertEquals(bad.code, 2);
    assert(bad.err.includes("unknown option --topk"), bad.err);
    const missing = await generateCli([dir + "/nope", "--prompt", "x"]);
    assertEquals(missing.code, 1);
    assert(missing.err.includes("missing config.json"), missing.err);
    const range = await generateCli([dir, "--prompt-ids", "2,999"]);
    assert(range.code === 2 && range.err.includes('"999" is not a token id'), range.err);
    const empty = await generateCli([dir, "--prompt-ids", "2,,5"]);
    assert(empty.code === 2 && empty.err.includes('"" is not a token id'), empty.err);
    gpu.destroy();
    await Deno.remove(dir, { recursive: true });
  },
});

Deno.test("cli args: types are checked and unknown keys rejected", async () => {
  const spec = { n: "int", x: "number", s: "string", f: "boolean" } as const;
  const a = parseArgs(["p1", "--n", "3", "--x=0.5", "--s", "hi", "--f"], spec);
  assertEquals(a.flags, { n: 3, x: 0.5, s: "hi", f: true });
  assertEquals(a.positional, ["p1"]);
  await assertThrows(() => parseArgs(["--n", "2.5"], spec), UsageError, "--n must be an integer");
  await assertThrows(() => parseArgs(["--x", "abc"], spec), UsageError, "--x must be a number");
  await assertThrows(() => parseArgs(["--nope"], spec), UsageError, "unknown option --nope");
  await assertThrows(() => parseArgs(["--s"], spec), UsageError, "--s needs a value");
});
