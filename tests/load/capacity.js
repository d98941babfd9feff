// Capacity: staged.js's five stages as an OPEN model. Each stage offers
// users × K checks per second (ramping-arrival-rate, steps), whatever the
// latency: iterations start on schedule, so a slow service shows as latency
// and dropped iterations rather than as a lower offered load.
//
//   SCENARIO=capacity.js K=50 tests/load/fleet_run.sh
//   tests/load/capacity_search.sh          # the largest K held (p99 < 10 ms, 0 errors)
//
// Stages: 10, 50, 100, 150, 10 users for 10, 20, 20, 20, 10 s (STAGE_SCALE
// multiplies the durations). One iteration = one check of policy
// load-capacity (1000 per second per key) on key cap-<iteration mod KEYS>:
// with 100,000 keys no key sees more than a few checks a second, so every
// check is admitted and the run measures the decision path, not denials.
//
// Thresholds: errors == 0 (any status but 200/429 on any response; any
// inconsistency on the fully checked ones), every check passed. p99 is reported (summary.json, report.md); capacity_search.sh
// judges it against its bound, and dropped_iterations against the offered
// load.
//
// Environment:
//   BASE_URL=http://127.0.0.1:8080   must be loopback
//   K=1                              checks per second per user
//   STAGE_SCALE=1                    multiplies every stage's duration
//   KEYS=100000                      key space
//   POLICY=load-capacity  LIMIT=1000  WINDOW_MS=1000
//   P99_MS=10                        the bound capacity_search.sh applies (recorded only)
//   REPORT_DIR=.                     where handleSummary writes summary.json
//   VUS=                             VUs, all made before the start (default:
//                                    PEAK x 20 ms, 20..1000)
//   CHECK_EVERY=10                   every response's status is checked; every
//                                    CHECK_EVERY-th one in full (checks.js)
//   AUDIT=1                          log "AUDIT admit|deny policy key start end duration_ms"
//                                    per decision (exactness audit and charts)

import http from 'k6/http';
import { check } from 'k6';
import exec from 'k6/execution';
import { Counter, Trend } from 'k6/metrics';
import { STAGES, loopbackBaseUrl, problems, stagePlan, stageScale } from './checks.js';

const BASE_URL = loopbackBaseUrl();
const SCALE = stageScale();
const K = Number(__ENV.K || '1');
if (!(K > 0 && K <= 1000)) throw new Error(`K must be in (0, 1000] (got ${__ENV.K})`);
const KEYS = Number(__ENV.KEYS || '100000');
const POLICY = __ENV.POLICY || 'load-capacity';
const LIMIT = Number(__ENV.LIMIT || '1000');
const WINDOW_MS = Number(__ENV.WINDOW_MS || '1000');
const P99_MS = Number(__ENV.P99_MS || '10');
const REPORT_DIR = __ENV.REPORT_DIR || '.';
const AUDIT = __ENV.AUDIT === '1';
const CHECK_EVERY = Number(__ENV.CHECK_EVERY || '10');
if (!(Number.isInteger(CHECK_EVERY) && CHECK_EVERY >= 1)) throw new Error(`CHECK_EVERY must be a whole number >= 1 (got ${__ENV.CHECK_EVERY})`);
const URL = `${BASE_URL}/v1/check`;

const { ms: STAGE_MS, stageAt } = stagePlan(SCALE);
const rate = (users) => Math.max(1, Math.round(users * K));
const PEAK = Math.max(...STAGES.map((s) => rate(s.users)));
const VUS = Number(__ENV.VUS || Math.min(1000, Math.max(20, Math.ceil(PEAK * 0.02))));

export const options = {
  scenarios: {
    capacity: {
      executor: 'ramping-arrival-rate',
      startRate: rate(STAGES[0].users),
      timeUnit: '1s',
      // All VUs made before the start, none during the run: a VU made
      // mid-run compiles the script (milliseconds of CPU each), and when the
      // fleet slowed k6 made hundreds at once, on the cores the fleet
      // needed, which slowed it further. VUS of them hold the peak rate
      // at VUS / PEAK seconds per check (300 at K = 100: 20 ms); when none
      // is free k6 drops the iteration, and the search counts that.
      preAllocatedVUs: VUS,
      maxVUs: VUS,
      stages: STAGES.flatMap((s, i) => [
        { duration: '0s', target: rate(s.users) },
        { duration: `${STAGE_MS[i]}ms`, target: rate(s.users) },
      ]),
      gracefulStop: '3s',
    },
  },
  thresholds: {
    errors: ['count==0'],
    checks: ['rate==1'],
  },
  summaryTrendStats: ['avg', 'min', 'med', 'max', 'p(90)', 'p(95)', 'p(99)'],
};

