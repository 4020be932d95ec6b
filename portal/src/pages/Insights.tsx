// Insights: the tenant's DORA metrics over the last 90 days in weekly buckets, and scorecards.

import { type ReactNode, useState } from "react";
import { type Duration, timestampDate, timestampFromDate } from "@bufbuild/protobuf/wkt";
import { insightResources } from "@platform/sdk";

import { entityHref, formatTime, useAsync, useSession } from "../api";
import { BarChart } from "../components/BarChart";
import { ErrorBox, Loading } from "../components/Feedback";
import { useEnvironments } from "./Environments";

const DAY_MS = 86_400_000;
const ir = insightResources;

function band(b: insightResources.DoraPerformanceBand | undefined): string {
  return b ? ir.DoraPerformanceBand[b] : "—";
}

/** A protobuf Duration as `2d 3h`, `3h 20m`, `4m 10s` or `12s`. */
function formatDuration(d: Duration | undefined): string {
  if (!d) return "n/a";
  let s = Math.round(Number(d.seconds) + d.nanos / 1e9);
  const days = Math.floor(s / 86400);
  s -= days * 86400;
  const h = Math.floor(s / 3600);
  s -= h * 3600;
  const m = Math.floor(s / 60);
  s -= m * 60;
  if (days) return `${days}d ${h}h`;
  if (h) return `${h}h ${m}m`;
  if (m) return `${m}m ${s}s`;
  return `${s}s`;
}

export function Insights() {
  return (
    <section>
      <h1>Insights</h1>
      <Dora />
      <Scorecards />
    </section>
  );
}

function Dora() {
  const { api, tenant } = useSession();
  const envs = useEnvironments();
  const [environment, setEnvironment] = useState("");
  // The window is fixed when the page opens so re-renders do not refetch.
  const [end] = useState(() => new Date());
  const metrics = useAsync(
    (signal) =>
      api.insights.getDoraMetrics(
        {
          parent: `tenants/${tenant}`,
          startTime: timestampFromDate(new Date(end.getTime() - 90 * DAY_MS)),
          endTime: timestampFromDate(end),
          granularity: ir.DoraGranularity.WEEK,
          environments: environment ? [environment] : [],
        },
        { signal },
      ),
    [api, tenant, end, environment],
  );
  const m = metrics.data;
  const sum = m?.summary;
  const rate = sum?.changeFailureRate?.rate;

  return (
    <div data-testid="dora">
      <h2>DORA metrics — last 90 days</h2>
      <div className="toolbar">
        <select data-testid="dora-environment" value={environment} onChange={(e) => setEnvironment(e.target.value)}>
          <option value="">Production environments</option>
          {(envs.data ?? []).map((env) => (
            <option key={env.name} value={env.name}>
              {env.name.slice(env.name.lastIndexOf("/") + 1)}
            </option>
          ))}
        </select>
        {m ? <span className="muted">{m.componentCount} components · computed {formatTime(m.computeTime)}</span> : null}
      </div>
      <ErrorBox error={metrics.error} />
      {metrics.loading && !m ? <Loading what="DORA metrics" /> : null}
      {m ? (
        <>
          <div className="cards" data-testid="dora-headlines">
            <Card title="Deployment frequency" testId="dora-frequency" band={band(sum?.deploymentFrequency?.band)}>
              {(sum?.deploymentFrequency?.deploymentsPerDay ?? 0).toFixed(2)}/day
              <small>{String(sum?.deploymentFrequency?.successfulDeployments ?? 0n)} successful</small>
            </Card>
            <Card title="Lead time for changes" testId="dora-lead-time" band={band(sum?.leadTimeForChanges?.band)}>
              {formatDuration(sum?.leadTimeForChanges?.median)}
              <small>median of {String(sum?.leadTimeForChanges?.sampleCount ?? 0n)}</small>
            </Card>
            <Card title="Change failure rate" testId="dora-change-failure-rate" band={band(sum?.changeFailureRate?.band)}>
              {rate === undefined ? "n/a" : `${(rate * 100).toFixed(1)}%`}
              <small>
                {String(sum?.changeFailureRate?.failedDeployments ?? 0n)} failed of{" "}
                {String(sum?.changeFailureRate?.finishedDeployments ?? 0n)}
              </small>
            </Card>
            <Card title="Time to restore" testId="dora-time-to-restore" band={band(sum?.timeToRestore?.band)}>
              {formatDuration(sum?.timeToRestore?.median)}
              <small>median of {String(sum?.timeToRestore?.sampleCount ?? 0n)}</small>
            </Card>
            <Card title="Overall" testId="dora-band" band="">
              {band(sum?.band)}
            </Card>
          </div>
          <h3>Deployments per week</h3>
          <p className="legend">
            <span className="swatch ok" /> succeeded <span className="swatch failed" /> failed
          </p>
          <BarChart
            testId="dora-chart"
            series={[
              { name: "succeeded", className: "ok" },
              { name: "failed", className: "failed" },
            ]}
            groups={m.buckets.map((b) => {
              const start = b.startTime ? timestampDate(b.startTime) : new Date();
              return {
                label: `${start.getMonth() + 1}/${start.getDate()}`,
                title: `week of ${start.toLocaleDateString()}`,
                values: [
                  Number(b.figures?.deploymentFrequency?.successfulDeployments ?? 0n),
                  Number(b.figures?.changeFailureRate?.failedDeployments ?? 0n),
                ],
              };
            })}
          />
        </>
      ) : null}
    </div>
  );
}

