/**
 * Markdown into the DOM, safely and cheaply while an answer streams.
 *
 * How it works: `AnswerRenderer.append(text)` only adds text and asks for an animation frame (at
 * most one render per `minFrameMs`); the frame hands the answer to the `BlockSplitter`
 * (markdown.js), appends the newly final blocks to `.committed` once, and re-renders only the open
 * tail (healed by `remend`, so a half-written `**bold` shows bold). While the tail is an open code
 * fence, new characters are appended to one text node instead. A frame draws at most
 * `maxCharsPerFrame` new characters, so a burst is spread over a few frames rather than one long
 * task. The very first text renders at once, so time to first token never waits for a frame; and
 * reading never waits for frames, so a hidden tab catches up when it is shown again.
 *
 * Every HTML string passes DOMPurify (no scripts, no event handler attributes, links and images only
 * to http(s)/mailto/#) before it touches the DOM, on top of markdown.js escaping raw HTML.
 */
import DOMPurify from "./vendor/purify.es.mjs";
import remend from "./vendor/remend.js";
import { BlockSplitter, toHtml } from "./markdown.js";

const PURIFY = {
  USE_PROFILES: { html: true },
  FORBID_TAGS: ["style", "form", "input", "button", "textarea", "select", "option", "iframe", "object", "embed"],
  FORBID_ATTR: ["style"],
  ALLOWED_URI_REGEXP: /^(?:https?:|mailto:|#)/i,
  RETURN_DOM_FRAGMENT: true,
};

DOMPurify.addHook("afterSanitizeAttributes", (node) => {
  if (node.tagName === "A" && node.hasAttribute("href")) {
    node.setAttribute("target", "_blank");
    node.setAttribute("rel", "noopener noreferrer nofollow");
  }
});

/** Tunables of the streaming render (exposed for benchmarks). */
export const renderOptions = { minFrameMs: 30, maxCharsPerFrame: 2000 };

/** Sanitised DOM for a markdown string, with code blocks decorated. */
export function renderMarkdown(src) {
  const fragment = DOMPurify.sanitize(toHtml(src), PURIFY);
  for (const code of fragment.querySelectorAll("pre > code")) decorateCode(code);
  return fragment;
}

/** Wrap `<pre><code>` in a block with its language and a copy button; highlight it later. */
function decorateCode(code) {
  const pre = code.parentElement;
  const block = codeBlock(languageOf(code));
  pre.replaceWith(block);
  block.append(pre);
  highlightSoon(code);
}

function codeBlock(language) {
  const block = document.createElement("div");
  block.className = "code-block";
  const head = document.createElement("div");
  head.className = "code-head";
  const label = document.createElement("span");
  label.className = "code-lang";
  label.textContent = language || "text";
  const copy = document.createElement("button");
  copy.type = "button";
  copy.className = "copy-code";
  copy.textContent = "Copy";
  copy.setAttribute("aria-label", `Copy ${language || "code"}`);
  head.append(label, copy);
  block.append(head);
  return block;
}

function languageOf(code) {
  const cls = [...code.classList].find((c) => c.startsWith("language-"));
  return cls ? cls.slice("language-".length) : "";
}

let hljs = null;
let hljsLoading = null;
let flushQueued = false;
const waiting = new Set();

/**
 * Highlight `code` soon: in an idle moment after it was attached, not inside the frame that renders
 * it (highlight.js loads lazily, with the first code block or the page's warm-up).
 */
function highlightSoon(code) {
  if (!languageOf(code)) return;
  waiting.add(code);
  hljsLoading ??= loadHighlighter();
  if (hljs !== null && !flushQueued) {
    flushQueued = true;
    (globalThis.requestIdleCallback ?? setTimeout)(flushHighlights, { timeout: 250 });
  }
}

function flushHighlights() {
  flushQueued = false;
  for (const code of waiting) highlight(code);
  waiting.clear();
}

function highlight(code) {
  // Only named languages: auto-detection runs every grammar and costs a long task on big blocks.
  // A block no longer in the page was a re-rendered tail: skip it.
  if (!code.isConnected || code.dataset.highlighted || !hljs.getLanguage(languageOf(code))) return;
  hljs.highlightElement(code);
}

/**
 * Load highlight.js and run the whole pipeline once on a sample, off screen, so the first real
 * answer does not pay for parsing and compiling the libraries (call it when the page is idle).
 */
export async function warmUp() {
  const sample = "# Warm\n\nSome **bold** and `code`.\n\n- a\n- b\n\n```js\nconst x = 1;\n```\n";
  const box = document.createElement("div");
  box.append(renderMarkdown(remend(sample, { linkMode: "text-only" })));
  await (hljsLoading ??= loadHighlighter());
  const code = document.createElement("code");
  code.className = "language-js";
  code.textContent = "const x = 1;";
  hljs.highlightElement(code);
}

function loadHighlighter() {
  return import("./vendor/highlight.min.js").then((mod) => {
    hljs = mod.default;
    flushHighlights();
  });
}

/** Copy `text` to the clipboard; falls back to a hidden textarea where the Clipboard API is missing. */
export async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    const area = document.createElement("textarea");
    area.value = text;
    area.setAttribute("readonly", "");
    area.className = "visually-hidden";
    document.body.append(area);
    area.select();
    const ok = document.execCommand("copy");
    area.remove();
    return ok;
  }
}

