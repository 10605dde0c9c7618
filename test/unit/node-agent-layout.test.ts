/** Where the node agent keeps things: the service-image cache is outside NS8's 0700 tree. */
import { describe, expect, test } from '@jest/globals';
import { defaultLayout } from '../../src/node-agent/layout.js';

describe('the node layout', () => {
  test('the service-image cache is outside /var/lib/nethserver (which NS8 keeps 0700), so instance users can reach it', () => {
    const l = defaultLayout();
    expect(l.serviceImageCacheDir).toBe('/var/lib/ns8ctl/service-images');
    expect(l.serviceImageCacheDir.startsWith('/var/lib/nethserver')).toBe(false);
  });

  test('with another agent state dir (a test host), the cache sits beside it; an explicit one wins', () => {
    expect(defaultLayout({ agentStateDir: '/tmp/x/agent' }).serviceImageCacheDir).toBe('/tmp/x/ns8ctl-service-images');
    expect(defaultLayout({ agentStateDir: '/tmp/x/agent', serviceImageCacheDir: '/srv/cache' }).serviceImageCacheDir).toBe('/srv/cache');
  });
});
