// The sidebar's stores: localStorage when the server has no conversations API, else the server.
import assert from "node:assert/strict";
import { once } from "node:events";
import { createServer } from "node:http";
import { describe, test } from "node:test";

import { LocalStore, ServerStore, history, openStore, titleOf } from "../../src/sluiceway/web/conversations.js";

/** A Storage with a byte quota, like the browser's. */
class MemoryStorage {
  constructor(quota = Infinity) {
    this.items = new Map();
    this.quota = quota;
  }
  getItem(key) {
    return this.items.has(key) ? this.items.get(key) : null;
  }
  setItem(key, value) {
    if (value.length > this.quota) throw new Error("QuotaExceededError");
    this.items.set(key, String(value));
  }
}

async function serve(handler) {
  const server = createServer(handler);
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  return { base: `http://127.0.0.1:${server.address().port}/`, close: () => new Promise((r) => server.close(r)) };
}

describe("LocalStore", () => {
  test("saves, lists newest first, reads and removes", async () => {
    const store = new LocalStore(new MemoryStorage());
    const a = await store.create("first");
    a.messages.push({ role: "user", content: "hi" });
    await store.save(a);
    const b = await store.create("second");
    await store.save(b);
    assert.deepEqual((await store.list()).map((c) => c.title), ["second", "first"]);
    assert.deepEqual((await store.get(a.id)).messages, [{ role: "user", content: "hi" }]);
    await store.save(a); // touching a conversation moves it to the top
    assert.deepEqual((await store.list()).map((c) => c.title), ["first", "second"]);
    await store.remove(a.id);
    assert.deepEqual((await store.list()).map((c) => c.id), [b.id]);
    assert.equal(await store.get(a.id), null);
  });

  test("over the quota it keeps the newest conversations instead of failing", async () => {
    const storage = new MemoryStorage(5_000);
    const store = new LocalStore(storage);
    for (let i = 0; i < 20; i++) {
      const c = await store.create(`c${i}`);
      c.messages.push({ role: "user", content: "x".repeat(400) });
      await store.save(c);
    }
    const titles = (await store.list()).map((c) => c.title);
    assert.ok(titles.length > 0 && titles.length < 20);
    assert.equal(titles[0], "c19");
  });

  test("corrupt storage reads as empty", async () => {
    const storage = new MemoryStorage();
    storage.setItem("sluiceway.conversations", "{not json");
    assert.deepEqual(await new LocalStore(storage).list(), []);
  });

  test("sends the whole history", async () => {
    const store = new LocalStore(new MemoryStorage());
    const messages = [
      { role: "user", content: "q1" },
      { role: "assistant", content: "a1", status: "complete" },
      { role: "user", content: "q2" },
    ];
    assert.deepEqual(store.request({ messages }, "q2"), {
      messages: [
        { role: "user", content: "q1" },
        { role: "assistant", content: "a1" },
        { role: "user", content: "q2" },
      ],
    });
  });
});

describe("history", () => {
  test("keeps questions and answers with text, drops failed and running ones", () => {
    const messages = [
      { role: "user", content: "q1" },
      { role: "assistant", content: "partial", status: "cancelled" },
      { role: "user", content: "q2" },
      { role: "assistant", content: "bro", status: "error" },
      { role: "assistant", content: "", status: "complete" },
      { role: "assistant", content: "live", status: "streaming" },
    ];
    assert.deepEqual(history(messages), [
      { role: "user", content: "q1" },
      { role: "assistant", content: "partial" },
      { role: "user", content: "q2" },
    ]);
  });
});

describe("titleOf", () => {
  test("the first line, shortened", () => {
    assert.equal(titleOf("  Hello there\nmore"), "Hello there");
    assert.equal(titleOf("x".repeat(100)).length, 58);
    assert.equal(titleOf("   "), "New chat");
  });
});

describe("ServerStore", () => {
  test("is chosen when GET /conversations answers with data, and speaks its API", async () => {
    const seen = [];
    const srv = await serve((req, res) => {
      seen.push(`${req.method} ${req.url}`);
      res.setHeader("content-type", "application/json");
      if (req.url.split("?")[0] === "/conversations") return res.end(JSON.stringify({ data: [{ id: "c1", title: "T" }], next_cursor: null }));
      if (req.url === "/conversations/c1" && req.method === "GET") {
        return res.end(JSON.stringify({ id: "c1", title: "T", messages: [{ role: "user", content: "q", status: "complete" }] }));
      }
      res.statusCode = 204;
      res.end();
    });
    try {
      const store = await openStore(srv.base);
      assert.equal(store.kind, "server");
      assert.deepEqual(await store.list(), [{ id: "c1", title: "T" }]);
      assert.equal((await store.get("c1")).messages[0].content, "q");
      await store.remove("c1");
      assert.deepEqual(seen.at(-1), "DELETE /conversations/c1");
      const fresh = await store.create("new one");
      assert.deepEqual(store.request(fresh, "hello"), { conversationId: "new", message: "hello" });
      store.adopt(fresh, "c9");
      assert.deepEqual(store.request(fresh, "again"), { conversationId: "c9", message: "again" });
      assert.deepEqual(store.request(fresh, "again", { retry: true }), { conversationId: "c9", message: "again", retry: true });
      // a conversation the server never named has no turn to replace
      assert.deepEqual(store.request(await store.create("t"), "hi", { retry: true }), { conversationId: "new", message: "hi" });
    } finally {
      await srv.close();
    }
  });

  test("a server without the API, or none at all, means the local store", async () => {
    const srv = await serve((req, res) => {
      res.statusCode = 404;
      res.setHeader("content-type", "application/json");
      res.end("{}");
    });
    globalThis.localStorage ??= new MemoryStorage();
    try {
      assert.equal((await openStore(srv.base)).kind, "local");
    } finally {
      await srv.close();
    }
    assert.equal((await openStore("http://127.0.0.1:9/")).kind, "local");
  });
});