const allowed = new Counter('allowed');
const denied = new Counter('denied');
const errors = new Counter('errors');
const perStage = STAGES.map((_, i) => ({
  allowed: new Counter(`stage${i + 1}_allowed`),
  denied: new Counter(`stage${i + 1}_denied`),
  errors: new Counter(`stage${i + 1}_errors`),
  users: new Counter(`stage${i + 1}_user_requests`),
  latency: new Trend(`stage${i + 1}_latency`, true),
}));
const NONE = [];


// Per stage, built once: an iteration allocates nothing it can reuse.
const PARAMS = STAGES.map((_, i) => {
  const base = {
    headers: { 'Content-Type': 'application/json' },
    tags: { stage: String(i + 1) },
    timeout: '5s',
    responseCallback: http.expectedStatuses(200, 429),
  };
  // Unchecked iterations never read the body: k6 then does not copy it into JS.
  return { deep: base, shallow: Object.assign({ responseType: 'none' }, base) };
});

export default function () {
  const start = Date.now();
  const stage = stageAt(start - exec.scenario.startTime);
  const iteration = exec.scenario.iterationInTest;
  const key = `cap-${iteration % KEYS}`;
  // Every response's status is checked; every CHECK_EVERY-th response is
  // checked in full (body and headers, checks.js). At thousands of checks a
  // second, the full check on each one cost k6 more CPU than the HTTP
  // request itself, on the two cores the fleet needs.
  const deep = iteration % CHECK_EVERY === 0;
  const params = deep ? PARAMS[stage].deep : PARAMS[stage].shallow;
  const res = http.post(URL, `{"policy":"${POLICY}","key":"${key}"}`, params);
  const s = perStage[stage];
  s.latency.add(res.timings.duration);
  s.users.add(1);
  let bad;
  if (deep) {
    bad = problems(res, POLICY, LIMIT);
    check(res, { '200 or 429 with consistent RateLimit headers and body': () => bad.length === 0 }, params.tags);
  } else {
    bad = res.status === 200 || res.status === 429 ? NONE : [`status ${res.status} ${res.error || ''}`];
  }
  if (bad.length) {
    errors.add(1);
    s.errors.add(1);
    console.error(`ERROR ${POLICY} ${key}: ${bad.join('; ')}`);
    return;
  }
  const ok = res.status === 200;
  if (ok) {
    allowed.add(1);
    s.allowed.add(1);
  } else {
    denied.add(1);
    s.denied.add(1);
  }
  if (AUDIT) console.log(`AUDIT ${ok ? 'admit' : 'deny'} ${POLICY} ${key} ${start} ${Date.now()} ${res.timings.duration.toFixed(3)}`);
}

export function handleSummary(data) {
  data.slidegate = {
    scenario: 'capacity',
    k: K,
    stage_scale: SCALE,
    stages: STAGES.map((s, i) => ({ users: s.users, rate: rate(s.users), seconds: STAGE_MS[i] / 1000 })),
    offered: STAGES.reduce((sum, s, i) => sum + rate(s.users) * (STAGE_MS[i] / 1000), 0),
    policies: { [POLICY]: { limit: LIMIT, window_ms: WINDOW_MS, keys: `cap-<iteration mod ${KEYS}>` } },
    p99_bound_ms: P99_MS,
  };
  const m = data.metrics;
  const count = (name) => (m[name] ? m[name].values.count : 0);
  const d = m.http_req_duration ? m.http_req_duration.values : {};
  const line =
    `capacity K=${K}: ${count('http_reqs')} checks of ${data.slidegate.offered} offered ` +
    `(${count('dropped_iterations')} dropped), ${count('allowed')} allowed, ${count('denied')} denied, ` +
    `${count('errors')} errors; p50 ${Number(d.med).toFixed(2)} ms, p99 ${Number(d['p(99)']).toFixed(2)} ms\n`;
  return {
    [`${REPORT_DIR}/summary.json`]: JSON.stringify(data, null, 1),
    stdout: line,
  };
}
