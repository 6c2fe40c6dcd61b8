/**
 * Tokenizers: GPT-2 byte-level BPE from `vocab.json` + `merges.txt` (what OPT uses), and a
 * byte-level tokenizer for tiny from-scratch models. Special-token ids are looked up by name in
 * the vocabulary (OPT: `</s>` = BOS/EOS, `<pad>` = pad), never hard-coded, because OPT's
 * `vocab.json` orders tokens differently from GPT-2's `encoder.json`.
 *
 * @module
 */

/** Raised for malformed vocabulary files or ids outside the vocabulary. */
export class TokenizerError extends Error {
  /**
   * Creates the error.
   * @param message what could not be read or encoded
   */
  constructor(message: string) {
    super(message);
    this.name = "TokenizerError";
  }
}

/** What the model and trainers need from a tokenizer. */
export interface Tokenizer {
  /** Number of token ids. */
  readonly vocabSize: number;
  /** Id prepended to every sequence. */
  readonly bosId: number;
  /** Id that ends a response. */
  readonly eosId: number;
  /** Id of padding positions. */
  readonly padId: number;
  /** Token ids of `text`, with the BOS id first unless `addBos` is false. */
  encode(text: string, opts?: { addBos?: boolean }): number[];
  /** Text of `ids`; special tokens are dropped unless `skipSpecial` is false. */
  decode(ids: readonly number[], opts?: { skipSpecial?: boolean }): string;
}

/**
 * Bytes as their own tokens, after four OPT-style specials: 0 `<s>`, 1 `<pad>`, 2 `</s>`
 * (BOS and EOS), 3 `<unk>`; byte b is id `b + 4` (vocabulary 260).
 *
 * @example
 * ```ts
 * import { ByteTokenizer } from "../mod.ts";
 * const tok = new ByteTokenizer();
 * const ids = tok.encode("hi"); // [2, 108, 109]
 * console.log(tok.decode(ids)); // "hi"
 * ```
 */
export class ByteTokenizer implements Tokenizer {
  /** 256 bytes plus 4 special ids (OPT's order). */
  readonly vocabSize = 260;
  /** `</s>`, which OPT also uses as BOS. */
  readonly bosId = 2;
  /** `</s>`. */
  readonly eosId = 2;
  /** `<pad>`. */
  readonly padId = 1;
  /** Id of byte 0 (bytes are ids 4 … 259). */
  static readonly OFFSET = 4;

  encode(text: string, opts: { addBos?: boolean } = {}): number[] {
    const ids = Array.from(new TextEncoder().encode(text), (b) => b + ByteTokenizer.OFFSET);
    return opts.addBos === false ? ids : [this.bosId, ...ids];
  }

  decode(ids: readonly number[], opts: { skipSpecial?: boolean } = {}): string {
    const bytes: number[] = [];
    const names = ["<s>", "<pad>", "</s>", "<unk>"];
    let out = "";
    const flush = () => {
      out += new TextDecoder().decode(new Uint8Array(bytes));
      bytes.length = 0;
    };
    for (const id of ids) {
      if (!Number.isInteger(id) || id < 0 || id >= this.vocabSize) {
        throw new TokenizerError(
          `id ${id} is outside the byte vocabulary (0..${this.vocabSize - 1})`,
        );
      }
      if (id < ByteTokenizer.OFFSET) {
        if (opts.skipSpecial === false) {
          flush();
          out += names[id];
        }
      } else bytes.push(id - ByteTokenizer.OFFSET);
    }
    flush();
    return out;
  }
}

/** GPT-2's reversible byte → printable-unicode-character table. */
function bytesToUnicode(): Map<number, string> {
  const bs: number[] = [];
  for (let b = 33; b <= 126; b++) bs.push(b);
  for (let b = 161; b <= 172; b++) bs.push(b);
  for (let b = 174; b <= 255; b++) bs.push(b);
  const cs = [...bs];
  let n = 0;
  for (let b = 0; b < 256; b++) {
    if (!bs.includes(b)) {
      bs.push(b);
      cs.push(256 + n++);
    }
  }
  return new Map(bs.map((b, i) => [b, String.fromCodePoint(cs[i])]));
}

