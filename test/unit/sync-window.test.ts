import { UsageError } from '../../src/errors.js';
import { formatLocal, parseSyncWindow, windowState } from '../../src/controller/sync-window.js';

/** Local time: Sat 2026-11-28 is a Saturday. */
const at = (day: number, h: number, m = 0): Date => new Date(2026, 10, day, h, m);

describe('sync windows', () => {
  it('opens daily windows and says when the next one opens', () => {
    const w = [parseSyncWindow('02:00-05:00')];
    expect(windowState(w, at(28, 3))).toEqual({ open: true });
    expect(windowState(w, at(28, 5))).toEqual({ open: false, nextOpen: at(29, 2) });
    expect(windowState(w, at(28, 1, 59))).toEqual({ open: false, nextOpen: at(28, 2) });
    expect(windowState([], at(28, 12))).toEqual({ open: true });
  });

  it('takes days, day ranges (wrapping the week) and windows past midnight', () => {
    const weekend = [parseSyncWindow('Sat,Sun 01:00-06:00')];
    expect(windowState(weekend, at(27, 23))).toEqual({ open: false, nextOpen: at(28, 1) });
    expect(windowState(weekend, at(29, 5, 59)).open).toBe(true);
    expect(windowState(weekend, at(30, 2))).toEqual({ open: false, nextOpen: at(5 + 30, 1) });
    const nights = [parseSyncWindow('Mon-Fri 22:00-06:00')];
    expect(windowState(nights, at(24, 23)).open).toBe(true); // Tue evening
    expect(windowState(nights, at(25, 5, 59)).open).toBe(true); // Wed morning, from Tue
    expect(windowState(nights, at(28, 5)).open).toBe(true); // Sat morning, from Fri
    expect(windowState(nights, at(29, 3)).open).toBe(false); // Sun morning: Sat did not start one
    expect(windowState(nights, at(28, 23))).toEqual({ open: false, nextOpen: at(30, 22) }); // Sat evening -> Mon
    expect([...parseSyncWindow('Fri-Mon 01:00-02:00').days].sort()).toEqual([0, 1, 5, 6]);
    expect([...parseSyncWindow('* 01:00-02:00').days].sort()).toEqual([0, 1, 2, 3, 4, 5, 6]);
    // Several windows: open when any is.
    expect(windowState([...weekend, parseSyncWindow('Wed 12:00-13:00')], at(25, 12, 30)).open).toBe(true);
  });

  it('refuses what it cannot read, naming the flag, the text and the rule', () => {
    for (const [bad, msg] of [
      ['25:00-03:00', /"25:00" is not a time HH:MM/],
      ['Sat 02:00', /expected \[DAYS \]HH:MM-HH:MM/],
      ['Xyz 01:00-02:00', /unknown day "Xyz"; days are Sun, Mon/],
      ['02:00-02:00', /starts and ends at the same time/],
      ['Mon-Tue-Wed 01:00-02:00', /is not a day or a day range/],
    ] as const) {
      expect(() => parseSyncWindow(bad)).toThrow(UsageError);
      expect(() => parseSyncWindow(bad)).toThrow(msg);
    }
  });

  it('formats local times for messages', () => {
    expect(formatLocal(at(28, 2, 5))).toBe('Sat 2026-11-28 02:05');
  });
});
