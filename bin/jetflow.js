#!/usr/bin/env node
// Runs the TypeScript CLI through tsx (no build step).
import { register } from 'tsx/esm/api';
register();
const { runCli } = await import('../src/cli/main.ts');
runCli(process.argv.slice(2));
