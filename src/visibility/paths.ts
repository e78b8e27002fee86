/** Active leaf state paths of an XState state value, dot-joined. */

/**
 * `"idle"` → `["idle"]`; `{ shipping: "packing" }` → `["shipping.packing"]`; a parallel state
 * `{ p: { a: "x", b: "y" } }` → `["p.a.x", "p.b.y"]`; a compound state with no active child
 * (`{ a: {} }`) → `["a"]`. Anything else (null, a number) has no paths.
 */
export function statePaths(value: unknown): string[] {
  const out: string[] = [];
  const walk = (v: unknown, at: string) => {
    if (typeof v === 'string') {
      out.push(at ? `${at}.${v}` : v);
      return;
    }
    if (v === null || typeof v !== 'object' || Array.isArray(v)) {
      if (at) out.push(at);
      return;
    }
    const keys = Object.keys(v);
    if (keys.length === 0) {
      if (at) out.push(at);
      return;
    }
    for (const k of keys) walk((v as Record<string, unknown>)[k], at ? `${at}.${k}` : k);
  };
  walk(value, '');
  return out;
}
