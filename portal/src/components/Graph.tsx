// A dependency graph as inline SVG: a layered layout where every edge points one column to the
// right when it can (dependents left of the roots, dependencies right), nodes as rounded rects.

export interface GraphNode {
  id: string;
  label: string;
  sublabel?: string;
  href?: string;
  highlight?: boolean;
  dangling?: boolean;
}

export interface GraphEdge {
  from: string;
  to: string;
}

const W = 180;
const H = 40;
const COL_GAP = 70;
const ROW_GAP = 14;
const PAD = 10;

/** Column per node: roots at 0, a dependency one right of what needs it, a dependent one left. */
function layers(nodes: GraphNode[], edges: GraphEdge[], roots: string[]): Map<string, number> {
  const layer = new Map<string, number>();
  const queue = roots.filter((r) => nodes.some((n) => n.id === r));
  for (const r of queue) layer.set(r, 0);
  while (queue.length) {
    const id = queue.shift()!;
    const l = layer.get(id)!;
    for (const e of edges) {
      if (e.from === id && !layer.has(e.to)) {
        layer.set(e.to, l + 1);
        queue.push(e.to);
      } else if (e.to === id && !layer.has(e.from)) {
        layer.set(e.from, l - 1);
        queue.push(e.from);
      }
    }
  }
  // Anything not connected to a root (should not happen) goes in a column of its own.
  const max = Math.max(0, ...layer.values());
  for (const n of nodes) if (!layer.has(n.id)) layer.set(n.id, max + 1);
  const min = Math.min(...layer.values());
  for (const [id, l] of layer) layer.set(id, l - min);
  return layer;
}

function truncate(s: string, n: number): string {
  return s.length > n ? `${s.slice(0, n - 1)}…` : s;
}

export function Graph({
  nodes,
  edges,
  roots,
  testId,
}: {
  nodes: GraphNode[];
  edges: GraphEdge[];
  roots: string[];
  testId?: string;
}) {
  const layer = layers(nodes, edges, roots);
  const columns: GraphNode[][] = [];
  for (const n of nodes) (columns[layer.get(n.id)!] ??= []).push(n);
  const pos = new Map<string, { x: number; y: number }>();
  columns.forEach((col, c) => {
    col.sort((a, b) => a.label.localeCompare(b.label));
    col.forEach((n, r) => pos.set(n.id, { x: PAD + c * (W + COL_GAP), y: PAD + r * (H + ROW_GAP) }));
  });
  const rows = Math.max(1, ...columns.map((c) => c?.length ?? 0));
  const width = PAD * 2 + Math.max(1, columns.length) * (W + COL_GAP) - COL_GAP;
  const height = PAD * 2 + rows * (H + ROW_GAP) - ROW_GAP;

  return (
    <svg
      data-testid={testId}
      className="graph"
      width={width}
      height={height}
      viewBox={`0 0 ${width} ${height}`}
      role="img"
      aria-label="dependency graph"
    >
      <defs>
        <marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse">
          <path d="M 0 0 L 10 5 L 0 10 z" className="arrowhead" />
        </marker>
      </defs>
      {edges.map((e) => {
        const a = pos.get(e.from);
        const b = pos.get(e.to);
        if (!a || !b) return null;
        // Leave from the side facing the target; same-column edges loop out on the right.
        const forward = b.x > a.x;
        const same = b.x === a.x;
        const x1 = forward || same ? a.x + W : a.x;
        const x2 = forward ? b.x : b.x + W;
        const y1 = a.y + H / 2;
        const y2 = b.y + H / 2;
        const bend = same ? 40 : (x2 - x1) / 2;
        const d = `M ${x1} ${y1} C ${x1 + bend} ${y1}, ${x2 - (same ? -40 : bend)} ${y2}, ${x2} ${y2}`;
        return <path key={`${e.from}->${e.to}`} d={d} className="edge" markerEnd="url(#arrow)" data-testid="graph-edge" />;
      })}
      {nodes.map((n) => {
        const p = pos.get(n.id)!;
        const cls = ["node", n.highlight ? "self" : "", n.dangling ? "dangling" : ""].join(" ").trim();
        const body = (
          <g className={cls} transform={`translate(${p.x} ${p.y})`} data-testid="graph-node">
            <title>{n.id}</title>
            <rect width={W} height={H} rx={8} ry={8} />
            <text x={10} y={n.sublabel ? 17 : 25} className="label">
              {truncate(n.label, 24)}
            </text>
            {n.sublabel ? (
              <text x={10} y={32} className="sublabel">
                {truncate(n.sublabel, 30)}
              </text>
            ) : null}
          </g>
        );
        return n.href ? (
          <a key={n.id} href={n.href}>
            {body}
          </a>
        ) : (
          <g key={n.id}>{body}</g>
        );
      })}
    </svg>
  );
}
