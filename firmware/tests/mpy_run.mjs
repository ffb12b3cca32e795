// Runs firmware/tests/run_tests.py inside MicroPython's WebAssembly port (Node.js).
// Usage: node mpy_run.mjs MICROPYTHON_MJS FIRMWARE_DIR
import { readFileSync, readdirSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const [mjs, firmware] = process.argv.slice(2);
const { loadMicroPython } = await import(pathToFileURL(mjs).href);
const mp = await loadMicroPython({
  heapsize: 8 * 1024 * 1024,
  stdout: (line) => process.stdout.write(line + "\n"),
  stderr: (line) => process.stderr.write(line + "\n"),
});
// The firmware's pure module and its tests, copied into MicroPython's own file system.
mp.FS.mkdir("/fw");
const board = ["config.py", "hw.py", "net.py", "app.py", "main.py"];
const files = [["vendproto.py", join(firmware, "vendproto.py")]];
for (const name of board) files.push([name, join(firmware, name)]);
for (const name of readdirSync(join(firmware, "tests"))) {
  if (name.endsWith(".py")) files.push([name, join(firmware, "tests", name)]);
}
for (const [name, path] of files) mp.FS.writeFile("/fw/" + name, readFileSync(path, "utf8"));
mp.runPython(`
import sys
sys.path.insert(0, "/fw")
print("MicroPython %s (%s)" % (".".join(str(n) for n in sys.implementation.version[:3]), sys.version))
import run_tests
failures = run_tests.main()
failures += run_tests.compile_all("/fw", ${JSON.stringify(board)})
`);
process.exitCode = mp.globals.get("failures") === 0 ? 0 : 1;
