import { ProcessRunner } from '../../src/host/runner.js';
import { defaultSandboxDeps, type SandboxDeps } from '../../src/sandbox/deps.js';
import { execInNode } from '../../src/sandbox/lifecycle.js';

/** Commands run inside node 1 of a named sandbox, for end-to-end tests. */
export interface SandboxNode {
  runner: ProcessRunner;
  deps: SandboxDeps;
  /**
   * Runs `command` in the node through the product's `sandbox exec` (pipe mode: output captured,
   * `input` on stdin when given); never throws on exit codes.
   */
  inNode(command: string[], input?: string): Promise<{ code: number; out: string; err: string }>;
}

export function sandboxNode(name: string): SandboxNode {
  const runner = new ProcessRunner();
  const deps = defaultSandboxDeps({ runner, stderr: () => undefined, stdout: () => undefined });
  return {
    runner,
    deps,
    async inNode(command, input) {
      let out = '';
      let err = '';
      const execStdio = input === undefined ? { mode: 'pipe' as const } : { mode: 'pipe' as const, stdin: input };
      const code = await execInNode({ name, node: '1', command }, { ...deps, execStdio, stdout: (t) => void (out += t), stderr: (t) => void (err += t) });
      return { code, out, err };
    },
  };
}

/**
 * Polls `probe` every `everyMs` until it returns a value; throws naming `what` after `timeoutMs`
 * (with `explain()`'s text appended, e.g. a journal excerpt). Bounded: it always ends.
 */
export async function eventually<T>(what: string, probe: () => Promise<T | undefined>, opts: { timeoutMs?: number; everyMs?: number; explain?: () => Promise<string> } = {}): Promise<T> {
  const timeoutMs = opts.timeoutMs ?? 90_000;
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await probe().catch(() => undefined);
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`${what}: not reached within ${timeoutMs / 1000} s${opts.explain ? `\n${await opts.explain()}` : ''}`);
    await new Promise((r) => setTimeout(r, opts.everyMs ?? 500));
  }
}
