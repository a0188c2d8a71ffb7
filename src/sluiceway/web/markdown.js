/**
 * Markdown for a growing answer, without the DOM: the parser settings and the block splitter.
 *
 * How it works: the answer only ever grows, so `BlockSplitter.push(text)` keeps an offset before
 * which every block is final. Each call lexes only the text after that offset (the "tail") with
 * marked's lexer and moves the offset past blocks that can no longer change: a block followed by a
 * blank line and at least two more blocks (a later line can re-shape only the block right above it:
 * `2` becoming `2.`, a setext underline), or a fenced code block whose closing fence has ended. The
 * text moved past is returned once as `commit` (render it once, append it, never touch it again);
 * the rest is `tail` (re-render it per frame). While the tail is an open code fence, the splitter
 * stops lexing and only scans the new lines for the closing fence, returning `fence.body` so the
 * view can append characters to a text node: a 1,000-line code block costs O(new text) per frame.
 * Link reference definitions or footnotes (`[x]: url`) can change earlier blocks, so they set
 * `needsFullRender`: render the whole answer once at the end.
 *
 * Raw HTML in model output is shown as text (escaped), never interpreted; the DOM layer sanitises
 * everything again with DOMPurify.
 */
import { Marked } from "./vendor/marked.esm.js";

const ESCAPES = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };

/** `text` with HTML's special characters escaped. */
export function escapeHtml(text) {
  return text.replace(/[&<>"']/g, (c) => ESCAPES[c]);
}

/** The one parser configuration for answers: GitHub-flavoured, raw HTML escaped. */
export const markdown = new Marked({
  gfm: true,
  renderer: {
    html(token) {
      const text = escapeHtml(token.text);
      return token.block ? `<p class="raw-html">${text.trim()}</p>\n` : text;
    },
  },
});

/** The HTML of a markdown string (not sanitised: pass it through the DOM layer's sanitiser). */
export function toHtml(src) {
  return markdown.parse(src);
}

const FENCE_OPEN = /^ {0,3}(`{3,}|~{3,})([^\n]*)\n/;
const FENCE_CLOSE = /^ {0,3}(`{3,}|~{3,})[ \t]*$/;
const REFERENCE = /^ {0,3}\[[^\]\n]+\]:/m;

/** The opening fence of a code token's raw text, or null if it is an indented code block. */
function openingFence(raw) {
  const m = FENCE_OPEN.exec(raw);
  if (m === null || (m[1][0] === "`" && m[2].includes("`"))) return null;
  return { char: m[1][0], size: m[1].length, info: m[2].trim(), headLength: m[0].length };
}

function closesFence(line, fence) {
  const m = FENCE_CLOSE.exec(line);
  return m !== null && m[1][0] === fence.char && m[1].length >= fence.size;
}

/** Whether a fenced code token's raw text ends with its closing fence and the newline after it. */
function isClosedFence(raw, fence) {
  if (!raw.endsWith("\n")) return false;
  const body = raw.slice(fence.headLength, -1);
  const last = body.slice(body.lastIndexOf("\n") + 1);
  return body.length > 0 && closesFence(last, fence);
}

/** Splits a growing markdown text into final blocks and an open tail (see the module docstring). */
export class BlockSplitter {
  constructor() {
    this.committed = 0;
    this.needsFullRender = false;
    this._fence = null;
  }

  /** Advance over `text`, the whole answer so far. Returns `{commit, tail, fence}`. */
  push(text) {
    if (this._fence !== null) {
      if (!this._fenceClosed(text)) return { commit: "", tail: "", fence: this._fenceView(text) };
      this._fence = null;
    }
    const tail = text.slice(this.committed);
    if (!this.needsFullRender && REFERENCE.test(tail)) this.needsFullRender = true;
    const tokens = markdown.lexer(tail);
    const ends = [];
    let end = 0;
    for (const token of tokens) ends.push((end += token.raw.length));
    if (end !== tail.length) return { commit: "", tail, fence: null }; // the lexer rewrote the text: play safe
    let cut = safeCut(tokens, ends);
    const open = openFenceAtEnd(tokens);
    if (open !== null) {
      const start = open.index === 0 ? 0 : ends[open.index - 1];
      cut = Math.max(cut, start);
      const bodyStart = this.committed + start + open.fence.headLength;
      this._fence = { ...open.fence, bodyStart, scanned: bodyStart };
    }
    this.committed += cut;
    const commit = tail.slice(0, cut);
    if (this._fence !== null) {
      this._fenceClosed(text);
      return { commit, tail: "", fence: this._fenceView(text) };
    }
    return { commit, tail: tail.slice(cut), fence: null };
  }

  /** The text not committed yet (render it, without healing, when the answer is complete). */
  rest(text) {
    return text.slice(this.committed);
  }

  _fenceView(text) {
    return { info: this._fence.info, body: text.slice(this._fence.bodyStart) };
  }

  /** Scan the complete lines not scanned yet for the closing fence. */
  _fenceClosed(text) {
    const fence = this._fence;
    let pos = fence.scanned;
    for (let nl = text.indexOf("\n", pos); nl !== -1; nl = text.indexOf("\n", pos)) {
      if (closesFence(text.slice(pos, nl), fence)) return true;
      pos = nl + 1;
    }
    fence.scanned = pos;
    return false;
  }
}

/** The end offset of the last block that can no longer change (0 if none). */
function safeCut(tokens, ends) {
  const blocksAfter = new Array(tokens.length).fill(0);
  for (let i = tokens.length - 2; i >= 0; i--) {
    blocksAfter[i] = blocksAfter[i + 1] + (tokens[i + 1].type === "space" ? 0 : 1);
  }
  let cut = 0;
  for (const [i, token] of tokens.entries()) {
    if (token.type === "space" ? i > 0 && blocksAfter[i] >= 2 : isClosedFenceToken(token)) cut = ends[i];
  }
  return cut;
}

function isClosedFenceToken(token) {
  if (token.type !== "code") return false;
  const fence = openingFence(token.raw);
  return fence !== null && isClosedFence(token.raw, fence);
}

/** The last token if it is a fenced code block still open with its first line complete. */
function openFenceAtEnd(tokens) {
  const index = tokens.length - 1;
  const token = tokens[index];
  if (token === undefined || token.type !== "code") return null;
  const fence = openingFence(token.raw);
  if (fence === null || isClosedFence(token.raw, fence)) return null;
  return { index, fence };
}
