import fc from 'fast-check';
import { formatCommandLine, parseAgentCommand, splitCommandLine } from '../../src/agent/comfd-protocol.js';
import { isSecretKey, maskSecrets, maskTaskJson } from '../../src/runtime/mask-ns8.js';
import { assertActionName, isSafeName, parseEventChannel } from '../../src/agent/names.js';
import { resolveAgentTarget as resolveAgentTargetForTest, splitRunagentArgs } from '../../src/cli/commands/agent.js';
import { ProgressTracker } from '../../src/agent/progress.js';

describe('secret masking', () => {
  it('replaces values of keys ending in password, secret, token, key or pass, at any depth and in any case', () => {
    const masked = maskSecrets({ user: 'u', adminPassword: 'p', nested: { API_KEY: 'k', list: [{ db_pass: 'x', keep: 1 }] }, Token: 't', client_secret: 's' });
    expect(masked).toEqual({ user: 'u', adminPassword: 'XXX', nested: { API_KEY: 'XXX', list: [{ db_pass: 'XXX', keep: 1 }] }, Token: 'XXX', client_secret: 'XXX' });
  });

  it('masks a whole object under a secret key, not only strings', () => {
    expect(maskSecrets({ ssh_key: { a: 1 } })).toEqual({ ssh_key: 'XXX' });
  });

  it('uses the one program-wide rule: a secret word inside a name masks it, a longer word does not', () => {
    expect(isSecretKey('password_hint_shown')).toBe(true); // contains "password"
    expect(isSecretKey('keyboard')).toBe(false);
    expect(isSecretKey('monkey')).toBe(true); // ends in "key": NS8's suffix rule
  });

  it('masks a raw task JSON and refuses to store unparsable text that mentions a secret', () => {
    expect(JSON.parse(maskTaskJson('{"id":"1","data":{"password":"hunter2"}}'))).toEqual({ id: '1', data: { password: 'XXX' } });
    expect(maskTaskJson('{broken "password": 1')).toBe('XXX');
    expect(maskTaskJson('plain')).toBe('plain');
  });
});

describe('names that become paths', () => {
  it.each(['configure-module', 'get_status', '10step', 'a.b', 'X'])('accepts %s', (n) => expect(isSafeName(n)).toBe(true));
  it.each(['', '.', '..', '../etc', 'a/b', '.hidden', 'a b', 'x\n', '/abs', 'a'.repeat(129)])('refuses %j', (n) => expect(isSafeName(n)).toBe(false));

  it('names the offending action and the allowed characters', () => {
    expect(() => assertActionName('../../bin/sh')).toThrow(/action name "..\/..\/bin\/sh" is not valid: use letters, digits/);
  });

  it('splits event channels into source and name', () => {
    expect(parseEventChannel('module/traefik1/event/certificate-updated')).toEqual({ source: 'module/traefik1', name: 'certificate-updated' });
    expect(parseEventChannel('cluster/event/module-added')).toEqual({ source: 'cluster', name: 'module-added' });
    expect(parseEventChannel('cluster/event/../x')).toBeUndefined();
    expect(parseEventChannel('no-event-here')).toBeUndefined();
  });

  it('turns instance ids into agent ids for run-action and refuses anything else', () => {
    expect(resolveAgentTargetForTest('dokuwiki1')).toBe('module/dokuwiki1');
    expect(resolveAgentTargetForTest('module/dokuwiki1')).toBe('module/dokuwiki1');
    expect(resolveAgentTargetForTest('node/1')).toBe('node/1');
    expect(() => resolveAgentTargetForTest('../x')).toThrow(/not an instance id/);
  });
});

