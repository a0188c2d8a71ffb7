// The official `openai` npm package, unmodified, against a live sluiceway.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import OpenAI from 'openai';
import { startServer } from './server.js';

const PROMPT = 'Stream me, token by token: naïve café 東京 🚀';
let server;
let client;

before(async () => {
  server = await startServer();
  client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: 'unused', maxRetries: 0 });
});
after(async () => server?.stop());

test('non-streaming completion', async () => {
  const completion = await client.chat.completions.create({
    model: 'echo',
    messages: [{ role: 'user', content: PROMPT }],
  });
  assert.equal(completion.choices[0].message.content, PROMPT);
  assert.equal(completion.choices[0].finish_reason, 'stop');
  assert.equal(completion.usage.completion_tokens, 9);
});

test('streaming completion with usage', async () => {
  const stream = await client.chat.completions.create({
    model: 'echo-slow',
    messages: [{ role: 'user', content: PROMPT }],
    stream: true,
    stream_options: { include_usage: true },
  });
  const chunks = [];
  for await (const chunk of stream) chunks.push(chunk);
  const text = chunks.map((c) => c.choices[0]?.delta?.content ?? '').join('');
  assert.equal(text, PROMPT);
  assert.equal(chunks[0].choices[0].delta.role, 'assistant');
  assert.deepEqual(chunks.at(-1).choices, []);
  assert.equal(chunks.at(-1).usage.completion_tokens, 9);
  assert.equal(chunks.at(-2).choices[0].finish_reason, 'stop');
});

test('max_tokens ends with finish_reason length', async () => {
  const stream = await client.chat.completions.create({
    model: 'echo',
    messages: [{ role: 'user', content: 'a b c d' }],
    max_completion_tokens: 2,
    temperature: 0,
    stream: true,
  });
  let text = '';
  let finish;
  for await (const chunk of stream) {
    text += chunk.choices[0]?.delta?.content ?? '';
    finish = chunk.choices[0]?.finish_reason ?? finish;
  }
  assert.equal(text, 'a b ');
  assert.equal(finish, 'length');
});

test('a mid-stream failure throws APIError', async () => {
  const stream = await client.chat.completions.create({
    model: 'echo-fail',
    messages: [{ role: 'user', content: 'a b c d e' }],
    stream: true,
  });
  const received = [];
  await assert.rejects(
    async () => {
      for await (const chunk of stream) received.push(chunk.choices[0].delta.content);
    },
    (err) => {
      assert.ok(err instanceof OpenAI.APIError);
      assert.equal(err.code, 'upstream_error');
      assert.match(err.message, /echo failed after 3 tokens/);
      return true;
    },
  );
  assert.deepEqual(received, ['a ', 'b ', 'c ']);
});

test('an unknown model throws NotFoundError', async () => {
  await assert.rejects(
    client.chat.completions.create({ model: 'nope', messages: [{ role: 'user', content: 'x' }] }),
    (err) => err instanceof OpenAI.NotFoundError && err.code === 'model_not_found',
  );
});
