/** Data readers on generated text and on the real hh-rlhf sample (skipped when absent). */
import {
  DataError,
  decodeText,
  readKto,
  readPairs,
  readPrompts,
  readRanked,
  readSft,
} from "../trainer/data.ts";
import { assert, assertEquals, assertThrows } from "./assert.ts";

const HH = new URL("../../shared/data/hh-rlhf/harmless-base-test.jsonl.gz", import.meta.url);

Deno.test("data: every format parses; malformed lines name the source and line", async () => {
  const sft = readSft(
    '{"prompt": "Q", "completion": " A"}\n\n{"prompt": "R", "completion": "B"}\n',
    "sft.jsonl",
  );
  assertEquals(sft, [{ prompt: "Q", completion: " A" }, { prompt: "R", completion: "B" }]);
  const pairs = readPairs(
    '{"prompt": "p", "chosen": "a", "rejected": "b", "margin": 2}\n' +
      JSON.stringify({
        chosen: "\n\nHuman: hi\n\nAssistant: yes",
        rejected: "\n\nHuman: hi\n\nAssistant: no",
      }),
  );
  assertEquals(pairs[0], { prompt: "p", chosen: "a", rejected: "b", margin: 2 });
  assertEquals(pairs[1], {
    prompt: "\n\nHuman: hi\n\nAssistant:",
    chosen: " yes",
    rejected: " no",
    margin: undefined,
  });
  assertEquals(readRanked('{"prompt": "p", "responses": ["a", "b", "c"]}')[0].responses.length, 3);
  assertEquals(readKto('{"prompt": "p", "completion": "c", "label": false}')[0].label, false);
  assertEquals(
    readPrompts('{"prompt": "p"}\n{"chosen": "\\n\\nHuman: x\\n\\nAssistant: y"}').map((p) =>
      p.prompt
    ),
    [
      "p",
      "\n\nHuman: x\n\nAssistant:",
    ],
  );
  await assertThrows(
    () => readSft('{"prompt": "Q", "completion": " A"}\n{"prompt": 3}', "sft.jsonl"),
    DataError,
    "sft.jsonl:2",
  );
  await assertThrows(() => readSft("{oops", "x.jsonl"), DataError, "x.jsonl:1: invalid JSON");
  await assertThrows(
    () => readPairs('{"chosen": "a", "rejected": "b"}', "p.jsonl"),
    DataError,
    "p.jsonl:1: no",
  );
  await assertThrows(
    () => readRanked('{"prompt": "p", "responses": ["a"]}', "r"),
    DataError,
    "at least 2",
  );
  await assertThrows(
    () => readKto('{"prompt": "p", "completion": "c", "label": 1}', "k"),
    DataError,
    "label",
  );
});

Deno.test("data: gzip JSONL decodes through DecompressionStream", async () => {
  const text = '{"prompt": "gz", "completion": "ok"}\n';
  const gz = new Uint8Array(
    await new Response(new Blob([text]).stream().pipeThrough(new CompressionStream("gzip")))
      .arrayBuffer(),
  );
  assertEquals(readSft(await decodeText(gz)), [{ prompt: "gz", completion: "ok" }]);
});

Deno.test("data: invalid UTF-8, corrupt gzip and wrong-typed margins are errors naming file and line", async () => {
  const bytes = new TextEncoder().encode('{"prompt": "a"}\n{"prompt": "b"}\n{"prompt": "');
  const bad = new Uint8Array([...bytes, 0xff, 0xfe, ...new TextEncoder().encode('"}\n')]);
  await assertThrows(() => decodeText(bad, "p.jsonl"), DataError, "p.jsonl:3: invalid UTF-8");
  const gz = new Uint8Array([0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3, 1, 2, 3, 4]);
  await assertThrows(() => decodeText(gz, "x.jsonl.gz"), DataError, "x.jsonl.gz: corrupt gzip");
  await assertThrows(
    () => readRanked('{"prompt": "p", "responses": ["a", "b"], "margin": "1"}', "r"),
    DataError,
    'r:1: field "margin" must be a finite number',
  );
});

Deno.test("data: the real hh-rlhf harmless-base test sample parses into prompt/response pairs", async (t) => {
  let bytes: Uint8Array;
  try {
    bytes = await Deno.readFile(HH);
  } catch {
    console.log(`skipped: ${HH.pathname} is absent (the hh-rlhf sample lives in ../shared/data)`);
    return;
  }
  const pairs = readPairs(await decodeText(bytes), "harmless-base-test.jsonl.gz");
  await t.step("every line", () => assertEquals(pairs.length, 2312));
  for (const p of pairs.slice(0, 50)) {
    assert(
      p.prompt.startsWith("\n\nHuman:") && p.prompt.endsWith("\n\nAssistant:"),
      "prompt shape",
    );
    assert(
      !p.chosen.includes("\n\nAssistant:") && !p.rejected.includes("\n\nAssistant:"),
      "single response",
    );
  }
});
