/**
 * The conversation view: user and assistant turns, the answer footer, inline errors, and scrolling
 * that follows a streaming answer only while the reader is at the bottom.
 *
 * How following works: the transcript is "pinned" while its bottom is within `PIN_PX` of the
 * viewport's. Scrolling up (wheel up, or `scrollTop` going down) unpins it; scrolling back to the
 * bottom, "Jump to latest" or sending a message pins it again. After every rendered frame a pinned
 * transcript jumps to the bottom (instantly: smooth scrolling cannot keep up with a stream).
 */
import { AnswerRenderer, copyText } from "./render.js";

const PIN_PX = 48;
const FOLD_CHARS = 2000;

export class Transcript {
  constructor(el, jump) {
    this.el = el;
    this.jump = jump;
    this.pinned = true;
    this._lastTop = 0;
    el.addEventListener("scroll", () => this._onScroll(), { passive: true });
    el.addEventListener("wheel", (e) => e.deltaY < 0 && this._unpin(), { passive: true });
    el.addEventListener("click", (e) => this._onClick(e));
    jump.addEventListener("click", () => this.pin());
    // Turns also grow outside render frames (highlighting, the footer, off-screen blocks laid out late).
    this._resize = new ResizeObserver(() => this.follow());
  }

  /** Remove every turn (and show the empty state). */
  clear() {
    this._resize.disconnect();
    for (const turn of this.el.querySelectorAll(".msg")) turn.remove();
    this._empty(true);
    this.pin();
  }

  /** Show a user turn (as plain text: a person's words are never parsed as markup). */
  addUser(text) {
    const turn = element("article", "msg user");
    turn.dataset.role = "user";
    const bubble = element("div", "bubble");
    turn.append(bubble);
    if (text.length <= FOLD_CHARS) {
      bubble.textContent = text;
      return this._add(turn);
    }
    // a pasted document: show its start, the rest on request (laying out 50 KB of text is not free)
    bubble.textContent = `${text.slice(0, FOLD_CHARS)}…`;
    const more = element("button", "show-all");
    more.type = "button";
    more.textContent = `Show all ${text.length.toLocaleString()} characters`;
    more.addEventListener("click", () => {
      bubble.textContent = text;
      more.remove();
    });
    turn.append(more);
    return this._add(turn);
  }

  /** Show an assistant turn; returns its `AnswerView`. */
  addAssistant({ model = "" } = {}) {
    const view = new AnswerView(model, () => this.follow());
    this._add(view.el);
    return view;
  }

  /** Keep the newest text in view if the reader has not scrolled away. */
  follow() {
    if (this.pinned) {
      this.el.scrollTop = this.el.scrollHeight;
      this._lastTop = this.el.scrollTop;
    }
    this.jump.hidden = this.pinned || this._atBottom();
  }

  pin() {
    this.pinned = true;
    this.follow();
  }

  _add(turn) {
    this._empty(false);
    this.el.append(turn);
    this._resize.observe(turn);
    this.follow();
    return turn;
  }

  _empty(show) {
    const empty = this.el.querySelector(".empty");
    if (empty) empty.hidden = !show;
  }

  _atBottom() {
    return this.el.scrollHeight - this.el.scrollTop - this.el.clientHeight <= PIN_PX;
  }

  _unpin() {
    if (this.el.scrollHeight > this.el.clientHeight) {
      this.pinned = false;
      this.jump.hidden = false;
    }
  }

  _onScroll() {
    const top = this.el.scrollTop;
    if (this._atBottom()) this.pinned = true;
    else if (top < this._lastTop) this.pinned = false;
    this._lastTop = top;
    this.jump.hidden = this.pinned || this._atBottom();
  }

  async _onClick(event) {
    const button = event.target.closest("button.copy-code, button.copy-answer");
    if (!button) return;
    const text = button.classList.contains("copy-code")
      ? button.closest(".code-block").querySelector("code").textContent
      : button.closest(".msg").answerText?.() ?? "";
    const ok = await copyText(text);
    button.textContent = ok ? "Copied" : "Copy failed";
    setTimeout(() => (button.textContent = "Copy"), 1500);
  }
}