describe('AGENT_COMFD protocol', () => {
  it('splits on spaces with CSV-style double quotes', () => {
    expect(splitCommandLine('set-env GREETING "hello world"')).toEqual(['set-env', 'GREETING', 'hello world']);
    expect(splitCommandLine('set-env Q "say ""hi"""')).toEqual(['set-env', 'Q', 'say "hi"']);
    expect(splitCommandLine('set-env E ""')).toEqual(['set-env', 'E', '']);
    expect(splitCommandLine('set-progress   40')).toEqual(['set-progress', '40']);
  });

  it('reports quoting errors instead of guessing', () => {
    expect(splitCommandLine('set-env A "open')).toEqual({ error: 'unterminated quoted field' });
    expect(splitCommandLine('set-env A b"c')).toHaveProperty('error');
    expect(splitCommandLine('set-env A "b"c')).toHaveProperty('error');
  });

  it('parses every command and names what is allowed on errors', () => {
    expect(parseAgentCommand('set-env A 1')).toEqual({ kind: 'set-env', name: 'A', value: '1' });
    expect(parseAgentCommand('unset-env A')).toEqual({ kind: 'unset-env', name: 'A' });
    expect(parseAgentCommand('dump-env')).toEqual({ kind: 'dump-env' });
    expect(parseAgentCommand('set-status validation-failed')).toEqual({ kind: 'set-status', status: 'validation-failed' });
    expect(parseAgentCommand('set-progress 73')).toEqual({ kind: 'set-progress', progress: 73 });
    expect(parseAgentCommand('set-weight 50update 8')).toEqual({ kind: 'set-weight', step: '50update', weight: 8 });
    expect(parseAgentCommand('set-status completed')).toEqual({ error: 'set-status: unknown status "completed"; allowed: validation-failed' });
    expect(parseAgentCommand('set-progress 101')).toHaveProperty('error', 'set-progress: "101" is not an integer from 0 to 100');
    expect(parseAgentCommand('set-weight s -1')).toHaveProperty('error');
    expect(parseAgentCommand('rm -rf /')).toEqual({ error: 'unknown command "rm"; allowed: set-env, unset-env, dump-env, set-status, set-progress, set-weight' });
    expect(parseAgentCommand('set-env ONLYNAME')).toEqual({ error: 'set-env takes 2 arguments, got 1' });
  });

  it('formats fields so that splitting gives them back (any text without newlines)', () => {
    fc.assert(
      fc.property(fc.array(fc.string().filter((s) => !/[\n\r]/.test(s)), { minLength: 1, maxLength: 5 }), (fields) => {
        const back = splitCommandLine(formatCommandLine(fields));
        expect(back).toEqual(fields);
      }),
    );
  });
});

describe('weighted progress', () => {
  it('gives NS8 README example: third of five steps at 73 is 54%', () => {
    const t = new ProgressTracker(['a', 'b', 'c', 'd', 'e'].map((name) => ({ name })));
    expect(t.setStepProgress(2, 73)).toBe(54);
  });

  it('counts a weighted step for its weight and schema steps for nothing', () => {
    const t = new ProgressTracker([{ name: 'validate-input', weight: 0 }, { name: '10pull' }, { name: '20run' }]);
    expect(t.setWeight('10pull', 3)).toBe(true);
    expect(t.setStepProgress(1, 100)).toBe(75);
    expect(t.setStepProgress(2, 100)).toBe(100);
    expect(t.setWeight('nope', 2)).toBe(false);
  });
});

describe('runagent arguments', () => {
  it('reads its own options only before the command, keeping the command options in place', () => {
    expect(splitRunagentArgs(['--redis', 'u', 'runagent', '-m', 'web1', 'ls', '-la', '-m'])).toEqual({ module: 'web1', keepCwd: false, command: ['ls', '-la', '-m'] });
    expect(splitRunagentArgs(['runagent', '--module=web1', '-c', '--', '-weird'])).toEqual({ module: 'web1', keepCwd: true, command: ['-weird'] });
    expect(splitRunagentArgs(['runagent', '-mweb1'])).toEqual({ module: 'web1', keepCwd: false, command: [] });
  });
});
