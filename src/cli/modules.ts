/**
 * Loading the user's modules (`--workflows`, `--activities`). Plain JavaScript is imported as it
 * is. A TypeScript module is imported through `tsx` when the user has it installed (next to the
 * module, in the working directory, or beside jetflow); without tsx, Node's own type stripping
 * is tried (Node 22.18+), and if that cannot load it either, one error says what to do.
 */
import { existsSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { ConfigError } from '../errors.js';
import { UsageError } from './exit.js';

const TS = /\.(ts|mts|cts|tsx)$/;

type TsImport = (specifier: string, parentURL: string) => Promise<unknown>;

/**
 * tsx's scoped importer (`tsImport` of `tsx/esm/api`, its ESM build), from the first of `dirs`
 * that has tsx installed.
 */
async function findTsx(dirs: string[]): Promise<TsImport | undefined> {
  for (const dir of dirs) {
    let pkgPath: string;
    try {
      pkgPath = createRequire(join(dir, 'noop.js')).resolve('tsx/package.json');
    } catch {
      continue; // not installed there
    }
    const pkg = JSON.parse(readFileSync(pkgPath, 'utf8')) as {
      exports?: Record<string, { import?: { default?: string } | string }>;
    };
    const entry = pkg.exports?.['./esm/api']?.import;
    const file = typeof entry === 'string' ? entry : entry?.default;
    if (!file) continue;
    const api = (await import(pathToFileURL(join(dirname(pkgPath), file)).href)) as {
      tsImport?: TsImport;
    };
    if (typeof api.tsImport === 'function') return api.tsImport;
  }
  return undefined;
}

/** Import the module at `spec` (a path, relative to the working directory). */
export async function importUserModule(
  spec: string,
  what: string,
): Promise<Record<string, unknown>> {
  const path = resolve(spec);
  if (!existsSync(path)) throw new UsageError(`${what} module not found: ${path}`);
  const url = pathToFileURL(path).href;
  if (TS.test(path)) {
    const tsImport = await findTsx([dirname(path), process.cwd(), import.meta.dirname]);
    if (tsImport) return load(() => tsImport(url, import.meta.url), path, what);
    try {
      return (await import(url)) as Record<string, unknown>;
    } catch (cause) {
      const code = (cause as { code?: unknown }).code;
      if (code === 'ERR_UNKNOWN_FILE_EXTENSION' || /TYPESCRIPT/.test(String(code))) {
        throw new ConfigError(
          `${what} module ${path} is TypeScript and tsx is not installed: run \`npm install --save-dev tsx\` in your project, or compile it to JavaScript (.js/.mjs)`,
          { cause },
        );
      }
      throw loadError(cause, path, what);
    }
  }
  return load(() => import(url), path, what);
}

async function load(
  run: () => Promise<unknown>,
  path: string,
  what: string,
): Promise<Record<string, unknown>> {
  try {
    return (await run()) as Record<string, unknown>;
  } catch (cause) {
    throw loadError(cause, path, what);
  }
}

function loadError(cause: unknown, path: string, what: string): ConfigError {
  const msg = String((cause as Error)?.message ?? cause).split('\n')[0];
  return new ConfigError(`cannot load ${what} module ${path}: ${msg}`, { cause });
}
