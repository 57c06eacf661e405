/**
 * Changing what a stopped local control plane persisted, as time or a lost write would have: Miniflare keeps each
 * Durable Object's SQLite database under the state folder (see object-storage.ts), in WAL mode, and leaves the WAL
 * beside it when it stops. A test stops the control plane, folds the WAL into the database as SQLite's checkpoint
 * would (`checkpointWal`), edits it with sql.js, writes it back, and starts the control plane again on that state.
 */
import { existsSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { objectDatabases } from "./object-storage.js";
import { openSqliteBytes, type SqlJsStorage } from "./sqljs-storage.js";

const WAL_MAGIC_LITTLE_ENDIAN = 0x377f0682;
const WAL_MAGIC_BIG_ENDIAN = 0x377f0683;

/** SQLite's WAL checksum over `length` bytes (a multiple of 8) of `data` from `at`, continuing from `seed`. */
function walChecksum(data: Buffer, at: number, length: number, seed: [number, number], bigEndian: boolean): [number, number] {
  let [s0, s1] = seed;
  for (let i = at; i < at + length; i += 8) {
    const x0 = bigEndian ? data.readUInt32BE(i) : data.readUInt32LE(i);
    const x1 = bigEndian ? data.readUInt32BE(i + 4) : data.readUInt32LE(i + 4);
    s0 = (s0 + x0 + s1) >>> 0;
    s1 = (s1 + x1 + s0) >>> 0;
  }
  return [s0, s1];
}

/**
 * Applies the committed frames of a closed database's WAL file to the database file, then removes the WAL and its
 * index: the database file alone then holds everything (https://www.sqlite.org/fileformat.html, "The WAL file").
 */
export function checkpointWal(file: string): void {
  const walFile = `${file}-wal`;
  if (existsSync(walFile)) {
    const wal = readFileSync(walFile);
    if (wal.length >= 32) {
      const magic = wal.readUInt32BE(0);
      if (magic !== WAL_MAGIC_LITTLE_ENDIAN && magic !== WAL_MAGIC_BIG_ENDIAN) throw new Error(`${walFile} is not a WAL file`);
      const bigEndian = magic === WAL_MAGIC_BIG_ENDIAN;
      const pageSize = wal.readUInt32BE(8);
      const salt = [wal.readUInt32BE(16), wal.readUInt32BE(20)];
      let sum = walChecksum(wal, 0, 24, [0, 0], bigEndian);
      if (sum[0] !== wal.readUInt32BE(24) || sum[1] !== wal.readUInt32BE(28)) throw new Error(`${walFile} has a bad header checksum`);
      const committed = new Map<number, Buffer>();
      let pending = new Map<number, Buffer>();
      let pages: number | null = null;
      for (let at = 32; at + 24 + pageSize <= wal.length; at += 24 + pageSize) {
        if (wal.readUInt32BE(at + 8) !== salt[0] || wal.readUInt32BE(at + 12) !== salt[1]) break;
        sum = walChecksum(wal, at, 8, sum, bigEndian);
        sum = walChecksum(wal, at + 24, pageSize, sum, bigEndian);
        if (sum[0] !== wal.readUInt32BE(at + 16) || sum[1] !== wal.readUInt32BE(at + 20)) break;
        pending.set(wal.readUInt32BE(at), wal.subarray(at + 24, at + 24 + pageSize));
        const commitPages = wal.readUInt32BE(at + 4);
        if (commitPages !== 0) {
          for (const [page, data] of pending) committed.set(page, data);
          pending = new Map();
          pages = commitPages;
        }
      }
      if (pages !== null) {
        const main = readFileSync(file);
        const out = Buffer.alloc(pages * pageSize);
        main.copy(out, 0, 0, Math.min(main.length, out.length));
        for (const [page, data] of committed) if (page <= pages) data.copy(out, (page - 1) * pageSize);
        writeFileSync(file, out);
      }
    }
  }
  rmSync(walFile, { force: true });
  rmSync(`${file}-shm`, { force: true });
}

/** Opens a stopped object's database (its WAL folded in) in sql.js. */
async function openPersisted(file: string): Promise<SqlJsStorage> {
  checkpointWal(file);
  const bytes = readFileSync(file);
  // The header says WAL (bytes 18 and 19 are 2); sql.js keeps its databases in memory, where only the rollback
  // journal works, so it reads the file as such, and the header is set back when the file is written.
  bytes[18] = 1;
  bytes[19] = 1;
  return openSqliteBytes(bytes);
}

/** Opens the first database of `className` that `match` accepts, lets `edit` change it, and writes it back. */
export async function editObjectDatabase(
  stateDir: string,
  className: string,
  match: (storage: SqlJsStorage) => boolean,
  edit: (storage: SqlJsStorage) => void,
): Promise<void> {
  for (const file of objectDatabases(stateDir, className)) {
    const storage = await openPersisted(file);
    try {
      if (!match(storage)) continue;
      edit(storage);
      const bytes = Buffer.from(storage.db.export());
      bytes[18] = 2;
      bytes[19] = 2;
      writeFileSync(file, bytes);
      return;
    } finally {
      storage.db.close();
    }
  }
  throw new Error(`no ${className} database matched in ${stateDir}`);
}

/** Edits the registry's database. */
export function editRegistry(stateDir: string, edit: (storage: SqlJsStorage) => void): Promise<void> {
  return editObjectDatabase(stateDir, "RegistryObject", () => true, edit);
}

/** Edits the database of machine `machineId`'s object. */
export function editMachine(stateDir: string, machineId: string, edit: (storage: SqlJsStorage) => void): Promise<void> {
  return editObjectDatabase(
    stateDir,
    "MachineObject",
    (storage) => {
      try {
        return storage.db.exec("SELECT value FROM meta WHERE key = 'machine_id'")[0]?.values[0]?.[0] === machineId;
      } catch {
        return false;
      }
    },
    edit,
  );
}
