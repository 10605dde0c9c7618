import js from '@eslint/js';
import tseslint from 'typescript-eslint';

export default tseslint.config(
  { ignores: ['dist/', 'node_modules/', 'coverage/', 'examples/**/imageroot/**', '**/*.cjs'] },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  {
    rules: {
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_' }],
      '@typescript-eslint/consistent-type-imports': 'error',
      'no-restricted-syntax': ['error', { selector: "NewExpression[callee.name='Error']", message: 'Throw a Ns8ctlError subclass (src/errors.ts), not a bare Error.' }],
    },
  },
  { files: ['test/**', 'bench/**'], rules: { 'no-restricted-syntax': 'off' } },
);
