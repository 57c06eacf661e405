// A deployment server's integration test as its authors would write it: a real Tendril from `tendril/testing`, driven
// through `tendril/sdk` alone. Prints one JSON line with what it saw; ../consumer.test.ts checks it.
import { ExitCode, TendrilApiError, TendrilClient, type LogLine, type ScriptResult } from "tendril/sdk";
import { startTendril } from "tendril/testing";

const tendril = await startTendril({ machines: ["web-01", "web-02"] });
try {
  const machine = tendril.machine("web-01");
  const lines: string[] = [];
  let result: ScriptResult;
  let ticket: string;
  {
    // Disposal deletes the run once it is complete.
    await using run = await machine.start({ scriptBody: "echo one; echo two >&2; exit 3", taskId: "ServerTasks-42" });
    ticket = run.ticket;
    for await (const line of run.logs()) lines.push(`${line.source}:${line.text}`);
    result = await run.result();
  }
  const afterDisposal = await machine.script(ticket).status().then(
    () => "still there",
    (error: unknown) => (error instanceof TendrilApiError ? error.code : String(error)),
  );

  // A second client, as another process of the deployment server would make one.
  const other = new TendrilClient({ url: tendril.url, serverToken: tendril.serverToken });
  const long = await other.machine("web-02").start({ scriptBody: "sleep 600" });
  await long.cancel({ reason: "the consumer check cancels it" });
  const cancelled = await long.result();
  await long.complete();

  const seen: LogLine[] = [];
  const executed = await tendril.client.executeScript("web-02", { scriptBody: "echo executed" }, { onLog: (line) => seen.push(line) });

  // Left running on purpose: stop() must end it.
  const leftRunning = await machine.start({ scriptBody: "sleep 600" });
  const view = await machine.view();

  console.log(
    JSON.stringify({
      lines,
      exitCode: result.exitCode,
      afterDisposal,
      cancelled: cancelled.exitCode === ExitCode.Cancelled,
      executed: { exitCode: executed.exitCode, outcome: executed.outcome, lines: seen.map((line) => line.text) },
      leftRunning: view.scripts?.find((script) => script.ticket === leftRunning.ticket)?.state,
      connected: view.runner.connected,
      sameClient: tendril.client instanceof TendrilClient,
    }),
  );
} finally {
  await tendril.stop();
}
