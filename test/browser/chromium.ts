/** What the console's browser tests share: the system chromium and the screenshot folder. */
import { execFileSync } from 'node:child_process';
import { resolve } from 'node:path';
import { repoRoot } from '../harness/jetflow.js';

/** Screenshots of each page (git-ignored), looked at by whoever runs the tests. */
export const shots = resolve(repoRoot, '.console-shots');

/** The system chromium's path: provisioned when missing, or a clear failure (never a skip). */
export function chromiumPath(): string {
  try {
    return execFileSync('bash', [resolve(repoRoot, 'scripts/provision-chromium.sh')], {
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'pipe'],
    }).trim();
  } catch (err) {
    const stderr = (err as { stderr?: string }).stderr ?? '';
    throw new Error(
      `the console's browser tests need chromium, and scripts/provision-chromium.sh could not provide one:\n${stderr}`,
    );
  }
}
