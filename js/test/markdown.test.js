// The block splitter: every streamed prefix, rendered as committed blocks plus the final rest,
// gives exactly the HTML of one render of the whole answer.
import assert from "node:assert/strict";
import { describe, test } from "node:test";

import { BlockSplitter, escapeHtml, toHtml } from "../../src/sluiceway/web/markdown.js";

/** A small deterministic PRNG so failures reproduce. */
function random(seed) {
  let s = seed >>> 0;
  return () => ((s = (s * 1664525 + 1013904223) >>> 0) / 2 ** 32);
}

const SAMPLE = [
  "# Streaming markdown",
  "",
  "Some **bold**, some *italic*, `inline code` and a [link](https://example.com).",
  "A second line of the same paragraph.",
  "",
  "Setext heading",
  "--------------",
  "",
  "1. first",
  "2. second",
  "   - nested",
  "   - items",
  "3. third",
  "",
  "- loose item",
  "",
  "- another loose item",
  "",
  "> a quote",
  "> over two lines",
  "",
  "```python",
  "def f(x):",
  "    return x * 2  # `not` markdown",
  "",
  "print(f(2))",
  "```",
  "",
  "| a | b |",
  "|---|:-:|",
  "| 1 | 2 |",
  "",
  "~~~",
  "tilde fence with ``` inside",
  "~~~",
  "Text right after a fence.",
  "",
  "<img src=x onerror=alert(1)> and <b>raw html</b>",
  "",
  "---",
  "",
  "````md",
  "```",
  "nested fence",
  "```",
  "````",
  "",
  "2. a list that starts at two",
  "",
  "Final paragraph without a newline",
].join("\n");

/** Cut `text` into pieces the way a model streams it: words with their whitespace, or random sizes. */
function pieces(text, rnd, mode) {
  if (mode === "words") return text.match(/\s*\S+\s*|\s+/g);
  const out = [];
  for (let i = 0; i < text.length; ) {
    const n = 1 + Math.floor(rnd() * 12);
    out.push(text.slice(i, i + n));
    i += n;
  }
  return out;
}

/** Stream `parts` through a splitter, checking its invariants; return the committed chunks and the rest. */
function stream(parts) {
  const splitter = new BlockSplitter();
  const commits = [];
  let text = "";
  for (const part of parts) {
    text += part;
    const before = splitter.committed;
    const { commit, tail, fence } = splitter.push(text);
    assert.equal(text.slice(before, splitter.committed), commit);
    if (fence === null) assert.equal(text.slice(splitter.committed), tail);
    else assert.ok(text.endsWith(fence.body) && tail === "");
    if (commit) commits.push(commit);
  }
  return { commits, rest: splitter.rest(text), splitter };
}

function render({ commits, rest }) {
  return [...commits, rest].map(toHtml).join("");
}

describe("BlockSplitter", () => {
  test("commits blocks as soon as they are final", () => {
    const { commits, rest } = stream(pieces(SAMPLE, null, "words"));
    assert.ok(commits.length >= 8, `only ${commits.length} commits`);
    // the last two blocks stay open: the last could still re-shape the one above it
    assert.equal(rest, "2. a list that starts at two\n\nFinal paragraph without a newline");
    assert.equal(commits.join("") + rest, SAMPLE);
  });

  test("word-by-word streaming renders exactly like one render of the whole", () => {
    assert.equal(render(stream(pieces(SAMPLE, null, "words"))), toHtml(SAMPLE));
  });

  for (let seed = 1; seed <= 40; seed++) {
    test(`random split points (seed ${seed}) render exactly like one render of the whole`, () => {
      assert.equal(render(stream(pieces(SAMPLE, random(seed), "random"))), toHtml(SAMPLE));
    });
  }

  test("every single split point of a tricky tail renders the same", () => {
    const text = "para\n\n- a\n- b\n\nnext\n\n```js\nlet x = 1;\n```\n2\n\n3. three\n\nend";
    for (let i = 1; i < text.length; i++) {
      for (let j = i; j < text.length; j += 3) {
        const parts = [text.slice(0, i), text.slice(i, j), text.slice(j)];
        assert.equal(render(stream(parts)), toHtml(text), `split at ${i}, ${j}`);
      }
    }
  });

  test("an open fence is followed by scanning, not lexing, and closes into one commit", () => {
    const head = "Intro paragraph.\n\n```python\n";
    const lines = Array.from({ length: 300 }, (_, i) => `print(${i})\n`);
    const splitter = new BlockSplitter();
    let text = head;
    splitter.push(text);
    for (const line of lines) {
      text += line;
      const step = splitter.push(text);
      assert.equal(step.commit, "");
      assert.equal(step.fence.info, "python");
      assert.equal(step.fence.body, lines.slice(0, lines.indexOf(line) + 1).join(""));
    }
    assert.equal(splitter.committed, "Intro paragraph.\n\n".length);
    text += "```\n";
    const closed = splitter.push(text);
    assert.equal(closed.fence, null);
    assert.equal(closed.commit, `\`\`\`python\n${lines.join("")}\`\`\`\n`);
    assert.equal(closed.tail, "");
  });

  test("a fence that never closes stays in the rest", () => {
    const text = "Intro.\n\n```\nunfinished code\nmore";
    const { rest } = stream(pieces(text, null, "words"));
    assert.equal(rest, "```\nunfinished code\nmore");
  });

  test("a closing fence longer than the opening closes it; a shorter one does not", () => {
    const splitter = new BlockSplitter();
    splitter.push("````\ncode\n```\n");
    assert.notEqual(splitter.push("````\ncode\n```\n").fence, null);
    assert.equal(splitter.push("````\ncode\n```\n`````\n").fence, null);
  });

  test("reference definitions ask for a full render at the end", () => {
    const { splitter } = stream(pieces("See [the docs][d].\n\nMore.\n\n[d]: https://example.com\n", null, "words"));
    assert.equal(splitter.needsFullRender, true);
    assert.equal(stream(pieces(SAMPLE, null, "words")).splitter.needsFullRender, false);
  });

  test("the tail stays small while a long answer streams", () => {
    const long = Array.from({ length: 200 }, (_, i) => `## Part ${i}\n\nParagraph ${i} with **bold** text.\n`).join("\n");
    const splitter = new BlockSplitter();
    let text = "";
    let longest = 0;
    for (const part of pieces(long, null, "words")) {
      text += part;
      longest = Math.max(longest, splitter.push(text).tail.length);
    }
    assert.ok(longest < 200, `tail grew to ${longest} characters`);
  });
});

describe("toHtml", () => {
  test("raw HTML is shown as text, not interpreted", () => {
    const html = toHtml('<img src=x onerror="alert(1)">\n\nHi <script>alert(2)</script>');
    assert.ok(!html.includes("<img") && !html.includes("<script"), html);
    assert.ok(html.includes("&lt;img src=x onerror=&quot;alert(1)&quot;&gt;"), html);
    assert.ok(html.includes("&lt;script&gt;alert(2)&lt;/script&gt;"), html);
  });

  test("escapeHtml escapes the five specials", () => {
    assert.equal(escapeHtml(`<a href="x">'&'</a>`), "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;");
  });
});
