/** Entry of `npm run demo`: see src/demo/cli.ts. */
import { demoMain } from './cli.js';

process.exitCode = await demoMain(process.argv.slice(2));
