/**
 * sluiceway's JavaScript client: stream a chat answer from a sluiceway server as typed events.
 *
 * One ES module for browsers and Node >= 20 (it needs only `fetch`, `ReadableStream` and
 * `TextDecoder`). The server serves this very file at `/sluiceway.js`; `js/sluiceway.js` in the
 * repository re-exports it for npm and `node --test`.
 *
 * How it works: `streamChat` POSTs to `/chat/stream` and reads the seed SSE format
 * (`id: <stream>:<seq>` + `data: {"type":"chunk"|"done"|"error",...}` ... `data: [DONE]`).
 * Bytes go through `EventDecoder` (a streaming UTF-8 decoder in front of the `eventsource-parser`
 * package, so lines, CR/LF/CRLF and characters split across reads come out whole). If the
 * connection drops before `[DONE]`, it reconnects with
 * `GET /chat/stream/{stream_id}?after=<last seq>` (plus `Last-Event-ID`) and carries on from the next
 * event, so no text is lost or repeated; a server without resume makes that a `network` error.
 * Errors are thrown as `SluicewayError` with the server's stable `code`, whether they arrive as a
 * JSON 4xx/5xx before the stream or as an in-band `{"type":"error"}` event. Aborting `signal` throws
 * the usual `AbortError`; Stop (`cancelStream`) asks the server to cancel the generation itself.
 *
 * @example
 * import { streamChat } from "http://127.0.0.1:8000/sluiceway.js";
 * for await (const event of streamChat({ messages: [{ role: "user", content: "Hi" }], model: "echo" })) {
 *   if (event.type === "chunk") process.stdout.write(event.text);
 * }
 */
import { createParser } from "./vendor/eventsource-parser/index.js";

/** The HTTP status that goes with each stable error code (as the server maps them). */
export const STATUS_BY_CODE = Object.freeze({
  invalid_request: 400,
  unknown_model: 404,
  rate_limited: 429,
  upstream_auth: 502,
  upstream_unavailable: 503,
  upstream_timeout: 504,
  upstream_error: 502,
  overloaded: 429,
  cancelled: 499,
  internal: 500,
});

/**
 * Every failure the client reports. `code` is the server's stable code, or one of the client's own:
 * `unreachable` (no answer from the server), `network` (the connection dropped and could not be
 * resumed), `protocol` (the server answered something that is not the seed format).
 */
export class SluicewayError extends Error {
  constructor(message, { code = "internal", status = 0, retryAfter = null, retryable = false, streamId = null, cause } = {}) {
    super(message, cause === undefined ? undefined : { cause });
    this.name = "SluicewayError";
    this.code = code;
    this.status = status;
    this.retryAfter = retryAfter;
    this.retryable = retryable;
    this.streamId = streamId;
  }
}

/**
 * Sans-IO server-sent events decoder: `feed(bytes)` returns the events those bytes complete, as
 * `{data, event, id}`. `lastEventId` follows the WHATWG rule (it persists across events); `retry`
 * holds the last reconnection delay the server asked for.
 */
export class EventDecoder {
  constructor() {
    this.lastEventId = null;
    this.retry = null;
    this._text = new TextDecoder("utf-8");
    this._events = [];
    this._parser = createParser({
      onEvent: (event) => this._events.push({ data: event.data, event: event.event ?? "message", id: this.lastEventId }),
      onId: (id) => {
        this.lastEventId = id;
      },
      onRetry: (ms) => {
        this.retry = ms;
      },
    });
  }

  /** Decode `bytes` (a Uint8Array, or a string already decoded); return the completed events. */
  feed(bytes) {
    this._parser.feed(typeof bytes === "string" ? bytes : this._text.decode(bytes, { stream: true }));
    return this._drain();
  }

  /** End of stream: flush the UTF-8 decoder; an event without its blank line is dropped (per spec). */
  end() {
    this._parser.feed(this._text.decode());
    this._parser.reset();
    return this._drain();
  }

  _drain() {
    const events = this._events;
    this._events = [];
    return events;
  }
}

/** The `seq` part of a seed event id `<stream>:<seq>` (null if the id has none). */
export function seqOf(id) {
  const tail = id ? id.slice(id.lastIndexOf(":") + 1) : "";
  return /^\d+$/.test(tail) ? Number(tail) : null;
}

