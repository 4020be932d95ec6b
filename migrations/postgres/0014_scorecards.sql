-- Scorecards (issue 8). A scorecard row holds its encoded proto (`body`: levels, rules, labels,
-- annotations) beside the columns ListScorecards filters and sorts on; its labels are mirrored in
-- `scorecard_labels` for `labels.<key>` filters. Evaluations are computed on demand from the
-- catalog and the deployment history, so nothing else is stored.
CREATE TABLE IF NOT EXISTS scorecards (
    tenant          TEXT    NOT NULL,
    id              TEXT    NOT NULL,
    uid             TEXT    NOT NULL,
    display_name    TEXT    NOT NULL,
    create_time_us  BIGINT NOT NULL,
    update_time_us  BIGINT NOT NULL,
    etag            TEXT    NOT NULL,
    body            BYTEA    NOT NULL,
    PRIMARY KEY (tenant, id)
);
CREATE TABLE IF NOT EXISTS scorecard_labels (
    tenant     TEXT NOT NULL,
    scorecard  TEXT NOT NULL,
    key        TEXT NOT NULL,
    value      TEXT NOT NULL,
    PRIMARY KEY (tenant, scorecard, key)
);
