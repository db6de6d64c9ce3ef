/**
 * Keys as the hot path needs them: metadata and versions read once, each
 * version's material unwrapped and parsed once into KeyObjects, then served
 * from memory. Entries are dropped when any replica changes the key (the
 * change feed), and nothing is cached while the feed is not live, so a
 * disable, rotation or destruction anywhere holds here within the feed's
 * delay.
 *
 * @module
 */
import { createEnvelope, type Envelope } from "../../crypto/envelope.js";
import type { LoadedKey } from "../../crypto/key-material.js";
import type { SecretBytes } from "../../crypto/secret-bytes.js";
import { DomainError } from "../errors.js";
import type { KeyAlgorithm } from "./key.js";
import { missingVersion } from "./key-manager.js";
import { openMaterial } from "./material.js";
import type { ChangeFeed } from "../change-feed.js";
import type { KeyRepository, StoredKey } from "./repository.js";

/** A version's primitives, parsed once. */
export interface OpenedVersion {
  readonly loaded: LoadedKey;
  /** For ENCRYPT_DECRYPT keys: envelope encryption with this version. */
  readonly envelope?: Envelope;
}

/** A cached key: its stored state and its versions' primitives, opened on first use. */
export interface CachedKey {
  readonly stored: StoredKey;
  /** @throws DomainError "failed-precondition" when the version has no material (destroyed). */
  open(version: number): Promise<OpenedVersion>;
}

export interface KeyCache {
  /** @throws DomainError "not-found" when the key does not exist. */
  get(name: string): Promise<CachedKey>;
  /** Drops what is cached of `name` (after a change this process made). */
  invalidate(name: string): void;
  readonly size: number;
  /** Hits and misses since start (metadata lookups). */
  readonly stats: { hits: number; misses: number };
}

export interface KeyCacheDeps {
  readonly repository: KeyRepository;
  readonly feed: ChangeFeed;
  readonly rootKey: SecretBytes;
  /** Most keys held; the least recently loaded go first. Default 10,000. */
  readonly maxKeys?: number;
}

export function createKeyCache(deps: KeyCacheDeps): KeyCache {
  const { repository, feed, rootKey } = deps;
  const maxKeys = deps.maxKeys ?? 10_000;
  const entries = new Map<string, Promise<CachedKey>>();
  // Bumped by every invalidation: a load that began before one must not be kept.
  let epoch = 0;
  const stats = { hits: 0, misses: 0 };

  const invalidate = (name: string | undefined) => {
    if (name !== undefined && !name.startsWith("keys/")) {
      return;
    }
    epoch++;
    if (name === undefined) {
      entries.clear();
    } else {
      entries.delete(name);
    }
  };
  feed.subscribe(invalidate);

  const build = (stored: StoredKey): CachedKey => {
    const opened = new Map<number, Promise<OpenedVersion>>();
    const { key } = stored;
    const openVersion = async (version: number): Promise<OpenedVersion> => {
      const material = await repository.material(key.name, version);
      if (material === undefined) {
        throw missingVersion(key.name, version);
      }
      if (material.wrapped == null) {
        throw new DomainError("failed-precondition", `version ${version} of ${key.name} is DESTROYED`);
      }
      let loaded: LoadedKey;
      try {
        loaded = openMaterial(rootKey, key.name, version, key.algorithm as KeyAlgorithm, material.wrapped);
      } catch (err) {
        // The binding (key, version, algorithm) or the bytes no longer match:
        // the row was altered or copied from another. Refuse, loudly.
        throw new DomainError(
          "data-loss",
          `the stored material of version ${version} of ${key.name} does not open: it was altered or moved`,
          { cause: err },
        );
      }
      const envelope =
        loaded.purpose === "ENCRYPT_DECRYPT" ? createEnvelope({ keyName: key.name, version, aead: loaded.aead }) : undefined;
      return { loaded, envelope };
    };
    return {
      stored,
      open(version) {
        let found = opened.get(version);
        if (found === undefined) {
          found = openVersion(version);
          opened.set(version, found);
          found.catch(() => opened.delete(version));
        }
        return found;
      },
    };
  };

  const load = async (name: string): Promise<CachedKey> => {
    const stored = await repository.get(name);
    if (stored === undefined) {
      throw new DomainError("not-found", `${name} not found`);
    }
    return build(stored);
  };

  return {
    get(name) {
      if (!feed.live) {
        stats.misses++;
        return load(name);
      }
      const cached = entries.get(name);
      if (cached !== undefined) {
        stats.hits++;
        return cached;
      }
      stats.misses++;
      const startedAt = epoch;
      const loading = load(name);
      if (entries.size >= maxKeys) {
        entries.delete(entries.keys().next().value!);
      }
      entries.set(name, loading);
      loading.then(
        () => {
          if (epoch !== startedAt && entries.get(name) === loading) entries.delete(name);
        },
        () => {
          if (entries.get(name) === loading) entries.delete(name);
        },
      );
      return loading;
    },
    invalidate,
    get size() {
      return entries.size;
    },
    stats,
  };
}

