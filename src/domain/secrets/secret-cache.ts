/**
 * Reads of a secret's latest version, served from memory: the stored
 * (encrypted) value and its metadata are kept per secret, never the
 * plaintext. Entries of a secret are dropped
 * when any replica changes it (the change feed), and nothing is cached
 * while the feed is not live, so a disable, destroy or new version anywhere
 * holds here within the feed's delay.
 *
 * @module
 */
import type { ChangeFeed } from "../change-feed.js";
import type { SecretRepository } from "./repository.js";

type Read = Awaited<ReturnType<SecretRepository["read"]>>;

export interface SecretCache {
  /** As SecretRepository.read. */
  read(name: string, version: number | "latest"): Promise<Read>;
  /** Drops what is cached of `name` (after a change this process made). */
  invalidate(name: string): void;
}

export function createSecretCache(deps: {
  repository: Pick<SecretRepository, "read">;
  feed: ChangeFeed;
  /** Most secrets held; the least recently loaded go first. Default 10,000. */
  maxSecrets?: number;
}): SecretCache {
  const { repository, feed } = deps;
  const maxSecrets = deps.maxSecrets ?? 10_000;
  // Only `latest` is kept, one value per secret: what services read at run
  // time, and a bound on memory (a value is up to 64 KiB) that callers
  // reading many old versions cannot push.
  const latest = new Map<string, Promise<Read>>();
  // Bumped by every invalidation: a read that began before one must not be kept.
  let epoch = 0;

  const invalidate = (name: string | undefined) => {
    if (name !== undefined && !name.startsWith("secrets/")) {
      return;
    }
    epoch++;
    if (name === undefined) {
      latest.clear();
    } else {
      latest.delete(name);
    }
  };
  feed.subscribe(invalidate);

  return {
    invalidate,
    read(name, version) {
      if (version !== "latest" || !feed.live) {
        return repository.read(name, version);
      }
      const cached = latest.get(name);
      if (cached !== undefined) {
        return cached;
      }
      if (latest.size >= maxSecrets) {
        latest.delete(latest.keys().next().value!);
      }
      const startedAt = epoch;
      const reading = repository.read(name, version);
      latest.set(name, reading);
      const forget = () => {
        if (latest.get(name) === reading) latest.delete(name);
      };
      reading.then(
        // A secret without an ENABLED version (yet) is not remembered as such.
        (found) => (found === undefined || epoch !== startedAt) && forget(),
        forget,
      );
      return reading;
    },
  };
}
