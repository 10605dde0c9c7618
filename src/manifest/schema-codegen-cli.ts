/** `npm run gen:schemas`: rewrites src/manifest/generated/schema-validators.ts (see schema-codegen.ts). */
import { writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { generateSchemaValidators } from './schema-codegen.js';
import { schemasDir } from './schemas.js';

const target = join(dirname(schemasDir()), 'src', 'manifest', 'generated', 'schema-validators.ts');
writeFileSync(target, generateSchemaValidators());
process.stdout.write(`wrote ${target}\n`);