/**
 * A wrapper for blocks committed together. CSS gives it `content-visibility: auto`, so the browser
 * skips style and layout of the parts of a long answer that are out of view.
 */
function chunk(fragment) {
  const div = document.createElement("div");
  div.className = "chunk";
  div.append(fragment);
  return div;
}

/** The last child of `node` that is not whitespace between blocks. */
function lastContent(node) {
  let child = node.lastChild;
  while (child?.nodeType === Node.TEXT_NODE && !child.data.trim()) child = child.previousSibling;
  return child;
}

/** Renders one answer as it streams. `onFrame` runs after every render (the transcript scrolls). */
export class AnswerRenderer {
  constructor(root, { onFrame = () => {} } = {}) {
    this.root = root;
    this.onFrame = onFrame;
    this.committed = document.createElement("div");
    this.committed.className = "committed";
    this.tail = document.createElement("div");
    this.tail.className = "tail";
    root.replaceChildren(this.committed, this.tail);
    this.reset();
  }

  /** Forget everything shown (a resumed answer replays from its start). */
  reset() {
    this.text = "";
    this.splitter = new BlockSplitter();
    this.committed.replaceChildren();
    this.tail.replaceChildren();
    this._shownTail = "";
    this._fence = null;
    this._frame = 0;
    this._pendingCR = false;
    this._cursor = null;
    this._renderedAt = -Infinity;
    this._shown = 0;
    this._capped = false;
    this._finishing = false;
    this._whenFinished = [];
    // trace: [characters drawn, render ms so far] after every render (for benchmarks)
    this.stats = { renders: 0, renderMs: 0, maxRenderMs: 0, trace: [] };
  }

  /**
   * Add streamed text. The first text renders now; later text on an animation frame at least
   * `renderOptions.minFrameMs` after the previous render (every frame costs style, layout and paint
   * of the page besides the markdown work, and text does not need 60 updates a second).
   */
  append(delta) {
    let text = delta;
    if (this._pendingCR && text.startsWith("\n")) text = text.slice(1);
    this._pendingCR = text.endsWith("\r");
    text = text.replace(/\r\n?/g, "\n");
    if (!text) return;
    const first = this.text === "";
    this.text += text;
    if (first) this.render();
    else this._schedule();
  }

