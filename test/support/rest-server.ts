/**
 * A real restic REST server for backup tests: `rclone serve restic` over a directory, on a free
 * port of `host` (loopback, or the sandbox network's gateway so that sandbox nodes reach it).
 */
import { spawn } from 'node:child_process';
import { createServer } from 'node:net';

export interface RestServer {
  /** The restic repository URL of the served root (`rest:http://host:port/`). */
  url: string;
  stop(): void;
}

/** A port free on `host` right now. */
export function freePort(host = '127.0.0.1'): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, host, () => {
      const p = (s.address() as { port: number }).port;
      s.close(() => resolve(p));
    });
  });
}

/** Starts the server and resolves once rclone says it listens (never on a timer); rejects when it exits first. */
export async function startRestServer(dir: string, host = '127.0.0.1'): Promise<RestServer> {
  const port = await freePort(host);
  const server = spawn('rclone', ['serve', 'restic', '--addr', `${host}:${port}`, dir], { stdio: ['ignore', 'ignore', 'pipe'] });
  await new Promise<void>((resolve, reject) => {
    let seen = '';
    server.stderr?.on('data', (c: Buffer) => {
      seen += c.toString();
      if (/Serving restic REST API on/.test(seen)) resolve();
    });
    server.once('exit', (code) => reject(new Error(`rclone exited ${code}: ${seen}`)));
  });
  return { url: `rest:http://${host}:${port}/`, stop: () => void server.kill('SIGTERM') };
}
