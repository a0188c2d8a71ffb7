// streamChat, resumeChat and cancelStream against real HTTP servers on loopback.
import assert from "node:assert/strict";
import { once } from "node:events";
import { createServer } from "node:http";
import { after, describe, test } from "node:test";

import { SluicewayError, cancelStream, resumeChat, streamChat } from "../sluiceway.js";

const servers = [];
after(() => Promise.all(servers.map((s) => new Promise((resolve) => s.close(resolve)))));

/** Serve `handler(req, res, body)` on a free loopback port; returns {url, requests}. */
async function serve(handler) {
  const requests = [];
  const server = createServer(async (req, res) => {
    let body = "";
    for await (const piece of req) body += piece;
    requests.push({ method: req.method, url: req.url, headers: req.headers, body: body ? JSON.parse(body) : null });
    await handler(req, res, body);
  });
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  servers.push(server);
  server.closeAllConnectionsOnClose = true;
  return { url: `http://127.0.0.1:${server.address().port}/chat/stream`, requests, server };
}

const SSE = { "content-type": "text/event-stream", "cache-control": "no-cache" };
const chunk = (sid, seq, text) => `id: ${sid}:${seq}\ndata: ${JSON.stringify({ type: "chunk", text })}\n\n`;
const done = (sid, seq, extra = {}) =>
  `id: ${sid}:${seq}\ndata: ${JSON.stringify({
    type: "done",
    usage: { input_tokens: 3, output_tokens: 2 },
    finish_reason: "stop",
    ttft_ms: 1.5,
    tokens_per_s: 100,
    ...extra,
  })}\n\ndata: [DONE]\n\n`;
const tick = () => new Promise((resolve) => setTimeout(resolve, 5));

async function collect(iterable) {
  const events = [];
  for await (const event of iterable) events.push(event);
  return events;
}

async function rejection(promise) {
  try {
    await promise;
  } catch (err) {
    return err;
  }
  assert.fail("expected a rejection");
}

