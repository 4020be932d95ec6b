-- The lane a deployment waits in, `{tenant}/{environment}/{component}`, as one column, so that
-- the engine finds the head of every lane with a loose index scan over (state, lane) instead of
-- walking the whole queue: a claim costs the number of lanes, not the number of deployments.
ALTER TABLE deployments ADD COLUMN lane TEXT NOT NULL DEFAULT '';
UPDATE deployments SET lane = tenant || '/' || environment || '/' || component;
CREATE INDEX IF NOT EXISTS deployments_lane_queue ON deployments (state, lane, create_time_us);
