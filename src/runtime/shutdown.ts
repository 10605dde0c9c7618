/** Shutdown of the long-running processes (controller, node agent, watches) on SIGTERM/SIGINT. */

/**
 * An AbortSignal that aborts on the first SIGTERM or SIGINT, and `dispose` to remove the handlers
 * once the command is done. A second signal ends the process at once: the handlers are removed and
 * the signal raised again, so the default action terminates it (status 128 + signal). The handlers stay
 * registered until `dispose`: with a `once` handler, execa's signal-exit hook would find no other
 * listener after the first signal and kill the process before it could stop cleanly.
 */
export function shutdownSignal(): { signal: AbortSignal; dispose: () => void } {
  const ctl = new AbortController();
  const dispose = (): void => {
    process.off('SIGTERM', on);
    process.off('SIGINT', on);
  };
  function on(sig: NodeJS.Signals): void {
    if (ctl.signal.aborted) {
      dispose();
      process.kill(process.pid, sig);
      return;
    }
    ctl.abort();
  }
  process.on('SIGTERM', on);
  process.on('SIGINT', on);
  return {
    signal: ctl.signal,
    dispose,
  };
}
