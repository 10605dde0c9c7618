/**
 * The controller's HTTP endpoint, on 127.0.0.1 by default (put a reverse proxy in front to reach
 * the webhook from outside): `GET /healthz`, `GET /readyz`, `GET /metrics` (Prometheus text) and
 * `POST /hooks/<source>` (git webhook: shared secret, see webhook-auth.ts; 202 and a fetch starts
 * at once). Request bodies are capped at 1 MiB.
 */
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { Ns8ctlError } from '../errors.js';
import { verifyWebhook } from './webhook-auth.js';

/** Largest webhook body read (forges send a few KB). */
export const MAX_BODY_BYTES = 1024 * 1024;

export interface Probe {
  ok: boolean;
  /** One line shown in the response body. */
  detail: string;
}

export interface HttpServerOptions {
  host?: string;
  /** 0 picks a free port (see `port` after start). */
  port: number;
  health: () => Probe;
  ready: () => Probe;
  metrics: () => string;
  /** Webhook: accepted only when a secret is set. `trigger` returns false for an unknown source. */
  webhook?: { secret: string; trigger: (source: string) => boolean };
}

function send(res: http.ServerResponse, status: number, body: string, type = 'text/plain; charset=utf-8'): void {
  res.writeHead(status, { 'content-type': type, 'cache-control': 'no-store' });
  res.end(body);
}

async function readBody(req: http.IncomingMessage): Promise<Buffer | undefined> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req) {
    size += (chunk as Buffer).length;
    if (size > MAX_BODY_BYTES) return undefined;
    chunks.push(chunk as Buffer);
  }
  return Buffer.concat(chunks);
}

/** See the module doc. `start()` resolves once listening; `stop()` closes every connection. */
export class ControllerHttpServer {
  private server: http.Server | undefined;
  private boundPort = 0;

  constructor(private readonly opts: HttpServerOptions) {}

  /** The port listened on (after start). */
  get port(): number {
    return this.boundPort;
  }

  /** @throws Ns8ctlError `http_listen_failed` naming the address (port in use, no permission). */
  async start(): Promise<void> {
    if (this.server) return;
    const server = http.createServer((req, res) => {
      this.handle(req, res).catch(() => {
        if (!res.headersSent) send(res, 500, 'internal error\n');
        else res.end();
      });
    });
    const host = this.opts.host ?? '127.0.0.1';
    await new Promise<void>((resolve, reject) => {
      server.once('error', (err) => reject(new Ns8ctlError('http_listen_failed', `cannot listen on ${host}:${this.opts.port}: ${err.message} (choose another --http-port, or 0 for any free port)`, { cause: err })));
      server.listen(this.opts.port, host, () => resolve());
    });
    this.server = server;
    this.boundPort = (server.address() as AddressInfo).port;
  }

  async stop(): Promise<void> {
    const s = this.server;
    if (!s) return;
    this.server = undefined;
    await new Promise<void>((r) => {
      s.close(() => r());
      s.closeAllConnections();
    });
  }

  private async handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://localhost');
    const p = url.pathname;
    if (p === '/healthz' || p === '/readyz') {
      if (req.method !== 'GET' && req.method !== 'HEAD') return send(res, 405, 'method not allowed\n');
      const probe = p === '/healthz' ? this.opts.health() : this.opts.ready();
      return send(res, probe.ok ? 200 : 503, `${probe.ok ? 'ok' : 'not ok'}: ${probe.detail}\n`);
    }
    if (p === '/metrics') {
      if (req.method !== 'GET') return send(res, 405, 'method not allowed\n');
      return send(res, 200, this.opts.metrics(), 'text/plain; version=0.0.4; charset=utf-8');
    }
    const hook = /^\/hooks\/([A-Za-z0-9._-]+)\/?$/.exec(p);
    if (hook) {
      if (req.method !== 'POST') return send(res, 405, 'method not allowed: POST a webhook here\n');
      const wh = this.opts.webhook;
      if (!wh || !wh.secret) return send(res, 404, 'no webhook configured (start the controller with --webhook-secret-file)\n');
      const body = await readBody(req);
      if (!body) return send(res, 413, `body larger than ${MAX_BODY_BYTES} bytes\n`);
      if (!verifyWebhook(req.headers, body, wh.secret)) return send(res, 401, 'webhook secret does not match\n');
      const source = hook[1] as string;
      if (!wh.trigger(source)) return send(res, 404, `no source named ${JSON.stringify(source)}\n`);
      return send(res, 202, JSON.stringify({ source, fetch: 'started' }) + '\n', 'application/json');
    }
    return send(res, 404, 'not found: try /healthz, /readyz, /metrics or POST /hooks/<source>\n');
  }
}