describe("streamChat", () => {
  test("yields start, chunks in order and done; sends the request body", async () => {
    const srv = await serve(async (req, res) => {
      res.writeHead(200, { ...SSE, "x-stream-id": "s1", "x-conversation-id": "c9" });
      for (const [i, text] of ["Hel", "lo ", "wörld 😀"].entries()) {
        // split one event across two writes, and a multi-byte character with it
        const bytes = Buffer.from(chunk("s1", i + 2, text));
        res.write(bytes.subarray(0, bytes.length - 7));
        await tick();
        res.write(bytes.subarray(bytes.length - 7));
      }
      res.end(done("s1", 6));
    });
    const events = await collect(
      streamChat({ url: srv.url, messages: [{ role: "user", content: "hi" }], model: "echo", maxTokens: 5, conversationId: "c9" }),
    );
    assert.deepEqual(events[0], { type: "start", streamId: "s1", conversationId: "c9", resumed: false });
    assert.deepEqual(
      events.filter((e) => e.type === "chunk").map((e) => [e.text, e.seq]),
      [["Hel", 2], ["lo ", 3], ["wörld 😀", 4]],
    );
    assert.deepEqual(events.at(-1), {
      type: "done",
      usage: { input_tokens: 3, output_tokens: 2 },
      finish_reason: "stop",
      ttft_ms: 1.5,
      tokens_per_s: 100,
      seq: 6,
    });
    const [request] = srv.requests;
    assert.equal(request.method, "POST");
    assert.deepEqual(request.body, {
      messages: [{ role: "user", content: "hi" }],
      model: "echo",
      max_tokens: 5,
      conversation_id: "c9",
    });
  });

  test("retry asks the server for the conversation's last question again, in the query", async () => {
    const srv = await serve((req, res) => {
      res.writeHead(200, { ...SSE, "x-stream-id": "s2", "x-conversation-id": "c9" });
      res.end(done("s2", 2));
    });
    await collect(streamChat({ url: srv.url, message: "again", conversationId: "c9", retry: true }));
    await collect(streamChat({ url: `${srv.url}?x=1`, message: "again", conversationId: "c9", retry: true }));
    await collect(streamChat({ url: srv.url, message: "again", retry: true })); // no conversation: no retry
    assert.deepEqual(
      srv.requests.map((r) => r.url),
      ["/chat/stream?retry=true", "/chat/stream?x=1&retry=true", "/chat/stream"],
    );
    assert.deepEqual(srv.requests[0].body, { message: "again", conversation_id: "c9" });
  });

  test("a JSON error before the stream is thrown with code, status and retryAfter", async () => {
    const srv = await serve((req, res) => {
      res.writeHead(429, { "content-type": "application/json", "retry-after": "7" });
      res.end(JSON.stringify({ error: { code: "overloaded", message: "too many generations" } }));
    });
    const err = await rejection(collect(streamChat({ url: srv.url, message: "hi" })));
    assert.ok(err instanceof SluicewayError);
    assert.equal(err.code, "overloaded");
    assert.equal(err.status, 429);
    assert.equal(err.retryAfter, 7);
    assert.equal(err.message, "too many generations");
    assert.equal(err.retryable, true);
  });

  test("a 404 unknown model keeps the server's code", async () => {
    const srv = await serve((req, res) => {
      res.writeHead(404, { "content-type": "application/json" });
      res.end(JSON.stringify({ error: { code: "unknown_model", message: "unknown model 'nope'" } }));
    });
    const err = await rejection(collect(streamChat({ url: srv.url, message: "hi", model: "nope" })));
    assert.deepEqual([err.code, err.status, err.message], ["unknown_model", 404, "unknown model 'nope'"]);
  });

  test("a 200 JSON answer instead of a stream is an error, not a hang", async () => {
    const srv = await serve((req, res) => {
      res.writeHead(200, { "content-type": "application/json" });
      res.end(JSON.stringify({ error: { code: "upstream_error", message: "wrapped" } }));
    });
    const err = await rejection(collect(streamChat({ url: srv.url, message: "hi" })));
    assert.deepEqual([err.code, err.message], ["upstream_error", "wrapped"]);
  });

  test("an in-band error event is thrown after the text before it", async () => {
    const srv = await serve((req, res) => {
      res.writeHead(200, { ...SSE, "x-stream-id": "s2" });
      res.write(chunk("s2", 2, "partial "));
      res.write(`id: s2:4\ndata: ${JSON.stringify({ type: "error", code: "upstream_error", message: "boom", retryable: true })}\n\n`);
      res.end("data: [DONE]\n\n");
    });
    const seen = [];
    const err = await rejection(
      (async () => {
        for await (const event of streamChat({ url: srv.url, message: "hi" })) seen.push(event);
      })(),
    );
    assert.deepEqual(seen.filter((e) => e.type === "chunk").map((e) => e.text), ["partial "]);
    assert.ok(err instanceof SluicewayError);
    assert.deepEqual([err.code, err.status, err.message, err.retryable, err.streamId], ["upstream_error", 502, "boom", true, "s2"]);
  });

  test("an unreachable server is an `unreachable` error", async () => {
    const srv = await serve(() => {});
    await new Promise((resolve) => srv.server.close(resolve));
    servers.splice(servers.indexOf(srv.server), 1);
    const err = await rejection(collect(streamChat({ url: srv.url, message: "hi" })));
    assert.deepEqual([err.code, err.status], ["unreachable", 0]);
  });

  test("after a dropped connection it resumes after the last seq: exact text, nothing repeated", async () => {
    const srv = await serve(async (req, res) => {
      if (req.method === "POST") {
        res.writeHead(200, { ...SSE, "x-stream-id": "s3" });
        res.write(chunk("s3", 2, "one ") + chunk("s3", 3, "two "));
        await tick();
        res.socket.destroy(); // the network drops mid-answer
        return;
      }
      res.writeHead(200, SSE);
      // a replay that overlaps what the client has must not repeat text
      res.end(chunk("s3", 3, "two ") + chunk("s3", 4, "three") + done("s3", 6));
    });
    const events = await collect(streamChat({ url: srv.url, message: "hi" }));
    const text = events.filter((e) => e.type === "chunk").map((e) => e.text).join("");
    assert.equal(text, "one two three");
    assert.deepEqual(events.find((e) => e.type === "reconnect"), { type: "reconnect", attempt: 1, after: 3 });
    assert.equal(events.at(-1).type, "done");
    const resume = srv.requests[1];
    assert.equal(resume.method, "GET");
    assert.equal(resume.url, "/chat/stream/s3?after=3");
    assert.equal(resume.headers["last-event-id"], "s3:3");
  });

  test("reconnecting goes on while the server is briefly unreachable", async () => {
    let port;
    const srv = await serve(async (req, res) => {
      if (req.method === "POST") {
        res.writeHead(200, { ...SSE, "x-stream-id": "sr" });
        res.write(chunk("sr", 2, "before "));
        await tick();
        // the server goes away (connection refused) and comes back on the same port
        srv.server.close();
        srv.server.closeAllConnections();
        setTimeout(() => srv.server.listen(port, "127.0.0.1"), 400);
        return;
      }
      res.writeHead(200, SSE);
      res.end(chunk("sr", 3, "after") + done("sr", 5));
    });
    port = srv.server.address().port;
    const events = await collect(streamChat({ url: srv.url, message: "hi", maxReconnects: 5 }));
    assert.equal(events.filter((e) => e.type === "chunk").map((e) => e.text).join(""), "before after");
    assert.ok(events.filter((e) => e.type === "reconnect").length >= 2);
    assert.equal(srv.requests.at(-1).url, "/chat/stream/sr?after=2");
  });

  test("a stream that ends without [DONE] is resumed too", async () => {
    let posts = 0;
    const srv = await serve((req, res) => {
      res.writeHead(200, { ...SSE, "x-stream-id": "s4" });
      if (req.method === "POST") {
        posts += 1;
        res.end(chunk("s4", 2, "a"));
      } else res.end(chunk("s4", 3, "b") + done("s4", 5));
    });
    const events = await collect(streamChat({ url: srv.url, message: "hi" }));
    assert.equal(events.filter((e) => e.type === "chunk").map((e) => e.text).join(""), "ab");
    assert.equal(posts, 1);
  });

  test("a drop on a server without resume is a `network` error", async () => {
    const srv = await serve(async (req, res) => {
      if (req.method === "POST") {
        res.writeHead(200, { ...SSE, "x-stream-id": "s5" });
        res.write(chunk("s5", 2, "a"));
        await tick();
        res.socket.destroy();
        return;
      }
      res.writeHead(404, { "content-type": "application/json" });
      res.end(JSON.stringify({ error: { code: "invalid_request", message: "Not Found" } }));
    });
    const err = await rejection(collect(streamChat({ url: srv.url, message: "hi" })));
    assert.equal(err.code, "network");
    assert.match(err.message, /cannot resume stream s5/);
  });

  test("resume: false gives up at once", async () => {
    const srv = await serve((req, res) => {
      res.writeHead(200, { ...SSE, "x-stream-id": "s6" });
      res.end(chunk("s6", 2, "a"));
    });
    const err = await rejection(collect(streamChat({ url: srv.url, message: "hi", resume: false })));
    assert.equal(err.code, "network");
    assert.equal(srv.requests.length, 1);
  });

  test("aborting the signal throws AbortError and closes the connection", async () => {
    let closed;
    const closedPromise = new Promise((resolve) => (closed = resolve));
    const srv = await serve(async (req, res) => {
      res.writeHead(200, { ...SSE, "x-stream-id": "s7" });
      res.on("close", closed);
      for (let i = 2; i < 1000 && !res.destroyed; i++) {
        res.write(chunk("s7", i, "x"));
        await tick();
      }
      res.end();
    });
    const controller = new AbortController();
    const err = await rejection(
      (async () => {
        for await (const event of streamChat({ url: srv.url, message: "hi", signal: controller.signal })) {
          if (event.type === "chunk" && event.seq === 4) controller.abort();
        }
      })(),
    );
    assert.equal(err.name, "AbortError");
    await closedPromise; // the server saw the client go away
    assert.equal(srv.requests.length, 1); // and no reconnect was tried
  });
});

