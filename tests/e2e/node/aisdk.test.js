// The `ai` npm package (AI SDK) against /api/chat: the transport, the UI-message-stream reader and
// the Chat class that React's useChat wraps, all unmodified, driven without a browser.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { AbstractChat, DefaultChatTransport, readUIMessageStream } from 'ai';
import { startServer } from './server.js';

const PROMPT = 'Stream me, token by token: naïve café 東京 🚀';
let server;

before(async () => {
  server = await startServer();
});
after(async () => server?.stop());

/** The smallest ChatState: what @ai-sdk/react keeps in React state, kept in plain fields here. */
class MemoryChatState {
  constructor(messages = []) {
    this.messages = messages;
    this.status = 'ready';
    this.error = undefined;
  }
  pushMessage = (message) => {
    this.messages = this.messages.concat(message);
  };
  popMessage = () => {
    this.messages = this.messages.slice(0, -1);
  };
  replaceMessage = (index, message) => {
    this.messages = [...this.messages.slice(0, index), this.snapshot(message), ...this.messages.slice(index + 1)];
  };
  snapshot = (thing) => structuredClone(thing);
}

class Chat extends AbstractChat {
  constructor({ messages, ...init }) {
    super({ ...init, state: new MemoryChatState(messages) });
  }
}

function transport(body) {
  return new DefaultChatTransport({ api: `${server.url}/api/chat`, body });
}

function userMessage(id, text) {
  return { id, role: 'user', parts: [{ type: 'text', text }] };
}

async function lastMessage(stream) {
  let message;
  for await (const snapshot of readUIMessageStream({ stream, terminateOnError: true })) message = snapshot;
  return message;
}

test('transport + readUIMessageStream assemble the assistant message', async () => {
  const stream = await transport({ model: 'echo-slow' }).sendMessages({
    chatId: 'chat-1',
    messages: [userMessage('u1', PROMPT)],
    trigger: 'submit-message',
    messageId: undefined,
    abortSignal: undefined,
  });
  const message = await lastMessage(stream);
  assert.equal(message.role, 'assistant');
  assert.match(message.id, /^msg-/);
  const texts = message.parts.filter((p) => p.type === 'text');
  assert.deepEqual(
    texts.map((p) => [p.text, p.state]),
    [[PROMPT, 'done']],
  );
  assert.deepEqual(message.metadata, { model: 'echo-slow', usage: { inputTokens: 9, outputTokens: 9 } });
});

test('Chat (what useChat runs): two turns, model and max_tokens from the body option', async () => {
  const finishes = [];
  const chat = new Chat({
    transport: transport({ model: 'echo', max_tokens: 3 }),
    onFinish: ({ message, finishReason, isError }) => finishes.push([message.role, finishReason, isError]),
  });
  await chat.sendMessage({ text: 'one two' });
  await chat.sendMessage({ text: 'three four five six' });
  assert.equal(chat.status, 'ready');
  assert.equal(chat.error, undefined);
  const texts = chat.messages.map((m) => [m.role, m.parts.filter((p) => p.type === 'text').map((p) => p.text).join('')]);
  assert.deepEqual(texts, [
    ['user', 'one two'],
    ['assistant', 'one two'],
    ['user', 'three four five six'],
    ['assistant', 'three four five '],
  ]);
  assert.deepEqual(finishes, [
    ['assistant', 'stop', false],
    ['assistant', 'length', false],
  ]);
});

test('a mid-stream failure becomes chat.error, with the text so far kept', async () => {
  const errors = [];
  const chat = new Chat({ transport: transport({ model: 'echo-fail' }), onError: (err) => errors.push(err) });
  await chat.sendMessage({ text: 'a b c d e' });
  assert.equal(chat.status, 'error');
  assert.ok(chat.error instanceof Error);
  assert.match(chat.error.message, /echo failed after 3 tokens/);
  assert.equal(errors.length, 1);
  const assistant = chat.messages.at(-1);
  assert.equal(assistant.role, 'assistant');
  assert.equal(assistant.parts.filter((p) => p.type === 'text').map((p) => p.text).join(''), 'a b c ');
});

test('readUIMessageStream raises the error part as an Error', async () => {
  const stream = await transport({ model: 'echo-fail' }).sendMessages({
    chatId: 'chat-2',
    messages: [userMessage('u1', 'a b c d e')],
    trigger: 'submit-message',
  });
  await assert.rejects(lastMessage(stream), /echo failed after 3 tokens/);
});

test('an unknown model fails the request before streaming', async () => {
  const chat = new Chat({ transport: transport({ model: 'nope' }) });
  await chat.sendMessage({ text: 'x' });
  assert.equal(chat.status, 'error');
  assert.match(chat.error.message, /unknown model 'nope'/);
});

test('chat.stop() aborts the request and the server cancels the generation', async () => {
  const long = Array.from({ length: 400 }, (_, i) => `w${i}`).join(' ');
  const chat = new Chat({ transport: transport({ model: 'echo-slow' }) });
  const sending = chat.sendMessage({ text: long });
  const assistantText = () =>
    chat.messages
      .filter((m) => m.role === 'assistant')
      .flatMap((m) => m.parts.filter((p) => p.type === 'text').map((p) => p.text))
      .join('');
  await until(() => assistantText().length > 0, 10_000);
  await chat.stop();
  await sending;
  assert.equal(chat.status, 'ready');
  await until(async () => (await (await fetch(`${server.url}/healthz`)).json()).active_streams === 0, 5_000);
  assert.ok(assistantText().split(' ').length < 200);
});

async function until(condition, withinMs) {
  const deadline = Date.now() + withinMs;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`condition not met within ${withinMs} ms`);
    await new Promise((r) => setTimeout(r, 20));
  }
}
