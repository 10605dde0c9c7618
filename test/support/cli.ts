import { main, type MainIO } from '../../src/cli/main.js';

/** Result of one in-process CLI run. */
export interface CliRun {
  code: number;
  stdout: string;
  stderr: string;
}

/**
 * Runs the CLI in-process, exactly as `ns8ctl ARGS` would, with captured output and an
 * environment of the test's choosing (no terminal, so no colour).
 */
export async function runCli(args: string[], env: NodeJS.ProcessEnv = {}, stdin = ''): Promise<CliRun> {
  let stdout = '';
  let stderr = '';
  const io: MainIO = {
    stdout: (t) => void (stdout += t),
    stderr: (t) => void (stderr += t),
    env: { PATH: process.env.PATH, HOME: process.env.HOME, ...env },
    isTTY: false,
    stdin: async () => stdin,
    cwd: process.cwd(),
  };
  const code = await main(args, io);
  return { code, stdout, stderr };
}