describe("resumeChat", () => {
  test("replays a stream from after=0", async () => {
    const srv = await serve((req, res) => {
      res.writeHead(200, SSE);
      res.end(chunk("s8", 2, "full ") + chunk("s8", 3, "answer") + done("s8", 5));
    });
    const events = await collect(resumeChat({ url: srv.url, streamId: "s8", after: 0 }));
    assert.deepEqual(events[0], { type: "start", streamId: "s8", conversationId: null, resumed: true });
    assert.equal(events.filter((e) => e.type === "chunk").map((e) => e.text).join(""), "full answer");
    assert.equal(srv.requests[0].url, "/chat/stream/s8?after=0");
    assert.equal(srv.requests[0].headers["last-event-id"], undefined);
  });

  test("an unknown stream is a 404 SluicewayError", async () => {
    const srv = await serve((req, res) => {
      res.writeHead(404, { "content-type": "application/json" });
      res.end(JSON.stringify({ error: { code: "invalid_request", message: "no stream gone" } }));
    });
    const err = await rejection(collect(resumeChat({ url: srv.url, streamId: "gone" })));
    assert.deepEqual([err.status, err.streamId], [404, "gone"]);
  });
});

describe("cancelStream", () => {
  test("POSTs to the cancel endpoint", async () => {
    const srv = await serve((req, res) => {
      res.writeHead(req.url === "/chat/stream/s9/cancel" ? 200 : 404, { "content-type": "application/json" });
      res.end("{}");
    });
    assert.equal(await cancelStream({ url: srv.url, streamId: "s9" }), true);
    assert.equal(await cancelStream({ url: srv.url, streamId: "other" }), false);
    assert.equal(srv.requests[0].method, "POST");
  });

  test("is false, not an exception, when the server is gone", async () => {
    assert.equal(await cancelStream({ url: "http://127.0.0.1:9/chat/stream", streamId: "x" }), false);
  });
});
