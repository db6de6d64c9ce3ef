/**
 * Reads of secret versions, served from memory: the stored (encrypted)
 * value and its metadata are kept per secret and version asked for
 * (`latest` included), never the plaintext. Entries of a secret are dropped
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
  const bySecret = new Map<string, Map<number | "latest", Promise<Read>>>();
  // Bumped by every invalidation: a read that began before one must not be kept.
  let epoch = 0;

  const invalidate = (name: string | undefined) => {
    if (name !== undefined && !name.startsWith("secrets/")) {
      return;
    }
    epoch++;
    if (name === undefined) {
      bySecret.clear();
    } else {
      bySecret.delete(name);
    }
  };
  feed.subscribe(invalidate);

  return {
    invalidate,
    read(name, version) {
      if (!feed.live) {
        return repository.read(name, version);
      }
      let versions = bySecret.get(name);
      const cached = versions?.get(version);
      if (cached !== undefined) {
        return cached;
      }
      if (versions === undefined) {
        if (bySecret.size >= maxSecrets) {
          bySecret.delete(bySecret.keys().next().value!);
        }
        versions = new Map();
        bySecret.set(name, versions);
      }
      const startedAt = epoch;
      const reading = repository.read(name, version);
      versions.set(version, reading);
      const forget = () => {
        if (bySecret.get(name)?.get(version) === reading) bySecret.get(name)!.delete(version);
      };
      reading.then(
        // A secret or version that does not exist (yet) is not remembered as missing.
        (found) => (found === undefined || epoch !== startedAt) && forget(),
        forget,
      );
      return reading;
    },
  };
}
