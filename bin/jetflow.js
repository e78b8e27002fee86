#!/usr/bin/env node
// The `jetflow` command: runs the built CLI in dist/ (plain JavaScript, no tsx needed).
import { existsSync } from 'node:fs';

const main = new URL('../dist/src/cli/main.js', import.meta.url);
if (!existsSync(main)) {
  process.stderr.write(
    'jetflow: the build is missing (dist/): run `npm run build` in the jetflow checkout\n',
  );
  process.exit(1);
}
const { runCli } = await import(main.href);
runCli(process.argv.slice(2));
