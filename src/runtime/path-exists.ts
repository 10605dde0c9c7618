import { promises as fs } from 'node:fs';

/** True when something is at `p`, a dangling symbolic link included (lstat: links are not followed). */
export async function pathExists(p: string): Promise<boolean> {
  try {
    await fs.lstat(p);
    return true;
  } catch {
    return false;
  }
}
