import { RedisError } from '../../src/errors.js';
import { ExecaRunner } from '../../src/host/runner.js';
import { connectRedis } from '../../src/state/connect.js';
import { runCli } from '../support/cli.js';
import { freePort } from '../support/redis-server.js';

describe('connection errors keep their cause', () => {
  it('names the socket error (ECONNREFUSED) and the URL, password masked, when nothing listens', async () => {
    const port = await freePort();
    const url = `redis://ns8ctl:s3cret@127.0.0.1:${port}`;
    const err = await connectRedis({ url, stateDir: '/nonexistent', runner: new ExecaRunner() }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(RedisError);
    const e = err as RedisError;
    expect(e.code).toBe('redis_unreachable');
    expect(e.message).toMatch(new RegExp(`^cannot connect to Redis at redis://ns8ctl:\\*\\*\\*@127\\.0\\.0\\.1:${port}: connect ECONNREFUSED 127\\.0\\.0\\.1:${port}; Connection is closed\\. \\(is redis-server running and listening there\\?\\)$`));
    expect(e.message).not.toContain('s3cret');
    expect((e.cause as NodeJS.ErrnoException).code).toBe('ECONNREFUSED');
  });

  it('prints the cause on the command line', async () => {
    const port = await freePort();
    const res = await runCli(['get', 'modules'], { NS8CTL_REDIS_URL: `redis://127.0.0.1:${port}` });
    expect(res.code).toBe(1);
    expect(res.stderr).toBe(`error: cannot connect to Redis at redis://127.0.0.1:${port}: connect ECONNREFUSED 127.0.0.1:${port}; Connection is closed. (is redis-server running and listening there?)\n`);
    const json = await runCli(['get', 'modules', '-o', 'json'], { NS8CTL_REDIS_URL: `redis://127.0.0.1:${port}` });
    expect(JSON.parse(json.stdout)).toEqual({ error: 'redis_unreachable', message: expect.stringContaining('ECONNREFUSED') });
  });

  it('names an unknown host (ENOTFOUND or EAI_AGAIN from the resolver)', async () => {
    const err = (await connectRedis({ url: 'redis://ns8ctl-test-host.invalid:6379', stateDir: '/nonexistent', runner: new ExecaRunner() }).catch((e: unknown) => e)) as RedisError;
    expect(err).toBeInstanceOf(RedisError);
    expect(err.message).toMatch(/^cannot connect to Redis at redis:\/\/ns8ctl-test-host\.invalid:6379: getaddrinfo (ENOTFOUND|EAI_AGAIN) ns8ctl-test-host\.invalid; .*\(check the host name in the URL\)$/);
    expect(['ENOTFOUND', 'EAI_AGAIN']).toContain((err.cause as NodeJS.ErrnoException).code);
  });
});
