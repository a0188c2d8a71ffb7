/**
 * The chat page: wires the composer, the model picker, the sidebar and the transcript to the client.
 *
 * One answer at a time runs through `App.run`, fed either by `streamChat` (a new question) or by
 * `resumeChat` (a reload mid-answer). How resume after reload works: when an answer starts, its
 * stream id, conversation and prompt go to sessionStorage (tab-scoped, survives a reload); every
 * ending (done, stop, error) removes them. On load, a stream id still there means the page was
 * reloaded mid-answer: the page shows the conversation up to the question and replays the answer
 * with `GET /chat/stream/{id}?after=0`, then follows it live. Stop is two things: abort the fetch
 * and ask the server to cancel (`POST /chat/stream/{id}/cancel`); a mere disconnect (a reload) is
 * never a cancel.
 */
import { SluicewayError, cancelStream, resumeChat, streamChat } from "./sluiceway.js";
import { openStore, titleOf } from "./conversations.js";
import { renderOptions, warmUp } from "./render.js";
import { Transcript } from "./transcript.js";

const BASE = new URL(".", document.baseURI);
const CHAT_URL = new URL("chat/stream", BASE).href;
const ACTIVE_KEY = "sluiceway.active";
const CURRENT_KEY = "sluiceway.current";
const MODEL_KEY = "sluiceway.model";
const RETRY_DELAYS_S = [1, 2, 4, 8, 15];

const $ = (id) => document.getElementById(id);
const ui = {
  app: $("app"),
  prompt: $("prompt"),
  composer: $("composer"),
  send: $("send"),
  stop: $("stop"),
  model: $("model"),
  banner: $("banner"),
  bannerText: $("banner-text"),
  bannerRetry: $("banner-retry"),
  status: $("status"),
  list: $("conversations"),
  newChat: $("new-chat"),
  storeNote: $("store-note"),
  openSidebar: $("open-sidebar"),
  closeSidebar: $("close-sidebar"),
  scrim: $("scrim"),
};

/**
 * Let the browser render and handle input before going on. A burst of thousands of events that
 * arrived in one network read would otherwise run as one long task (no paint, no Stop click).
 */
function yieldToBrowser() {
  if (globalThis.scheduler?.yield) return globalThis.scheduler.yield();
  return new Promise((resolve) => {
    const channel = new MessageChannel();
    channel.port1.onmessage = () => resolve();
    channel.port2.postMessage(null);
  });
}

/** The longest the read loop runs before it yields to the browser. */
const SLICE_MS = 8;

/**
 * A resumed answer's words that the page had to wait this long for are live, not replayed: the
 * replay (the words the server had when the page reattached) is read back to back, without waiting.
 */
const LIVE_WAIT_MS = 10;

/**
 * `events` as `{event, waitedMs}`: how long the page waited for each one (about 0 when it was
 * already read from the network, as the events of a replay are).
 */
async function* timed(events) {
  const iterator = events[Symbol.asyncIterator]();
  try {
    for (;;) {
      const asked = performance.now();
      const { value, done } = await iterator.next();
      if (done) return;
      yield { event: value, waitedMs: performance.now() - asked };
    }
  } finally {
    await iterator.return?.();
  }
}

/** Call `fn` once the frame showing the current DOM has been painted. */
function afterPaint(fn) {
  requestAnimationFrame(() => setTimeout(fn, 0));
}

function readJSON(storage, key) {
  try {
    return JSON.parse(storage.getItem(key) ?? "null");
  } catch {
    return null;
  }
}

/** The words a person sees for an error. */
function describe(err) {
  if (!(err instanceof SluicewayError)) return `Something went wrong: ${err?.message ?? err}`;
  if (err.code === "unreachable") return "Can't reach the sluiceway server. Is it running?";
  if (err.code === "network") return `The connection was lost: ${err.message}`;
  const wait = err.retryAfter ? ` Try again in ${Math.ceil(err.retryAfter)} s.` : "";
  return `${err.message} (${err.code}${err.status ? `, ${err.status}` : ""}).${wait}`;
}

