// The original's five-stage load test, against the fleet through nginx.
//
//   k6 run tests/load/staged.js                       # 80 s, nginx at 127.0.0.1:8080
//   BASE_URL=http://127.0.0.1:PORT STAGE_SCALE=0.1 k6 run tests/load/staged.js
//   (tests/load/fleet_run.sh starts the fleet, runs this and writes the report.)
//
// Stages, as the original ran them: 10 users for 10 s, 50 for 20 s, 100 for
// 20 s, 150 for 20 s, 10 for 10 s. Each virtual user is one client and sends
// one request per second (it sleeps out the rest of its second), so the load
// is offered, not saturating: 6,200 user requests in 80 s, 77.5/s on average.
// The stages are steps (a zero-length ramp, then a hold), not linear ramps:
// that is what gives the original's 6,202 requests.
//
// One user request = two checks to POST /v1/check, one after the other, as a
// gateway asks its limiters in turn (sent together with http.batch, the two
// raced each other through nginx and the replicas for the same two cores,
// which measured contention of our own making, not a check):
//   - the per-client policy (CLIENT_POLICY, key "client-<VU id>"): limit 50
//     per minute, so users that stay the longest are cut off;
//   - the global policy (GLOBAL_POLICY, one key "everyone" shared by all
//     users): limit 100 per second, so the 150-user stage is shed by a third.
// The user request is admitted when both checks answered 200. Both checks are
// always sent (unlike forward-auth, which stops at the first denial), so each
// policy's counter sees every user request and each 429 is justified by the
// policy that answered it. Every HTTP response counts in the table: 2 checks
// per user request.
//
// Checks on every response: status 200 or 429; JSON body with allowed ==
// (status == 200), the expected policy and limit, remaining >= 0,
// retry_after_ms 0 when allowed and > 0 when denied, no fallback (Redis
// decided); headers RateLimit-Policy, RateLimit, X-RateLimit-* consistent
// with the body, Retry-After on 429 only. A response failing any of this, or
// any other status, counts as an error.
//
// Environment:
//   BASE_URL=http://127.0.0.1:8080   must be loopback
//   STAGE_SCALE=1                    multiplies every stage's duration (CI: 0.1)
//   CLIENT_POLICY=load-client  CLIENT_LIMIT=50   GLOBAL_POLICY=load-global  GLOBAL_LIMIT=100
//   P95_MS=50                        threshold on p95 of the checks' latency
//   REPORT_DIR=.                     where handleSummary writes summary.json
//   CLIENT_WINDOW_MS=60000  GLOBAL_WINDOW_MS=1000   the policies' windows (for the audit)
//   AUDIT=1                          log "AUDIT admit|deny policy key start_ms end_ms duration_ms"
//                                    for each decision (start/end bracket the user
//                                    request, duration is this check's k6 timing) (k6 --console-output=FILE),
//                                    for the runner's exactness audit

import http from 'k6/http';
import { check, sleep } from 'k6';
import exec from 'k6/execution';
import { Counter, Trend } from 'k6/metrics';
import { STAGES, loopbackBaseUrl, problems, stagePlan, stageScale } from './checks.js';

const BASE_URL = loopbackBaseUrl();
const SCALE = stageScale();
const CLIENT_POLICY = __ENV.CLIENT_POLICY || 'load-client';
const CLIENT_LIMIT = Number(__ENV.CLIENT_LIMIT || '50');
const GLOBAL_POLICY = __ENV.GLOBAL_POLICY || 'load-global';
const GLOBAL_LIMIT = Number(__ENV.GLOBAL_LIMIT || '100');
const CLIENT_WINDOW_MS = Number(__ENV.CLIENT_WINDOW_MS || '60000');
const GLOBAL_WINDOW_MS = Number(__ENV.GLOBAL_WINDOW_MS || '1000');
const GLOBAL_KEY = 'everyone';
const P95_MS = Number(__ENV.P95_MS || '50');
const REPORT_DIR = __ENV.REPORT_DIR || '.';
const AUDIT = __ENV.AUDIT === '1';
const URL = `${BASE_URL}/v1/check`;
const EXPECTED = http.expectedStatuses(200, 429);

const { ms: STAGE_MS, stageAt } = stagePlan(SCALE);

const thresholds = {
  errors: ['count==0'],
  checks: ['rate==1'],
  'http_req_duration{expected_response:true}': [`p(95)<${P95_MS}`],
};

export const options = {
  scenarios: {
    staged: {
      executor: 'ramping-vus',
      startVUs: STAGES[0].users,
      // Steps: jump to the stage's users, hold them for its duration.
      stages: STAGES.flatMap((s, i) => [
        { duration: '0s', target: s.users },
        { duration: `${STAGE_MS[i]}ms`, target: s.users },
      ]),
      // A user leaving lets its current second finish (one request + sleep).
      gracefulRampDown: '3s',
      gracefulStop: '3s',
    },
  },
  thresholds,
  summaryTrendStats: ['avg', 'min', 'med', 'max', 'p(90)', 'p(95)', 'p(99)'],
  // nginx opens a new upstream connection per request anyway; keep ours.
  noConnectionReuse: false,
};

