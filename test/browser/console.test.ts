// The operators' console in a real browser (headless Chromium from @sparticuz/chromium, driven by playwright-core)
// against a real control plane and real runners: signing in, the fleet with its live counts, a machine whose mutex is
// held with two waiters in order, a script's log growing live (and resuming after a dropped connection), abandon
// with a reason and the next waiter starting, the audit feed, a viewer without buttons, a forged cross-site post,
// signing out; and every request stays on the control plane. Screenshots go to test-artifacts/screenshots/
// (`npm run screenshots` writes the README's into docs/screenshots/).
import { createServer } from "node:http";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { Page } from "playwright-core";
import { launchBrowser, screenshotBothWidths, type GuardedContext, type TestBrowser } from "../helpers/browser.js";
import { startFaultProxy } from "../helpers/fault-proxy.js";
import { useControlPlane } from "../helpers/fixture.js";
import { closeServer } from "../helpers/http-server.js";
import { waitFor } from "../helpers/wait.js";

const f = useControlPlane();
let browser: TestBrowser;
const contexts: GuardedContext[] = [];
const tokens = { alice: "", victor: "" };

/** The script deploy-41 runs: a deployment that never ends (abandoned below, its process left running). */
const ENDLESS = 'i=0; while true; do i=$((i+1)); echo "deploying step $i"; sleep 0.3; done';

beforeAll(async () => {
  browser = await launchBrowser();
  for (const [name, role] of [["alice", "operator"], ["victor", "viewer"]] as const) {
    const added = await f.api("POST", "/api/v1/operators", { name, role });
    expect(added.status).toBe(201);
    tokens[name] = added.body.token;
  }
  await Promise.all([f.runner("web-01"), f.runner("web-02")]);
  await f.register("db-01");
  const start = (ticket: string, taskId: string, scriptBody: string) =>
    f.api("POST", "/api/v1/machines/web-01/scripts", { ticket, taskId, scriptBody }).then((r) => expect(r.status).toBe(201));
  await start("deploy-41", "ServerTasks-41", ENDLESS);
  await start("deploy-42", "ServerTasks-42", "echo started; sleep 600");
  await start("deploy-43", "ServerTasks-43", "echo started; sleep 600");
}, 180_000);

afterAll(async () => {
  for (const context of contexts) await context.close().catch(() => undefined);
  await browser?.close();
}, 60_000);

/** A fresh browser context that may load only from `origins` (the control plane by default). */
async function context(origins: string[] = [f.cp.url], options: { javaScript?: boolean } = {}): Promise<GuardedContext> {
  const guarded = await browser.context(origins, options);
  contexts.push(guarded);
  return guarded;
}

/** Signs in through the form, from any console URL (the sign-in page sends the browser back to it). */
async function signIn(page: Page, base: string, token: string, path = "/"): Promise<void> {
  await page.goto(`${base}${path}`);
  expect(new URL(page.url()).pathname).toBe("/session");
  await page.getByLabel("Token").fill(token);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.waitForURL((url) => url.pathname !== "/session");
}

/** Waits until an element matching `selector` contains `text`. */
function textIn(page: Page, selector: string, text: string | RegExp, timeout = 20_000): Promise<void> {
  return page.locator(selector).filter({ hasText: text }).first().waitFor({ timeout });
}

