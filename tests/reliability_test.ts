/**
 * Reliability of run folders and checkpoints, the hard way: real `deno task train` processes
 * killed with SIGKILL at every state write (before it, and between a write's temporary file and
 * its rename), then resumed — the resumed run must reproduce the uninterrupted run exactly. Plus
 * the refusals: unsafe run names, reusing a run without `--resume`/`--overwrite`, edited or
 * mismatched checkpoint files, and `serve` requests that would leave the served root.
 */
import { join } from "node:path";
import { serveDirectory } from "../cli/serve.ts";
import { assert, assertEquals } from "./assert.ts";
import { runCli } from "./_cli.ts";
import { noGpu } from "./_gpu.ts";

const CLI = new URL("../cli/train.ts", import.meta.url).pathname;
const PERMS = ["run", "--allow-env", "--allow-read", "--allow-write", CLI];

const train = (args: string[]) => runCli("train", args);

/**
 * Runs `train` with `WEBGPU_RLHF_PAUSE_AT_WRITE=at`, waits until it reports the pause, and kills
 * it with SIGKILL there. Returns false when the run finished before reaching that write.
 */
async function killAt(args: string[], at: string): Promise<boolean> {
  const child = new Deno.Command(Deno.execPath(), {
    args: [...PERMS, ...args],
    env: { WEBGPU_RLHF_PAUSE_AT_WRITE: at },
    stdout: "null",
    stderr: "piped",
  }).spawn();
  let text = "", paused = false;
  const dec = new TextDecoder();
  for await (const chunk of child.stderr) {
    text += dec.decode(chunk);
    if (text.includes("paused at state write")) {
      paused = true;
      child.kill("SIGKILL");
      break;
    }
  }
  const status = await child.status;
  if (!paused) assertEquals(status.code, 0, text.slice(-1500));
  return paused;
}

async function copyDir(from: string, to: string): Promise<void> {
  await Deno.mkdir(to, { recursive: true });
  for await (const e of Deno.readDir(from)) {
    if (e.isDirectory) await copyDir(join(from, e.name), join(to, e.name));
    else await Deno.copyFile(join(from, e.name), join(to, e.name));
  }
}

async function files(dir: string, prefix = ""): Promise<string[]> {
  const out: string[] = [];
  for await (const e of Deno.readDir(dir)) {
    const rel = prefix ? `${prefix}/${e.name}` : e.name;
    if (e.isDirectory) out.push(...await files(join(dir, e.name), rel));
    else out.push(rel);
  }
  return out.sort();
}

const records = async (dir: string, stage: string) =>
  (await Deno.readTextFile(join(dir, "metrics.jsonl"))).trim().split("\n").map((l) => JSON.parse(l))
    .filter((r) => r.stage === stage);

const TINY = [
  "--sft.steps=4",
  "--rm.steps=4",
  "--task.pairs=200",
  "--task.samplesPerPrompt=2",
  "--ppo.iterations=3",
  "--ppo.batchSize=4",
  "--ppo.miniBatchSize=4",
  "--ppo.ppoEpochs=1",
  "--run.checkpointEvery=1",
  "--run.stepCheckpointEvery=1",
];