// GPT-2's pre-tokenisation pattern.
const PRETOKENIZE = /'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+/gu;

/** Options of {@link BpeTokenizer}. */
export interface BpeOptions {
  /** Token used as BOS (default `</s>` when present, else `<|endoftext|>`). */
  bos?: string;
  /** Token used as EOS (default: the BOS token). */
  eos?: string;
  /** Padding token (default `<pad>` when present, else the EOS token). */
  pad?: string;
}

/**
 * GPT-2 byte-level BPE. Built from the text of `vocab.json` (token → id) and `merges.txt`
 * (ranked pairs). With OPT's files, `encode` prepends `</s>` (id 2) and pads with `<pad>`
 * (id 1), matching Hugging Face's `GPT2Tokenizer` for OPT.
 *
 * @example
 * ```ts
 * import { BpeTokenizer } from "../mod.ts";
 * const vocab = JSON.stringify({ "</s>": 0, "<pad>": 1, "a": 2, "b": 3, "ab": 4 });
 * const tok = BpeTokenizer.fromText(vocab, "#version: 0.2\na b\n");
 * console.log(tok.encode("ab")); // [0, 4]
 * ```
 */
export class BpeTokenizer implements Tokenizer {
  /** Number of token ids (vocabulary entries plus added specials). */
  readonly vocabSize: number;
  /** Id prepended to every sequence (`</s>` in OPT's vocabulary). */
  readonly bosId: number;
  /** Id that ends a response (`</s>`). */
  readonly eosId: number;
  /** Id of padding positions (`<pad>`). */
  readonly padId: number;
  #encoder: Map<string, number>;
  #decoder: Map<number, string>;
  #ranks: Map<string, number>;
  #byteEncoder = bytesToUnicode();
  #byteDecoder: Map<string, number>;
  #cache = new Map<string, number[]>();
  #special: Map<string, number>;
  #specialPattern: RegExp | null;

