/**
 * Prometheus metrics of the controller, rendered in the text exposition format (0.0.4) for
 * `/metrics`. A small in-process registry: counters, gauges (set or computed at scrape time) and
 * histograms, each with labels.
 */

type Labels = Record<string, string>;

function labelKey(labels: Labels): string {
  return Object.keys(labels)
    .sort()
    .map((k) => `${k}=${labels[k]}`)
    .join(',');
}

/** Escapes a label value as the exposition format wants (backslash, quote, newline). */
export function escapeLabelValue(v: string): string {
  return v.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n');
}

function renderLabels(labels: Labels, extra: Labels = {}): string {
  const all = { ...labels, ...extra };
  const keys = Object.keys(all);
  if (keys.length === 0) return '';
  return `{${keys.map((k) => `${k}="${escapeLabelValue(all[k] as string)}"`).join(',')}}`;
}

function num(v: number): string {
  if (Number.isNaN(v)) return 'NaN';
  if (v === Infinity) return '+Inf';
  if (v === -Infinity) return '-Inf';
  return String(v);
}

interface Metric {
  render(): string;
}

/** A monotonically increasing counter. */
export class Counter implements Metric {
  private readonly values = new Map<string, { labels: Labels; value: number }>();
  constructor(readonly name: string, readonly help: string) {}
  inc(labels: Labels = {}, by = 1): void {
    const k = labelKey(labels);
    const cur = this.values.get(k) ?? { labels, value: 0 };
    cur.value += by;
    this.values.set(k, cur);
  }
  get(labels: Labels = {}): number {
    return this.values.get(labelKey(labels))?.value ?? 0;
  }
  render(): string {
    const lines = [`# HELP ${this.name} ${this.help}`, `# TYPE ${this.name} counter`];
    for (const { labels, value } of this.values.values()) lines.push(`${this.name}${renderLabels(labels)} ${num(value)}`);
    return lines.join('\n');
  }
}

/** A value that goes up and down; `collect` (if given) computes it at scrape time. */
export class Gauge implements Metric {
  private readonly values = new Map<string, { labels: Labels; value: number }>();
  constructor(readonly name: string, readonly help: string, private readonly collect?: () => number) {}
  set(value: number, labels: Labels = {}): void {
    this.values.set(labelKey(labels), { labels, value });
  }
  get(labels: Labels = {}): number {
    if (this.collect && Object.keys(labels).length === 0) return this.collect();
    return this.values.get(labelKey(labels))?.value ?? 0;
  }
  render(): string {
    const lines = [`# HELP ${this.name} ${this.help}`, `# TYPE ${this.name} gauge`];
    if (this.collect) lines.push(`${this.name} ${num(this.collect())}`);
    for (const { labels, value } of this.values.values()) lines.push(`${this.name}${renderLabels(labels)} ${num(value)}`);
    return lines.join('\n');
  }
}

/** Cumulative histogram with fixed upper bounds (seconds, for durations). */
export class Histogram implements Metric {
  private readonly series = new Map<string, { labels: Labels; counts: number[]; sum: number; count: number }>();
  constructor(readonly name: string, readonly help: string, readonly buckets: readonly number[]) {}
  observe(value: number, labels: Labels = {}): void {
    const k = labelKey(labels);
    let s = this.series.get(k);
    if (!s) {
      s = { labels, counts: this.buckets.map(() => 0), sum: 0, count: 0 };
      this.series.set(k, s);
    }
    this.buckets.forEach((b, i) => {
      if (value <= b) s.counts[i]!++;
    });
    s.sum += value;
    s.count++;
  }
  count(labels: Labels = {}): number {
    return this.series.get(labelKey(labels))?.count ?? 0;
  }
  render(): string {
    const lines = [`# HELP ${this.name} ${this.help}`, `# TYPE ${this.name} histogram`];
    for (const s of this.series.values()) {
      this.buckets.forEach((b, i) => lines.push(`${this.name}_bucket${renderLabels(s.labels, { le: num(b) })} ${s.counts[i]}`));
      lines.push(`${this.name}_bucket${renderLabels(s.labels, { le: '+Inf' })} ${s.count}`);
      lines.push(`${this.name}_sum${renderLabels(s.labels)} ${num(s.sum)}`);
      lines.push(`${this.name}_count${renderLabels(s.labels)} ${s.count}`);
    }
    return lines.join('\n');
  }
}

/** Reconcile duration buckets, seconds. */
export const DURATION_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300] as const;

/** Every metric the controller exposes. */
export class ControllerMetrics {
  readonly reconcileDuration = new Histogram('ns8ctl_reconcile_duration_seconds', 'Time one reconcile took, by kind of key (source, module, node).', DURATION_BUCKETS);
  readonly reconciles = new Counter('ns8ctl_reconcile_total', 'Reconciles finished, by kind of key and result (ok, error, terminal, aborted).');
  readonly errors = new Counter('ns8ctl_reconcile_errors_total', 'Reconciles that failed (transient or terminal), by kind of key.');
  readonly queueDepth: Gauge;
  readonly inFlight: Gauge;
  readonly driftCorrections = new Counter('ns8ctl_drift_corrections_total', 'Drift found and corrected: desired state changed outside its source, by source.');
  readonly driftedObjects = new Gauge('ns8ctl_drifted_objects', 'Objects whose Drifted condition is True (host drift the node agent repaired, or desired state that left its source).');
  readonly lastSuccessfulSync = new Gauge('ns8ctl_source_last_successful_sync_timestamp_seconds', 'Unix time of the last reconcile of a source that ended in sync with it.');
  readonly leader = new Gauge('ns8ctl_controller_leader', '1 while this controller holds the leader lease, else 0.');
  readonly suspended = new Gauge('ns8ctl_suspended', 'Suspended targets the leader reconciles, by kind (module, source); 0 on standbys.');

  constructor(sources: { depth: () => number; inFlight: () => number }) {
    this.queueDepth = new Gauge('ns8ctl_workqueue_depth', 'Keys waiting to be reconciled now (not running, not in backoff).', sources.depth);
    this.inFlight = new Gauge('ns8ctl_workqueue_in_flight', 'Reconciles running now.', sources.inFlight);
    this.leader.set(0);
    this.suspended.set(0, { kind: 'module' });
    this.suspended.set(0, { kind: 'source' });
  }

  /** The whole scrape, text exposition format. */
  render(): string {
    return (
      [this.reconcileDuration, this.reconciles, this.errors, this.queueDepth, this.inFlight, this.driftCorrections, this.driftedObjects, this.lastSuccessfulSync, this.leader, this.suspended]
        .map((m) => m.render())
        .join('\n') + '\n'
    );
  }
}
