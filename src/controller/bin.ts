#!/usr/bin/env node
/** Process entry of controllerMain (see controller-main.ts). */
import { controllerMain } from './controller-main.js';

process.exitCode = await controllerMain(process.argv.slice(2));