/** One assistant turn: its markdown, its state, its footer and its inline error. */
export class AnswerView {
  constructor(model, onFrame) {
    this.el = element("article", "msg assistant");
    this.el.dataset.role = "assistant";
    this.el.dataset.state = "streaming";
    this._stateCalls = 0;
    if (model) this.el.dataset.model = model;
    this.el.answerText = () => this.text;
    const bubble = element("div", "bubble");
    this.body = element("div", "md");
    bubble.append(this.body);
    this.note = element("p", "note");
    this.note.hidden = true;
    this.alert = element("div", "alert");
    this.alert.setAttribute("role", "alert");
    this.alert.hidden = true;
    this.footer = element("footer", "meta");
    this.stats = element("span", "stats");
    const copy = element("button", "copy-answer");
    copy.type = "button";
    copy.textContent = "Copy";
    copy.setAttribute("aria-label", "Copy answer");
    this.footer.append(this.stats, copy);
    this.el.append(bubble, this.note, this.alert, this.footer);
    this.renderer = new AnswerRenderer(this.body, { onFrame });
  }

  get text() {
    return this.renderer.text;
  }

  append(text) {
    this.renderer.append(text);
  }

  /** Show a finished answer from history in one render. */
  show(text) {
    this.renderer.show(text);
  }

  /**
   * `streaming`, `done`, `stopped` or `error`. Leaving `streaming` waits until the renderer has
   * drawn everything (a burst may still be on its way to the screen); only the newest call counts.
   */
  setState(state) {
    const call = ++this._stateCalls;
    if (state === "streaming") {
      this.el.dataset.state = state;
      return Promise.resolve();
    }
    return this.renderer.finish().then(() => {
      if (call === this._stateCalls) this.el.dataset.state = state;
    });
  }

  setStreamId(id) {
    if (id) this.el.dataset.streamId = id;
  }

  /** A passing remark under the answer ("Connection lost — resuming…"); empty hides it. */
  setNote(text) {
    this.note.textContent = text;
    this.note.hidden = !text;
  }

  /** The footer: time to first token, tokens, tokens/s, total time and why it ended. */
  setStats({ ttftMs = null, tokens = null, tokensPerS = null, totalMs = null, finish = null, label = null }) {
    const parts = [];
    if (this.el.dataset.model) parts.push(this.el.dataset.model);
    if (label) parts.push(label);
    if (ttftMs !== null) {
      parts.push(`TTFT ${Math.round(ttftMs)} ms`);
      this.el.dataset.ttftMs = String(Math.round(ttftMs * 10) / 10);
    }
    if (tokens !== null) parts.push(`${tokens} tokens`);
    if (tokensPerS !== null) {
      parts.push(`${tokensPerS.toFixed(1)} tok/s`);
      this.el.dataset.tokensPerS = String(tokensPerS);
    }
    if (totalMs !== null) parts.push(totalMs < 1000 ? `${Math.round(totalMs)} ms` : `${(totalMs / 1000).toFixed(1)} s`);
    if (finish && finish !== "stop") parts.push(finish === "length" ? "stopped at max tokens" : finish === "content_filter" ? "stopped by the model's content filter" : finish);
    this.stats.textContent = parts.join(" · ");
  }

  /** An inline error with the server's message and a Retry button (if `onRetry` is given). */
  showError(message, code, onRetry) {
    this.alert.replaceChildren();
    const text = element("span", "alert-text");
    text.textContent = message;
    this.alert.append(text);
    if (code) this.alert.dataset.code = code;
    if (onRetry) {
      const retry = element("button", "retry");
      retry.type = "button";
      retry.textContent = "Retry";
      retry.addEventListener("click", onRetry, { once: true });
      this.alert.append(retry);
    }
    this.alert.hidden = false;
  }

  clearError() {
    this.alert.hidden = true;
    this.alert.replaceChildren();
  }
}

function element(tag, className) {
  const el = document.createElement(tag);
  el.className = className;
  return el;
}
