/**
 * Data readers for the JSONL formats of SPEC §6, runtime-agnostic (bytes or text in; gzip via
 * the standard `DecompressionStream`): SFT `{prompt, completion}`, preference pairs
 * `{prompt, chosen, rejected}` or hh-rlhf `{chosen, rejected}` dialogues (prompt = text through
 * the last "\n\nAssistant:", the rest is the response), ranked `{prompt, responses, margin?}`,
 * KTO `{prompt, completion, label}` and prompts `{prompt}`. A malformed line is reported with
 * the source name and line number.
 *
 * @module
 */

/** Raised for malformed data; the message names the source and the line. */
export class DataError extends Error {
  /**
   * Creates the error.
   * @param message the source, line and what is wrong
   */
  constructor(message: string) {
    super(message);
    this.name = "DataError";
  }
}

/** An SFT example. */
export interface SftExample {
  /** The prompt text. */
  prompt: string;
  /** The target completion (appended to the prompt). */
  completion: string;
}

/** A preference pair (optionally with a Llama-2-style margin). */
export interface PairExample {
  /** The prompt text. */
  prompt: string;
  /** The preferred response. */
  chosen: string;
  /** The dispreferred response. */
  rejected: string;
  /** Optional margin m of the pairwise loss (Llama 2). */
  margin?: number;
  /** The chosen response was cut at a token budget (no EOS follows it). */
  chosenTruncated?: boolean;
  /** The rejected response was cut at a token budget (no EOS follows it). */
  rejectedTruncated?: boolean;
}

/** K responses ordered best to worst. */
export interface RankedExample {
  /** The prompt text. */
  prompt: string;
  /** Responses ordered best → worst. */
  responses: string[];
  /** Optional margin of each adjacent pair. */
  margin?: number;
}

/** A KTO example: one completion labelled desirable or not. */
export interface KtoExample {
  /** The prompt text. */
  prompt: string;
  /** The completion. */
  completion: string;
  /** Whether the completion is desirable. */
  label: boolean;
  /** A policy sample cut at its token budget: encoded without EOS. */
  truncated?: boolean;
}

/** A prompt for PPO / GRPO rollouts. */
export interface PromptExample {
  /** The prompt text. */
  prompt: string;
}

const ASSISTANT = "\n\nAssistant:";

/** Splits an hh-rlhf dialogue into (prompt through the last "\n\nAssistant:", response). */
export function splitDialogue(text: string): { prompt: string; response: string } | null {
  const i = text.lastIndexOf(ASSISTANT);
  if (i < 0) return null;
  return {
    prompt: text.slice(0, i + ASSISTANT.length),
    response: text.slice(i + ASSISTANT.length),
  };
}

/** True when `bytes` start with the gzip magic number. */
export function isGzip(bytes: Uint8Array): boolean {
  return bytes.length >= 2 && bytes[0] === 0x1f && bytes[1] === 0x8b;
}

/**
 * Decodes bytes (gunzipping first when they are gzip) to UTF-8 text. Invalid UTF-8 is a
 * {@link DataError} naming `source` and the line (never a silent U+FFFD); so is a corrupt gzip.
 */
export async function decodeText(bytes: Uint8Array, source = "<data>"): Promise<string> {
  let raw = bytes;
  if (isGzip(bytes)) {
    try {
      const stream = new Blob([bytes.slice()]).stream().pipeThrough(
        new DecompressionStream("gzip"),
      );
      raw = new Uint8Array(await new Response(stream).arrayBuffer());
    } catch (e) {
      throw new DataError(`${source}: corrupt gzip data (${(e as Error).message})`);
    }
  }
  try {
    return new TextDecoder("utf-8", { fatal: true }).decode(raw);
  } catch {
    // find the line: decode line by line up to the first bad one
    const strict = new TextDecoder("utf-8", { fatal: true });
    let line = 1, start = 0;
    for (let i = 0; i <= raw.length; i++) {
      if (i === raw.length || raw[i] === 0x0a) {
        try {
          strict.decode(raw.subarray(start, i));
        } catch {
          break;
        }
        line++;
        start = i + 1;
      }
    }
    throw new DataError(`${source}:${line}: invalid UTF-8`);
  }
}

/** Parses JSONL text into objects; blank lines are skipped; errors name `source:line`. */
export function parseJsonl(
  text: string,
  source = "<data>",
): { line: number; value: Record<string, unknown> }[] {
  const out: { line: number; value: Record<string, unknown> }[] = [];
  text.split(/\r?\n/).forEach((raw, i) => {
    if (raw.trim() === "") return;
    let v: unknown;
    try {
      v = JSON.parse(raw);
    } catch (e) {
      throw new DataError(`${source}:${i + 1}: invalid JSON (${(e as Error).message})`);
    }
    if (typeof v !== "object" || v === null || Array.isArray(v)) {
      throw new DataError(`${source}:${i + 1}: expected a JSON object`);
    }
    out.push({ line: i + 1, value: v as Record<string, unknown> });
  });
  return out;
}

