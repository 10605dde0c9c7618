import { spawn, type ChildProcess } from 'node:child_process';
import net from 'node:net';

/** A throwaway redis-server on a free loopback port, for benchmarks. */
export async function startBenchRedis(): Promise<{ port: number; stop: () => void }> {
  const port = await new Promise<number>((resolve) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => {
      const p = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(p));
    });
  });
  const child: ChildProcess = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], { stdio: 'ignore' });
  for (let i = 0; i < 200; i++) {
    const ok = await new Promise<boolean>((r) => {
      const c = net.connect(port, '127.0.0.1', () => (c.end(), r(true)));
      c.on('error', () => r(false));
    });
    if (ok) break;
    await new Promise((r) => setTimeout(r, 25));
  }
  return { port, stop: () => void child.kill('SIGKILL') };
}

/**
 * A loopback TCP proxy in front of Redis that counts round trips: each time the client starts
 * sending after the server last spoke (or at the start) is one request/reply turn.
 */
export async function startRoundTripCounter(targetPort: number): Promise<{ port: number; take: () => number; close: () => void }> {
  let turns = 0;
  const server = net.createServer((client) => {
    const upstream = net.connect(targetPort, '127.0.0.1');
    let clientTurn = false;
    client.on('data', (b) => {
      if (!clientTurn) turns++;
      clientTurn = true;
      upstream.write(b);
    });
    upstream.on('data', (b) => {
      clientTurn = false;
      client.write(b);
    });
    const end = (): void => {
      client.destroy();
      upstream.destroy();
    };
    client.on('close', end);
    upstream.on('close', end);
    client.on('error', end);
    upstream.on('error', end);
  });
  const port = await new Promise<number>((r) => server.listen(0, '127.0.0.1', () => r((server.address() as net.AddressInfo).port)));
  return {
    port,
    take: () => {
      const t = turns;
      turns = 0;
      return t;
    },
    close: () => void server.close(),
  };
}
