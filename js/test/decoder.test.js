// The SSE decoder against the WHATWG rules, fed at every chunk split point.
import assert from "node:assert/strict";
import { describe, test } from "node:test";

import { EventDecoder, seqOf } from "../sluiceway.js";

const enc = new TextEncoder();

/** [name, input text, expected events, expected retry] */
const CASES = [
  ["LF", "data: a\n\n", [{ data: "a", event: "message", id: null }]],
  ["CRLF", "data: a\r\n\r\n", [{ data: "a", event: "message", id: null }]],
  ["CR", "data: a\r\r", [{ data: "a", event: "message", id: null }]],
  ["mixed line ends", "data: a\r\ndata: b\rdata: c\n\r\n", [{ data: "a\nb\nc", event: "message", id: null }]],
  ["multi-line data", "data: one\ndata: two\ndata:\n\n", [{ data: "one\ntwo\n", event: "message", id: null }]],
  ["comments ignored", ": ping\n\n:\ndata: x\n: inside\n\n", [{ data: "x", event: "message", id: null }]],
  ["no space after colon", "data:a\n\n", [{ data: "a", event: "message", id: null }]],
  ["only one space stripped", "data:  a \n\n", [{ data: " a ", event: "message", id: null }]],
  ["field without colon", "data\n\n", [{ data: "", event: "message", id: null }]],
  ["event type", "event: update\ndata: x\n\n", [{ data: "x", event: "update", id: null }]],
  [
    "id persists across events",
    "id: s:1\ndata: a\n\ndata: b\n\nid: s:3\ndata: c\n\n",
    [
      { data: "a", event: "message", id: "s:1" },
      { data: "b", event: "message", id: "s:1" },
      { data: "c", event: "message", id: "s:3" },
    ],
  ],
  ["id with NUL ignored", "id: ok\ndata: a\n\nid: b\0d\ndata: b\n\n", [
    { data: "a", event: "message", id: "ok" },
    { data: "b", event: "message", id: "ok" },
  ]],
  ["retry", "retry: 1500\ndata: x\n\n", [{ data: "x", event: "message", id: null }], 1500],
  ["bad retry ignored", "retry: 15x\ndata: x\n\n", [{ data: "x", event: "message", id: null }], null],
  ["unknown fields ignored", "foo: bar\ndata: x\n\n", [{ data: "x", event: "message", id: null }]],
  ["no data, no event", "event: x\n\nid: 7\n\n", []],
  ["BOM at start", "\uFEFFdata: x\n\n", [{ data: "x", event: "message", id: null }]],
  ["unterminated event dropped", "data: a\n\ndata: b", [{ data: "a", event: "message", id: null }]],
  [
    "UTF-8 of every width",
    'id: s:2\ndata: {"type":"chunk","text":"héllo – 世界 😀"}\n\n',
    [{ data: '{"type":"chunk","text":"héllo – 世界 😀"}', event: "message", id: "s:2" }],
  ],
  [
    "seed stream",
    'id: ab:2\ndata: {"type":"chunk","text":"Hi"}\n\nid: ab:4\ndata: {"type":"done"}\n\ndata: [DONE]\n\n',
    [
      { data: '{"type":"chunk","text":"Hi"}', event: "message", id: "ab:2" },
      { data: '{"type":"done"}', event: "message", id: "ab:4" },
      { data: "[DONE]", event: "message", id: "ab:4" },
    ],
  ],
];

function decode(pieces) {
  const decoder = new EventDecoder();
  const events = [];
  for (const piece of pieces) events.push(...decoder.feed(piece));
  events.push(...decoder.end());
  return { events, retry: decoder.retry };
}

describe("EventDecoder", () => {
  for (const [name, text, expected, retry] of CASES) {
    const bytes = enc.encode(text);
    test(`${name}: whole`, () => {
      const out = decode([bytes]);
      assert.deepEqual(out.events, expected);
      if (retry !== undefined) assert.equal(out.retry, retry);
    });
    test(`${name}: split at every byte boundary`, () => {
      for (let i = 0; i <= bytes.length; i++) {
        assert.deepEqual(decode([bytes.slice(0, i), bytes.slice(i)]).events, expected, `split at ${i}`);
      }
    });
    test(`${name}: split at every pair of boundaries`, () => {
      for (let i = 0; i <= bytes.length; i++) {
        for (let j = i; j <= bytes.length; j++) {
          const pieces = [bytes.slice(0, i), bytes.slice(i, j), bytes.slice(j)];
          assert.deepEqual(decode(pieces).events, expected, `split at ${i}, ${j}`);
        }
      }
    });
    test(`${name}: one byte at a time`, () => {
      const pieces = Array.from(bytes, (b) => Uint8Array.of(b));
      assert.deepEqual(decode(pieces).events, expected);
    });
  }

  test("a character split across reads waits for its tail", () => {
    const decoder = new EventDecoder();
    const bytes = enc.encode("data: 😀\n\n");
    assert.deepEqual(decoder.feed(bytes.slice(0, 8)), []);
    assert.deepEqual(decoder.feed(bytes.slice(8)), [{ data: "😀", event: "message", id: null }]);
  });

  test("lastEventId is kept for reconnection", () => {
    const decoder = new EventDecoder();
    decoder.feed(enc.encode("id: s:9\ndata: x\n\n"));
    assert.equal(decoder.lastEventId, "s:9");
  });
});

describe("seqOf", () => {
  for (const [id, seq] of [
    ["abc:12", 12],
    ["a:b:3", 3],
    ["7", 7],
    ["abc:", null],
    ["abc:x", null],
    [null, null],
  ]) {
    test(`${id} -> ${seq}`, () => assert.equal(seqOf(id), seq));
  }
});
