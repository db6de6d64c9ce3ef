import { describe, expect, it } from "vitest";
import { escapeXml, formatTick, logAxis, logScale, renderChart, seriesStyle, type ChartSpec } from "../../bench/lib/chart.js";

describe("logScale", () => {
  it("maps decades to equal distances, and may run downwards", () => {
    const y = logScale(1, 100, 300, 0);
    expect(y(1)).toBe(300);
    expect(y(10)).toBeCloseTo(150, 9);
    expect(y(100)).toBeCloseTo(0, 9);
  });

  it("puts a single value in the middle", () => {
    expect(logScale(64, 64, 0, 100)(64)).toBe(50);
  });

  it("refuses a range with zero or negative values", () => {
    expect(() => logScale(0, 10, 0, 1)).toThrow(RangeError);
  });
});

describe("logAxis", () => {
  it("widens the range to 1-2-5 steps and ticks each step within three decades", () => {
    expect(logAxis(30, 1800)).toEqual({ min: 20, max: 2000, ticks: [20, 50, 100, 200, 500, 1000, 2000] });
  });

  it("ticks only powers of ten across more decades", () => {
    const axis = logAxis(0.3, 60_000);
    expect(axis.min).toBe(0.2);
    expect(axis.max).toBe(100_000);
    expect(axis.ticks).toEqual([1, 10, 100, 1000, 10_000, 100_000]);
  });

  it("gives a single value a range around it", () => {
    const axis = logAxis(1000, 1000);
    expect(axis.min).toBe(1000);
    expect(axis.max).toBe(2000);
  });
});

describe("formatTick", () => {
  it.each([
    [0.5, "0.5"],
    [20, "20"],
    [1500, "1.5k"],
    [40_000, "40k"],
    [2_000_000, "2M"],
  ] as const)("%s → %s", (value, text) => {
    expect(formatTick(value)).toBe(text);
  });
});

describe("escapeXml", () => {
  it("escapes markup characters", () => {
    expect(escapeXml(`<a & "b" 'c'>`)).toBe("&lt;a &amp; &quot;b&quot; &#39;c&#39;&gt;");
  });
});

describe("seriesStyle", () => {
  it("gives the first thirty series distinct strokes", () => {
    const styles = new Set(Array.from({ length: 30 }, (_, i) => JSON.stringify(seriesStyle(i))));
    expect(styles.size).toBe(30);
  });
});

describe("renderChart", () => {
  const spec: ChartSpec = {
    title: "Keyward bench",
    subtitle: "a <test> & more",
    xLabel: "calls in flight",
    panels: [
      {
        title: "Throughput",
        yLabel: "calls/s",
        series: [
          { name: "baseline", emphasis: true, points: [{ x: 1, y: 400 }, { x: 16, y: 1800 }, { x: 64, y: 2000 }] },
          { name: "Encrypt <1 KiB>", points: [{ x: 64, y: 1900 }, { x: 1, y: 390 }, { x: 16, y: 1700 }] },
          { name: "broken", points: [{ x: 1, y: 0 }, { x: 16, y: NaN }] },
        ],
      },
      { title: "p99", yLabel: "ms", series: [{ name: "baseline", emphasis: true, points: [{ x: 1, y: 3 }] }] },
    ],
  };
  const svg = renderChart(spec);

  it("is one svg document with escaped text", () => {
    expect(svg.startsWith('<svg xmlns="http://www.w3.org/2000/svg"')).toBe(true);
    expect(svg.trimEnd().endsWith("</svg>")).toBe(true);
    expect(svg).toContain("a &lt;test&gt; &amp; more");
    expect(svg).toContain("Encrypt &lt;1 KiB&gt;");
    expect(svg).not.toMatch(/<1 KiB>/);
  });

  it("draws one line per series with points, in x order, inside its panel", () => {
    const line = /<polyline data-series="Encrypt &lt;1 KiB&gt;" points="([^"]+)"/.exec(svg);
    expect(line).not.toBeNull();
    const points = line![1]!.split(" ").map((p) => p.split(",").map(Number) as [number, number]);
    expect(points).toHaveLength(3);
    const xs = points.map(([x]) => x);
    expect(xs).toEqual([...xs].sort((a, b) => a - b));
    const frame = /<rect x="(\d+)" y="(\d+)" width="(\d+)" height="(\d+)" fill="none"/.exec(svg)!.slice(1).map(Number);
    const [left, top, width, height] = frame as [number, number, number, number];
    for (const [x, y] of points) {
      expect(x).toBeGreaterThanOrEqual(left);
      expect(x).toBeLessThanOrEqual(left + width);
      expect(y).toBeGreaterThanOrEqual(top);
      expect(y).toBeLessThanOrEqual(top + height);
    }
    // Higher throughput is higher up: a smaller y.
    expect(points[2]![1]).toBeLessThan(points[0]![1]);
  });

  it("leaves out points a log scale cannot show, and lines left with none", () => {
    expect(svg).not.toContain('data-series="broken"');
    expect(svg).not.toContain("NaN");
  });

  it("draws the emphasised series thick and black, and lists every series in the legend", () => {
    expect(svg).toMatch(/<polyline data-series="baseline" points="[^"]+" fill="none" stroke="#000" stroke-width="3"/);
    for (const name of ["baseline", "Encrypt &lt;1 KiB&gt;", "broken"]) {
      expect(svg).toContain(`>${name}</text>`);
    }
  });

  it("marks each concurrency on the x axis", () => {
    for (const tick of ["1", "16", "64"]) expect(svg).toContain(`font-size="12">${tick}</text>`);
  });
});