/**
 * Stream one answer: yields `{type:"start", streamId, conversationId}`, then `{type:"chunk", text, seq}`
 * for each piece, then `{type:"done", usage, finish_reason, ttft_ms, tokens_per_s}`. A resumed drop
 * yields `{type:"reconnect", attempt, after}` in between. Throws `SluicewayError` (or `AbortError`).
 *
 * Options: `url` (default "/chat/stream"), `messages` or `message`, `model`, `signal`, `maxTokens`,
 * `temperature`, `conversationId`, `retry` (with `conversationId`: ask the conversation's last
 * question again, in place of its failed or stopped answer), `disconnect` ("cancel" | "finish"),
 * `headers`, `resume` (default true), `maxReconnects` (default 5), `fetch` (an alternative fetch).
 */
export async function* streamChat(options) {
  const { url = "/chat/stream", signal, headers = {} } = options;
  const fetchImpl = options.fetch ?? globalThis.fetch;
  const response = await send(
    fetchImpl,
    options.retry && options.conversationId ? withQuery(url, "retry=true") : url,
    {
      method: "POST",
      headers: { "content-type": "application/json", accept: "text/event-stream", ...headers },
      body: JSON.stringify(requestBody(options)),
      signal,
    },
    null,
  );
  const streamId = response.headers.get("x-stream-id");
  yield { type: "start", streamId, conversationId: response.headers.get("x-conversation-id"), resumed: false };
  yield* follow({ ...options, url, fetchImpl, streamId }, response, 0);
}

/**
 * Attach to a running (or retained) stream: `GET {url}/{streamId}?after=N`. Yields the same events as
 * `streamChat`, starting after event `after` (0 replays the whole answer).
 */
export async function* resumeChat(options) {
  const { url = "/chat/stream", streamId, after = 0 } = options;
  const fetchImpl = options.fetch ?? globalThis.fetch;
  const response = await send(fetchImpl, resumeUrl(url, streamId, after), resumeInit(options, streamId, after), streamId);
  yield { type: "start", streamId, conversationId: response.headers.get("x-conversation-id"), resumed: true };
  yield* follow({ ...options, url, fetchImpl, streamId }, response, after);
}

/**
 * Ask the server to stop generating `streamId` (`POST {url}/{streamId}/cancel`). Resolves to true
 * when the server accepted, false when it could not (unknown stream, no cancel endpoint, no answer).
 */
export async function cancelStream({ url = "/chat/stream", streamId, headers = {}, fetch: fetchImpl = globalThis.fetch }) {
  if (!streamId) return false;
  try {
    const response = await fetchImpl(`${trimSlash(url)}/${encodeURIComponent(streamId)}/cancel`, { method: "POST", headers });
    await response.body?.cancel();
    return response.ok;
  } catch {
    return false;
  }
}

function requestBody(options) {
  const body = {};
  if (options.messages !== undefined) body.messages = options.messages;
  if (options.message !== undefined) body.message = options.message;
  if (options.model) body.model = options.model;
  if (options.maxTokens !== undefined) body.max_tokens = options.maxTokens;
  if (options.temperature !== undefined) body.temperature = options.temperature;
  if (options.conversationId) body.conversation_id = options.conversationId;
  if (options.disconnect) body.disconnect = options.disconnect;
  return body;
}

/** `url` with `pair` added to its query (it may be relative, and may have a query already). */
function withQuery(url, pair) {
  const hash = url.indexOf("#");
  const base = hash < 0 ? url : url.slice(0, hash);
  return `${base}${base.includes("?") ? "&" : "?"}${pair}`;
}

function trimSlash(url) {
  return url.endsWith("/") ? url.slice(0, -1) : url;
}

function resumeUrl(url, streamId, after) {
  return `${trimSlash(url)}/${encodeURIComponent(streamId)}?after=${after}`;
}

function resumeInit(options, streamId, after) {
  const headers = { accept: "text/event-stream", ...(options.headers ?? {}) };
  if (after > 0) headers["last-event-id"] = `${streamId}:${after}`;
  return { method: "GET", headers, signal: options.signal };
}

/** fetch, turning "no answer" and non-2xx answers into `SluicewayError`s. */
async function send(fetchImpl, url, init, streamId) {
  let response;
  try {
    response = await fetchImpl(url, init);
  } catch (err) {
    if (init.signal?.aborted) throw err;
    throw new SluicewayError(`cannot reach the server at ${url}: ${err?.message ?? err}`, { code: "unreachable", streamId, cause: err });
  }
  const type = response.headers.get("content-type") ?? "";
  if (response.ok && type.includes("text/event-stream") && response.body) return response;
  throw await errorFromResponse(response, streamId);
}