describe("the console in a browser", () => {
  let alice: GuardedContext;

  it("signs in with an operator token and shows the fleet, whose counts follow the fleet live", async () => {
    alice = await context();
    const { page } = alice;
    await signIn(page, f.cp.url, tokens.alice);
    await page.getByRole("heading", { name: "Fleet", level: 1 }).waitFor();
    await expect(page.locator(".who").textContent()).resolves.toContain("Signed in as alice (operator)");
    await textIn(page, "#fleet-counts .total", "3");
    await textIn(page, "#fleet-machines tr", /web-01\s*connected/);
    // A machine registered meanwhile shows in the counts without a reload.
    await f.register("db-02");
    await textIn(page, "#fleet-counts .total", "4");
    await textIn(page, "#fleet-counts .disconnected", "2");
    // The filter is a plain GET form.
    await page.getByLabel("Machine id starts with").fill("web");
    await page.getByLabel("Status").selectOption("busy");
    await page.getByRole("button", { name: "Filter" }).click();
    await page.waitForURL((url) => url.search === "?prefix=web&status=busy");
    expect(await page.locator("#fleet-machines tbody tr td:first-child").allTextContents()).toEqual(["web-01"]);
  }, 90_000);

  it("shows a machine whose mutex is held, with its two waiters in order, their task ids and how long they wait", async () => {
    const { page } = alice;
    await page.goto(`${f.cp.url}/machines/web-01`);
    await textIn(page, ".holders li", /deploy-41\s*running\s*task ServerTasks-41\s*held \d+ (s|min)/);
    const queue = (await page.locator("#machine-mutexes ol.queue li").allTextContents()).map((text) => text.replace(/\s+/g, " ").trim());
    expect(queue).toEqual([expect.stringMatching(/^deploy-42 task ServerTasks-42 waiting \d+ (s|min)$/), expect.stringMatching(/^deploy-43 task ServerTasks-43 waiting \d+ (s|min)$/)]);
    await textIn(page, "#machine-runner", /Version\s*0\.1\.0/);
    // The exact time is on hover.
    expect(await page.locator(".holders time").getAttribute("title")).toMatch(/^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC$/);
    await screenshotBothWidths(page, "machine");
  }, 60_000);

  it("shows a running script's log growing live, without a reload", async () => {
    const { page } = alice;
    await page.goto(`${f.cp.url}/machines/web-01/scripts/deploy-41`);
    await textIn(page, "#script-status", "running");
    const shown = await page.locator("#log li").count();
    await waitFor(async () => (await page.locator("#log li").count()) >= shown + 3, { timeoutMs: 20_000, what: "three more log lines" });
    const lines = await page.locator("#log li .text").allTextContents();
    expect(lines).toEqual(lines.map((_, i) => `deploying step ${i + 1}`));
    await screenshotBothWidths(page, "script");
  }, 60_000);

  it("abandons the holder with a reason once confirmed, and the next waiter starts", async () => {
    const { page } = alice;
    await page.goto(`${f.cp.url}/machines/web-01/scripts/deploy-41`);
    const abandon = page.locator("form.action.danger");
    await expect(abandon.locator("p strong").textContent()).resolves.toMatch(/releases its mutex now, so the next script can start, but its process may keep running on web-01\./);
    // Killing the process is a choice of its own, off unless ticked.
    expect(await page.getByLabel(/Also ask the runner to kill its process tree/).isChecked()).toBe(false);
    await page.getByLabel("Reason (required, recorded in the audit trail)").fill("stuck in AV scan");
    await page.getByLabel(/Yes, abandon it/).check();
    await page.getByRole("button", { name: "Abandon the script" }).click();
    await page.waitForURL((url) => url.search === "?done=abandon");
    await textIn(page, ".notice", "Abandoned: its mutex is released and the next script may start; its process may still be running on web-01.");
    await textIn(page, "#script-status", /complete[\s\S]*-48\s*abandoned/);
    await textIn(page, "#script-events tr", /abandon\s*operator:alice\s*stuck in AV scan/);
    await expect(page.getByRole("button", { name: "Abandon the script" }).count()).resolves.toBe(0);

    await page.goto(`${f.cp.url}/machines/web-01`);
    // The page refreshes itself: deploy-42 holds the mutex and runs; deploy-43 waits alone.
    await textIn(page, ".holders li", /deploy-42\s*running/);
    expect((await page.locator("#machine-mutexes ol.queue li").allTextContents()).map((t) => t.trim().split(/\s/)[0])).toEqual(["deploy-43"]);
    // deploy-41's process was left running: it is listed with its pid.
    await textIn(page, "#machine-abandoned tr", /deploy-41\s*\d+/);
    await page.goto(`${f.cp.url}/machines/web-01/scripts/deploy-42`);
    await textIn(page, "#log li .text", "started");
  }, 90_000);

  it("lists the abandon in the audit feed, filtered by machine, with its actor and reason", async () => {
    const { page } = alice;
    await page.goto(`${f.cp.url}/audit`);
    await page.getByLabel("Machine id").fill("web-01");
    await page.getByRole("button", { name: "Filter" }).click();
    await page.waitForURL((url) => url.search === "?machineId=web-01");
    // The feed lags the change by a moment; the page refreshes itself.
    await textIn(page, "#audit-events tr", /abandon\s*web-01\s*deploy-41\s*operator:alice\s*stuck in AV scan/);
    expect(await page.locator("#audit-events tbody tr td:nth-child(2)").allTextContents()).toEqual(expect.arrayContaining(["web-01"]));
    expect((await page.locator("#audit-events tbody tr td:nth-child(2)").allTextContents()).every((machine) => machine === "web-01")).toBe(true);
  }, 60_000);

  it("shows a viewer no action buttons, and refuses with 403 a cancel the viewer forges", async () => {
    const viewer = await context();
    const { page } = viewer;
    await signIn(page, f.cp.url, tokens.victor, "/machines/web-01/scripts/deploy-43");
    expect(new URL(page.url()).pathname).toBe("/machines/web-01/scripts/deploy-43");
    await textIn(page, "#script-actions", "You are signed in as a viewer: you can watch, not act.");
    expect(await page.getByRole("button", { name: /cancel|abandon/i }).count()).toBe(0);
    // A hand-made form with the session's own form token (from the sign-out form), posted from the console's origin.
    const answer = page.waitForResponse((response) => response.url().endsWith("/deploy-43/cancel"));
    const formToken = await page.locator("input[name=formToken]").first().inputValue();
    await page.evaluate(`(() => {
      const form = document.createElement("form");
      form.method = "post";
      form.action = location.pathname + "/cancel";
      for (const [name, value] of [["formToken", ${JSON.stringify(formToken)}], ["reason", "forged by a viewer"]]) {
        const input = document.createElement("input");
        input.name = name;
        input.value = value;
        form.append(input);
      }
      document.body.append(form);
      form.submit();
    })()`);
    expect((await answer).status()).toBe(403);
    await textIn(page, "main", "A viewer may watch but not act");
    expect((await f.api("GET", "/api/v1/machines/web-01/scripts/deploy-43?limit=1")).body).toMatchObject({ state: "pending", events: [] });
  }, 60_000);

  it("refuses a cross-site form post, even from the browser of a signed-in operator", async () => {
    // Another site (127.0.0.2 is another host than 127.0.0.1, so another site) whose page posts to the console.
    const target = `${f.cp.url}/machines/web-01/scripts/deploy-43/cancel`;
    const attacker = createServer((_request, response) => {
      response.setHeader("content-type", "text/html");
      response.end(
        `<!DOCTYPE html><form method="post" action="${target}"><input name="reason" value="forged"><input name="formToken" value="guess"></form><script>document.forms[0].submit()</script>`,
      );
    });
    await new Promise<void>((resolve) => attacker.listen(0, "127.0.0.2", resolve));
    const attackerUrl = `http://127.0.0.2:${(attacker.address() as { port: number }).port}`;
    try {
      const guarded = await context([f.cp.url, attackerUrl]);
      await signIn(guarded.page, f.cp.url, tokens.alice);
      const answer = guarded.page.waitForResponse((response) => response.url() === target);
      await guarded.page.goto(attackerUrl);
      expect((await answer).status()).toBe(403);
      await textIn(guarded.page, "main", "did not come from the console's own pages");
    } finally {
      await closeServer(attacker);
    }
    expect((await f.api("GET", "/api/v1/machines/web-01/scripts/deploy-43?limit=1")).body).toMatchObject({ state: "pending", events: [] });
  }, 60_000);

  it("follows a log across a dropped connection without losing or doubling a line", async () => {
    const proxy = await startFaultProxy(Number(new URL(f.cp.url).port));
    try {
      const first = join(f.scratch, "go-on-1");
      const second = join(f.scratch, "go-on-2");
      const wait = (file: string) => `while [ ! -e ${file} ]; do sleep 0.05; done`;
      const scriptBody = `echo "line 1"; ${wait(first)}; for i in $(seq 2 30); do echo "line $i"; done; ${wait(second)}; for i in $(seq 31 60); do echo "line $i"; done`;
      expect((await f.api("POST", "/api/v1/machines/web-02/scripts", { ticket: "dropped", scriptBody })).status).toBe(201);
      const guarded = await context([proxy.url]);
      const { page } = guarded;
      const streams: string[] = [];
      page.on("request", (request) => {
        if (new URL(request.url()).pathname === "/machines/web-02/scripts/dropped/log") streams.push(new URL(request.url()).search);
      });
      await signIn(page, proxy.url, tokens.alice, "/machines/web-02/scripts/dropped");
      await textIn(page, "#log li .text", "line 1");
      // Lines 2–30 arrive over the stream (so the browser holds a Last-Event-ID); then every connection is cut.
      writeFileSync(first, "");
      await textIn(page, "#log li .text", "line 30");
      const accepted = proxy.accepted();
      proxy.cut();
      writeFileSync(second, "");
      await textIn(page, "#log li .text", "line 60", 30_000);
      await textIn(page, "#log-status", "The script is complete");
      expect(proxy.accepted()).toBeGreaterThan(accepted);
      // The browser reconnected on its own to the same URL, which still says `from=1`: only its Last-Event-ID (line 30,
      // sequence 29) told the control plane where to resume, and the page adds every line it is sent.
      expect(streams).toEqual(["?from=1", "?from=1"]);
      expect(await page.locator("#log li .text").allTextContents()).toEqual(Array.from({ length: 60 }, (_, i) => `line ${i + 1}`));
      expect(guarded.refused).toEqual([]);
    } finally {
      await proxy.close();
    }
  }, 90_000);

  it("loads nothing from outside the control plane, and says so in its content security policy", async () => {
    const { page, requested, refused } = alice;
    for (const path of ["/", "/machines/web-01", "/machines/web-01/scripts/deploy-42", "/audit"]) {
      const response = await page.goto(`${f.cp.url}${path}`);
      expect(response?.headers()["content-security-policy"]).toContain("default-src 'none'; script-src 'self'; style-src 'self'");
    }
    expect(requested.filter((url) => new URL(url).origin !== f.cp.url)).toEqual([]);
    // No page of any context so far tried to load anything from elsewhere either.
    expect(contexts.flatMap((guarded) => guarded.refused)).toEqual([]);
    expect(refused).toEqual([]);
    // The fleet as the README shows it: one machine busy, one with an abandoned process that may still run.
    await page.goto(`${f.cp.url}/`);
    await textIn(page, "#fleet-counts .stuck", "1");
    await screenshotBothWidths(page, "fleet");
  }, 60_000);

  it("signs out, after which the old session cookie opens nothing", async () => {
    const { page, context: browserContext } = alice;
    await page.goto(`${f.cp.url}/machines/web-01`);
    const cookies = await browserContext.cookies();
    expect(cookies).toEqual([expect.objectContaining({ name: "tendril-session", httpOnly: true, sameSite: "Strict", secure: false, path: "/" })]);
    await page.getByRole("button", { name: "Sign out" }).click();
    await textIn(page, ".notice", "You are signed out.");
    await page.goto(`${f.cp.url}/machines/web-01`);
    expect(new URL(page.url()).pathname).toBe("/session");
    // A copy of the cookie taken before signing out is refused too.
    const copy = await context();
    await copy.context.addCookies(cookies);
    await copy.page.goto(`${f.cp.url}/machines/web-01`);
    expect(new URL(copy.page.url()).pathname).toBe("/session");
    await textIn(copy.page, ".notice", "Your session has ended");
    await waitFor(async () => (await copy.context.cookies()).length === 0, { what: "the ended cookie to be cleared" });
  }, 60_000);

  it("works without JavaScript: signing in, a cancel with its reason, and the answer are plain pages and form posts", async () => {
    const { page } = await context([f.cp.url], { javaScript: false });
    await signIn(page, f.cp.url, tokens.alice, "/machines/web-01/scripts/deploy-43");
    await textIn(page, "#script-status", /pending[\s\S]*waiting for its mutex: 1st in the queue, behind deploy-42/);
    await page.getByLabel("Reason (recorded in the audit trail)").fill("superseded by ServerTasks-44");
    const answer = page.waitForResponse((response) => response.url().endsWith("/deploy-43/cancel"));
    await page.getByRole("button", { name: "Cancel the script" }).click();
    expect((await answer).status()).toBe(303);
    await page.waitForURL((url) => url.search === "?done=cancelled");
    await textIn(page, "#script-status", /complete[\s\S]*-43\s*cancelled/);
    await textIn(page, "#script-events tr", /cancel\s*operator:alice\s*superseded by ServerTasks-44/);
  }, 60_000);
});
