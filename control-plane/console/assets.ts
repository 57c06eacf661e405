/**
 * The console's static assets, all served by the Worker itself: the stylesheet, the browser script (bundled by
 * scripts/build.mjs from console/browser/ into console/generated/) and the icon. Each is served under a name that
 * carries a hash of its content, so that browsers may cache it for good and a new deploy is fetched at once.
 */
import { BROWSER_SCRIPT, BROWSER_SCRIPT_HASH } from "./generated/browser-script.js";
import { STYLESHEET } from "./style.js";

/** A 32-bit FNV-1a hash of a string, in base 36: enough to tell two versions of an asset apart. */
function fnv1a(text: string): string {
  let hash = 0x811c9dc5;
  for (let i = 0; i < text.length; i += 1) {
    hash ^= text.charCodeAt(i);
    hash = Math.imul(hash, 0x01000193);
  }
  return (hash >>> 0).toString(36);
}

const ICON = `<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 32 32"><rect width="32" height="32" rx="7" fill="#1d5ba6"/><path d="M9 10h14M16 10v13c0 2 1.5 3 3.5 3" stroke="#fff" stroke-width="3.2" fill="none" stroke-linecap="round"/></svg>`;

interface Asset {
  path: string;
  body: string;
  contentType: string;
}

const ASSETS: Asset[] = [
  { path: `/console/assets/console-${fnv1a(STYLESHEET)}.css`, body: STYLESHEET, contentType: "text/css; charset=utf-8" },
  { path: `/console/assets/console-${BROWSER_SCRIPT_HASH}.js`, body: BROWSER_SCRIPT, contentType: "text/javascript; charset=utf-8" },
  { path: `/console/assets/icon-${fnv1a(ICON)}.svg`, body: ICON, contentType: "image/svg+xml" },
];

/** Where the pages find the assets. */
export const ASSET_URLS = { css: ASSETS[0]!.path, js: ASSETS[1]!.path, icon: ASSETS[2]!.path } as const;

/** The asset at `path`, as a response cached for a year (its name changes with its content); null when none is. */
export function assetResponse(path: string): Response | null {
  const asset = ASSETS.find((candidate) => candidate.path === path);
  if (!asset) return null;
  return new Response(asset.body, {
    headers: { "content-type": asset.contentType, "cache-control": "public, max-age=31536000, immutable", "x-content-type-options": "nosniff" },
  });
}
