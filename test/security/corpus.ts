/**
 * The hostile-input corpus: manifests, directories, special files, standard input, object ids,
 * apply set names, Redis URLs and saved plans that ns8ctl must refuse, each with the place the
 * refusal has to name. Every case is held to every check; `dependsOn` can mark a case whose area
 * is being reworked elsewhere, so it is reported without failing the suite (none is marked now).
 */
import { mkdirSync, symlinkSync, writeFileSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import path from 'node:path';

/** A secret the baseline state holds (in Redis) and that no output may ever show. */
export const BASELINE_SECRET = 'Baseline-Adm1n-Pw-7741';
/** A secret in a file outside every source root that links try to reach. */
export const OUTSIDE_SECRET = 'Outside-Secret-Pw-9313';

export interface Case {
  name: string;
  /** Builds the inputs in `dir` (a fresh temp directory) and returns the CLI arguments. */
  args: (dir: string) => string[];
  /** Standard input chunks (an endless generator for "never ends"). */
  stdin?: () => AsyncIterable<Buffer>;
  /** Extra environment (Redis URL cases). */
  env?: (redisUrl: string) => NodeJS.ProcessEnv;
  /** What the refusal must show: `file` = `FILE:LINE:COL  /pointer` of a diagnostic; else a pattern. */
  where: 'file' | RegExp;
  /** Strings that must not appear in stdout or stderr (besides the baseline and outside secrets). */
  secrets?: string[];
  /** Run the built CLI in a child process (for inputs that would block a whole process if mishandled). */
  spawn?: boolean;
  /** Another branch reworks this area; the case expects today's behaviour. */
  dependsOn?: 'plan-branch' | 'redis-branch';
  /** Checked after the run (e.g. a file outside the manifests dir still exists). */
  after?: (dir: string) => string | undefined;
}

const HEAD = 'apiVersion: ns8ctl.nethserver.org/v1\n';
const moduleDoc = (extra: string, name = 'webapp7', spec = '  image: 127.0.0.1:5000/ns8ctl-examples/webapp:1.0.0\n  node: 1\n'): string =>
  `${HEAD}kind: Module\nmetadata:\n  name: ${name}\nspec:\n${spec}${extra}`;
const nodeDoc = (spec: string, meta = ''): string => `${HEAD}kind: Node\nmetadata:\n  name: n9\n${meta}spec:\n${spec}`;

/** A file `m.yaml` (text or bytes) in dir, applied with `apply -f`. */
const applyFile =
  (content: string | Buffer, name = 'm.yaml', cmd: string[] = ['apply']) =>
  (dir: string): string[] => {
    const f = path.join(dir, name);
    writeFileSync(f, content);
    return [...cmd, '-f', f];
  };

function aliasBomb(levels: number, width: number): string {
  let s = '    a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n';
  for (let i = 1; i < levels; i++) s += `    a${i}: &a${i} [${Array.from({ length: width }, () => `*a${i - 1}`).join(',')}]\n`;
  return s;
}

const manifestCases: Case[] = [
  { name: 'alias bomb in spec.configuration (682-byte class)', args: applyFile(moduleDoc('  configuration:\n' + aliasBomb(10, 9))), where: 'file', spawn: true },
  { name: 'alias bomb as a label value', args: applyFile(`x: &x [a,a,a,a,a,a,a,a]\n` + Array.from({ length: 9 }, (_, i) => `y${i}: &y${i} [${Array(9).fill(i === 0 ? '*x' : `*y${i - 1}`).join(',')}]`).join('\n') + '\n'), where: 'file', spawn: true },
  { name: 'alias bomb in a JSON-looking flow mapping', args: applyFile(moduleDoc('  configuration: {a: &a [1,2,3,4,5,6,7,8], b: &b [*a,*a,*a,*a,*a,*a,*a,*a], c: &c [*b,*b,*b,*b,*b,*b,*b,*b], d: &d [*c,*c,*c,*c,*c,*c,*c,*c], e: &e [*d,*d,*d,*d,*d,*d,*d,*d], f: [*e,*e,*e,*e,*e,*e,*e,*e]}\n')), where: 'file', spawn: true },
  { name: '100 000 nested [ in a value', args: applyFile(moduleDoc('  configuration: {a: ' + '['.repeat(100_000) + ']'.repeat(100_000) + '}\n')), where: 'file', spawn: true },
  { name: '100 000 nested { at top level', args: applyFile('{a: '.repeat(100_000) + '1' + '}'.repeat(100_000) + '\n'), where: 'file', spawn: true },
  { name: '80 nested block mappings in configuration', args: applyFile(moduleDoc('  configuration:\n' + Array.from({ length: 80 }, (_, i) => ' '.repeat(4 + 2 * i) + `k${i}:\n`).join('') + ' '.repeat(164) + 'v: 1\n')), where: 'file' },
  { name: 'nesting of a JSON file 70 deep', args: applyFile('{"a":'.repeat(70) + '1' + '}'.repeat(70), 'deep.json'), where: 'file' },
  { name: 'a 20 MB value', args: applyFile(moduleDoc(`  configuration:\n    blob: "${'A'.repeat(20 * 1024 * 1024)}"\n`)), where: 'file', secrets: ['AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA'] },
  { name: 'a 300 KB value (over the per-value limit)', args: applyFile(moduleDoc(`  configuration:\n    blob: "${'B'.repeat(300 * 1024)}"\n`)), where: 'file', secrets: ['BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB'] },
  { name: 'a 2000-character key', args: applyFile(moduleDoc(`  configuration:\n    ${'k'.repeat(2000)}: 1\n`)), where: 'file' },
  { name: 'many small values over the document text limit', args: applyFile(moduleDoc('  configuration:\n' + Array.from({ length: 5000 }, (_, i) => `    k${i}: "${'c'.repeat(250)}"\n`).join(''))), where: 'file' },
  { name: 'non-UTF-8 byte in a value', args: applyFile(Buffer.concat([Buffer.from(moduleDoc('  configuration:\n    title: "caf')), Buffer.from([0xe9]), Buffer.from('"\n')])), where: 'file' },
  { name: 'non-UTF-8 byte in a key', args: applyFile(Buffer.concat([Buffer.from(moduleDoc('  configuration:\n    t')), Buffer.from([0xff]), Buffer.from(': 1\n')])), where: 'file' },
  { name: 'overlong UTF-8 encoding of "/"', args: applyFile(Buffer.concat([Buffer.from(moduleDoc('  volumes:\n    data: "')), Buffer.from([0xc0, 0xaf]), Buffer.from('etc"\n')])), where: 'file' },
  { name: 'UTF-8 encoded surrogate', args: applyFile(Buffer.concat([Buffer.from(moduleDoc('  configuration:\n    x: "')), Buffer.from([0xed, 0xa0, 0x80]), Buffer.from('"\n')])), where: 'file' },
  { name: 'truncated UTF-8 sequence at end of file', args: applyFile(Buffer.concat([Buffer.from(moduleDoc('  configuration:\n    x: a')), Buffer.from([0xe2, 0x82])])), where: 'file' },
  { name: 'lone continuation byte in a comment', args: applyFile(Buffer.concat([Buffer.from('# note '), Buffer.from([0x80]), Buffer.from('\n' + nodeDoc('  id: 9\n'))])), where: 'file' },
  { name: 'Latin-1 file', args: applyFile(Buffer.from(nodeDoc('  id: 9\n', '  labels: {owner: "Jos\xe9"}\n'), 'latin1')), where: 'file' },
  { name: 'UTF-16 file with BOM', args: applyFile(Buffer.concat([Buffer.from([0xff, 0xfe]), Buffer.from(nodeDoc('  id: 9\n'), 'utf16le')])), where: 'file' },
  { name: 'Node id 9007199254740993 (beyond 2^53)', args: applyFile(nodeDoc('  id: 9007199254740993\n')), where: 'file' },
  { name: 'Module node 9007199254740993', args: applyFile(moduleDoc('', 'webapp7', '  image: 127.0.0.1:5000/ns8ctl-examples/webapp:1.0.0\n  node: 9007199254740993\n')), where: 'file' },
  { name: 'Module node 1e300', args: applyFile(moduleDoc('', 'webapp7', '  image: 127.0.0.1:5000/ns8ctl-examples/webapp:1.0.0\n  node: 1e300\n')), where: 'file' },
  { name: 'Module node 0b1 (a string in YAML 1.2 core)', args: applyFile(moduleDoc('', 'webapp7', '  image: 127.0.0.1:5000/ns8ctl-examples/webapp:1.0.0\n  node: 0b1\n')), where: 'file' },
  { name: 'Module node 1.5', args: applyFile(moduleDoc('', 'webapp7', '  image: 127.0.0.1:5000/ns8ctl-examples/webapp:1.0.0\n  node: 1.5\n')), where: 'file' },
  { name: 'Module node .inf', args: applyFile(moduleDoc('', 'webapp7', '  image: 127.0.0.1:5000/ns8ctl-examples/webapp:1.0.0\n  node: .inf\n')), where: 'file' },
  { name: 'Module node -1', args: applyFile(moduleDoc('', 'webapp7', '  image: 127.0.0.1:5000/ns8ctl-examples/webapp:1.0.0\n  node: -1\n')), where: 'file' },
  { name: 'integer beyond 2^53 inside configuration', args: applyFile(moduleDoc('  configuration:\n    port: 18446744073709551616\n')), where: 'file' },
  ...['1.2.3.4;reboot', '$(reboot)', '`id`', 'a..b', '-oProxyCommand=x', 'host/evil', '1.2.3.4 && id', 'x|y', '::1;x', '*'].map(
    (a): Case => ({ name: `Node address ${JSON.stringify(a)}`, args: applyFile(nodeDoc(`  id: 9\n  address: ${JSON.stringify(a)}\n`)), where: 'file' }),
  ),
  ...[
    ['newline', 'a\\nb'],
    ['NUL', 'a\\0b'],
    ['tab', 'a\\tb'],
    ['DEL', 'a\\x7fb'],
    ['carriage return', 'a\\rb'],
  ].flatMap(([what, key]): Case[] => [
    { name: `label key with ${what}`, args: applyFile(nodeDoc('  id: 9\n', `  labels: {"${key}": x}\n`)), where: 'file' },
    { name: `annotation key with ${what}`, args: applyFile(moduleDoc('', 'webapp7').replace('  name: webapp7\n', `  name: webapp7\n  annotations: {"${key}": x}\n`)), where: 'file' },
  ]),
  ...['/srv/../etc', '/..', '/a/./b', '/data/..', 'relative/path', '/x\\ny', '/a\\0b', '../../etc/shadow'].map(
    (p): Case => ({ name: `volume path ${JSON.stringify(p)}`, args: applyFile(moduleDoc(`  volumes:\n    data: "${p}"\n`)), where: 'file' }),
  ),
  ...['../../x1', 'a/b1', 'A1', 'x 1', 'webapp01', `w${'a'.repeat(40)}1`, '.hidden1', 'webapp7\\n'].map(
    (n): Case => ({ name: `Module name ${JSON.stringify(n)}`, args: applyFile(moduleDoc('', `"${n}"`)), where: 'file' }),
  ),
  { name: 'image with a shell metacharacter', args: applyFile(moduleDoc('', 'webapp7', '  image: "127.0.0.1:5000/x/webapp;rm -rf /"\n  node: 1\n')), where: 'file' },
  { name: 'module name with a path', args: applyFile(moduleDoc('', 'webapp7', '  module: ../webapp\n  node: 1\n')), where: 'file' },
  { name: 'js-yaml function tag', args: applyFile(moduleDoc('  configuration: !!js/function "function(){}"\n')), where: 'file' },
  { name: 'python object tag', args: applyFile(moduleDoc('  configuration: !!python/object:os.system [id]\n')), where: 'file' },
  { name: 'unknown local tag', args: applyFile(moduleDoc('  configuration: !evil {a: 1}\n')), where: 'file' },
  { name: 'merge key', args: applyFile(moduleDoc('  configuration: {<<: {a: 1}}\n').replace('spec:\n', 'spec:\n  <<: {node: 2}\n')), where: 'file' },
  { name: 'duplicate key', args: applyFile(moduleDoc('  node: 2\n')), where: 'file' },
  { name: 'recursive alias', args: applyFile(moduleDoc('  configuration: &c {self: *c}\n')), where: 'file' },
  { name: 'a list instead of a mapping', args: applyFile('- a\n- b\n'), where: 'file' },
  { name: 'a long scalar document', args: applyFile(`${OUTSIDE_SECRET} ${'word '.repeat(200)}\n`), where: 'file', secrets: [OUTSIDE_SECRET] },
  { name: 'unknown kind', args: applyFile(`${HEAD}kind: Deployment\nmetadata: {name: x}\nspec: {}\n`), where: 'file' },
  { name: 'apiVersion v2', args: applyFile(nodeDoc('  id: 9\n').replace('/v1', '/v2')), where: 'file' },
  { name: '__proto__ key in metadata', args: applyFile(nodeDoc('  id: 9\n', '  __proto__: {polluted: 1}\n')), where: 'file' },
  { name: 'constructor key in spec', args: applyFile(nodeDoc('  id: 9\n  constructor: {prototype: 1}\n')), where: 'file' },
  { name: 'raw NUL byte in the text', args: applyFile(Buffer.concat([Buffer.from(nodeDoc('  id: 9\n', '  labels: {a: "x')), Buffer.from([0]), Buffer.from('"}\n')])), where: 'file' },
  { name: 'raw BEL control character', args: applyFile(nodeDoc('  id: 9\n', '  labels: {a: x\x07y}\n')), where: 'file' },
  { name: 'repository url javascript:', args: applyFile(`${HEAD}kind: Repository\nmetadata: {name: evil}\nspec: {url: "javascript:alert(1)"}\n`), where: 'file' },
  { name: 'repository url not a URL', args: applyFile(`${HEAD}kind: Repository\nmetadata: {name: evil}\nspec: {url: "not a url"}\n`), where: 'file' },
  { name: 'repository name with a path', args: applyFile(`${HEAD}kind: Repository\nmetadata: {name: ../../cluster}\nspec: {url: "https://example.org/"}\n`), where: 'file' },
  { name: 'secret label value of the wrong type', args: applyFile(nodeDoc('  id: 9\n', '  labels: {db_password: 123456789}\n')), where: 'file', secrets: ['123456789'] },
  { name: 'secret *_pw annotation of the wrong type', args: applyFile(nodeDoc('  id: 9\n', '  annotations: {smtp_pw: 987654321}\n')), where: 'file', secrets: ['987654321'] },
  { name: 'secret token in an unknown field', args: applyFile(nodeDoc('  id: 9\n  api_token: 55667788\n')), where: 'file', secrets: ['55667788'] },
  { name: 'URL password in a bad repository url', args: applyFile(`${HEAD}kind: Repository\nmetadata: {name: evil}\nspec: {url: "gopher://alice:p@ss-Hidden9@host/"}\n`), where: 'file', secrets: ['p@ss-Hidden9', 'ss-Hidden9'] },
  { name: 'query password in a bad repository url', args: applyFile(`${HEAD}kind: Repository\nmetadata: {name: evil}\nspec: {url: "ftp://host/?password=QueryHidden77"}\n`), where: 'file', secrets: ['QueryHidden77'] },
  { name: 'one bad document among good ones writes nothing', args: applyFile(nodeDoc('  id: 9\n') + '---\n' + nodeDoc('  id: 9007199254740993\n').replace('n9', 'n10')), where: 'file' },
  { name: 'diff of an alias bomb', args: applyFile(moduleDoc('  configuration:\n' + aliasBomb(10, 9)), 'm.yaml', ['diff']), where: 'file', spawn: true },
  { name: 'validate of non-UTF-8', args: applyFile(Buffer.from([0x6b, 0x3a, 0x20, 0xff, 0x0a]), 'm.yaml', ['validate']), where: 'file' },
];

/** A directory with `setup` applied, given with `-f`. */
const applyDir =
  (setup: (root: string, dir: string) => void) =>
  (dir: string): string[] => {
    const root = path.join(dir, 'manifests');
    mkdirSync(root, { recursive: true });
    writeFileSync(path.join(dir, 'admin.password'), OUTSIDE_SECRET + '\n');
    setup(root, dir);
    return ['apply', '-f', root];
  };
const okNode = (root: string): void => writeFileSync(path.join(root, 'node.yaml'), nodeDoc('  id: 9\n'));

const directoryCases: Case[] = [
  { name: 'two `ln -s . x` links (exponential walk)', args: applyDir((r) => (okNode(r), symlinkSync('.', path.join(r, 'x')), symlinkSync('.', path.join(r, 'y')))), where: 'file', spawn: true },
  { name: 'link to the parent directory', args: applyDir((r) => (okNode(r), symlinkSync('..', path.join(r, 'up')))), where: 'file' },
  { name: 'link to admin.password outside the root', args: applyDir((r, d) => (okNode(r), symlinkSync(path.join(d, 'admin.password'), path.join(r, 'admin.yaml')))), where: 'file' },
  { name: 'relative link out of the root', args: applyDir((r) => (okNode(r), symlinkSync('../admin.password', path.join(r, 'pw.yaml')))), where: 'file' },
  { name: 'link to /etc/passwd', args: applyDir((r) => (okNode(r), symlinkSync('/etc/passwd', path.join(r, 'passwd.yaml')))), where: 'file', secrets: ['root:x:0:0', 'root:/root'] },
  { name: 'link to /dev/zero', args: applyDir((r) => (okNode(r), symlinkSync('/dev/zero', path.join(r, 'zero.yaml')))), where: 'file', spawn: true },
  { name: 'link to a directory outside', args: applyDir((r) => (okNode(r), symlinkSync('/etc', path.join(r, 'etc')))), where: 'file' },
  { name: 'dangling link', args: applyDir((r) => (okNode(r), symlinkSync('/nonexistent/x.yaml', path.join(r, 'gone.yaml')))), where: 'file' },
  { name: 'link chain leaving the root', args: applyDir((r, d) => (okNode(r), symlinkSync(path.join(d, 'admin.password'), path.join(d, 'hop')), symlinkSync(path.join(d, 'hop'), path.join(r, 'hop.yaml')))), where: 'file' },
  { name: 'FIFO named x.yaml in the directory', args: applyDir((r) => (okNode(r), execFileSync('mkfifo', [path.join(r, 'x.yaml')]))), where: 'file', spawn: true },
  { name: 'directories 40 levels deep', args: applyDir((r) => (okNode(r), mkdirSync(path.join(r, ...Array(40).fill('d')), { recursive: true }), writeFileSync(path.join(r, ...Array(40).fill('d'), 'n.yaml'), nodeDoc('  id: 8\n')))), where: 'file' },
  { name: 'more files than the file limit', args: applyDir((r) => { for (let i = 0; i < 10_001; i++) writeFileSync(path.join(r, `f${i}.yaml`), '# empty\n'); }), where: 'file' },
  { name: 'a directory with no manifests', args: applyDir((r) => writeFileSync(path.join(r, 'README.txt'), 'x')), where: 'file' },
  { name: 'a bad manifest next to a good one', args: applyDir((r) => (okNode(r), writeFileSync(path.join(r, 'bad.yaml'), nodeDoc('  id: 9\n  address: "1.2.3.4;reboot"\n').replace('n9', 'n10')))), where: 'file' },
];

const specialFileCases: Case[] = [
  { name: '-f /dev/zero', args: () => ['apply', '-f', '/dev/zero'], where: 'file', spawn: true },
  { name: '-f /dev/null', args: () => ['apply', '-f', '/dev/null'], where: 'file' },
  { name: '-f /dev/urandom', args: () => ['validate', '--offline', '-f', '/dev/urandom'], where: 'file', spawn: true },
  { name: '-f a FIFO', args: (d) => (execFileSync('mkfifo', [path.join(d, 'p.yaml')]), ['apply', '-f', path.join(d, 'p.yaml')]), where: 'file', spawn: true },
  { name: '-f a missing file', args: (d) => ['apply', '-f', path.join(d, 'missing.yaml')], where: 'file' },
  { name: '-f a file over the size limit', args: applyFile(`# ${'x'.repeat(5 * 1024 * 1024)}\n`), where: 'file' },
  { name: '-f /proc/self/environ (not a regular file size)', args: () => ['apply', '-f', '/proc/self/environ'], where: 'file', secrets: ['PATH='] },
  { name: 'stdin that never ends', args: () => ['apply', '-f', '-'], stdin: endless, where: 'file', spawn: false },
  { name: 'stdin with invalid UTF-8', args: () => ['apply', '-f', '-'], stdin: once(Buffer.from([0x6b, 0x3a, 0x20, 0xc3, 0x28, 0x0a])), where: 'file' },
  { name: 'stdin alias bomb', args: () => ['apply', '-f', '-'], stdin: once(Buffer.from(moduleDoc('  configuration:\n' + aliasBomb(10, 9)))), where: 'file' },
];

function once(b: Buffer): () => AsyncIterable<Buffer> {
  return async function* () {
    yield b;
  };
}

/** Zeros forever, in 64 KiB chunks: /dev/zero on standard input. */
function endless(): AsyncIterable<Buffer> {
  const chunk = Buffer.alloc(64 * 1024);
  return (async function* () {
    for (;;) yield chunk;
  })();
}

const idCases: Case[] = [
  ...['../../x', '../../../etc/passwd', 'a/b1', '', 'a\nb1', 'webapp7 ', '*', '.', '..', `w${'a'.repeat(60)}1`].map(
    (id): Case => ({
      name: `delete module ${JSON.stringify(id)} --manifests DIR`,
      args: (d) => {
        mkdirSync(path.join(d, 'manifests'), { recursive: true });
        writeFileSync(path.join(d, 'x.yaml'), 'keep me\n');
        return ['delete', 'module', id, '--manifests', path.join(d, 'manifests')];
      },
      where: /module id ".*" is not valid/,
      after: (d) => {
        try {
          execFileSync('test', ['-f', path.join(d, 'x.yaml')]);
          return undefined;
        } catch {
          return 'a file outside --manifests was deleted';
        }
      },
    }),
  ),
  { name: 'delete node "x"', args: () => ['delete', 'node', 'x'], where: /node id "x" is not valid/ },
  { name: 'delete node "1;2"', args: () => ['delete', 'node', '1;2'], where: /node id "1;2" is not valid/ },
  { name: 'delete repository "../r"', args: () => ['delete', 'repository', '../r'], where: /repository id "..\/r" is not valid/ },
];

const applySetCases: Case[] = ['', 'x y', 'a\nb', '*', '../../cluster/module_node', 'a/b', 'x'.repeat(64), '.hidden', 'é', 'a:b'].map(
  (s): Case => ({
    name: `--applyset ${JSON.stringify(s)}`,
    args: (d) => (writeFileSync(path.join(d, 'n.yaml'), nodeDoc('  id: 9\n')), ['apply', '-f', path.join(d, 'n.yaml'), '--applyset', s]),
    where: /--applyset ".*" is not valid/s,
  }),
);

const urlCases: Case[] = [
  { name: 'Redis URL with a password holding @', args: () => ['get', 'modules'], env: () => ({ NS8CTL_REDIS_URL: 'redis://alice:p@ss-Url9@127.0.0.1:1/' }), where: /Redis/i, secrets: ['p@ss-Url9', 'ss-Url9'] },
  { name: 'Redis URL with ?password=', args: () => ['get', 'modules'], env: () => ({ NS8CTL_REDIS_URL: 'redis://127.0.0.1:1/0?password=QueryPw-Url8' }), where: /Redis/i, secrets: ['QueryPw-Url8'] },
  { name: 'Redis URL that is not a URL', args: () => ['get', 'modules'], env: () => ({ NS8CTL_REDIS_URL: 'not a url' }), where: /./ },
  { name: 'Redis URL with port 99999', args: () => ['get', 'modules'], env: () => ({ NS8CTL_REDIS_URL: 'redis://127.0.0.1:99999' }), where: /./ },
  { name: 'http:// Redis URL', args: () => ['get', 'modules'], env: () => ({ NS8CTL_REDIS_URL: 'http://user:HttpPw-Url7@127.0.0.1:1/' }), where: /./, secrets: ['HttpPw-Url7'] },
  { name: 'Redis URL with a newline and a command', args: () => ['get', 'modules'], env: () => ({ NS8CTL_REDIS_URL: 'redis://127.0.0.1:1/\r\nFLUSHALL' }), where: /./ },
  { name: 'Redis URL of 10 000 characters', args: () => ['get', 'modules'], env: () => ({ NS8CTL_REDIS_URL: `redis://${'h'.repeat(10_000)}:1/` }), where: /./ },
  { name: 'Redis URL with a password in a unix socket path', args: () => ['get', 'modules'], env: () => ({ NS8CTL_REDIS_URL: 'redis+unix://:SockPw-Url5@/nonexistent/redis.sock' }), where: /./, secrets: ['SockPw-Url5'] },
  { name: '--redis with a password, nothing listening', args: () => ['--redis', 'redis://:FlagPw-Url6@127.0.0.1:1', 'get', 'nodes'], where: /Redis/i, secrets: ['FlagPw-Url6'] },
];

const planCases: Case[] = [
  { name: 'apply --plan of a missing file', args: (d) => ['apply', '--plan', path.join(d, 'none.plan')], where: /plan/i },
  { name: 'apply --plan of garbage', args: (d) => (writeFileSync(path.join(d, 'g.plan'), 'garbage {{{'), ['apply', '--plan', path.join(d, 'g.plan')]), where: /plan/i },
  { name: 'apply --plan of JSON with a wrong digest', args: (d) => (writeFileSync(path.join(d, 'j.plan'), JSON.stringify({ version: 1, digest: '0'.repeat(64), ops: [{ op: 'del', key: 'ns8ctl/desired/module/webapp1' }] }), { mode: 0o600 }), ['apply', '--plan', path.join(d, 'j.plan')]), where: /plan/i },
  { name: 'apply --plan of a non-UTF-8 file', args: (d) => (writeFileSync(path.join(d, 'b.plan'), Buffer.from([0xff, 0xfe, 0x00])), ['apply', '--plan', path.join(d, 'b.plan')]), where: /plan/i },
];

/** Every case of the corpus. */
const backupDoc = (kind: string, spec: string): string => `${HEAD}kind: ${kind}\nmetadata:\n  name: offsite\nspec:\n${spec}`;
const setPassword = ['backup', 'set-password', 'offsite'];
const backupCases: Case[] = [
  { name: 'BackupDestination url with a newline', args: applyFile(backupDoc('BackupDestination', '  url: "/srv/a\\nb"\n')), where: 'file' },
  { name: 'BackupDestination url of another restic backend (s3:)', args: applyFile(backupDoc('BackupDestination', '  url: s3:s3.amazonaws.com/bucket\n')), where: 'file' },
  { name: 'BackupDestination url with .. segments', args: applyFile(backupDoc('BackupDestination', '  url: /srv/backup/../../etc\n')), where: 'file' },
  { name: 'BackupDestination url over 1024 characters', args: applyFile(backupDoc('BackupDestination', `  url: /srv/${'a'.repeat(2000)}\n`)), where: 'file' },
  { name: 'BackupSchedule schedule with a shell command', args: applyFile(backupDoc('BackupSchedule', '  destination: offsite\n  instances: [webapp7]\n  schedule: "daily; rm -rf /"\n')), where: 'file' },
  { name: 'BackupSchedule schedule with a newline (a second unit line)', args: applyFile(backupDoc('BackupSchedule', '  destination: offsite\n  instances: [webapp7]\n  schedule: "daily\\nExecStart=/bin/sh"\n')), where: 'file' },
  { name: 'set-password --password-file /dev/zero', args: () => [...setPassword, '--password-file', '/dev/zero'], where: /only regular files are read/ },
  { name: 'set-password --password-file a FIFO', args: (d) => (execFileSync('mkfifo', [path.join(d, 'pw')]), [...setPassword, '--password-file', path.join(d, 'pw')]), where: /only regular files are read/ },
  { name: 'set-password stdin that never ends', args: () => [...setPassword, '--password-stdin'], stdin: endless, where: /more than/ },
  { name: 'set-password of two lines', args: () => [...setPassword, '--password-stdin'], stdin: once(Buffer.from('Hostile-Pw-Line-1\nHostile-Pw-Line-2\n')), where: /backup password is refused/, secrets: ['Hostile-Pw-Line'] },
  { name: 'set-password of a name that leaves its key', args: () => ['backup', 'set-password', '../../cluster/module_node', '--password-stdin'], stdin: once(Buffer.from('pw')), where: /is not valid/ },
];

export const CORPUS: Case[] = [...manifestCases, ...directoryCases, ...specialFileCases, ...idCases, ...applySetCases, ...urlCases, ...planCases, ...backupCases];
