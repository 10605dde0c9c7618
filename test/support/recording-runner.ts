/**
 * A real command runner that keeps every command it ran (the production runner keeps the last
 * 1000 only), for tests that count or inspect commands (fetches, argv without secrets).
 */
import { ProcessRunner, type CommandRecord, type CommandRunner, type RunOptions } from '../../src/host/runner.js';

export class RecordingRunner implements CommandRunner {
  readonly all: (CommandRecord & { mutating: boolean })[] = [];
  private readonly inner = new ProcessRunner(100_000);
  get history(): readonly (CommandRecord & { mutating: boolean })[] {
    return this.all;
  }
  async run(argv: string[], opts: RunOptions = {}): Promise<CommandRecord & { stdoutBuffer?: Buffer }> {
    try {
      return await this.inner.run(argv, opts);
    } finally {
      const last = this.inner.history[this.inner.history.length - 1];
      if (last) this.all.push(last);
    }
  }
}