/** The `SluicewayError` for an answer that is not an event stream (a JSON error, usually). */
export async function errorFromResponse(response, streamId = null) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    // not JSON: the status says enough
  }
  const err = body && typeof body === "object" ? body.error ?? body : {};
  const status = response.status;
  const fallback = response.ok ? "protocol" : status >= 500 ? "internal" : "invalid_request";
  const code = typeof err.code === "string" ? err.code : typeof err.type === "string" ? err.type : fallback;
  const message =
    typeof err.message === "string"
      ? err.message
      : response.ok
        ? `expected an event stream, got ${response.headers.get("content-type") || "no content type"}`
        : `HTTP ${status} ${response.statusText}`.trim();
  const retryAfter = numberOr(err.retry_after, parseRetryAfter(response.headers.get("retry-after")));
  return new SluicewayError(message, {
    code,
    status,
    retryAfter,
    retryable: status === 429 || status === 503 || status === 504,
    streamId,
  });
}

function numberOr(value, fallback) {
  return typeof value === "number" && Number.isFinite(value) ? value : fallback;
}

function parseRetryAfter(header) {
  if (!header) return null;
  const seconds = Number(header);
  if (Number.isFinite(seconds)) return seconds;
  const when = Date.parse(header);
  return Number.isNaN(when) ? null : Math.max(0, (when - Date.now()) / 1000);
}

/** Read `response` to its end, reconnecting after drops; `after` is the last seq already seen. */
async function* follow(options, response, after) {
  const { signal, streamId, resume = true, maxReconnects = 5 } = options;
  let lastSeq = after;
  let attempt = 0;
  for (;;) {
    const decoder = new EventDecoder();
    let failure = null;
    try {
      for await (const event of sseEvents(response, decoder)) {
        const seq = seqOf(event.id);
        if (seq !== null && seq <= lastSeq) continue; // already seen (a replay that overlapped)
        const item = seedEvent(event.data, seq, streamId);
        if (seq !== null) lastSeq = seq;
        attempt = 0;
        if (item === null) return;
        yield item;
        if (item.type === "done") return;
      }
      failure = new SluicewayError("the stream ended before it was finished", { code: "network", streamId });
    } catch (err) {
      if (signal?.aborted || err instanceof SluicewayError) throw err;
      failure = new SluicewayError(`connection lost: ${err?.message ?? err}`, { code: "network", streamId, cause: err });
    }
    response = null;
    while (response === null) {
      if (!resume || !streamId || attempt >= maxReconnects) throw failure;
      attempt += 1;
      await sleep(decoder.retry ?? Math.min(2000, 250 * 2 ** (attempt - 1)), signal);
      yield { type: "reconnect", attempt, after: lastSeq };
      response = await reconnect(options, lastSeq, failure);
    }
  }
}

/** The resumed response, or null when the server was not reachable (yet) and trying again makes sense. */
async function reconnect(options, after, failure) {
  const { url, fetchImpl, streamId } = options;
  try {
    return await send(fetchImpl, resumeUrl(url, streamId, after), resumeInit(options, streamId, after), streamId);
  } catch (err) {
    if (options.signal?.aborted || !(err instanceof SluicewayError)) throw err;
    if (err.code === "unreachable") return null;
    if ([404, 405, 501].includes(err.status)) {
      failure.message += ` (the server cannot resume stream ${streamId}: ${err.message})`;
      throw failure;
    }
    throw err;
  }
}

async function* sseEvents(response, decoder) {
  const reader = response.body.getReader();
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      yield* decoder.feed(value);
    }
    yield* decoder.end();
  } finally {
    reader.cancel().catch(() => {});
  }
}

/** One seed `data:` payload as a typed event; null for `[DONE]`; throws for an in-band error. */
export function seedEvent(data, seq = null, streamId = null) {
  if (data === "[DONE]") return null;
  let payload;
  try {
    payload = JSON.parse(data);
  } catch (err) {
    throw new SluicewayError(`malformed event from the server: ${data.slice(0, 80)}`, { code: "protocol", streamId, cause: err });
  }
  switch (payload.type) {
    case "chunk":
      return { type: "chunk", text: String(payload.text ?? ""), seq };
    case "done":
      return {
        type: "done",
        usage: payload.usage ?? null,
        finish_reason: payload.finish_reason ?? null,
        ttft_ms: payload.ttft_ms ?? null,
        tokens_per_s: payload.tokens_per_s ?? null,
        seq,
      };
    case "error":
      throw new SluicewayError(String(payload.message ?? payload.code), {
        code: String(payload.code ?? "internal"),
        status: STATUS_BY_CODE[payload.code] ?? 500,
        retryAfter: numberOr(payload.retry_after, null),
        retryable: Boolean(payload.retryable),
        streamId,
      });
    default:
      return { ...payload, seq };
  }
}

function sleep(ms, signal) {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const timer = setTimeout(done, ms);
    function done() {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }
    function onAbort() {
      clearTimeout(timer);
      reject(signal.reason);
    }
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}
