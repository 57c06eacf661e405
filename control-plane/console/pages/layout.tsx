/** The frame every console page shares: head, top bar (navigation, who is signed in, sign-out) and main. */
import type { Child } from "hono/jsx";
import { ASSET_URLS } from "../assets.js";

/** Who is signed in, as the top bar shows it. */
export interface Viewer {
  /** `server` or the operator's name. */
  label: string;
  /** `server token`, `operator` or `viewer`. */
  role: string;
  /** The session's form token, for the sign-out form. */
  formToken: string;
}

/** What the frame needs besides the page's content. */
export interface Frame {
  title: string;
  /** The control plane's clock when the page was made (epoch ms): the browser script corrects its own by it. */
  now: number;
  viewer: Viewer | null;
  /** Which top-level page this is, for `aria-current`. */
  section?: "fleet" | "audit";
  /** How often the browser script refreshes the page's live parts, in ms; none when absent. */
  refreshMs?: number;
  /** A narrow, centred main (the sign-in page). */
  narrow?: boolean;
}

/** The whole document around a page's content. */
export function Layout(props: Frame & { children?: Child }) {
  const { title, now, viewer, section, refreshMs, narrow } = props;
  return (
    <html lang="en">
      <head>
        <meta charset="utf-8" />
        <meta name="viewport" content="width=device-width, initial-scale=1" />
        <meta name="referrer" content="same-origin" />
        <title>{`${title} · Tendril`}</title>
        <link rel="icon" href={ASSET_URLS.icon} type="image/svg+xml" />
        <link rel="stylesheet" href={ASSET_URLS.css} />
        {viewer ? <script src={ASSET_URLS.js} defer></script> : null}
      </head>
      <body data-now={String(now)} data-refresh={refreshMs === undefined ? undefined : String(refreshMs)}>
        <a class="skip" href="#main">
          Skip to content
        </a>
        {viewer ? (
          <header class="top">
            <nav aria-label="Console">
              <a class="brand" href="/">
                Tendril
              </a>
              <a href="/" aria-current={section === "fleet" ? "page" : undefined}>
                Fleet
              </a>
              <a href="/audit" aria-current={section === "audit" ? "page" : undefined}>
                Audit
              </a>
            </nav>
            <form class="who" method="post" action="/session/end">
              <span>
                Signed in as <strong>{viewer.label}</strong> ({viewer.role})
              </span>
              <input type="hidden" name="formToken" value={viewer.formToken} />
              <button type="submit" class="quiet">
                Sign out
              </button>
            </form>
          </header>
        ) : null}
        <main id="main" class={narrow ? "narrow" : undefined}>
          {props.children}
        </main>
      </body>
    </html>
  );
}