  private constructor(vocab: Record<string, number>, merges: [string, string][], o: BpeOptions) {
    this.#encoder = new Map(Object.entries(vocab));
    this.#decoder = new Map([...this.#encoder].map(([t, i]) => [i, t]));
    this.vocabSize = Math.max(...this.#decoder.keys()) + 1;
    this.#ranks = new Map(merges.map(([a, b], i) => [`${a} ${b}`, i]));
    this.#byteDecoder = new Map([...this.#byteEncoder].map(([b, c]) => [c, b]));
    const id = (name: string, what: string) => {
      const v = this.#encoder.get(name);
      if (v === undefined) throw new TokenizerError(`${what} token "${name}" is not in vocab.json`);
      return v;
    };
    const bos = o.bos ?? (this.#encoder.has("</s>") ? "</s>" : "<|endoftext|>");
    const eos = o.eos ?? bos;
    const pad = o.pad ?? (this.#encoder.has("<pad>") ? "<pad>" : eos);
    this.bosId = id(bos, "BOS");
    this.eosId = id(eos, "EOS");
    this.padId = id(pad, "pad");
    // specials: tokens that look like <...> or <|...|> are matched whole in the input text
    this.#special = new Map(
      [...this.#encoder].filter(([t]) => /^<\|?[^<>\s]+\|?>$/.test(t)),
    );
    const esc = [...this.#special.keys()].sort((a, b) => b.length - a.length)
      .map((t) => t.replace(/[.*+?^${}()|[\]\\]/g, "\\$&"));
    this.#specialPattern = esc.length ? new RegExp(`(${esc.join("|")})`) : null;
  }

  /** Builds a tokenizer from the text of `vocab.json` and `merges.txt`. */
  static fromText(vocabJson: string, mergesTxt: string, opts: BpeOptions = {}): BpeTokenizer {
    let vocab: unknown;
    try {
      vocab = JSON.parse(vocabJson);
    } catch (e) {
      throw new TokenizerError(`vocab.json is not valid JSON: ${(e as Error).message}`);
    }
    if (typeof vocab !== "object" || vocab === null || Array.isArray(vocab)) {
      throw new TokenizerError("vocab.json must map token strings to ids");
    }
    for (const [t, i] of Object.entries(vocab)) {
      if (!Number.isInteger(i) || (i as number) < 0) {
        throw new TokenizerError(`vocab.json: id of "${t}" is ${JSON.stringify(i)}`);
      }
    }
    const merges: [string, string][] = [];
    mergesTxt.split(/\r?\n/).forEach((line, n) => {
      if (line.startsWith("#version") || line.trim() === "") return;
      const parts = line.split(" ");
      if (parts.length !== 2) {
        throw new TokenizerError(`merges.txt line ${n + 1}: expected "a b", got "${line}"`);
      }
      merges.push([parts[0], parts[1]]);
    });
    return new BpeTokenizer(vocab as Record<string, number>, merges, opts);
  }

  /** BPE of one pre-token (already mapped to byte-unicode characters). */
  #bpe(token: string): number[] {
    const hit = this.#cache.get(token);
    if (hit) return hit;
    let word = Array.from(token);
    while (word.length > 1) {
      let best = -1, bestRank = Infinity;
      for (let i = 0; i < word.length - 1; i++) {
        const r = this.#ranks.get(`${word[i]} ${word[i + 1]}`);
        if (r !== undefined && r < bestRank) {
          bestRank = r;
          best = i;
        }
      }
      if (best < 0) break;
      const a = word[best], b = word[best + 1];
      const next: string[] = [];
      for (let i = 0; i < word.length;) {
        if (i < word.length - 1 && word[i] === a && word[i + 1] === b) {
          next.push(a + b);
          i += 2;
        } else next.push(word[i++]);
      }
      word = next;
    }
    const ids = word.map((w) => {
      const id = this.#encoder.get(w);
      if (id === undefined) throw new TokenizerError(`BPE produced "${w}", which vocab.json lacks`);
      return id;
    });
    if (this.#cache.size < 100_000) this.#cache.set(token, ids);
    return ids;
  }

  encode(text: string, opts: { addBos?: boolean } = {}): number[] {
    const ids: number[] = opts.addBos === false ? [] : [this.bosId];
    const pieces = this.#specialPattern ? text.split(this.#specialPattern) : [text];
    const utf8 = new TextEncoder();
    for (const piece of pieces) {
      if (piece === "") continue;
      const sp = this.#special.get(piece);
      if (sp !== undefined) {
        ids.push(sp);
        continue;
      }
      for (const m of piece.matchAll(PRETOKENIZE)) {
        const mapped = Array.from(utf8.encode(m[0]), (b) => this.#byteEncoder.get(b)!).join("");
        // a loop, not push(...): a huge token list would overflow the argument stack
        for (const id of this.#bpe(mapped)) ids.push(id);
      }
    }
    return ids;
  }

  decode(ids: readonly number[], opts: { skipSpecial?: boolean } = {}): string {
    let text = "";
    const bytes: number[] = [];
    const flush = () => {
      text += new TextDecoder().decode(new Uint8Array(bytes));
      bytes.length = 0;
    };
    for (const id of ids) {
      const t = this.#decoder.get(id);
      if (t === undefined) throw new TokenizerError(`id ${id} is not in the vocabulary`);
      if (this.#special.has(t)) {
        if (opts.skipSpecial === false) {
          flush();
          text += t;
        }
        continue;
      }
      for (const ch of t) {
        const b = this.#byteDecoder.get(ch);
        if (b === undefined) throw new TokenizerError(`token ${id} has a non-byte character`);
        bytes.push(b);
      }
    }
    flush();
    return text;
  }
}