Deno.test({
  name: "checkpoints: a run killed at any state write resumes to the uninterrupted run exactly",
  ignore: noGpu,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const out = await Deno.makeTempDir({ prefix: "reliability_" });
    // SFT and the reward model once; every PPO run below starts from a copy of this folder
    for (const stage of ["sft", "rm"]) {
      const base = await train([`--out=${out}`, "--run.name=base", `--stage=${stage}`, ...TINY]);
      assertEquals(base.code, 0, base.err.slice(-2000));
    }
    const stageRun = async (name: string) => {
      await copyDir(join(out, "base"), join(out, name));
      const cfgPath = join(out, name, "config.json");
      const cfg = JSON.parse(await Deno.readTextFile(cfgPath));
      cfg.run.name = name; // the same run under another name
      await Deno.writeTextFile(cfgPath, JSON.stringify(cfg, null, 2));
      return [`--out=${out}`, `--run.name=${name}`, "--stage=ppo", ...TINY];
    };
    const ref = await train(await stageRun("ref"));
    assertEquals(ref.code, 0, ref.err.slice(-2000));
    const refPpo = await records(join(out, "ref"), "ppo");
    assertEquals(refPpo.map((m) => m.iteration), [1, 2, 3]);
    const refWeights = await Deno.readFile(join(out, "ref", "ppo", "model.safetensors"));
    // 3 iterations × (actor, critic, commit record) = 9 state writes; kill before each, and
    // between the temporary file and the rename of some
    const points = [...Array.from({ length: 9 }, (_, i) => `${i + 1}`), "1:mid", "3:mid", "5:mid"];
    for (const [i, at] of points.entries()) {
      const name = `kill${i}`;
      const args = await stageRun(name);
      assert(await killAt(args, at), `the run reached state write ${at}`);
      const resumed = await train([
        `--out=${out}`,
        `--run.name=${name}`,
        "--resume",
        "--stage=ppo",
      ]);
      assertEquals(resumed.code, 0, `killed at ${at}: ${resumed.err.slice(-2000)}`);
      assertEquals(await records(join(out, name), "ppo"), refPpo, `killed at ${at}: metrics`);
      const weights = await Deno.readFile(join(out, name, "ppo", "model.safetensors"));
      assert(
        weights.length === refWeights.length && weights.every((b, j) => b === refWeights[j]),
        `killed at ${at}: final weights equal the uninterrupted run's`,
      );
      const left = (await files(join(out, name))).filter((f) => f.includes(".tmp-"));
      assertEquals(left, [], `killed at ${at}: no temporary files left`);
      const ppoStates = (await files(join(out, name, "ppo"))).filter((f) => f.startsWith("state-"));
      assertEquals(
        ppoStates,
        ["state-000003/actor_state.safetensors", "state-000003/critic_state.safetensors"],
        `killed at ${at}: only the last checkpoint folder is kept`,
      );
    }
    console.log(`checkpoints: ${points.length} kill points in PPO, each resumed exactly`);
    // a state file of another role is refused, naming it
    const swapped = await stageRun("swapped");
    const partial = await train([...swapped, "--stop-after=1"]);
    assertEquals(partial.code, 0, partial.err.slice(-2000));
    const folder = join(out, "swapped", "ppo", "state-000001");
    await Deno.copyFile(
      join(folder, "critic_state.safetensors"),
      join(folder, "actor_state.safetensors"),
    );
    const refused = await train([`--out=${out}`, "--run.name=swapped", "--resume", "--stage=ppo"]);
    assert(
      refused.code === 1 && refused.err.includes("CheckpointError") &&
        refused.err.includes("actor_state.safetensors"),
      refused.err,
    );
    // SFT is resumable mid-stage too: 4 steps × (state, commit record) = 8 writes
    const sftRef = await train([`--out=${out}`, "--run.name=sftref", "--stage=sft", ...TINY]);
    assertEquals(sftRef.code, 0, sftRef.err.slice(-2000));
    const sftWeights = await Deno.readFile(join(out, "sftref", "sft", "model.safetensors"));
    for (const at of ["2", "3", "6:mid", "7"]) {
      const name = `sftkill${at.replace(":", "")}`;
      const args = [`--out=${out}`, `--run.name=${name}`, "--stage=sft", ...TINY];
      assert(await killAt(args, at), `SFT reached state write ${at}`);
      const resumed = await train([
        `--out=${out}`,
        `--run.name=${name}`,
        "--resume",
        "--stage=sft",
      ]);
      assertEquals(resumed.code, 0, `SFT killed at ${at}: ${resumed.err.slice(-2000)}`);
      const w = await Deno.readFile(join(out, name, "sft", "model.safetensors"));
      assert(w.every((b, j) => b === sftWeights[j]), `SFT killed at ${at}: same weights`);
      assertEquals(
        await records(join(out, name), "sft"),
        await records(join(out, "sftref"), "sft"),
      );
    }
    await Deno.remove(out, { recursive: true });
  },
});

