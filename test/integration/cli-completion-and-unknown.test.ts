import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';

const BIN = path.resolve('dist/src/cli/bin.js');

/** Runs the built CLI with plain node (real ESM: every area loads, as for a user); npm test builds it first. */
function runCli(args: string[]): { code: number; stdout: string; stderr: string } {
  try {
    const stdout = execFileSync(process.execPath, [BIN, ...args], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], env: { PATH: process.env.PATH, HOME: process.env.HOME, NS8CTL_OFFLINE: '1' } });
    return { code: 0, stdout, stderr: '' };
  } catch (err) {
    const e = err as { status: number; stdout: string; stderr: string };
    return { code: e.status, stdout: e.stdout, stderr: e.stderr };
  }
}

/** Sources the generated script in a real bash and returns what it completes for `words` (the last is being typed). */
function complete(script: string, words: string[]): string[] {
  const dir = mkdtempSync(path.join(tmpdir(), 'ns8ctl-compl-'));
  try {
    const file = path.join(dir, 'c.bash');
    writeFileSync(file, script);
    const arr = words.map((w) => `'${w}'`).join(' ');
    const out = execFileSync('bash', ['-c', `source ${file}; COMP_WORDS=(${arr}); COMP_CWORD=${words.length - 1}; _ns8ctl; printf '%s\\n' "\${COMPREPLY[@]}"`], { cwd: dir, encoding: 'utf8' });
    return out.split('\n').filter(Boolean);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

describe('ns8ctl completion', () => {
  let bash: string;
  beforeAll(() => {
    const r = runCli(['completion', 'bash']);
    expect(r.code).toBe(0);
    bash = r.stdout;
  });

  it('completes top-level commands, including those of lazily loaded areas', () => {
    expect(complete(bash, ['ns8ctl', 'san'])).toEqual(['sandbox']);
    expect(complete(bash, ['ns8ctl', 'a']).sort()).toEqual(['add-module', 'adopt', 'agent', 'apply']);
  });

  it('completes subcommands under the command already typed', () => {
    expect(complete(bash, ['ns8ctl', 'sandbox', 'cre'])).toEqual(['create']);
  });

  it('completes the options of the command typed, and the fixed values of an option', () => {
    expect(complete(bash, ['ns8ctl', 'apply', '--pr'])).toEqual(['--prune']);
    expect(complete(bash, ['ns8ctl', 'get', 'modules', '-o', ''])).toEqual(['table', 'wide', 'json', 'yaml']);
  });

  it('skips a global option value when finding the command', () => {
    expect(complete(bash, ['ns8ctl', '--redis', 'redis://x', 'sandbox', 'cr'])).toEqual(['create']);
  });

  it('prints a zsh script that reuses the same function through bashcompinit', () => {
    const r = runCli(['completion', 'zsh']);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^#compdef ns8ctl/);
    expect(r.stdout).toContain('bashcompinit');
    expect(r.stdout).toContain('complete -o filenames -F _ns8ctl ns8ctl');
  });

  it('refuses an unknown shell with a usage error naming the supported ones', () => {
    const r = runCli(['completion', 'fish']);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('supports bash, zsh');
  });
});

describe('unknown commands', () => {
  it('print the root help and exit 0 when --help follows them', () => {
    const r = runCli(['nosuchcmd', '--help']);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain('Usage: ns8ctl');
  });

  it('are a usage error (exit 2) with the nearest command suggested, whatever flags follow', async () => {
    for (const args of [['aply'], ['aply', '-f', 'x', '--prune'], ['--redis', 'redis://127.0.0.1:1', 'aply', '-o', 'json']]) {
      const r = runCli(args);
      expect(r.code).toBe(2);
      expect(r.stderr).toContain("unknown command 'aply'");
      expect(r.stderr).toContain('Did you mean apply?');
    }
  });
});
