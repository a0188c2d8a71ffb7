/**
 * Where the sidebar's conversations live: on the server when it offers the conversations API
 * (`GET /conversations` answers 200 with `{"data": [...]}`), otherwise in this browser's localStorage.
 *
 * Both stores speak the same shapes: `list()` gives `[{id, title, created_at, updated_at}]`, newest
 * first; `get(id)` gives `{id, title, messages: [{role, content, status, ...}]}` with `status` one of
 * `complete`, `cancelled`, `error` (and `streaming` while an answer is running). `request(conversation,
 * text, {retry})` says what `streamChat` must send: the server store sends only the new message with the
 * `conversation_id` (the server keeps the history; `"new"` starts a conversation and the server names
 * it in `X-Conversation-Id`), and for a Retry asks the server to replace the failed turn; the local store
 * sends the whole history (the page has already dropped the failed answer from it).
 */

const KEY = "sluiceway.conversations";
const KEEP = 50;

/** A fresh id (randomUUID needs a secure context; the fallback is enough for a local key). */
function newId() {
  return globalThis.crypto?.randomUUID?.() ?? `${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 10)}`;
}

/** The title of a conversation that starts with `text`. */
export function titleOf(text) {
  const line = text.trim().split("\n")[0];
  return line.length > 60 ? `${line.slice(0, 57)}…` : line || "New chat";
}

/** The turns a model should see: user turns and answers that produced text (not failed ones). */
export function history(messages) {
  return messages
    .filter((m) => m.role === "user" || (m.role === "assistant" && m.status !== "error" && m.status !== "streaming" && m.content))
    .map(({ role, content }) => ({ role, content }));
}

/** Conversations in localStorage: this browser only, the newest `KEEP` kept. */
export class LocalStore {
  constructor(storage = globalThis.localStorage) {
    this.kind = "local";
    this.storage = storage;
  }

  async list() {
    return this._all().map(({ id, title, created_at, updated_at }) => ({ id, title, created_at, updated_at }));
  }

  async get(id) {
    return this._all().find((c) => c.id === id) ?? null;
  }

  async create(title) {
    const now = new Date().toISOString();
    return { id: newId(), title, created_at: now, updated_at: now, messages: [] };
  }

  async save(conversation) {
    conversation.updated_at = new Date().toISOString();
    const rest = this._all().filter((c) => c.id !== conversation.id);
    this._write([conversation, ...rest].slice(0, KEEP));
  }

  async remove(id) {
    this._write(this._all().filter((c) => c.id !== id));
  }

  request(conversation) {
    return { messages: history(conversation.messages) };
  }

  adopt() {}

  _all() {
    try {
      const all = JSON.parse(this.storage.getItem(KEY) ?? "[]");
      return Array.isArray(all) ? all : [];
    } catch {
      return [];
    }
  }

  _write(all) {
    for (let keep = all.length; keep > 0; keep = Math.floor(keep / 2)) {
      try {
        this.storage.setItem(KEY, JSON.stringify(all.slice(0, keep)));
        return;
      } catch {
        // over the quota: keep fewer conversations
      }
    }
  }
}

/** Conversations kept by the server's conversations API. */
export class ServerStore {
  constructor(base, fetchImpl = globalThis.fetch.bind(globalThis)) {
    this.kind = "server";
    this.base = base;
    this.fetch = fetchImpl;
  }

  async list() {
    const body = await this._json("GET", "conversations?limit=50");
    return Array.isArray(body?.data) ? body.data : [];
  }

  async get(id) {
    const body = await this._json("GET", `conversations/${encodeURIComponent(id)}`);
    if (body === null) return null;
    return { ...body, messages: Array.isArray(body.messages) ? body.messages : [] };
  }

  /** A new conversation: the server makes it with the first question (`conversation_id: "new"`). */
  async create(title) {
    return { id: null, title, messages: [] };
  }

  async save() {
    // the server stores every turn itself
  }

  async remove(id) {
    await this._json("DELETE", `conversations/${encodeURIComponent(id)}`);
  }

  /** With `retry`, the server replaces the last turn if it asked `text` and did not complete. */
  request(conversation, text, { retry = false } = {}) {
    const request = { conversationId: conversation.id ?? "new", message: text };
    if (retry && conversation.id) request.retry = true;
    return request;
  }

  /** The server named the conversation of a stream (`X-Conversation-Id`). */
  adopt(conversation, id) {
    if (id && !conversation.id) conversation.id = id;
  }

  async _json(method, path, body) {
    try {
      const init = { method, headers: { accept: "application/json" } };
      if (body !== undefined) {
        init.headers["content-type"] = "application/json";
        init.body = JSON.stringify(body);
      }
      const response = await this.fetch(new URL(path, this.base), init);
      if (!response.ok || response.status === 204) return null;
      return await response.json();
    } catch {
      return null;
    }
  }
}

/** The server's store if it has the conversations API, else the local one. */
export async function openStore(base, fetchImpl = globalThis.fetch.bind(globalThis)) {
  try {
    const response = await fetchImpl(new URL("conversations", base), { headers: { accept: "application/json" } });
    if (response.ok && (response.headers.get("content-type") ?? "").includes("json")) {
      const body = await response.json();
      if (Array.isArray(body?.data)) return new ServerStore(base, fetchImpl);
    }
  } catch {
    // unreachable or not JSON: fall back
  }
  return new LocalStore();
}
