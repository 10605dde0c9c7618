/**
 * Weighted task progress as NS8 computes it: each step contributes 100 x weight (weight 1 unless
 * `set-weight` changed it; the virtual schema-validation steps weigh 0); overall progress is the
 * completed steps plus the current step's share, in percent, rounded down.
 */
export class ProgressTracker {
  private readonly weights: number[];
  private readonly names: string[];
  private value = 0;

  constructor(steps: readonly { name: string; weight?: number }[]) {
    this.names = steps.map((s) => s.name);
    this.weights = steps.map((s) => s.weight ?? 1);
  }

  /** Current overall progress, 0..100. */
  get progress(): number {
    return this.value;
  }

  /** Sets a step's weight by name; false when no step has that name or the weight is negative. */
  setWeight(step: string, weight: number): boolean {
    const i = this.names.indexOf(step);
    if (i < 0 || weight < 0 || !Number.isInteger(weight)) return false;
    this.weights[i] = weight;
    return true;
  }

  /** Records that step `index` is at `stepProgress` (0..100) and recomputes the total. */
  setStepProgress(index: number, stepProgress: number): number {
    if (index < 0 || index >= this.weights.length || stepProgress < 0 || stepProgress > 100) return this.value;
    let total = 0;
    let done = 0;
    for (let s = 0; s < this.weights.length; s++) {
      const w = this.weights[s] ?? 1;
      total += 100 * w;
      if (s < index) done += 100 * w;
    }
    done += stepProgress * (this.weights[index] ?? 1);
    if (total > 0) this.value = Math.floor((done * 100) / total);
    return this.value;
  }
}
