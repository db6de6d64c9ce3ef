/**
 * Line charts as SVG text, log-log: panels side by side sharing an x axis
 * (calls in flight) and a legend (one entry per series). Pure.
 */

export interface Point {
  readonly x: number;
  readonly y: number;
}

export interface Series {
  readonly name: string;
  readonly points: readonly Point[];
  /** Drawn thick and black: the reference line (the baseline). */
  readonly emphasis?: boolean;
}

export interface Panel {
  readonly title: string;
  readonly yLabel: string;
  /** Every panel lists the same series names in the same order: the legend is shared. */
  readonly series: readonly Series[];
}

export interface ChartSpec {
  readonly title: string;
  readonly subtitle?: string;
  readonly xLabel: string;
  readonly panels: readonly Panel[];
}

/** Ten hues that stay apart, then the same again dashed and dotted. */
const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];
const DASHES = ["", "6 3", "2 2"];

const PLOT_WIDTH = 400;
const PLOT_HEIGHT = 300;
const MARGIN = { top: 84, right: 30, bottom: 60, left: 70 };
const PANEL_WIDTH = MARGIN.left + PLOT_WIDTH + MARGIN.right;
const LEGEND_WIDTH = 250;
const LEGEND_LINE = 16;

/** The stroke of the i-th series (not counting emphasised ones). */
export function seriesStyle(index: number): { color: string; dash: string } {
  return { color: PALETTE[index % PALETTE.length]!, dash: DASHES[Math.floor(index / PALETTE.length) % DASHES.length]! };
}

