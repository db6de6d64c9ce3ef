/**
 * Tells this process when a key or a secret changed anywhere (any replica),
 * so that what it cached of it can be dropped. Names are resource names,
 * `keys/...` or `secrets/...`.
 */
export interface ChangeFeed {
  /** `listener(name)` after a change to `name`; `listener(undefined)` when changes may have been missed. */
  subscribe(listener: (name: string | undefined) => void): void;
  /** True while changes are being received; caches must not serve while false. */
  readonly live: boolean;
  close(): Promise<void>;
}
