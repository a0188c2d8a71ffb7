// A live sluiceway for the Node tests: `sluiceway serve` (.venv/bin, or $SLUICEWAY_BIN) started here on
// a free loopback port with the test models (echo, echo-slow, echo-fail), stopped by `stop()`.
// SLUICEWAY_URL=http://… uses a running server instead (it must serve those models).
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const BIN = process.env.SLUICEWAY_BIN ?? resolve(here, '../../../.venv/bin/sluiceway');
const CONFIG = `
default_model = "echo"
disconnect_grace_s = 0
[models.echo-slow]
provider = "echo"
delay_ms = 50
[models.echo-fail]
provider = "echo"
fail_after = 3
fail_code = "upstream_error"
`;

function freePort() {
  return new Promise((ok, fail) => {
    const probe = createServer();
    probe.once('error', fail);
    probe.listen(0, '127.0.0.1', () => {
      const { port } = probe.address();
      probe.close(() => ok(port));
    });
  });
}

async function waitHealthy(url, child, output, deadlineMs) {
  const deadline = Date.now() + deadlineMs;
  while (Date.now() < deadline) {
    if (child.exitCode !== null) throw new Error(`sluiceway serve exited (${child.exitCode}):\n${output.join('')}`);
    try {
      const r = await fetch(`${url}/healthz`);
      if (r.ok) return;
    } catch {
      // not listening yet
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`sluiceway serve not healthy within ${deadlineMs} ms:\n${output.join('')}`);
}

/** Start (or find) the server; resolves to { url, stop }. Retries if the free port was taken meanwhile. */
export async function startServer() {
  if (process.env.SLUICEWAY_URL) return { url: process.env.SLUICEWAY_URL.replace(/\/$/, ''), stop: async () => {} };
  for (let attempt = 1; ; attempt++) {
    try {
      return await spawnServer();
    } catch (err) {
      if (attempt >= 3 || !/exited/.test(err.message)) throw err;
    }
  }
}

async function spawnServer() {
  const dir = mkdtempSync(join(tmpdir(), 'sluiceway-node-'));
  const config = join(dir, 'sluiceway.toml');
  writeFileSync(config, CONFIG);
  const port = await freePort();
  const output = [];
  const child = spawn(BIN, ['serve', '--host', '127.0.0.1', '--port', String(port), '--config', config], {
    env: { ...process.env, SLUICEWAY_DATA_DIR: dir },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const killOnExit = () => child.kill('SIGKILL');
  process.once('exit', killOnExit); // never leave a server behind, even if `stop` is not reached
  child.stdout.on('data', (d) => output.push(String(d)));
  child.stderr.on('data', (d) => output.push(String(d)));
  const url = `http://127.0.0.1:${port}`;
  const stop = async () => {
    if (child.exitCode === null) {
      const exited = new Promise((r) => child.once('exit', r));
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
      await exited;
      clearTimeout(timer);
    }
    process.removeListener('exit', killOnExit);
    rmSync(dir, { recursive: true, force: true });
  };
  try {
    await waitHealthy(url, child, output, 90_000);
  } catch (err) {
    await stop();
    throw err;
  }
  return { url, stop };
}
