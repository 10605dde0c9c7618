/**
 * Catching the error a test expects, typed: the error of the expected class is returned for the
 * test to assert on; any other error is rethrown unchanged (the test fails on it); no error at all
 * fails with `expected a <class name>`.
 */

/** A class of errors (its constructor), matched with `instanceof`. */
export type ErrorClass<E extends Error> = abstract new (...args: never[]) => E;

/** Runs `fn` and returns the `type` error it throws. @throws as described in this file's header. */
export function errorOf<E extends Error>(type: ErrorClass<E>, fn: () => unknown): E {
  try {
    fn();
  } catch (err) {
    if (err instanceof type) return err;
    throw err;
  }
  throw new Error(`expected a ${type.name}`);
}

/** Awaits `p` and returns the `type` error it rejects with. @throws as described in this file's header. */
export async function rejectionOf<E extends Error>(type: ErrorClass<E>, p: Promise<unknown>): Promise<E> {
  try {
    await p;
  } catch (err) {
    if (err instanceof type) return err;
    throw err;
  }
  throw new Error(`expected a ${type.name}`);
}