  /**
   * Render what has arrived, or at most `renderOptions.maxCharsPerFrame` more of it: a burst (a
   * fast model, a replay after reload) is drawn over a few frames instead of in one long task.
   */
  render() {
    cancelAnimationFrame(this._frame);
    this._frame = 0;
    const started = performance.now();
    this._renderedAt = started;
    this._shown = Math.min(this.text.length, this._shown + renderOptions.maxCharsPerFrame);
    const step = this.splitter.push(this.text.slice(0, this._shown));
    if (step.commit) this.committed.append(chunk(renderMarkdown(step.commit)));
    if (step.fence !== null) this._showFence(step.fence);
    else this._showTail(step.tail);
    this._placeCursor();
    this._measure(started);
    this.onFrame();
    this._capped = this._shown < this.text.length; // the budget ran out: go on next frame
    if (this._capped || this._finishing) this._schedule();
  }

  /**
   * The answer is complete (or stopped): once the text that arrived is drawn, render the rest
   * exactly, without healing. Resolves when that is done.
   */
  finish() {
    return new Promise((resolve) => {
      this._finishing = true;
      this._whenFinished.push(resolve);
      if (this._shown >= this.text.length) this._complete();
      else this._schedule();
    });
  }

  /** Show a whole stored answer in one render (no streaming). */
  show(text) {
    this.reset();
    this.text = text;
    this._shown = text.length;
    if (text) this.committed.append(chunk(renderMarkdown(text)));
    this.splitter.committed = text.length;
    this.onFrame();
  }

  _schedule() {
    this._frame ||= requestAnimationFrame((now) => this._onFrame(now));
  }

  _onFrame(now) {
    this._frame = 0;
    if (this._finishing && this._shown >= this.text.length) return this._complete();
    if (!this._capped && now - this._renderedAt < renderOptions.minFrameMs) return this._schedule();
    this.render();
  }

  _complete() {
    cancelAnimationFrame(this._frame);
    this._frame = 0;
    const started = performance.now();
    const rest = this.splitter.rest(this.text);
    if (this.splitter.needsFullRender) this.committed.replaceChildren(chunk(renderMarkdown(this.text)));
    else if (rest) this.committed.append(chunk(renderMarkdown(rest)));
    this.splitter.committed = this.text.length;
    this.tail.replaceChildren();
    this._fence = null;
    this._shownTail = "";
    this._cursor?.classList.remove("cursor");
    this._cursor = null;
    this._finishing = false;
    this._measure(started);
    this.onFrame();
    const waiting = this._whenFinished;
    this._whenFinished = [];
    for (const resolve of waiting) resolve();
  }

  /** Mark the innermost element that ends the answer; CSS draws the cursor after its text. */
  _placeCursor() {
    let target = this.tail.lastElementChild ?? this.committed.lastElementChild ?? this.tail;
    for (let last = lastContent(target); last?.nodeType === Node.ELEMENT_NODE; last = lastContent(target)) {
      if (target.tagName === "CODE") break;
      target = last;
    }
    if (target === this._cursor) return;
    this._cursor?.classList.remove("cursor");
    target.classList.add("cursor");
    this._cursor = target;
  }

  _showTail(tail) {
    if (this._fence === null && tail === this._shownTail) return;
    this._fence = null;
    this._shownTail = tail;
    if (tail) this.tail.replaceChildren(renderMarkdown(remend(tail, { linkMode: "text-only" })));
    else this.tail.replaceChildren();
  }

  _showFence({ info, body }) {
    if (this._fence === null) {
      const language = info.split(/\s+/)[0];
      const block = codeBlock(language);
      const pre = document.createElement("pre");
      const code = document.createElement("code");
      if (language) code.className = `language-${language}`;
      const node = document.createTextNode("");
      code.append(node);
      pre.append(code);
      block.append(pre);
      this.tail.replaceChildren(block);
      this._fence = { node, shown: 0 };
      this._shownTail = "";
    }
    this._fence.node.appendData(body.slice(this._fence.shown));
    this._fence.shown = body.length;
  }

  _measure(started) {
    const ms = performance.now() - started;
    this.stats.renders += 1;
    this.stats.renderMs += ms;
    if (ms > this.stats.maxRenderMs) this.stats.maxRenderMs = ms;
    this.stats.trace.push([this._shown, this.stats.renderMs]);
  }
}