Deno.test({
  name: "run folders: unsafe names, silent reuse and untrusted checkpoint files are refused",
  ignore: noGpu,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const out = await Deno.makeTempDir({ prefix: "reliability_" });
    for (const bad of ["../x", "a/b", "", ".hidden", "x".repeat(65)]) {
      const r = await train([`--out=${out}`, `--run.name=${bad}`, "--stage=sft", "--sft.steps=1"]);
      assert(r.code === 2 && r.err.includes("run.name must be one folder name"), r.err);
    }
    const cfgFile = join(out, "escape.json");
    await Deno.writeTextFile(cfgFile, JSON.stringify({ run: { name: "../../escape" } }));
    const viaConfig = await train([`--out=${out}`, `--config=${cfgFile}`]);
    assert(viaConfig.code === 2 && viaConfig.err.includes("run.name must be"), viaConfig.err);
    // lengths the model cannot hold are refused before anything trains or is written
    const long = await train([`--out=${out}`, "--run.name=long", "--ppo.maxNewTokens=500"]);
    assert(long.code === 2 && long.err.includes("ppo.maxNewTokens 500"), long.err);
    assertEquals(await files(out), ["escape.json"], "nothing was written for refused runs");

    const args = [`--out=${out}`, "--run.name=r", ...TINY];
    const first = await train([...args, "--stage=sft"]);
    assertEquals(first.code, 0, first.err.slice(-2000));
    // reusing the name: refused without --resume / --overwrite; a --stage run of another config too
    const again = await train([...args.filter((a) => a !== "--sft.steps=4"), "--sft.steps=5"]);
    assert(again.code === 2 && again.err.includes('run "r" already exists'), again.err);
    const staged = await train([...args, "--stage=sft", "--sft.lr=0.01"]);
    assert(staged.code === 2 && staged.err.includes("needs the run's exact config"), staged.err);
    const both = await train([...args, "--resume", "--overwrite"]);
    assert(both.code === 2 && both.err.includes("give one"), both.err);

    // untrusted files: a commit record that does not parse or lies, a state file of another role
    // (the finished SFT checkpoint is removed so that resuming reads the stage's state)
    const dir = join(out, "r");
    for (const f of ["config.json", "model.safetensors"]) await Deno.remove(join(dir, "sft", f));
    const record = join(dir, "sft", "trainer_state.json");
    const good = await Deno.readTextFile(record);
    const resume = () => train([`--out=${out}`, "--run.name=r", "--resume", "--stage=sft"]);
    const cases: [string, string][] = [
      ["{}", "not a checkpoint record"],
      [good.replace(/"iteration":4/, '"iteration":"abc"'), "iteration must be an integer"],
      [good.replace(/"iteration":4,"folder"/, '"iteration":3,"folder"'), 'expected ["sft"'],
      [good.replace(/"s":\d+/, '"s":-1'), "sampler s must be an integer"],
      ["{", "not JSON"],
    ];
    for (const [text, message] of cases) {
      await Deno.writeTextFile(record, text);
      const r = await resume();
      assert(r.code === 1 && r.err.includes("CheckpointError") && r.err.includes(message), r.err);
    }
    await Deno.writeTextFile(record, good);
    const state = join(dir, "sft", "state-000004", "model_state.safetensors");
    const bytes = await Deno.readFile(state);
    await Deno.writeFile(state, bytes.subarray(0, bytes.length - 100));
    const truncated = await resume();
    assert(
      truncated.code === 1 && truncated.err.includes("state-000004/model_state.safetensors"),
      `a truncated state file is named: ${truncated.err}`,
    );
    // an edited config.json is validated like a fresh one
    await Deno.writeFile(state, bytes);
    const cfgPath = join(dir, "config.json");
    const cfg = JSON.parse(await Deno.readTextFile(cfgPath));
    await Deno.writeTextFile(cfgPath, JSON.stringify({ ...cfg, sft: { ...cfg.sft, steps: -1 } }));
    const edited = await resume();
    assert(edited.code === 2 && edited.err.includes("steps must be ≥ 1"), edited.err);
    await Deno.writeTextFile(cfgPath, JSON.stringify(cfg));
    // --overwrite replaces the run
    const over = await train([...args, "--stage=sft", "--overwrite", "--sft.steps=2"]);
    assertEquals(over.code, 0, over.err.slice(-2000));
    assertEquals(JSON.parse(await Deno.readTextFile(cfgPath)).sft.steps, 2);
    await Deno.remove(out, { recursive: true });
  },
});

Deno.test({
  name: "serve: no way out of the served root, no dot-folders, 400 for malformed requests",
  async fn() {
    const root = await Deno.makeTempDir({ prefix: "serve_root_" });
    const outside = await Deno.makeTempDir({ prefix: "serve_outside_" });
    await Deno.writeTextFile(join(outside, "secret.txt"), "secret");
    await Deno.mkdir(join(root, ".git"));
    await Deno.writeTextFile(join(root, ".git", "config"), "[core]");
    await Deno.writeTextFile(join(root, "ok.txt"), "ok");
    await Deno.symlink(outside, join(root, "link"));
    await Deno.symlink(join(outside, "secret.txt"), join(root, "secret.txt"));
    const server = serveDirectory(root, { port: 0, quiet: true });
    const get = async (path: string) => {
      const r = await fetch(`http://127.0.0.1:${server.port}${path}`);
      return { status: r.status, text: await r.text() };
    };
    try {
      assertEquals(await get("/ok.txt"), { status: 200, text: "ok" });
      for (
        const p of [
          "/link/secret.txt",
          "/secret.txt",
          "/.git/config",
          "/%2e%2e/x",
          "/a/%2e%2e/%2e%2e/etc/passwd",
        ]
      ) {
        const r = await get(p);
        assert(r.status === 403 || r.status === 404, `${p}: ${r.status}`);
        assert(!r.text.includes("secret") && !r.text.includes("[core]"), `${p} leaks`);
      }
      assertEquals((await get("/%E0%A4%A")).status, 400, "malformed percent escape");
    } finally {
      await server.shutdown();
      await Deno.remove(root, { recursive: true });
      await Deno.remove(outside, { recursive: true });
    }
  },
});
