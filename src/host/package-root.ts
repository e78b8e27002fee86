/** Where jetflow itself lives on disk, from source or from the build. */
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';

/**
 * The package's root folder (the one with `nats.conf` and `package.json`): the checkout when run
 * from source (`src/host/`), the installed package when run from the build (`dist/src/host/`).
 */
export const repoRoot = findPackageRoot(import.meta.dirname);

function findPackageRoot(from: string): string {
  for (let dir = from; ; dir = dirname(dir)) {
    if (existsSync(join(dir, 'package.json')) && existsSync(join(dir, 'nats.conf'))) return dir;
    if (dirname(dir) === dir) return resolve(from, '../..');
  }
}

/** The package's version, from its `package.json`. */
export function packageVersion(): string {
  const pkg = JSON.parse(readFileSync(join(repoRoot, 'package.json'), 'utf8')) as {
    version?: string;
  };
  return pkg.version ?? '0.0.0';
}
