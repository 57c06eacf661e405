/** The sign-in page (the only console page without a session) and the page every refusal or failure answers with. */
import { Layout, type Viewer } from "./layout.js";
import { ErrorText, Notice } from "./parts.js";

/** What the sign-in page shows. */
export interface SignInPageProps {
  now: number;
  /** Where to go once signed in (a console path). */
  next: string;
  /** Why the last attempt failed. */
  error?: string | null;
  /** A neutral note (signed out, session ended). */
  notice?: string | null;
}

/** The sign-in page. */
export function SignInPage(props: SignInPageProps) {
  return (
    <Layout title="Sign in" now={props.now} viewer={null} narrow>
      <h1>Tendril console</h1>
      <p>Sign in with your operator token, or with the server token.</p>
      <Notice text={props.notice ?? null} />
      <ErrorText text={props.error} />
      <form method="post" action="/session">
        <p>
          <label for="token">Token</label>
          <br />
          <input type="password" id="token" name="token" required autocomplete="current-password" spellcheck={false} size={40} />
        </p>
        <input type="hidden" name="next" value={props.next} />
        <button type="submit">Sign in</button>
      </form>
      <p class="hint">
        An operator token comes from <code>tendril operator add NAME --role operator</code> (or <code>--role viewer</code> to watch without acting). The session lasts 12 hours, ends when
        you sign out, and ends early if the token is revoked, replaced or expires.
      </p>
    </Layout>
  );
}

/** A page that says what went wrong and where to go from there. */
export function MessagePage(props: { now: number; viewer: Viewer | null; title: string; message: string; link?: { href: string; text: string } }) {
  return (
    <Layout title={props.title} now={props.now} viewer={props.viewer} narrow={props.viewer === null}>
      <h1>{props.title}</h1>
      <p>{props.message}</p>
      <p>{props.link ? <a href={props.link.href}>{props.link.text}</a> : <a href="/">Back to the fleet</a>}</p>
    </Layout>
  );
}
