/**
 * Runs `job` every `intervalMs` without ever running two at once: a run
 * still going when the next is due is not doubled, the tick is skipped. The
 * timer does not keep the process alive. `job` handles its own errors.
 *
 * @returns stop: clears the timer, then waits for the run in progress.
 */
export function runPeriodically(intervalMs: number, job: () => Promise<unknown>): () => Promise<void> {
  let running: Promise<unknown> | undefined;
  const timer = setInterval(() => {
    running ??= job().finally(() => {
      running = undefined;
    });
  }, intervalMs);
  timer.unref();
  return async () => {
    clearInterval(timer);
    await running;
  };
}
