/** Part of `npm run gen:schemas`: rewrites src/agent/generated/base-action-validators.ts (see base-action-codegen.ts). */
import { writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { schemasDir } from '../manifest/schemas.js';
import { generateBaseActionValidators } from './base-action-codegen.js';

const target = join(dirname(schemasDir()), 'src', 'agent', 'generated', 'base-action-validators.ts');
writeFileSync(target, generateBaseActionValidators());
process.stdout.write(`wrote ${target}\n`);