function str(v: Record<string, unknown>, key: string, where: string): string {
  const x = v[key];
  if (typeof x !== "string") {
    throw new DataError(
      `${where}: field "${key}" must be a string, got ${x === undefined ? "nothing" : typeof x}`,
    );
  }
  return x;
}

/** Reads SFT examples `{prompt, completion}`. */
export function readSft(text: string, source = "<sft>"): SftExample[] {
  return parseJsonl(text, source).map(({ line, value }) => {
    const w = `${source}:${line}`;
    return { prompt: str(value, "prompt", w), completion: str(value, "completion", w) };
  });
}

/**
 * Reads preference pairs: `{prompt, chosen, rejected, margin?}`, or hh-rlhf `{chosen,
 * rejected}` full dialogues split at the last "\n\nAssistant:" (where the two dialogues
 * diverge before it, at the last Assistant turn they share).
 */
export function readPairs(text: string, source = "<pairs>"): PairExample[] {
  return parseJsonl(text, source).map(({ line, value }) => {
    const w = `${source}:${line}`;
    const chosen = str(value, "chosen", w), rejected = str(value, "rejected", w);
    let margin: number | undefined;
    if (value.margin !== undefined) {
      if (typeof value.margin !== "number" || !Number.isFinite(value.margin)) {
        throw new DataError(`${w}: field "margin" must be a finite number`);
      }
      margin = value.margin;
    }
    if (value.prompt !== undefined) {
      return { prompt: str(value, "prompt", w), chosen, rejected, margin };
    }
    const c = splitDialogue(chosen), r = splitDialogue(rejected);
    if (!c || !r) throw new DataError(`${w}: no "\\n\\nAssistant:" turn in chosen/rejected`);
    if (c.prompt === r.prompt) {
      return { prompt: c.prompt, chosen: c.response, rejected: r.response, margin };
    }
    // the dialogues diverge earlier (a few hh-rlhf records): the prompt is their common part
    // up to its last Assistant turn, the responses are the rest of each
    let n = 0;
    while (n < chosen.length && n < rejected.length && chosen[n] === rejected[n]) n++;
    const cut = chosen.slice(0, n).lastIndexOf(ASSISTANT);
    if (cut < 0) throw new DataError(`${w}: chosen and rejected share no Assistant turn`);
    const end = cut + ASSISTANT.length;
    return {
      prompt: chosen.slice(0, end),
      chosen: chosen.slice(end),
      rejected: rejected.slice(end),
      margin,
    };
  });
}

/** Reads ranked examples `{prompt, responses[best…worst], margin?}` (at least 2 responses). */
export function readRanked(text: string, source = "<ranked>"): RankedExample[] {
  return parseJsonl(text, source).map(({ line, value }) => {
    const w = `${source}:${line}`;
    const r = value.responses;
    if (!Array.isArray(r) || r.length < 2 || !r.every((x) => typeof x === "string")) {
      throw new DataError(`${w}: "responses" must be an array of at least 2 strings`);
    }
    if (
      value.margin !== undefined &&
      (typeof value.margin !== "number" || !Number.isFinite(value.margin))
    ) {
      throw new DataError(`${w}: field "margin" must be a finite number`);
    }
    const margin = value.margin as number | undefined;
    return { prompt: str(value, "prompt", w), responses: r as string[], margin };
  });
}

/** Reads KTO examples `{prompt, completion, label}` (label boolean). */
export function readKto(text: string, source = "<kto>"): KtoExample[] {
  return parseJsonl(text, source).map(({ line, value }) => {
    const w = `${source}:${line}`;
    if (typeof value.label !== "boolean") {
      throw new DataError(`${w}: field "label" must be true or false`);
    }
    return {
      prompt: str(value, "prompt", w),
      completion: str(value, "completion", w),
      label: value.label,
    };
  });
}

/** Reads prompts `{prompt}`, or hh-rlhf dialogues (`chosen`) cut at the last Assistant turn. */
export function readPrompts(text: string, source = "<prompts>"): PromptExample[] {
  return parseJsonl(text, source).map(({ line, value }) => {
    const w = `${source}:${line}`;
    if (value.prompt !== undefined) return { prompt: str(value, "prompt", w) };
    const d = splitDialogue(str(value, "chosen", w));
    if (!d) throw new DataError(`${w}: no "\\n\\nAssistant:" turn`);
    return { prompt: d.prompt };
  });
}
