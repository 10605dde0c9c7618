/** Shutdown of the long-running processes (controller, node agent, watches) on SIGTERM/SIGINT. */

/**
 * An AbortSignal that aborts on the first SIGTERM or SIGINT, and `dispose` to remove the handlers
 * once the command is done. A second signal ends the process at once: the handlers are removed and
 * the signal raised again, so the default action terminates it (status 128 + signal). The handlers stay
 * registered until `dispose`, so a signal arriving while the process stops is handled here, never
 * by a hook another library installed.
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
