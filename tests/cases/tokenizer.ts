import { BpeTokenizer, ByteTokenizer, TokenizerError } from "../../model/tokenizer.ts";
import { assertEquals, assertThrows } from "../assert.ts";
import type { Case } from "../_util.ts";

export const cases: Case[] = [];

cases.push({
  name: "tokenizer: byte-level round-trips unicode with OPT-style specials",
  async run() {
    const tok = new ByteTokenizer();
    const text = "Héllo, wörld! 🎉\n\tend";
    const ids = tok.encode(text);
    assertEquals(ids[0], 2, "BOS </s> first");
    assertEquals(tok.decode(ids), text);
    assertEquals(tok.encode("A", { addBos: false }), [65 + 4]);
    assertEquals(tok.decode([2, 69, 1, 3], { skipSpecial: false }), "</s>A<pad><unk>");
    await assertThrows(() => tok.decode([260]), TokenizerError, "outside the byte vocabulary");
  },
});

// A tiny GPT-2-style vocabulary in OPT's order: specials first. "Ġ" is the byte-unicode
// character of the space byte.
const VOCAB = {
  "<s>": 0,
  "<pad>": 1,
  "</s>": 2,
  "<unk>": 3,
  "a": 4,
  "b": 5,
  "c": 6,
  "Ġ": 7,
  "ab": 8,
  "Ġa": 9,
  "Ġab": 10,
  "abc": 11,
  "!": 12,
};
const MERGES = "#version: 0.2\na b\nĠ ab\nab c\nĠ a\n";

cases.push({
  name: "tokenizer: BPE applies merges by rank, handles specials and rejects bad files",
  async run() {
    const tok = BpeTokenizer.fromText(JSON.stringify(VOCAB), MERGES);
    assertEquals([tok.bosId, tok.eosId, tok.padId], [2, 2, 1], "ids looked up by name");
    assertEquals(tok.encode("abc ab!"), [2, 11, 10, 12]);
    // " a" merges by rank 3; " ba" has no "Ġ b" merge and stays split
    assertEquals(tok.encode(" a ba", { addBos: false }), [9, 7, 5, 4]);
    assertEquals(tok.encode("ab</s>a", { addBos: false }), [8, 2, 4], "special token in text");
    assertEquals(tok.decode([2, 11, 10, 12]), "abc ab!");
    assertEquals(tok.decode([11, 2], { skipSpecial: false }), "abc</s>");
    await assertThrows(
      () => BpeTokenizer.fromText(JSON.stringify(VOCAB), "a b c\n"),
      TokenizerError,
      "merges.txt line 1",
    );
    await assertThrows(
      () => BpeTokenizer.fromText(JSON.stringify({ a: 0 }), ""),
      TokenizerError,
      'BOS token "<|endoftext|>"',
    );
    await assertThrows(() => tok.encode("x"), TokenizerError, "vocab.json lacks");
    await assertThrows(() => tok.decode([99]), TokenizerError, "not in the vocabulary");
  },
});