function Card({ title, band, testId, children }: { title: string; band: string; testId: string; children: ReactNode }) {
  return (
    <div className="card" data-testid={testId}>
      <div className="card-title">{title}</div>
      <div className="card-value">{children}</div>
      {band ? <div className={`band band-${band.toLowerCase()}`}>{band}</div> : null}
    </div>
  );
}

function Scorecards() {
  const { api, tenant } = useSession();
  const cards = useAsync((signal) => api.insights.listScorecards({ parent: `tenants/${tenant}`, pageSize: 200 }, { signal }), [api, tenant]);
  const [chosen, setChosen] = useState("");
  const scorecard = chosen || cards.data?.scorecards[0]?.name || "";
  const evals = useAsync(
    async (signal) =>
      scorecard ? api.insights.listScorecardEvaluations({ parent: scorecard, pageSize: 1000 }, { signal }) : undefined,
    [api, scorecard],
  );
  const levels = cards.data?.scorecards.find((s) => s.name === scorecard)?.levels ?? [];
  const levelName = (id: string) => levels.find((l) => l.id === id)?.displayName || id || "none";

  return (
    <div data-testid="scorecards">
      <h2>Scorecards</h2>
      <ErrorBox error={cards.error} />
      {cards.loading && !cards.data ? <Loading what="scorecards" /> : null}
      {cards.data && cards.data.scorecards.length === 0 ? <p className="muted">No scorecards in this tenant.</p> : null}
      {cards.data && cards.data.scorecards.length > 0 ? (
        <>
          <select data-testid="scorecard-select" value={scorecard} onChange={(e) => setChosen(e.target.value)}>
            {cards.data.scorecards.map((s) => (
              <option key={s.name} value={s.name}>
                {s.displayName || s.name}
              </option>
            ))}
          </select>
          <ErrorBox error={evals.error} />
          {evals.loading && !evals.data ? <Loading what="evaluations" /> : null}
          {evals.data ? (
            <>
              <ul className="level-counts" data-testid="scorecard-levels">
                {evals.data.levelCounts.map((c) => (
                  <li key={c.level} data-level={c.level}>
                    <strong>{levelName(c.level)}</strong>: {c.count}
                  </li>
                ))}
              </ul>
              <table data-testid="scorecard-evaluations">
                <thead>
                  <tr>
                    <th>Entity</th>
                    <th>Level</th>
                    <th>Score</th>
                    <th>Next level</th>
                  </tr>
                </thead>
                <tbody>
                  {evals.data.evaluations.map((ev) => (
                    <tr key={ev.entityRef} data-testid="scorecard-evaluation-row">
                      <td>{ev.entity ? <a href={entityHref(ev.entity)}>{ev.entityTitle || ev.entityRef}</a> : ev.entityRef}</td>
                      <td>{levelName(ev.level)}</td>
                      <td>{Math.round(ev.score * 100)}%</td>
                      <td>{ev.nextLevel ? levelName(ev.nextLevel) : ""}</td>
                    </tr>
                  ))}
                </tbody>
              </table>
            </>
          ) : null}
        </>
      ) : null}
    </div>
  );
}