export function escapeXml(text: string): string {
  return text.replace(/[&<>"']/g, (ch) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[ch]!);
}

/**
 * Maps [min, max] logarithmically onto [from, to] (to may be below from, for
 * a y axis growing upwards). A single value (min = max) maps to the middle.
 */
export function logScale(min: number, max: number, from: number, to: number): (value: number) => number {
  if (!(min > 0 && max >= min)) {
    throw new RangeError(`a log scale needs 0 < min <= max, not [${min}, ${max}]`);
  }
  if (min === max) {
    return () => (from + to) / 2;
  }
  const lo = Math.log10(min);
  const span = Math.log10(max) - lo;
  return (value) => from + ((Math.log10(value) - lo) / span) * (to - from);
}

/**
 * The axis range and ticks for positive values in [min, max]: the range is
 * widened to the enclosing 1-2-5 steps, and ticks are at 1, 2 and 5 × 10^k
 * when the range covers up to three decades, else at powers of ten only.
 */
export function logAxis(min: number, max: number): { min: number; max: number; ticks: number[] } {
  if (!(min > 0 && max >= min)) {
    throw new RangeError(`a log axis needs 0 < min <= max, not [${min}, ${max}]`);
  }
  const steps = (decadeLo: number, decadeHi: number, mantissas: readonly number[]) => {
    const out: number[] = [];
    for (let d = decadeLo; d <= decadeHi; d++) {
      for (const m of mantissas) out.push(Number((m * 10 ** d).toPrecision(12)));
    }
    return out;
  };
  const lo = Math.floor(Math.log10(min));
  const hi = Math.ceil(Math.log10(max));
  const fine = steps(lo, hi, [1, 2, 5]);
  const axisMin = fine.filter((v) => v <= min * (1 + 1e-12)).at(-1) ?? fine[0]!;
  let axisMax = fine.find((v) => v >= max * (1 - 1e-12)) ?? fine.at(-1)!;
  if (axisMax === axisMin) {
    axisMax = fine[fine.indexOf(axisMin) + 1]!;
  }
  const decades = Math.log10(axisMax) - Math.log10(axisMin);
  const ticks = (decades <= 3 ? fine : steps(lo, hi, [1])).filter((v) => v >= axisMin * (1 - 1e-12) && v <= axisMax * (1 + 1e-12));
  return { min: axisMin, max: axisMax, ticks };
}

/** 1500 → "1.5k", 40000 → "40k", 2e6 → "2M", 0.5 → "0.5". */
export function formatTick(value: number): string {
  const trim = (v: number) => String(Number(v.toPrecision(3)));
  if (value >= 1e6) return `${trim(value / 1e6)}M`;
  if (value >= 1e3) return `${trim(value / 1e3)}k`;
  return trim(value);
}

const fmt = (v: number) => String(Math.round(v * 10) / 10);

function renderPanel(panel: Panel, xs: readonly number[], offsetX: number, xLabel: string): string {
  const visible = (p: Point) => Number.isFinite(p.x) && Number.isFinite(p.y) && p.x > 0 && p.y > 0;
  const ys = panel.series.flatMap((s) => s.points.filter(visible).map((p) => p.y));
  const left = offsetX + MARGIN.left;
  const top = MARGIN.top;
  const bottom = top + PLOT_HEIGHT;
  const right = left + PLOT_WIDTH;
  const out: string[] = [];
  out.push(`<g class="panel">`);
  out.push(`<text x="${fmt(left + PLOT_WIDTH / 2)}" y="${top - 12}" text-anchor="middle" font-size="14" font-weight="bold">${escapeXml(panel.title)}</text>`);
  out.push(`<rect x="${left}" y="${top}" width="${PLOT_WIDTH}" height="${PLOT_HEIGHT}" fill="none" stroke="#999"/>`);
  const x = logScale(Math.min(...xs), Math.max(...xs), left + 20, right - 20);
  for (const value of xs) {
    const px = fmt(x(value));
    out.push(`<line x1="${px}" y1="${top}" x2="${px}" y2="${bottom}" stroke="#eee"/>`);
    out.push(`<text x="${px}" y="${bottom + 18}" text-anchor="middle" font-size="12">${escapeXml(formatTick(value))}</text>`);
  }
  out.push(`<text x="${fmt(left + PLOT_WIDTH / 2)}" y="${bottom + 42}" text-anchor="middle" font-size="12">${escapeXml(xLabel)}</text>`);
  out.push(
    `<text x="${offsetX + 18}" y="${fmt(top + PLOT_HEIGHT / 2)}" text-anchor="middle" font-size="12" ` +
      `transform="rotate(-90 ${offsetX + 18} ${fmt(top + PLOT_HEIGHT / 2)})">${escapeXml(panel.yLabel)}</text>`,
  );
  if (ys.length === 0) {
    out.push(`<text x="${fmt(left + PLOT_WIDTH / 2)}" y="${fmt(top + PLOT_HEIGHT / 2)}" text-anchor="middle" font-size="12">no data</text>`);
    out.push(`</g>`);
    return out.join("\n");
  }
  const axis = logAxis(Math.min(...ys), Math.max(...ys));
  const y = logScale(axis.min, axis.max, bottom, top);
  for (const value of axis.ticks) {
    const py = fmt(y(value));
    out.push(`<line x1="${left}" y1="${py}" x2="${right}" y2="${py}" stroke="#eee"/>`);
    out.push(`<text x="${left - 6}" y="${py}" text-anchor="end" dominant-baseline="middle" font-size="12">${escapeXml(formatTick(value))}</text>`);
  }
  let plain = 0;
  for (const series of panel.series) {
    const style = series.emphasis ? { color: "#000", dash: "" } : seriesStyle(plain++);
    const points = series.points.filter(visible).sort((a, b) => a.x - b.x);
    if (points.length === 0) continue;
    const coords = points.map((p) => `${fmt(x(p.x))},${fmt(y(p.y))}`);
    out.push(
      `<polyline data-series="${escapeXml(series.name)}" points="${coords.join(" ")}" fill="none" stroke="${style.color}" ` +
        `stroke-width="${series.emphasis ? 3 : 1.5}"${style.dash ? ` stroke-dasharray="${style.dash}"` : ""}/>`,
    );
    for (const c of coords) {
      const [cx, cy] = c.split(",");
      out.push(`<circle cx="${cx}" cy="${cy}" r="2.5" fill="${style.color}"/>`);
    }
  }
  out.push(`</g>`);
  return out.join("\n");
}

function renderLegend(series: readonly Series[], offsetX: number): string {
  const out: string[] = [`<g class="legend">`];
  let plain = 0;
  series.forEach((s, i) => {
    const style = s.emphasis ? { color: "#000", dash: "" } : seriesStyle(plain++);
    const y = MARGIN.top + 8 + i * LEGEND_LINE;
    out.push(
      `<line x1="${offsetX}" y1="${y}" x2="${offsetX + 28}" y2="${y}" stroke="${style.color}" stroke-width="${s.emphasis ? 3 : 1.5}"` +
        `${style.dash ? ` stroke-dasharray="${style.dash}"` : ""}/>`,
    );
    out.push(`<text x="${offsetX + 34}" y="${y}" dominant-baseline="middle" font-size="12">${escapeXml(s.name)}</text>`);
  });
  out.push(`</g>`);
  return out.join("\n");
}

/** The whole chart, a standalone SVG document. */
export function renderChart(spec: ChartSpec): string {
  if (spec.panels.length === 0) {
    throw new RangeError("a chart needs at least one panel");
  }
  const xs = [...new Set(spec.panels.flatMap((p) => p.series.flatMap((s) => s.points.map((pt) => pt.x))).filter((v) => v > 0))].sort(
    (a, b) => a - b,
  );
  const legendSeries = spec.panels[0]!.series;
  const width = spec.panels.length * PANEL_WIDTH + LEGEND_WIDTH;
  const height = Math.max(MARGIN.top + PLOT_HEIGHT + MARGIN.bottom, MARGIN.top + 16 + legendSeries.length * LEGEND_LINE);
  const parts = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="sans-serif">`,
    `<rect width="${width}" height="${height}" fill="#fff"/>`,
    `<text x="${MARGIN.left}" y="24" font-size="16" font-weight="bold">${escapeXml(spec.title)}</text>`,
  ];
  if (spec.subtitle) {
    parts.push(`<text x="${MARGIN.left}" y="44" font-size="12" fill="#555">${escapeXml(spec.subtitle)}</text>`);
  }
  spec.panels.forEach((panel, i) => parts.push(renderPanel(panel, xs.length > 0 ? xs : [1], i * PANEL_WIDTH, spec.xLabel)));
  parts.push(renderLegend(legendSeries, spec.panels.length * PANEL_WIDTH + 10));
  parts.push(`</svg>`, "");
  return parts.join("\n");
}
