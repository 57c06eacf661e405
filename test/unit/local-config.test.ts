import { mkdir, mkdtemp, readFile, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { localConfigPath, readLocalConfig, resolveServerSettings, writeLocalConfig } from "../../client/local-config.js";

let cwd: string;

beforeEach(async () => {
  cwd = await mkdtemp(join(tmpdir(), "tendril-local-config-"));
});

afterEach(async () => {
  await rm(cwd, { recursive: true, force: true });
});

const saved = { url: "http://127.0.0.1:8787", serverToken: "file-token" };

describe("local settings file", () => {
  it("creates .tendril/ and writes local.json that reads back the same", async () => {
    await writeLocalConfig(cwd, saved);
    expect(await readLocalConfig(cwd)).toEqual(saved);
    expect(JSON.parse(await readFile(join(cwd, ".tendril", "local.json"), "utf8"))).toEqual(saved);
  });

  it("makes the settings file readable by its owner only, even when it existed with a wider mode", async () => {
    await mkdir(join(cwd, ".tendril"));
    await writeFile(localConfigPath(cwd), "{}", { mode: 0o644 });
    await writeLocalConfig(cwd, saved);
    expect((await stat(localConfigPath(cwd))).mode & 0o777).toBe(0o600);
  });

  it("keeps the folder out of version control with its own .gitignore", async () => {
    await writeLocalConfig(cwd, saved);
    expect(await readFile(join(cwd, ".tendril", ".gitignore"), "utf8")).toBe("*\n");
  });

  it("replaces an earlier file", async () => {
    await writeLocalConfig(cwd, saved);
    await writeLocalConfig(cwd, { url: "http://127.0.0.1:9999", serverToken: "second" });
    expect(await readLocalConfig(cwd)).toEqual({ url: "http://127.0.0.1:9999", serverToken: "second" });
  });

  it("reads nothing when there is no file", async () => {
    expect(await readLocalConfig(cwd)).toBeUndefined();
  });

  it("names the file when it is not valid JSON", async () => {
    await mkdir(join(cwd, ".tendril"));
    await writeFile(localConfigPath(cwd), "{not json");
    await expect(readLocalConfig(cwd)).rejects.toThrow(`${localConfigPath(cwd)} is not valid JSON`);
  });

  it("names the file and the field when the settings are malformed", async () => {
    await mkdir(join(cwd, ".tendril"));
    await writeFile(localConfigPath(cwd), JSON.stringify({ url: "ftp://example", serverToken: "t" }));
    await expect(readLocalConfig(cwd)).rejects.toThrow(/local\.json is not a Tendril settings file \(url:/);
  });
});

describe("resolveServerSettings", () => {
  const env = { TENDRIL_URL: "http://env.example:8787", TENDRIL_SERVER_TOKEN: "env-token" };

  it("prefers the flags over the environment and the file", async () => {
    await writeLocalConfig(cwd, saved);
    const settings = await resolveServerSettings({ flagUrl: "http://flag.example", flagToken: "flag-token", env, cwd });
    expect(settings).toEqual({ url: "http://flag.example", serverToken: "flag-token" });
  });

  it("prefers the environment over the file", async () => {
    await writeLocalConfig(cwd, saved);
    expect(await resolveServerSettings({ env, cwd })).toEqual({ url: env.TENDRIL_URL, serverToken: "env-token" });
  });

  it("falls back to .tendril/local.json when neither flag nor environment says anything", async () => {
    await writeLocalConfig(cwd, saved);
    expect(await resolveServerSettings({ env: {}, cwd })).toEqual(saved);
  });

  it("refuses a --url without --server-token instead of sending the file's token to that URL", async () => {
    await writeLocalConfig(cwd, saved);
    await expect(resolveServerSettings({ flagUrl: "https://prod.example", env: {}, cwd })).rejects.toThrow(
      /--url is set but --server-token is not: the URL and the token must come from the same place \(the flags\)/,
    );
  });

  it("refuses a --url with only the environment's token, and a --server-token with only the environment's URL", async () => {
    await expect(resolveServerSettings({ flagUrl: "https://prod.example", env, cwd })).rejects.toThrow(/--url is set but --server-token is not/);
    await expect(resolveServerSettings({ flagToken: "t", env, cwd })).rejects.toThrow(/--server-token is set but --url is not/);
  });

  it("refuses TENDRIL_URL without TENDRIL_SERVER_TOKEN instead of taking the token from the file", async () => {
    await writeLocalConfig(cwd, saved);
    await expect(resolveServerSettings({ env: { TENDRIL_URL: "https://prod.example" }, cwd })).rejects.toThrow(
      /TENDRIL_URL is set but TENDRIL_SERVER_TOKEN is not: the URL and the token must come from the same place \(the environment\)/,
    );
  });

  it("treats empty flags and variables as unset", async () => {
    await writeLocalConfig(cwd, saved);
    const settings = await resolveServerSettings({ flagUrl: "", env: { TENDRIL_URL: "", TENDRIL_SERVER_TOKEN: " " }, cwd });
    expect(settings).toEqual(saved);
  });

  it("does not read the file when flags and environment give everything", async () => {
    await mkdir(join(cwd, ".tendril"));
    await writeFile(localConfigPath(cwd), "{broken");
    expect(await resolveServerSettings({ env, cwd })).toEqual({ url: env.TENDRIL_URL, serverToken: "env-token" });
  });

  it("says every way to configure the control plane when nothing gives a URL or token", async () => {
    await expect(resolveServerSettings({ env: {}, cwd })).rejects.toThrow(
      "no control plane configured: pass --url and --server-token, set TENDRIL_URL/TENDRIL_SERVER_TOKEN, or run `npm start` in this folder",
    );
  });

  it("says which setting is missing when only one is given", async () => {
    await expect(resolveServerSettings({ env: { TENDRIL_URL: "http://x.example" }, cwd })).rejects.toThrow(/set TENDRIL_SERVER_TOKEN too/);
    await expect(resolveServerSettings({ flagToken: "t", env: {}, cwd })).rejects.toThrow(/set --url too/);
  });
});
