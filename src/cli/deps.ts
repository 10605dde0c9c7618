import type { CommandRunner } from '../host/runner.js';
import type { Connection } from '../state/connect.js';

/**
 * What every command gets from main(): output sinks, environment, the command runner and a lazy
 * Redis connection. Commands never touch process.* directly, so tests drive them in-process.
 */
export interface CliDeps {
  stdout: (text: string) => void;
  stderr: (text: string) => void;
  env: NodeJS.ProcessEnv;
  /** True when stdout is a terminal (colour, progress). */
  isTTY: boolean;
  runner: CommandRunner;
  /**
   * Connects (once: the first call's options win) to the Redis chosen by --redis /
   * NS8CTL_REDIS_URL / local / embedded. `lite`: reads go through the small client that does not
   * load ioredis (ConnectOptions.lite), for commands that mostly read.
   */
  connect: (opts?: { startEmbedded?: boolean; lite?: boolean }) => Promise<Connection>;
  /** `--state-dir` / NS8CTL_STATE_DIR / default (resolveStateDir), when main() knows it. */
  stateDir?: string;
  /** Reads standard input to the end (for `-f -`). */
  stdin: () => Promise<string>;
  cwd: string;
}

/** Global options every command accepts. */
export interface GlobalOptions {
  redis?: string;
  stateDir?: string;
}