// Totals and per stage (custom metrics always appear in handleSummary's data).
const allowed = new Counter('allowed');
const denied = new Counter('denied');
const errors = new Counter('errors');
const usersAdmitted = new Counter('user_requests_admitted');
const usersDenied = new Counter('user_requests_denied');
const perStage = STAGES.map((_, i) => ({
  allowed: new Counter(`stage${i + 1}_allowed`),
  denied: new Counter(`stage${i + 1}_denied`),
  errors: new Counter(`stage${i + 1}_errors`),
  usersAdmitted: new Counter(`stage${i + 1}_user_requests_admitted`),
  users: new Counter(`stage${i + 1}_user_requests`),
  latency: new Trend(`stage${i + 1}_latency`, true),
}));


export default function () {
  // Users are independent: each starts at a random point of its first second,
  // rather than all of them sending in the same millisecond of every second
  // (a burst of up to 300 checks that would measure queueing, not the service).
  if (exec.vu.iterationInScenario === 0) sleep(Math.random());
  const start = Date.now();
  const stage = stageAt(start - exec.scenario.startTime);
  const tags = { stage: String(stage + 1) };
  const client = `client-${exec.vu.idInTest}`;
  const send = (policy, key) =>
    http.post(URL, JSON.stringify({ policy, key }), {
      headers: { 'Content-Type': 'application/json' },
      tags: Object.assign({ policy }, tags),
      timeout: '5s',
      responseCallback: EXPECTED,
    });
  const responses = [send(CLIENT_POLICY, client), send(GLOBAL_POLICY, GLOBAL_KEY)];
  const end = Date.now();

  const s = perStage[stage];
  let admitted = true;
  [
    [responses[0], CLIENT_POLICY, CLIENT_LIMIT, client],
    [responses[1], GLOBAL_POLICY, GLOBAL_LIMIT, GLOBAL_KEY],
  ].forEach(([res, policy, limit, key]) => {
    const bad = problems(res, policy, limit);
    check(res, { [`${policy}: 200 or 429 with consistent RateLimit headers and body`]: () => bad.length === 0 }, tags);
    s.latency.add(res.timings.duration);
    if (bad.length) {
      errors.add(1, tags);
      s.errors.add(1);
      admitted = false;
      console.error(`ERROR ${policy} ${key}: ${bad.join('; ')}`);
    } else if (res.status === 200) {
      allowed.add(1, tags);
      s.allowed.add(1);
      // The decision happened between start and end (same clock as Redis).
      if (AUDIT) console.log(`AUDIT admit ${policy} ${key} ${start} ${end} ${res.timings.duration.toFixed(3)}`);
    } else {
      denied.add(1, tags);
      s.denied.add(1);
      admitted = false;
      if (AUDIT) console.log(`AUDIT deny ${policy} ${key} ${start} ${end} ${res.timings.duration.toFixed(3)}`);
    }
  });
  s.users.add(1);
  if (admitted) {
    usersAdmitted.add(1, tags);
    s.usersAdmitted.add(1);
  } else {
    usersDenied.add(1, tags);
  }
  // One request per second per user.
  const left = 1000 - (Date.now() - start);
  if (left > 0) sleep(left / 1000);
}

export function handleSummary(data) {
  data.slidegate = {
    scenario: 'staged',
    stage_scale: SCALE,
    stages: STAGES.map((s, i) => ({ users: s.users, seconds: STAGE_MS[i] / 1000 })),
    policies: {
      [CLIENT_POLICY]: { limit: CLIENT_LIMIT, window_ms: CLIENT_WINDOW_MS, keys: 'client-<VU id>' },
      [GLOBAL_POLICY]: { limit: GLOBAL_LIMIT, window_ms: GLOBAL_WINDOW_MS, keys: GLOBAL_KEY },
    },
    p95_threshold_ms: P95_MS,
  };
  const m = data.metrics;
  const count = (name) => (m[name] ? m[name].values.count : 0);
  const d = m.http_req_duration ? m.http_req_duration.values : {};
  const line =
    `staged: ${count('http_reqs')} checks, ${count('allowed')} allowed, ${count('denied')} denied, ` +
    `${count('errors')} errors; avg ${Number(d.avg).toFixed(2)} ms, p95 ${Number(d['p(95)']).toFixed(2)} ms\n`;
  return {
    [`${REPORT_DIR}/summary.json`]: JSON.stringify(data, null, 1),
    stdout: line,
  };
}
