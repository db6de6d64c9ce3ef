/**
 * The deployment files in deploy/ (Dockerfile, compose.yaml, kubernetes/*.yaml,
 * policy files) against the server they deploy: every variable they set is one
 * src/config.ts reads and accepts, ports, probes, mounts and selectors agree with
 * each other, and every policy shipped loads with the server's own parser.
 * Nothing here needs Docker or a cluster; the files are only read.
 */
import { execFile } from "node:child_process";
import { existsSync, readdirSync, readFileSync, statSync } from "node:fs";
import { dirname, join, posix, relative, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";
import { parseAllDocuments } from "yaml";
import { ENV_VARS, loadConfig, type Config } from "../../src/config.js";
import { createAuthorizer } from "../../src/domain/authz/decide.js";
import { parsePolicy, POLICY_API_VERSION, POLICY_KIND, type Policy } from "../../src/domain/authz/policy.js";
import { LIVENESS_PATH, READINESS_PATH, serveMetrics, type Readiness } from "../../src/server/metrics.js";

// Manifests are free-form YAML; the checks below say what they expect of them.
type Json = any;

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
const DEPLOY = join(ROOT, "deploy");
/** Operators' own TLS keys and root keys for compose; not shipped, not checked. */
const UNSHIPPED = join(DEPLOY, "secrets");

/** Stand-in for values that come from a Secret at run time. */
const FROM_SECRET: Partial<Record<keyof typeof ENV_VARS, string>> = {
  DATABASE_URL: "postgres://keyward@database.invalid:5432/keyward",
  KEYWARD_ROOT_KEY: Buffer.alloc(32, 1).toString("base64"),
};

const KNOWN = new Set<string>(Object.keys(ENV_VARS));
/** Variables naming a file the server reads: they must lie under a mount. */
const isFileVariable = (name: string) => /^KEYWARD_.*_FILE$/.test(name) || name.startsWith("KEYWARD_TLS_");
const isKeywardVariable = (name: string) => name.startsWith("KEYWARD_") || name === "DATABASE_URL";

function walk(dir: string): string[] {
  return readdirSync(dir).flatMap((name) => {
    const path = join(dir, name);
    if (path === UNSHIPPED) {
      return [];
    }
    return statSync(path).isDirectory() ? walk(path) : [path];
  });
}

const files = walk(DEPLOY);
const yamlFiles = files.filter((file) => /\.ya?ml$/.test(file));

interface YamlFile {
  readonly file: string;
  readonly text: string;
  readonly docs: Json[];
}

// YAML 1.1, as kubectl (sigs.k8s.io/yaml) and Compose read these files: octal
// file modes such as 0400, and merge keys (<<: *anchor).
const parsed: YamlFile[] = yamlFiles.map((file) => {
  const text = readFileSync(file, "utf8");
  const documents = parseAllDocuments(text, { version: "1.1", merge: true, uniqueKeys: true });
  const list = Array.isArray(documents) ? documents : [documents];
  for (const doc of list) {
    if (doc.errors.length > 0) {
      throw new Error(`${relative(ROOT, file)}: ${doc.errors[0]!.message}`);
    }
  }
  return { file, text, docs: list.map((doc) => doc.toJS({ maxAliasCount: 100 })).filter((doc) => doc != null) };
});

const isPolicyDoc = (doc: Json) => doc?.apiVersion === POLICY_API_VERSION && doc?.kind === POLICY_KIND;
const isComposeDoc = (doc: Json) => doc && typeof doc === "object" && "services" in doc && !("kind" in doc);
const isK8sDoc = (doc: Json) => typeof doc?.apiVersion === "string" && typeof doc?.kind === "string" && !isPolicyDoc(doc);

const policyFiles = parsed.filter((y) => y.docs.some(isPolicyDoc));
const composeFiles = parsed.filter((y) => y.docs.some(isComposeDoc));
const k8sObjects: Json[] = parsed.flatMap((y) => y.docs.filter(isK8sDoc));

/** A production configuration: nothing left to development defaults. */
function expectProductionConfig(env: Record<string, string>, where: string): Config {
  let config: Config;
  try {
    config = loadConfig(env, "/app");
  } catch (err) {
    throw new Error(`${where}: the server refuses this environment: ${(err as Error).message}`);
  }
  expect(config.databaseUrl, `${where}: DATABASE_URL (else an embedded database)`).toBeDefined();
  expect(config.tls, `${where}: KEYWARD_TLS_* (else the dev PKI)`).toBeDefined();
  expect(config.policyFile, `${where}: KEYWARD_POLICY_FILE (else the dev policy)`).toBeDefined();
  expect(config.rootKey, `${where}: KEYWARD_ROOT_KEY_FILE (else the dev root key)`).toBeDefined();
  expect(["127.0.0.1", "localhost", "::1"], `${where}: KEYWARD_LISTEN must be reachable from outside the container`).not.toContain(
    config.listen.host,
  );
  return config;
}

/** The mount holding `path`, if any: [mount point, path relative to it]. */
function mountOf(path: string, mountPoints: readonly string[]): [string, string] | undefined {
  for (const mount of [...mountPoints].sort((a, b) => b.length - a.length)) {
    const rel = posix.relative(mount, path);
    if (rel !== "" && !rel.startsWith("..") && !posix.isAbsolute(rel)) {
      return [mount, rel];
    }
  }
  return undefined;
}

/** Files named in a postgres URL's query (sslrootcert, sslcert, sslkey). */
function urlFiles(url: string): string[] {
  const query = new URL(url).searchParams;
  return ["sslrootcert", "sslcert", "sslkey"].flatMap((name) => query.getAll(name));
}

function expectPolicyLoads(text: string, where: string): Policy {
  try {
    const policy = parsePolicy(text);
    expect(policy.rules.length, `${where}: a policy without rules denies everything`).toBeGreaterThan(0);
    return policy;
  } catch (err) {
    throw new Error(`${where}: the server's policy parser refuses it: ${(err as Error).message}`);
  }
}

// ---------------------------------------------------------------------------
// Dockerfile

interface Instruction {
  readonly keyword: string;
  readonly args: string;
}
interface Stage {
  readonly name: string | undefined;
  readonly instructions: Instruction[];
}

function parseDockerfile(text: string): Stage[] {
  const logical: string[] = [];
  let current = "";
  for (const line of text.split("\n")) {
    if (/^\s*#/.test(line) && current === "") {
      continue;
    }
    if (/^\s*#/.test(line)) {
      continue; // a comment inside a continued instruction
    }
    if (line.endsWith("\\")) {
      current += `${line.slice(0, -1)} `;
      continue;
    }
    current += line;
    if (current.trim() !== "") {
      logical.push(current.trim());
    }
    current = "";
  }
  const stages: Stage[] = [];
  for (const line of logical) {
    const [, keyword = "", args = ""] = /^(\S+)\s*(.*)$/.exec(line) ?? [];
    const instruction = { keyword: keyword.toUpperCase(), args };
    if (instruction.keyword === "FROM") {
      stages.push({ name: /\sAS\s+(\S+)$/i.exec(args)?.[1], instructions: [instruction] });
    } else if (stages.length > 0) {
      stages.at(-1)!.instructions.push(instruction);
    }
  }
  return stages;
}

function dockerEnv(stage: Stage): Record<string, string> {
  const env: Record<string, string> = {};
  for (const { keyword, args } of stage.instructions) {
    if (keyword !== "ENV") {
      continue;
    }
    if (!args.includes("=")) {
      const [name = "", ...value] = args.split(/\s+/);
      env[name] = value.join(" ");
      continue;
    }
    for (const match of args.matchAll(/([A-Za-z_][A-Za-z0-9_]*)=("(?:[^"\\]|\\.)*"|\S*)/g)) {
      env[match[1]!] = match[2]!.startsWith('"') ? (JSON.parse(match[2]!) as string) : match[2]!;
    }
  }
  return env;
}

const dockerfilePath = join(DEPLOY, "Dockerfile");
const stages = parseDockerfile(readFileSync(dockerfilePath, "utf8"));
const runtime = stages.at(-1)!;
const imageEnv = dockerEnv(runtime);
const instructionsOf = (stage: Stage, keyword: string) => stage.instructions.filter((i) => i.keyword === keyword);
const execForm = (args: string): string[] => JSON.parse(args) as string[];

describe("deploy/Dockerfile", () => {
  it("sets only variables the server reads, and they make a valid configuration", () => {
    for (const name of Object.keys(imageEnv).filter(isKeywardVariable)) {
      expect(KNOWN, `ENV ${name} is not a Keyward setting (src/config.ts ENV_VARS)`).toContain(name);
    }
    const config = loadConfig(imageEnv, "/app");
    expect(config.listen.host).toBe("0.0.0.0");
  });

  it("exposes the port the server listens on", () => {
    const { port } = loadConfig(imageEnv, "/app").listen;
    const exposed = instructionsOf(runtime, "EXPOSE").flatMap((i) => i.args.split(/\s+/)).map((p) => Number(p.split("/")[0]));
    expect(exposed).toEqual([port]);
  });

  it("runs `keyward serve` as a numeric non-root user", () => {
    const [user] = instructionsOf(runtime, "USER");
    expect(user, "runtime stage has a USER").toBeDefined();
    const [uid = "", gid = "0"] = user!.args.split(":");
    // Numeric, so Kubernetes' runAsNonRoot can verify it.
    expect(uid).toMatch(/^\d+$/);
    expect(Number(uid)).toBeGreaterThan(0);
    expect(Number(gid)).toBeGreaterThan(0);

    const entrypoint = execForm(instructionsOf(runtime, "ENTRYPOINT").at(-1)!.args);
    const cmd = execForm(instructionsOf(runtime, "CMD").at(-1)!.args);
    const argv = [...entrypoint, ...cmd];
    // What `npm start` runs: the TypeScript sources through tsx.
    expect(argv.slice(0, 3)).toEqual(["node", "--import", "tsx"]);
    const script = argv[3]!;
    expect(existsSync(join(ROOT, posix.relative(instructionsOf(runtime, "WORKDIR").at(-1)!.args, script)))).toBe(true);
    expect(argv.slice(4)).toEqual(["serve"]);
  });

  it("ships production dependencies only, tsx among them", () => {
    const pkg = JSON.parse(readFileSync(join(ROOT, "package.json"), "utf8")) as { dependencies: Record<string, string> };
    expect(Object.keys(pkg.dependencies), "tsx runs the server: it must be a runtime dependency").toContain("tsx");

    const modules = instructionsOf(runtime, "COPY").find((i) => /\bnode_modules\b/.test(i.args));
    expect(modules, "the runtime stage copies node_modules from another stage").toBeDefined();
    const from = /--from=(\S+)/.exec(modules!.args)?.[1];
    const source = stages.find((stage) => stage.name === from);
    expect(source, `stage ${from}`).toBeDefined();
    const installs = instructionsOf(source!, "RUN").filter((i) => /\bnpm (ci|install)\b/.test(i.args));
    expect(installs.length).toBeGreaterThan(0);
    for (const install of installs) {
      expect(install.args).toMatch(/--omit=dev\b/);
    }
    // No npm install of any kind in the runtime stage itself.
    expect(instructionsOf(runtime, "RUN").filter((i) => /\bnpm (ci|install)\b/.test(i.args))).toEqual([]);
    // And a build stage that installs everything (and type-checks).
    expect(stages.some((stage) => instructionsOf(stage, "RUN").some((i) => /\bnpm ci\b/.test(i.args) && !/--omit/.test(i.args)))).toBe(true);
  });

  it("creates the data folder in the image, owned by the server's user", () => {
    const dataDir = loadConfig(imageEnv, "/app").dataDir;
    const uid = instructionsOf(runtime, "USER")[0]!.args.split(":")[0]!;
    const run = instructionsOf(runtime, "RUN").map((i) => i.args).join("\n");
    expect(run).toContain(`mkdir -p ${dataDir}`);
    expect(run).toMatch(new RegExp(`chown ${uid}(:\\d+)? ${dataDir}`));
  });

  it("has a health check that needs no client certificate", () => {
    const [check] = instructionsOf(runtime, "HEALTHCHECK");
    expect(check, "HEALTHCHECK (or HEALTHCHECK NONE, with the reason)").toBeDefined();
    if (check!.args.trim() !== "NONE") {
      // A TCP connect to the listening port; grpc.health.v1 would need mTLS.
      expect(check!.args).toContain("KEYWARD_LISTEN");
      expect(check!.args).toMatch(/\/dev\/tcp\//);
    }
  });

  it("copies only what the context sends (Dockerfile.dockerignore), and that exists", () => {
    const ignore = readFileSync(join(DEPLOY, "Dockerfile.dockerignore"), "utf8")
      .split("\n")
      .map((line) => line.trim())
      .filter((line) => line !== "" && !line.startsWith("#"));
    expect(ignore[0], "everything is excluded first").toBe("*");
    const included = new Set(ignore.filter((line) => line.startsWith("!")).map((line) => line.slice(1).replace(/\/$/, "")));
    for (const stage of stages) {
      for (const copy of instructionsOf(stage, "COPY").filter((i) => !i.args.includes("--from="))) {
        const parts = copy.args.split(/\s+/).filter((part) => !part.startsWith("--"));
        for (const source of parts.slice(0, -1)) {
          const name = source.replace(/^\.\//, "").replace(/\/$/, "");
          expect(included, `COPY ${source}: not sent in the build context`).toContain(name);
          expect(existsSync(join(ROOT, name)), `COPY ${source}: missing from the repository`).toBe(true);
        }
      }
    }
    expect(included.has(".keyward")).toBe(false);
  });
});

// ---------------------------------------------------------------------------
// Policy files

describe("policy files in deploy/", () => {
  it("ships at least one, and each loads with the server's parser", () => {
    expect(policyFiles.length).toBeGreaterThan(0);
    for (const { file, text } of policyFiles) {
      expectPolicyLoads(text, relative(ROOT, file));
    }
  });

  it("every YAML file is a policy, a Compose file or Kubernetes objects (so none goes unchecked)", () => {
    for (const { file, docs } of parsed) {
      expect(docs.length, relative(ROOT, file)).toBeGreaterThan(0);
      for (const doc of docs) {
        expect(isPolicyDoc(doc) || isComposeDoc(doc) || isK8sDoc(doc), relative(ROOT, file)).toBe(true);
      }
    }
  });
});

// ---------------------------------------------------------------------------
// Compose

describe.each(composeFiles.map((y) => [relative(ROOT, y.file), y] as const))("%s", (_name, { file, docs }) => {
  const compose: Json = docs.find(isComposeDoc);
  const dir = dirname(file);
  const services: Record<string, Json> = compose.services;
  const keyward = Object.entries(services).filter(
    ([, service]) => service.build?.dockerfile === "deploy/Dockerfile" || /(^|\/)keyward[:@]/.test(service.image ?? ""),
  );

  const environmentOf = (service: Json): Record<string, string> => {
    const raw = service.environment ?? {};
    const entries: Array<[string, string]> = Array.isArray(raw)
      ? raw.map((item: string) => {
          const at = item.indexOf("=");
          return [item.slice(0, at), item.slice(at + 1)];
        })
      : Object.entries(raw).map(([k, v]) => [k, String(v)]);
    return Object.fromEntries(entries);
  };
  const mountsOf = (service: Json): Array<{ type: string; source?: string; target: string; readOnly: boolean }> =>
    (service.volumes ?? []).map((volume: Json) => {
      if (typeof volume === "string") {
        const [source, target, mode] = volume.split(":");
        return { type: source!.startsWith(".") || source!.startsWith("/") ? "bind" : "volume", source, target, readOnly: mode === "ro" };
      }
      return { type: volume.type, source: volume.source, target: volume.target, readOnly: volume.read_only === true };
    });
  const secretTargets = (service: Json): string[] =>
    (service.secrets ?? []).map((secret: Json) =>
      typeof secret === "string" ? `/run/secrets/${secret}` : (secret.target?.startsWith("/") ? secret.target : `/run/secrets/${secret.target ?? secret.source}`),
    );

  it("runs two Keyward replicas", () => {
    expect(keyward.map(([name]) => name)).toHaveLength(2);
  });

  it.each(keyward)("%s: sets only known variables, and a production configuration", (name, service) => {
    const env = environmentOf(service);
    for (const variable of Object.keys(env).filter(isKeywardVariable)) {
      expect(KNOWN, `${name}: ${variable}`).toContain(variable);
    }
    expect(env.KEYWARD_LISTEN).toBe("0.0.0.0:8443");
    expectProductionConfig({ ...imageEnv, ...env }, name);
  });

  it.each(keyward)("%s: publishes the listening port, read-only with a writable /tmp", (name, service) => {
    const { port } = loadConfig({ ...imageEnv, ...environmentOf(service) }, "/app").listen;
    const targets = (service.ports as Json[]).map((p) => Number(typeof p === "string" ? p.split(":").at(-1) : p.target));
    expect(targets.length, name).toBeGreaterThan(0);
    for (const target of targets) {
      expect(target, `${name}: container port`).toBe(port);
    }
    expect(service.read_only, `${name}: read_only`).toBe(true);
    const tmp = mountsOf(service).find((mount) => mount.target === "/tmp");
    expect(tmp?.type === "tmpfs" || (service.tmpfs ?? []).includes("/tmp"), `${name}: /tmp`).toBe(true);
    expect(service.cap_drop).toContain("ALL");
  });

  it("gives the replicas different host ports", () => {
    const hostPorts = keyward.flatMap(([, service]) =>
      (service.ports as Json[]).map((p) => (typeof p === "string" ? p.split(":").at(-2) : String(p.published))),
    );
    expect(new Set(hostPorts).size).toBe(hostPorts.length);
  });

  it("puts both replicas on one database, which Compose runs", () => {
    const urls = keyward.map(([, service]) => environmentOf(service).DATABASE_URL);
    expect(urls[0]).toBeDefined();
    expect(new Set(urls).size).toBe(1);
    const host = new URL(urls[0]!).hostname;
    expect(Object.keys(services)).toContain(host);
    for (const [, service] of keyward) {
      const dependsOn = Array.isArray(service.depends_on) ? service.depends_on : Object.keys(service.depends_on ?? {});
      expect(dependsOn).toContain(host);
    }
  });

  it.each(keyward)("%s: every file it is told to read lies under a mount that is defined", (name, service) => {
    const env = environmentOf(service);
    const mounts = mountsOf(service);
    for (const mount of mounts.filter((m) => m.type === "volume")) {
      expect(Object.keys(compose.volumes ?? {}), `${name}: volume ${mount.source}`).toContain(mount.source);
    }
    for (const secret of service.secrets ?? []) {
      const source = typeof secret === "string" ? secret : secret.source;
      expect(Object.keys(compose.secrets ?? {}), `${name}: secret ${source}`).toContain(source);
    }
    const secretFiles = secretTargets(service);
    const paths = [
      ...Object.entries(env).filter(([variable]) => isFileVariable(variable)).map(([, path]) => path),
      ...(env.DATABASE_URL ? urlFiles(env.DATABASE_URL) : []),
    ];
    expect(paths.length).toBeGreaterThan(0);
    for (const path of paths) {
      const underMount = mountOf(path, mounts.filter((m) => m.type !== "tmpfs").map((m) => m.target)) !== undefined;
      expect(underMount || secretFiles.includes(path), `${name}: ${path} is not mounted`).toBe(true);
    }
    // Reloadable files come from mounted directories: a bind-mounted single
    // file keeps the old inode when the host replaces it.
    for (const variable of ["KEYWARD_TLS_CERT", "KEYWARD_TLS_KEY", "KEYWARD_TLS_CLIENT_CA", "KEYWARD_TLS_CRL", "KEYWARD_POLICY_FILE"]) {
      if (env[variable]) {
        const mount = mountOf(env[variable], mounts.map((m) => m.target));
        expect(mount, `${name}: ${variable} should be in a mounted directory`).toBeDefined();
        expect(mounts.find((m) => m.target === mount![0])!.readOnly, `${name}: ${mount![0]} read-only`).toBe(true);
      }
    }
  });

  it.each(keyward)("%s: the policy file it mounts ships with it and loads", (name, service) => {
    const env = environmentOf(service);
    const mounts = mountsOf(service);
    const [target, rel] = mountOf(env.KEYWARD_POLICY_FILE!, mounts.map((m) => m.target))!;
    const mount = mounts.find((m) => m.target === target)!;
    expect(mount.type).toBe("bind");
    const hostFile = join(resolve(dir, mount.source!), rel);
    expect(existsSync(hostFile), `${name}: ${relative(ROOT, hostFile)}`).toBe(true);
    expectPolicyLoads(readFileSync(hostFile, "utf8"), relative(ROOT, hostFile));
  });

  it.each(keyward)("%s: is healthy only while GET /readyz on its metrics port answers 200", async (name, service) => {
    const env = environmentOf(service);
    const metricsListen = loadConfig({ ...imageEnv, ...env }, "/app").metricsListen;
    expect(metricsListen, `${name}: KEYWARD_METRICS_LISTEN, which the health check asks`).toBeDefined();
    // The check dials 127.0.0.1 inside the container.
    expect(["127.0.0.1", "0.0.0.0"], name).toContain(metricsListen!.host);
    const [form, command, ...args] = (service.healthcheck?.test ?? []) as string[];
    expect(form, `${name}: healthcheck in exec form`).toBe("CMD");
    expect(command, `${name}: the image has node, not curl`).toBe("node");
    expect(args.join(" ")).toContain(READINESS_PATH);

    // Run the check itself against the real endpoint, one in each state (and one closed).
    const states: readonly Readiness[] = ["starting", "ready", "draining", "ready"];
    const endpoints = await Promise.all(
      states.map((state) => serveMetrics({ metrics: async () => "", contentType: "text/plain" }, "127.0.0.1", 0, () => state)),
    );
    const closed = endpoints.at(-1)!.address.port;
    await endpoints.pop()!.close();
    const check = (port: number) =>
      new Promise<number>((resolve, reject) => {
        const listen = `127.0.0.1:${port}`;
        const child = execFile(process.execPath, args, { env: { ...env, PATH: process.env.PATH ?? "", KEYWARD_METRICS_LISTEN: listen }, timeout: 10_000 });
        child.once("error", reject);
        child.once("exit", (code) => resolve(code ?? -1));
      });
    try {
      const exits = await Promise.all([...endpoints.map((e) => check(e.address.port)), check(closed)]);
      expect(exits, `${name}: exit codes when starting, ready, draining, not listening`).toEqual([1, 0, 1, 1]);
    } finally {
      await Promise.all(endpoints.map((e) => e.close()));
    }
  });

  it.each(keyward)("%s: gives SIGTERM's drain time to finish", (name, service) => {
    const config = loadConfig({ ...imageEnv, ...environmentOf(service) }, "/app");
    const grace = /^(\d+)s$/.exec(service.stop_grace_period ?? "10s");
    expect(Number(grace?.[1]) * 1000, name).toBeGreaterThan(config.shutdownGraceMs);
  });
});

// ---------------------------------------------------------------------------
// Kubernetes

describe("deploy/kubernetes", () => {
  const ofKind = (kind: string) => k8sObjects.filter((o) => o.kind === kind);
  const deployments = ofKind("Deployment");
  const deployment: Json = deployments[0];
  const pod: Json = deployment?.spec?.template?.spec;
  const container: Json = pod?.containers?.find((c: Json) => c.name === "keyward");
  const namespace: string = deployment?.metadata?.namespace;
  const podLabels: Record<string, string> = deployment?.spec?.template?.metadata?.labels ?? {};
  const volumes: Json[] = pod?.volumes ?? [];
  const mounts: Json[] = container?.volumeMounts ?? [];

  const selects = (selector: Record<string, string> | undefined) =>
    selector !== undefined && Object.keys(selector).length > 0 && Object.entries(selector).every(([k, v]) => podLabels[k] === v);

  /** The container's environment as the server sees it: image ENV, then the manifest's. */
  const env = (): Record<string, string> => {
    const result: Record<string, string> = { ...imageEnv };
    for (const entry of container.env as Json[]) {
      if (entry.value !== undefined) {
        result[entry.name] = String(entry.value);
      } else {
        const standIn = FROM_SECRET[entry.name as keyof typeof ENV_VARS];
        expect(standIn, `${entry.name} from ${JSON.stringify(entry.valueFrom)}: no stand-in for this test`).toBeDefined();
        expect(entry.valueFrom.secretKeyRef, `${entry.name} comes from a Secret`).toBeDefined();
        expect(entry.valueFrom.secretKeyRef.optional ?? false, `${entry.name}: a missing Secret must stop the pod`).toBe(false);
        result[entry.name] = standIn!;
      }
    }
    return result;
  };
  const config = (): Config => loadConfig(env(), "/app");
  const containerPort = (port: string | number): number | undefined =>
    typeof port === "number" ? port : (container.ports as Json[]).find((p) => p.name === port)?.containerPort;

  it("has one Deployment with the keyward container", () => {
    expect(deployments).toHaveLength(1);
    expect(container).toBeDefined();
    expect(namespace).toBeDefined();
  });

  it("runs 3 replicas", () => {
    expect(deployment.spec.replicas).toBe(3);
    expect(deployment.spec.selector.matchLabels).toEqual(
      Object.fromEntries(Object.keys(deployment.spec.selector.matchLabels).map((k) => [k, podLabels[k]])),
    );
  });

  it("sets only known variables, and a production configuration", () => {
    expect(container.envFrom, "envFrom would set variables this test cannot see").toBeUndefined();
    for (const { name } of container.env as Json[]) {
      if (isKeywardVariable(name)) {
        expect(KNOWN, name).toContain(name);
      }
    }
    expect(new Set((container.env as Json[]).map((e) => e.name)).size).toBe(container.env.length);
    expectProductionConfig(env(), "Deployment keyward");
    // The Service named "keyward" would otherwise inject KEYWARD_PORT, KEYWARD_SERVICE_HOST, ...
    expect(pod.enableServiceLinks).toBe(false);
  });

  it("declares the gRPC and metrics ports it listens on", () => {
    const { listen, metricsListen } = config();
    expect(metricsListen, "KEYWARD_METRICS_LISTEN: the probes ask it").toBeDefined();
    // kubelet probes the pod's address, not its loopback.
    expect(["127.0.0.1", "localhost", "::1"]).not.toContain(metricsListen!.host);
    expect(containerPort("grpc")).toBe(listen.port);
    expect(containerPort("metrics")).toBe(metricsListen!.port);
    expect((container.ports as Json[]).map((p) => p.containerPort)).toHaveLength(2);
  });

  it("probes start-up and readiness at /readyz and liveness at /livez, over HTTP on the metrics port", () => {
    const { metricsListen } = config();
    const paths = { startupProbe: READINESS_PATH, readinessProbe: READINESS_PATH, livenessProbe: LIVENESS_PATH };
    for (const [probe, path] of Object.entries(paths)) {
      const spec = container[probe];
      expect(spec?.httpGet, `${probe}: httpGet`).toBeDefined();
      // The gRPC port needs a client certificate and audits every call; its
      // listener also opens before the database is reached.
      expect(spec.tcpSocket ?? spec.grpc ?? spec.exec, probe).toBeUndefined();
      expect(spec.httpGet.path, probe).toBe(path);
      expect(spec.httpGet.scheme ?? "HTTP", probe).toBe("HTTP");
      expect(containerPort(spec.httpGet.port), probe).toBe(metricsListen!.port);
    }
  });

  it("mounts only defined volumes, never with subPath", () => {
    const names = volumes.map((v) => v.name);
    expect(new Set(names).size).toBe(names.length);
    for (const mount of mounts) {
      expect(names, `volumeMount ${mount.name}`).toContain(mount.name);
      // Kubelet renews Secrets and ConfigMaps by swapping a symlink, which a subPath mount never sees.
      expect(mount.subPath, `volumeMount ${mount.name}`).toBeUndefined();
    }
  });

  /** The files a volume provides, when the manifests say (undefined: any). */
  const filesOf = (volume: Json): string[] | undefined => {
    const fromSource = (source: Json, items: Json[] | undefined): string[] | undefined => {
      if (items) {
        return items.map((item) => item.path);
      }
      if (source.configMap) {
        const name = source.configMap.name;
        const map = ofKind("ConfigMap").find((o) => o.metadata.name === name);
        return map ? Object.keys({ ...map.data, ...map.binaryData }) : undefined;
      }
      return undefined;
    };
    if (volume.secret) {
      return fromSource({ secret: volume.secret }, volume.secret.items);
    }
    if (volume.configMap) {
      return fromSource({ configMap: volume.configMap }, volume.configMap.items);
    }
    if (volume.projected) {
      const lists = (volume.projected.sources as Json[]).map((source) => {
        const [kind] = Object.keys(source);
        return fromSource(source, source[kind!].items);
      });
      return lists.some((list) => list === undefined) ? undefined : lists.flat() as string[];
    }
    return undefined;
  };

  it("every file the server is told to read lies under a read-only mount that provides it", () => {
    const fileVariables = (container.env as Json[]).filter((e) => isFileVariable(e.name));
    expect(fileVariables.length).toBeGreaterThan(0);
    for (const { name, value } of fileVariables) {
      const found = mountOf(value, mounts.map((m) => m.mountPath));
      expect(found, `${name}=${value} is not under a volumeMount`).toBeDefined();
      const mount = mounts.find((m) => m.mountPath === found![0]);
      expect(mount.readOnly, `${name}: ${mount.mountPath} read-only`).toBe(true);
      const provided = filesOf(volumes.find((v) => v.name === mount.name));
      if (provided !== undefined) {
        expect(provided, `${name}: volume ${mount.name} does not provide ${found![1]}`).toContain(found![1]);
      }
    }
  });

  it("keeps the root key readable by its owner and group only", () => {
    const path = (container.env as Json[]).find((e) => e.name === "KEYWARD_ROOT_KEY_FILE").value;
    const mount = mounts.find((m) => m.mountPath === mountOf(path, mounts.map((x) => x.mountPath))![0]);
    const volume = volumes.find((v) => v.name === mount.name);
    expect(volume.secret, "the root key comes from a Secret").toBeDefined();
    expect(volume.secret.defaultMode & 0o037).toBe(0);
  });

  it("ships the policy the Deployment mounts, and it loads", () => {
    const path = (container.env as Json[]).find((e) => e.name === "KEYWARD_POLICY_FILE").value;
    const [mountPath, file] = mountOf(path, mounts.map((m) => m.mountPath))!;
    const volume = volumes.find((v) => v.name === mounts.find((m) => m.mountPath === mountPath).name);
    expect(volume.configMap, "the policy comes from a ConfigMap").toBeDefined();
    const map = ofKind("ConfigMap").find((o) => o.metadata.name === volume.configMap.name);
    expect(map, `ConfigMap ${volume.configMap.name}`).toBeDefined();
    expect(map.metadata.namespace).toBe(namespace);
    expectPolicyLoads(map.data[file], `ConfigMap ${map.metadata.name} ${file}`);
  });

  it("runs non-root on a read-only root file system, without capabilities, with a writable /tmp", () => {
    const security = container.securityContext ?? {};
    const podSecurity = pod.securityContext ?? {};
    expect(security.readOnlyRootFilesystem).toBe(true);
    expect(security.runAsNonRoot ?? podSecurity.runAsNonRoot).toBe(true);
    expect(podSecurity.runAsNonRoot).toBe(true);
    expect(security.runAsUser ?? podSecurity.runAsUser).toBeGreaterThan(0);
    expect(security.allowPrivilegeEscalation).toBe(false);
    expect(security.capabilities?.drop).toContain("ALL");
    expect(security.capabilities?.add ?? []).toEqual([]);
    const tmp = mounts.find((m) => m.mountPath === "/tmp");
    expect(tmp, "/tmp").toBeDefined();
    expect(tmp.readOnly ?? false).toBe(false);
    expect(volumes.find((v) => v.name === tmp.name).emptyDir).toBeDefined();
    expect(container.resources?.requests?.cpu).toBeDefined();
    expect(container.resources?.requests?.memory).toBeDefined();
    expect(container.resources?.limits?.memory).toBeDefined();
  });

  it("gives SIGTERM's drain time to finish", () => {
    const preStop = container.lifecycle?.preStop?.exec?.command ?? [];
    const sleep = preStop[0] === "sleep" ? Number(preStop[1]) : 0;
    expect(pod.terminationGracePeriodSeconds * 1000).toBeGreaterThan(sleep * 1000 + config().shutdownGraceMs);
  });

  it("has Services that select the pods and target the container port", () => {
    const services = ofKind("Service");
    expect(services.length).toBeGreaterThan(0);
    for (const service of services) {
      expect(service.metadata.namespace).toBe(namespace);
      expect(selects(service.spec.selector), `Service ${service.metadata.name} selector`).toBe(true);
      for (const port of service.spec.ports as Json[]) {
        expect(containerPort(port.targetPort ?? port.port), `Service ${service.metadata.name} targetPort`).toBe(config().listen.port);
      }
    }
  });

  it("has a PodDisruptionBudget that selects the Deployment's pods and allows one disruption", () => {
    const [pdb] = ofKind("PodDisruptionBudget");
    expect(pdb).toBeDefined();
    expect(pdb.metadata.namespace).toBe(namespace);
    expect(pdb.spec.selector.matchLabels).toEqual(deployment.spec.selector.matchLabels);
    expect(selects(pdb.spec.selector.matchLabels)).toBe(true);
    const allowed = pdb.spec.maxUnavailable ?? deployment.spec.replicas - pdb.spec.minAvailable;
    expect(allowed).toBeGreaterThanOrEqual(1);
    expect(allowed).toBeLessThan(deployment.spec.replicas);
  });

  it("has a NetworkPolicy for the pods that admits the gRPC port and the metrics port, each from named pods only", () => {
    const [policy] = ofKind("NetworkPolicy");
    expect(policy).toBeDefined();
    expect(policy.metadata.namespace).toBe(namespace);
    expect(selects(policy.spec.podSelector.matchLabels)).toBe(true);
    expect(policy.spec.policyTypes).toEqual(expect.arrayContaining(["Ingress", "Egress"]));
    const { listen, metricsListen } = config();
    const admitted = (policy.spec.ingress as Json[]).map((rule) => {
      // A rule without "from" would admit everyone.
      expect(rule.from?.length ?? 0).toBeGreaterThan(0);
      return rule.ports.map((p: Json) => containerPort(p.port));
    });
    for (const ports of admitted) {
      expect([[listen.port], [metricsListen!.port]]).toContainEqual(ports);
    }
    expect(admitted).toContainEqual([listen.port]);
  });

  it("keeps every namespaced object in the Deployment's namespace", () => {
    for (const kind of ["ServiceAccount", "Service", "PodDisruptionBudget", "NetworkPolicy", "ConfigMap"]) {
      for (const object of ofKind(kind)) {
        expect(object.metadata.namespace, `${kind} ${object.metadata.name}`).toBe(namespace);
      }
    }
    if (pod.serviceAccountName) {
      expect(ofKind("ServiceAccount").map((o) => o.metadata.name)).toContain(pod.serviceAccountName);
    }
    expect(ofKind("Namespace").map((o) => o.metadata.name)).toContain(namespace);
  });

  it("has cert-manager issue the server certificate the pods mount, for every Service name", () => {
    const certificates = ofKind("Certificate").filter((o) => o.apiVersion === "cert-manager.io/v1");
    const secretNames = volumes.flatMap((v) => [
      ...(v.secret ? [v.secret.secretName] : []),
      ...((v.projected?.sources ?? []) as Json[]).filter((s) => s.secret).map((s) => s.secret.name),
    ]);
    const server = certificates.find((c) => secretNames.includes(c.spec.secretName));
    expect(server, "a Certificate whose Secret the Deployment mounts").toBeDefined();
    expect(server.metadata.namespace).toBe(namespace);
    expect(server.spec.usages).toContain("server auth");
    for (const service of ofKind("Service")) {
      expect(server.spec.dnsNames).toContain(`${service.metadata.name}.${namespace}.svc`);
      expect(server.spec.dnsNames).toContain(`${service.metadata.name}.${namespace}.svc.cluster.local`);
    }
    // cert-manager writes tls.crt, tls.key and ca.crt: take nothing else from its Secret.
    const tls = volumes.find((v) => (v.projected?.sources ?? []).some((s: Json) => s.secret?.name === server.spec.secretName));
    for (const source of (tls?.projected.sources ?? []) as Json[]) {
      if (source.secret?.name === server.spec.secretName) {
        for (const item of source.secret.items as Json[]) {
          expect(["tls.crt", "tls.key", "ca.crt"]).toContain(item.key);
        }
      }
    }
    const issuers = [...ofKind("Issuer"), ...ofKind("ClusterIssuer")].map((o) => o.metadata.name);
    for (const certificate of certificates) {
      expect(issuers, `Certificate ${certificate.metadata.name} issuer`).toContain(certificate.spec.issuerRef.name);
    }
  });

  it("has example client certificates whose identities the shipped policy grants a role", () => {
    const path = (container.env as Json[]).find((e) => e.name === "KEYWARD_POLICY_FILE").value;
    const [mountPath, file] = mountOf(path, mounts.map((m) => m.mountPath))!;
    const volume = volumes.find((v) => v.name === mounts.find((m) => m.mountPath === mountPath).name);
    const map = ofKind("ConfigMap").find((o) => o.metadata.name === volume.configMap.name);
    const authorizer = createAuthorizer(parsePolicy(map.data[file]));
    const clients = ofKind("Certificate").filter((c) => (c.spec.usages ?? []).includes("client auth"));
    expect(clients.length).toBeGreaterThan(0);
    for (const client of clients) {
      // The identity is the certificate's one spiffe:// URI SAN.
      const spiffe = (client.spec.uris ?? []).filter((uri: string) => uri.startsWith("spiffe://"));
      expect(spiffe, `Certificate ${client.metadata.name}`).toHaveLength(1);
      expect(authorizer.rolesOf(spiffe[0]).length, `${spiffe[0]} has no role in the policy`).toBeGreaterThan(0);
    }
  });
});
