import { fetchRepodata, isLoopbackHost, isOffline } from '../../src/repository/fetch.js';

describe('offline mode (NS8CTL_OFFLINE)', () => {
  const saved = process.env.NS8CTL_OFFLINE;
  afterEach(() => {
    if (saved === undefined) delete process.env.NS8CTL_OFFLINE;
    else process.env.NS8CTL_OFFLINE = saved;
  });

  it('is on for any value but empty or 0', () => {
    expect(isOffline({})).toBe(false);
    expect(isOffline({ NS8CTL_OFFLINE: '' })).toBe(false);
    expect(isOffline({ NS8CTL_OFFLINE: '0' })).toBe(false);
    expect(isOffline({ NS8CTL_OFFLINE: '1' })).toBe(true);
    expect(isOffline({ NS8CTL_OFFLINE: 'yes' })).toBe(true);
  });

  it('knows loopback hosts', () => {
    expect(['127.0.0.1', '127.1.2.3', 'localhost', '[::1]'].map(isLoopbackHost)).toEqual([true, true, true, true]);
    expect(['10.0.0.1', 'distfeed.nethserver.org', '128.0.0.1'].map(isLoopbackHost)).toEqual([false, false, false]);
  });

  it('refuses to download a remote repository without touching the network', async () => {
    process.env.NS8CTL_OFFLINE = '1';
    let called = 0;
    const fetchImpl = (async () => {
      called++;
      return new Response('[]');
    }) as typeof fetch;
    await expect(fetchRepodata({ name: 'default', url: 'https://distfeed.nethserver.org/ns8/updates/' }, { fetchImpl })).rejects.toThrow(/offline mode/);
    expect(called).toBe(0);
    await fetchRepodata({ name: 'local', url: 'http://127.0.0.1:9/' }, { fetchImpl }).catch(() => undefined);
    expect(called).toBe(1);
  });
});
