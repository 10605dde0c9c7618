/**
 * NS8's naming rule for service-image environment variables (seeds, "Service images"; core's
 * create-module/05pullimages): the image name (last path segment of the URL, without tag or
 * digest), `-`, `.`, `+` and blanks mapped to `_`, uppercased, `I` prepended when it starts with a
 * digit, `_IMAGE` appended.
 */
import { moduleNameOf } from '../manifest/types.js';

/**
 * Variable name for a service image URL.
 * `docker.io/prom/node-exporter:v1.8` -> `NODE_EXPORTER_IMAGE`, `ghcr.io/x/2fauth:5` -> `I2FAUTH_IMAGE`,
 * `docker.io/library/mysql:10.3-alpine` -> `MYSQL_IMAGE`. Any other character that is not valid in a
 * shell variable name is mapped to `_` too, so the result is always `[A-Z_][A-Z0-9_]*`.
 */
export function imageEnvName(url: string): string {
  const name = moduleNameOf({ image: url });
  let v = name.replace(/[-.+ ]/g, '_').toUpperCase().replace(/[^A-Z0-9_]/g, '_');
  if (/^[0-9]/.test(v)) v = 'I' + v;
  return `${v}_IMAGE`;
}
