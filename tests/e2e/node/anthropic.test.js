// The official `@anthropic-ai/sdk` npm package, unmodified, against a live sluiceway.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import Anthropic from '@anthropic-ai/sdk';
import { startServer } from './server.js';

const PROMPT = 'Stream me, token by token: naïve café 東京 🚀';
let server;
let client;

before(async () => {
  server = await startServer();
  client = new Anthropic({ baseURL: server.url, apiKey: 'unused', maxRetries: 0 });
});
after(async () => server?.stop());

test('messages.stream: text events and the final message', async () => {
  const stream = client.messages.stream({
    model: 'echo-slow',
    max_tokens: 100,
    system: 'Be brief.',
    messages: [{ role: 'user', content: PROMPT }],
  });
  let text = '';
  stream.on('text', (delta) => {
    text += delta;
  });
  const final = await stream.finalMessage();
  assert.equal(text, PROMPT);
  assert.equal(final.content[0].text, PROMPT);
  assert.equal(final.stop_reason, 'end_turn');
  assert.deepEqual([final.usage.input_tokens, final.usage.output_tokens], [11, 9]);
});

test('messages.create, with max_tokens reached', async () => {
  const message = await client.messages.create({
    model: 'echo',
    max_tokens: 2,
    messages: [{ role: 'user', content: 'a b c d' }],
  });
  assert.equal(message.content[0].text, 'a b ');
  assert.equal(message.stop_reason, 'max_tokens');
});

test('raw events with stream: true', async () => {
  const stream = await client.messages.create({
    model: 'echo',
    max_tokens: 100,
    messages: [{ role: 'user', content: PROMPT }],
    stream: true,
  });
  const types = [];
  let text = '';
  for await (const event of stream) {
    types.push(event.type);
    if (event.type === 'content_block_delta' && event.delta.type === 'text_delta') text += event.delta.text;
  }
  assert.equal(text, PROMPT);
  assert.deepEqual(types.slice(0, 2), ['message_start', 'content_block_start']);
  assert.deepEqual(types.slice(-3), ['content_block_stop', 'message_delta', 'message_stop']);
});

test('a mid-stream failure throws APIError with the error type', async () => {
  const stream = client.messages.stream({
    model: 'echo-fail',
    max_tokens: 100,
    messages: [{ role: 'user', content: 'a b c d e' }],
  });
  let text = '';
  stream.on('text', (delta) => {
    text += delta;
  });
  stream.on('error', () => {}); // finalMessage() rejects with it below
  await assert.rejects(stream.finalMessage(), (err) => {
    assert.ok(err instanceof Anthropic.APIError);
    assert.equal(err.error.error.type, 'api_error');
    assert.match(err.message, /echo failed after 3 tokens/);
    return true;
  });
  assert.equal(text, 'a b c ');
});

test('an unknown model throws NotFoundError', async () => {
  await assert.rejects(
    client.messages.create({ model: 'nope', max_tokens: 5, messages: [{ role: 'user', content: 'x' }] }),
    (err) => err instanceof Anthropic.NotFoundError && err.error.error.type === 'not_found_error',
  );
});
