// A live platformd for the TypeScript tests (the SDK's and the portal's): the debug binary cargo
// built (or PLATFORMD_BIN), on a free loopback port, with a fresh SQLite data dir.

import { type ChildProcess, spawn } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";

const repo = join(dirname(fileURLToPath(import.meta.url)), "..", "..", "..");

export interface Platformd {
  /** `http://127.0.0.1:<port>`. */
  baseUrl: string;
  /** The bootstrap platform-admin token. */
  token: string;
  stop: () => void;
}

export async function startPlatformd(): Promise<Platformd> {
  const binary =
    process.env.PLATFORMD_BIN ??
    join(process.env.CARGO_TARGET_DIR ?? join(repo, "target"), "debug", "platformd");
  const dataDir = mkdtempSync(join(tmpdir(), "platformd-"));
  const env = Object.fromEntries(
    Object.entries(process.env).filter(([k]) => !k.startsWith("PLATFORM_")),
  );
  const server: ChildProcess = spawn(
    binary,
    ["serve", "--listen=127.0.0.1:0", "--data-dir", dataDir, "--log-format=json"],
    { stdio: ["ignore", "ignore", "pipe"], env },
  );
  const lines = createInterface({ input: server.stderr! });
  const baseUrl = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("platformd did not start")), 60_000);
    server.once("exit", (code) => reject(new Error(`platformd exited with ${code}`)));
    server.once("error", (e) => reject(new Error(`cannot run ${binary}: ${e.message}`)));
    lines.on("line", (line) => {
      try {
        const addr = JSON.parse(line).local_addr;
        if (addr) {
          clearTimeout(timer);
          resolve(`http://${addr}`);
        }
      } catch {
        // not JSON: ignore
      }
    });
  });
  const token = readFileSync(join(dataDir, "bootstrap-admin.token"), "utf8").trim();
  return {
    baseUrl,
    token,
    stop: () => {
      server.kill("SIGTERM");
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
}
