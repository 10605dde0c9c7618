import js from '@eslint/js';
import tseslint from 'typescript-eslint';

/**
 * The layers of src/, bottom first (docs/architecture.md draws them). A module may import its own
 * folder, any folder of its own layer and any lower layer, never a higher one; test/unit/layers.test.ts
 * checks the same table against every import (dynamic ones too) and that no two folders import each
 * other (directly or around a loop). `src/errors.ts` sits with the bottom layer.
 */
export const LAYERS = [
  ['runtime'],
  ['host', 'manifest', 'state', 'repository', 'plan', 'configuration'],
  ['apply', 'agent', 'node-agent', 'controller'],
  ['cli', 'sandbox', 'demo'],
];

const NO_BARE_ERROR = { selector: "NewExpression[callee.name='Error']", message: 'Throw a Ns8ctlError subclass (src/errors.ts), not a bare Error.' };

/** One config per layer: imports (static, type-only, re-exports and dynamic) of a higher layer's folders are errors. */
function layerRules() {
  return LAYERS.map((folders, i) => {
    const higher = LAYERS.slice(i + 1).flat();
    const files = folders.flatMap((f) => [`src/${f}/**/*.ts`]).concat(i === 0 ? ['src/*.ts'] : []);
    if (higher.length === 0) return { files, rules: {} };
    const alternatives = higher.join('|');
    const message = `layer rule: ${folders.join(', ')} may not import ${higher.join(', ')} (a higher layer; docs/architecture.md)`;
    return {
      files,
      rules: {
        'no-restricted-imports': ['error', { patterns: [{ regex: `^(\\.\\.?/)+(${alternatives})/`, message }] }],
        'no-restricted-syntax': [
          'error',
          NO_BARE_ERROR,
          // esquery regexes cannot hold a slash: \x2F is one.
          { selector: `ImportExpression[source.value=/^(\\.\\.?\\x2F)+(${alternatives})\\x2F/]`, message },
        ],
      },
    };
  });
}

/**
 * plan/ is pure (desired + observed -> changes): no Redis, no files, no processes. From state/ it
 * takes key names (keys.ts) and the observed-state model (cluster-state.ts), from repository/ the pure
 * resolver; types from the rest.
 */
const PURE_PLAN = {
  files: ['src/plan/**/*.ts'],
  rules: {
    '@typescript-eslint/no-restricted-imports': [
      'error',
      {
        patterns: [
          { regex: '^(\\.\\./)+state/(?!(keys|cluster-state)\\.js$)', allowTypeImports: true, message: 'plan/ is pure: from state/ only keys.ts and cluster-state.ts (type imports of the rest)' },
          { regex: '^(\\.\\./)+repository/(?!(resolve|errors)\\.js$)', allowTypeImports: true, message: 'plan/ is pure: from repository/ only the pure resolver (resolve.ts) and its errors' },
          { regex: '^(\\.\\./)+host/', message: 'plan/ is pure: no processes' },
          { regex: '^(ioredis|execa|chokidar|node:(fs|fs/promises|child_process|net|http|https|dgram))$', message: 'plan/ is pure: no I/O' },
        ],
      },
    ],
  },
};

export default tseslint.config(
  { ignores: ['dist/', 'node_modules/', 'coverage/', 'examples/**/imageroot/**', '**/*.cjs'] },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  {
    rules: {
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_' }],
      '@typescript-eslint/consistent-type-imports': 'error',
      'no-restricted-syntax': ['error', NO_BARE_ERROR],
    },
  },
  ...layerRules(),
  PURE_PLAN,
  { files: ['test/**', 'bench/**'], rules: { 'no-restricted-syntax': 'off' } },
);
