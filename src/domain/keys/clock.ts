/**
 * The time source port. The key domain never reads the wall clock: its
 * transitions take `now` as an argument, and whoever calls them (a service, the
 * rotation and destruction scheduler) gets `now` from an injected Clock, so
 * tests can move time by hand. main.ts supplies the system clock.
 */
export interface Clock {
  /** The current time. Each call returns a new Date the caller may keep. */
  now(): Date;
}
