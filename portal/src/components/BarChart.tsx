// A grouped bar chart as inline SVG: one <rect> per bar, series side by side within each group.

export interface Series {
  name: string;
  className: string;
}

export interface BarGroup {
  label: string;
  title?: string;
  values: number[]; // one per series, in series order
}

const H = 180;
const BAR = 9;
const GAP = 2;
const GROUP_GAP = 10;
const LEFT = 34;
const BOTTOM = 34;
const TOP = 8;

export function BarChart({ series, groups, testId }: { series: Series[]; groups: BarGroup[]; testId?: string }) {
  const max = Math.max(1, ...groups.flatMap((g) => g.values));
  // Round the axis up to a 1-2-5 step so gridlines land on whole numbers.
  const step = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000].find((s) => max / s <= 5) ?? Math.ceil(max / 5);
  const top = Math.ceil(max / step) * step;
  const groupWidth = series.length * (BAR + GAP) - GAP + GROUP_GAP;
  const width = LEFT + Math.max(1, groups.length) * groupWidth + 6;
  const height = TOP + H + BOTTOM;
  const y = (v: number) => TOP + H - (v / top) * H;
  const ticks: number[] = [];
  for (let t = 0; t <= top; t += step) ticks.push(t);

  return (
    <svg data-testid={testId} className="bar-chart" width={width} height={height} viewBox={`0 0 ${width} ${height}`} role="img">
      {ticks.map((t) => (
        <g key={t} className="tick">
          <line x1={LEFT} x2={width} y1={y(t)} y2={y(t)} />
          <text x={LEFT - 4} y={y(t) + 4} textAnchor="end">
            {t}
          </text>
        </g>
      ))}
      {groups.map((g, gi) => {
        const x0 = LEFT + GROUP_GAP / 2 + gi * groupWidth;
        return (
          <g key={gi}>
            {g.values.map((v, si) => (
              <rect
                key={si}
                className={series[si]?.className}
                x={x0 + si * (BAR + GAP)}
                y={y(v)}
                width={BAR}
                height={Math.max(0, TOP + H - y(v))}
                data-value={v}
              >
                <title>{`${g.title ?? g.label} — ${series[si]?.name}: ${v}`}</title>
              </rect>
            ))}
            {gi % 2 === 0 ? (
              <text x={x0} y={TOP + H + 14} className="axis-label">
                {g.label}
              </text>
            ) : null}
          </g>
        );
      })}
    </svg>
  );
}