class App {
  constructor() {
    this.transcript = new Transcript($("transcript"), $("jump"));
    this.store = null;
    this.conversation = null;
    this.active = null;
    this.leaving = false;
    this.offlineTimer = 0;
    this.offlineAttempt = 0;
    this.sizing = 0;
    /** Timing of the newest answer and the render's tunables, for benchmarks and tests. */
    this.perf = null;
    this.renderOptions = renderOptions;
  }

  async start() {
    this.bind();
    const online = await this.connect();
    this.store = await openStore(BASE);
    ui.storeNote.textContent =
      this.store.kind === "server" ? "Saved on the server." : "Saved in this browser only.";
    await this.refreshList();
    await this.restore();
    if (online) ui.prompt.focus();
    document.documentElement.dataset.ready = "true";
    (globalThis.requestIdleCallback ?? setTimeout)(() => warmUp());
  }

  bind() {
    ui.composer.addEventListener("submit", (e) => {
      e.preventDefault();
      this.send(e.timeStamp);
    });
    ui.prompt.addEventListener("keydown", (e) => {
      if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
        e.preventDefault();
        this.send(e.timeStamp);
      } else if (e.key === "Escape") this.stop();
    });
    ui.prompt.addEventListener("input", () => this.autosize());
    document.addEventListener("keydown", (e) => e.key === "Escape" && this.active && this.stop());
    ui.stop.addEventListener("click", () => this.stop());
    ui.model.addEventListener("change", () => localStorage.setItem(MODEL_KEY, ui.model.value));
    ui.bannerRetry.addEventListener("click", () => this.connect());
    ui.newChat.addEventListener("click", () => this.newChat());
    ui.openSidebar.addEventListener("click", () => this.sidebar(true));
    ui.closeSidebar.addEventListener("click", () => this.sidebar(false));
    ui.scrim.addEventListener("click", () => this.sidebar(false));
    ui.list.addEventListener("click", (e) => this.onListClick(e));
    window.addEventListener("pagehide", () => this.onLeave());
  }

  // --- the server and its models -------------------------------------------------------------

  /** Load the model list; on failure show the unreachable state and try again with backoff. */
  async connect() {
    clearTimeout(this.offlineTimer);
    try {
      const response = await fetch(new URL("v1/models", BASE), { headers: { accept: "application/json" } });
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      const body = await response.json();
      this.fillModels((body.data ?? []).map((m) => m.id));
      this.online();
      return true;
    } catch {
      this.offline();
      return false;
    }
  }

  fillModels(ids) {
    const saved = localStorage.getItem(MODEL_KEY);
    ui.model.replaceChildren(
      ...ids.map((id) => {
        const option = document.createElement("option");
        option.value = option.textContent = id;
        return option;
      }),
    );
    if (saved && ids.includes(saved)) ui.model.value = saved;
    ui.model.disabled = ids.length === 0;
  }

  online() {
    this.offlineAttempt = 0;
    ui.banner.hidden = true;
    ui.app.dataset.server = "online";
  }

  offline() {
    const delay = RETRY_DELAYS_S[Math.min(this.offlineAttempt, RETRY_DELAYS_S.length - 1)];
    this.offlineAttempt += 1;
    ui.app.dataset.server = "unreachable";
    ui.bannerText.textContent = `Can't reach the sluiceway server at ${BASE.host}. Is it running? Trying again in ${delay} s.`;
    ui.banner.hidden = false;
    clearTimeout(this.offlineTimer);
    this.offlineTimer = setTimeout(() => this.connect(), delay * 1000);
  }

  // --- conversations ---------------------------------------------------------------------------

  async refreshList() {
    const items = await this.store.list();
    ui.list.replaceChildren(
      ...items.map((c) => {
        const li = document.createElement("li");
        const open = document.createElement("button");
        open.type = "button";
        open.className = "conversation";
        open.dataset.id = c.id;
        open.textContent = c.title || "Untitled";
        if (this.conversation?.id === c.id) open.setAttribute("aria-current", "true");
        const remove = document.createElement("button");
        remove.type = "button";
        remove.className = "delete";
        remove.dataset.id = c.id;
        remove.textContent = "✕";
        remove.setAttribute("aria-label", `Delete ${c.title || "conversation"}`);
        li.append(open, remove);
        return li;
      }),
    );
  }

  async onListClick(event) {
    const button = event.target.closest("button[data-id]");
    if (!button || this.active) return;
    const id = button.dataset.id;
    if (button.classList.contains("delete")) {
      await this.store.remove(id);
      if (this.conversation?.id === id) this.newChat();
      await this.refreshList();
      return;
    }
    await this.open(id);
    this.sidebar(false);
  }

  newChat() {
    if (this.active) return;
    this.conversation = null;
    sessionStorage.removeItem(CURRENT_KEY);
    this.transcript.clear();
    this.refreshList();
    ui.prompt.focus();
  }

  /** Show a stored conversation. With `resuming`, trailing answers after the last question are left out. */
  async open(id, { resuming = false } = {}) {
    const conversation = await this.store.get(id);
    if (conversation === null) return null;
    let messages = conversation.messages;
    if (resuming) {
      const lastUser = messages.findLastIndex((m) => m.role === "user");
      messages = messages.slice(0, lastUser + 1);
    }
    this.conversation = conversation;
    sessionStorage.setItem(CURRENT_KEY, id);
    this.transcript.clear();
    for (const message of messages) this.showStored(message);
    await this.refreshList();
    return conversation;
  }

  showStored(message) {
    if (message.role === "user") return this.transcript.addUser(message.content);
    if (message.role !== "assistant") return null;
    const view = this.transcript.addAssistant({ model: message.model });
    view.show(message.content ?? "");
    // "streaming" here means the page was closed before the answer's end was recorded
    const state = { complete: "done", cancelled: "stopped", error: "error", streaming: "stopped" }[message.status] ?? "done";
    view.setState(state);
    const stats = message.stats ?? { ttftMs: message.ttft_ms ?? null, tokens: message.usage?.output_tokens ?? null };
    const label = { cancelled: "Stopped", streaming: "Interrupted" }[message.status] ?? null;
    view.setStats({ ...stats, label });
    if (state === "error") {
      const code = message.error?.code ?? message.error_code;
      view.showError(message.error?.message ?? `This answer failed (${code ?? "error"}).`, code);
    }
    return view;
  }

  sidebar(open) {
    ui.app.classList.toggle("sidebar-open", open);
    ui.scrim.hidden = !open;
    ui.openSidebar.setAttribute("aria-expanded", String(open));
  }

  // --- sending, stopping, resuming -----------------------------------------------------------

  async send(sentAt = performance.now()) {
    const text = ui.prompt.value;
    if (!text.trim() || this.active) return;
    ui.prompt.value = "";
    this.autosize();
    this.conversation ??= await this.store.create(titleOf(text));
    const request = this.store.request(
      { ...this.conversation, messages: [...this.conversation.messages, { role: "user", content: text }] },
      text,
    );
    this.conversation.messages.push({ role: "user", content: text });
    this.transcript.addUser(text);
    this.transcript.pin();
    const view = this.transcript.addAssistant({ model: ui.model.value });
    await this.run(view, { request, prompt: text, sentAt });
  }

  stop() {
    const active = this.active;
    if (!active || active.stopped) return;
    active.stopped = true;
    active.controller.abort();
    if (active.streamId) cancelStream({ url: CHAT_URL, streamId: active.streamId });
  }

  async retry(view) {
    if (this.active) return;
    const messages = this.conversation.messages;
    const lastUser = messages.findLastIndex((m) => m.role === "user");
    if (lastUser < 0) return;
    const prompt = messages[lastUser].content;
    messages.splice(lastUser + 1);
    const request = this.store.request(this.conversation, prompt, { retry: true });
    view.clearError();
    view.setNote("");
    view.renderer.reset();
    view.setStats({});
    view.setState("streaming");
    await this.run(view, { request, prompt });
  }

  /** Reattach to the answer that was streaming when the page was reloaded. */
  async restore() {
    const active = readJSON(sessionStorage, ACTIVE_KEY);
    const current = active?.conversationId ?? sessionStorage.getItem(CURRENT_KEY);
    const conversation = current ? await this.open(current, { resuming: Boolean(active) }) : null;
    if (!active?.streamId) return;
    let partial = "";
    if (conversation === null) {
      this.conversation = await this.store.create(titleOf(active.prompt ?? ""));
      this.store.adopt(this.conversation, active.conversationId);
      if (active.prompt) {
        this.conversation.messages.push({ role: "user", content: active.prompt });
        this.transcript.addUser(active.prompt);
      }
    } else {
      const stored = conversation.messages.at(-1);
      if (stored?.role === "assistant") partial = stored.content ?? "";
      this.conversation.messages = this.conversation.messages.slice(
        0,
        this.conversation.messages.findLastIndex((m) => m.role === "user") + 1,
      );
    }
    const view = this.transcript.addAssistant({ model: active.model });
    await this.run(view, { resumeId: active.streamId, prompt: active.prompt, partial, model: active.model });
  }

  /**
   * Stream one answer into `view` and record how it ended. `request` is what `streamChat` sends;
   * `resumeId` instead replays a running stream from its start.
   */
  async run(view, { request = null, resumeId = null, prompt = "", partial = "", sentAt = performance.now(), model }) {
    model ??= ui.model.value || undefined;
    const controller = new AbortController();
    const active = (this.active = { controller, view, streamId: resumeId, stopped: false });
    const requestMs = performance.now() - sentAt;
    const message = { role: "assistant", content: "", status: "streaming", model };
    this.conversation.messages.push(message);
    const perf = (this.perf = {
      sentAt,
      firstPaintMs: null,
      requestMs, // ms after Enter: the answer's run starts, headers in, first chunk read, drawn, painted
      headersMs: null,
      firstChunkMs: null,
      firstRenderMs: null,
      tokens: 0,
      liveFrom: null, // a resumed answer: when its first live (not replayed) words came, and how many since
      liveTokens: 0,
      reconnects: 0,
      done: false,
      renderer: view.renderer,
    });
    this.busy(true);
    await this.store.save(this.conversation);
    let first = null;
    let last = null;
    let done = null;
    let stats = {};
    try {
      const options = { url: CHAT_URL, signal: controller.signal, model };
      const events = resumeId
        ? resumeChat({ ...options, streamId: resumeId, after: 0 })
        : streamChat({ ...options, ...request });
      let slice = performance.now();
      for await (const { event, waitedMs } of timed(events)) {
        if (performance.now() - slice > SLICE_MS) {
          await yieldToBrowser();
          slice = performance.now();
        }
        if (event.type === "start") {
          perf.headersMs = performance.now() - sentAt;
          active.streamId = event.streamId;
          view.setStreamId(event.streamId);
          if (event.resumed) view.renderer.reset();
          this.store.adopt(this.conversation, event.conversationId);
          this.remember(event.streamId, prompt, model);
        } else if (event.type === "chunk") {
          if (!event.text) continue;
          last = performance.now();
          view.append(event.text);
          perf.tokens += 1;
          if (resumeId && perf.liveFrom === null && first !== null && waitedMs >= LIVE_WAIT_MS) {
            perf.liveFrom = last; // the first chunk of a response is waited for even in a replay
          }
          if (perf.liveFrom !== null) perf.liveTokens += 1;
          if (first === null) {
            first = last;
            perf.firstChunkMs = first - sentAt;
            perf.firstRenderMs = performance.now() - sentAt;
            view.setNote("");
            afterPaint(() => (perf.firstPaintMs = performance.now() - sentAt));
            await yieldToBrowser(); // paint the first words before reading on
            slice = performance.now();
          }
        } else if (event.type === "reconnect") {
          perf.reconnects += 1;
          view.setNote("Connection lost — resuming…");
        } else if (event.type === "done") {
          view.setNote("");
          done = event;
        }
      }
      const cancelled = done?.finish_reason === "cancelled";
      message.status = cancelled ? "cancelled" : "complete";
      view.setState(cancelled ? "stopped" : "done");
      stats = this.stats(done, perf, first, last, sentAt, Boolean(resumeId));
      if (cancelled) stats.label = "Stopped";
      this.announce(cancelled ? "Stopped." : "Answer complete.");
    } catch (err) {
      if (this.leaving) return;
      stats = this.stats(null, perf, first, last, sentAt, Boolean(resumeId));
      if (active.stopped || err?.name === "AbortError") {
        message.status = "cancelled";
        view.setState("stopped");
        stats.label = "Stopped";
        this.announce("Stopped.");
      } else {
        if (!view.text && partial) view.show(partial);
        message.status = "error";
        message.error = { code: err?.code ?? "internal", message: describe(err) };
        view.setState("error");
        view.showError(describe(err), err?.code, () => this.retry(view));
        this.announce("The answer failed.");
        if (err?.code === "unreachable") this.offline();
      }
    } finally {
      if (!this.leaving) {
        message.content = view.text;
        message.stats = stats;
        view.setStats(stats);
        perf.done = true;
        sessionStorage.removeItem(ACTIVE_KEY);
        this.active = null;
        this.busy(false);
        await this.store.save(this.conversation);
        if (this.conversation.id) sessionStorage.setItem(CURRENT_KEY, this.conversation.id);
        await this.refreshList();
      }
    }
  }

  /**
   * The footer figures: TTFT as the reader saw it (the server's for a replay), tokens and rates.
   * The rate is the server's when it sent one; else the page's, first to last words, counting in a
   * replay only the live words (the replayed burst would inflate it).
   */
  stats(done, perf, first, last, sentAt, replay) {
    const tokens = done?.usage?.output_tokens ?? perf.tokens;
    const [from, counted] = replay ? [perf.liveFrom, perf.liveTokens] : [first, perf.tokens];
    const span = from !== null && last !== null ? (last - from) / 1000 : 0;
    const ttftMs = replay ? (done?.ttft_ms ?? null) : (perf.firstPaintMs ?? (first === null ? null : first - sentAt));
    return {
      ttftMs,
      tokens,
      tokensPerS: done?.tokens_per_s ?? (span > 0 && counted > 1 ? (counted - 1) / span : null),
      totalMs: replay || last === null ? null : last - sentAt,
      finish: done?.finish_reason ?? null,
    };
  }

  remember(streamId, prompt, model) {
    if (!streamId) return;
    const record = { streamId, conversationId: this.conversation.id, prompt, model };
    sessionStorage.setItem(ACTIVE_KEY, JSON.stringify(record));
    if (this.conversation.id) sessionStorage.setItem(CURRENT_KEY, this.conversation.id);
  }

  /** Leaving mid-answer (a reload): keep the stream id for resume and save the partial answer. */
  onLeave() {
    if (!this.active) return;
    this.leaving = true;
    const message = this.conversation.messages.at(-1);
    if (message?.role === "assistant") message.content = this.active.view.text;
    this.store.save(this.conversation);
  }

  busy(on) {
    ui.send.hidden = on;
    ui.stop.hidden = !on;
    $("transcript").setAttribute("aria-busy", String(on));
    if (on) this.announce("Generating an answer…");
  }

  announce(text) {
    ui.status.textContent = text;
  }

  /** Fit the composer to its text, at most once a frame (measuring a long text forces a layout). */
  autosize() {
    this.sizing ||= requestAnimationFrame(() => {
      this.sizing = 0;
      ui.prompt.style.height = "auto";
      ui.prompt.style.height = `${Math.min(ui.prompt.scrollHeight, 200)}px`;
    });
  }
}

const app = new App();
window.sluicewayApp = app;
app.start();
