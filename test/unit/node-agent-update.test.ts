import { imagesToClean, installedImageUrl, previousImageEnvironment } from '../../src/node-agent/update.js';

const old = {
  IMAGE_ID: 'aaa',
  IMAGE_URL: 'r/x/webapp:1.0.0',
  IMAGE_DIGEST: 'sha256:1',
  IMAGE_REPODIGEST: 'r/x/webapp@sha256:1',
  IMAGE_REOPODIGEST: 'r/x/webapp@sha256:1',
  WEBAPP_HTTPD_IMAGE: 'r/x/webapp-httpd:1.0.0',
  TCP_PORT: '20000',
  MY_SETTING: 'kept',
};

describe('node agent updates', () => {
  test('the installed image is what the agent last wrote, else what Redis has, else none', () => {
    expect(installedImageUrl({ IMAGE_URL: 'a:1' }, { IMAGE_URL: 'b:1' })).toBe('a:1');
    expect(installedImageUrl(undefined, { IMAGE_URL: 'b:1' })).toBe('b:1');
    expect(installedImageUrl({}, {})).toBeUndefined();
  });

  test('PREV_ variables carry the previous image, both repodigest spellings and every service image', () => {
    expect(previousImageEnvironment(old, ['r/x/webapp-httpd:2.0.0', 'r/x/redis:7'])).toEqual({
      PREV_IMAGE_ID: 'aaa',
      PREV_IMAGE_URL: 'r/x/webapp:1.0.0',
      PREV_IMAGE_DIGEST: 'sha256:1',
      PREV_IMAGE_REOPODIGEST: 'r/x/webapp@sha256:1',
      PREV_IMAGE_REPODIGEST: 'r/x/webapp@sha256:1',
      PREV_REDIS_IMAGE: '',
      PREV_WEBAPP_HTTPD_IMAGE: 'r/x/webapp-httpd:1.0.0',
    });
  });

  test('after an update the previous images no longer named are cleaned, the ones still used are kept', () => {
    const prev = previousImageEnvironment(old, []);
    expect(imagesToClean(prev, { IMAGE_URL: 'r/x/webapp:1.1.0', WEBAPP_HTTPD_IMAGE: 'r/x/webapp-httpd:1.0.0' })).toEqual(['r/x/webapp:1.0.0']);
    expect(imagesToClean(prev, { IMAGE_URL: 'r/x/webapp:2.0.0', WEBAPP_HTTPD_IMAGE: 'r/x/webapp-httpd:2.0.0' })).toEqual(['r/x/webapp-httpd:1.0.0', 'r/x/webapp:1.0.0']);
  });
});
