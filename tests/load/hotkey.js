// Hot keys: most traffic on a few keys far over their limits.
//
//   SCENARIO=hotkey.js tests/load/fleet_run.sh            # 300 checks/s for 30 s
//   SCENARIO=hotkey.js RATE=1000 STAGE_SCALE=0.5 tests/load/fleet_run.sh
//
// An open model (constant-arrival-rate, RATE checks per second for 30 s x
// STAGE_SCALE) on policy load-hot, 10 per minute per key:
//   - HOT_PCT (90) % of the checks go to 3 keys (hot-1..hot-3), chosen at
//     random: each gets ~90 checks a second against a limit of 10 a minute,
//     so each must be admitted exactly 10 times in the run (one window), and
//     denied the rest;
//   - the rest go to random keys cold-<0..999999>: almost all admitted.
// Every response must be a 200 or a 429 consistent with its body and headers
// (checks.js); anything else is an error. The report counts the 429s, hot
// and cold, and the exactness audit proves no hot key went over 10 a minute
// and no 429 was unjustified.
//
// Environment:
//   BASE_URL=http://127.0.0.1:8080   must be loopback
//   RATE=300                         checks per second
//   STAGE_SCALE=1                    multiplies the 30 s duration
//   HOT_PCT=90  HOT_KEYS=3           share of the checks on the hot keys, how many
//   POLICY=load-hot  LIMIT=10  WINDOW_MS=60000
//   REPORT_DIR=.  AUDIT=1            as capacity.js

import http from 'k6/http';
import { check } from 'k6';
import { Counter, Trend } from 'k6/metrics';
import { loopbackBaseUrl, problems, stageScale } from './checks.js';

const BASE_URL = loopbackBaseUrl();
const SCALE = stageScale();
const RATE = Number(__ENV.RATE || '300');
if (!(RATE >= 1 && RATE <= 100000)) throw new Error(`RATE must be in [1, 100000] (got ${__ENV.RATE})`);
const HOT_PCT = Number(__ENV.HOT_PCT || '90');
const HOT_KEYS = Number(__ENV.HOT_KEYS || '3');
const POLICY = __ENV.POLICY || 'load-hot';
const LIMIT = Number(__ENV.LIMIT || '10');
const WINDOW_MS = Number(__ENV.WINDOW_MS || '60000');
const REPORT_DIR = __ENV.REPORT_DIR || '.';
const AUDIT = __ENV.AUDIT === '1';
const URL = `${BASE_URL}/v1/check`;
const DURATION_MS = Math.max(1000, Math.round(30000 * SCALE));

export const options = {
  scenarios: {
    hotkey: {
      executor: 'constant-arrival-rate',
      rate: RATE,
      timeUnit: '1s',
      duration: `${DURATION_MS}ms`,
      preAllocatedVUs: Math.min(1000, Math.max(20, Math.ceil(RATE * 0.02))),
      maxVUs: Math.min(3000, Math.max(150, Math.ceil(RATE * 0.2))),
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
const usersAdmitted = new Counter('user_requests_admitted');
const usersDenied = new Counter('user_requests_denied');
// One stage; the report's per-stage table and charts read these names.
const stage = {
  allowed: new Counter('stage1_allowed'),
  denied: new Counter('stage1_denied'),
  errors: new Counter('stage1_errors'),
  usersAdmitted: new Counter('stage1_user_requests_admitted'),
  users: new Counter('stage1_user_requests'),
  latency: new Trend('stage1_latency', true),
};
const byTemperature = {
  hot: { allowed: new Counter('hot_allowed'), denied: new Counter('hot_denied') },
  cold: { allowed: new Counter('cold_allowed'), denied: new Counter('cold_denied') },
};

export default function () {
  const hot = Math.random() * 100 < HOT_PCT;
  const key = hot ? `hot-${1 + Math.floor(Math.random() * HOT_KEYS)}` : `cold-${Math.floor(Math.random() * 1e6)}`;
  const tags = { temperature: hot ? 'hot' : 'cold' };
  const start = Date.now();
  const res = http.post(URL, JSON.stringify({ policy: POLICY, key }), {
    headers: { 'Content-Type': 'application/json' },
    tags,
    timeout: '5s',
    responseCallback: http.expectedStatuses(200, 429),
  });
  const end = Date.now();
  const bad = problems(res, POLICY, LIMIT);
  check(res, { '200 or 429 with consistent RateLimit headers and body': () => bad.length === 0 }, tags);
  stage.latency.add(res.timings.duration);
  stage.users.add(1);
  if (bad.length) {
    errors.add(1, tags);
    stage.errors.add(1);
    usersDenied.add(1, tags);
    console.error(`ERROR ${POLICY} ${key}: ${bad.join('; ')}`);
    return;
  }
  const ok = res.status === 200;
  const t = byTemperature[tags.temperature];
  if (ok) {
    allowed.add(1, tags);
    stage.allowed.add(1);
    usersAdmitted.add(1, tags);
    stage.usersAdmitted.add(1);
    t.allowed.add(1);
  } else {
    denied.add(1, tags);
    stage.denied.add(1);
    usersDenied.add(1, tags);
    t.denied.add(1);
  }
  if (AUDIT) console.log(`AUDIT ${ok ? 'admit' : 'deny'} ${POLICY} ${key} ${start} ${end} ${res.timings.duration.toFixed(3)}`);
}

export function handleSummary(data) {
  const m = data.metrics;
  const count = (name) => (m[name] ? m[name].values.count : 0);
  data.slidegate = {
    scenario: 'hotkey',
    description: `${HOT_PCT}% of ${RATE} checks/s on ${HOT_KEYS} keys limited to ${LIMIT} per ${WINDOW_MS / 1000} s, the rest on random keys`,
    stage_scale: SCALE,
    stages: [{ users: '—', rate: RATE, seconds: DURATION_MS / 1000 }],
    offered: (RATE * DURATION_MS) / 1000,
    policies: { [POLICY]: { limit: LIMIT, window_ms: WINDOW_MS, keys: `hot-1..hot-${HOT_KEYS}, cold-<random>` } },
    hot: { allowed: count('hot_allowed'), denied: count('hot_denied') },
    cold: { allowed: count('cold_allowed'), denied: count('cold_denied') },
  };
  const d = m.http_req_duration ? m.http_req_duration.values : {};
  const h = data.slidegate.hot;
  const c = data.slidegate.cold;
  const line =
    `hotkey: ${count('http_reqs')} checks, ${count('denied')} 429s (hot ${h.allowed} allowed / ${h.denied} denied; ` +
    `cold ${c.allowed} / ${c.denied}), ${count('errors')} errors; p50 ${Number(d.med).toFixed(2)} ms, ` +
    `p99 ${Number(d['p(99)']).toFixed(2)} ms\n`;
  return {
    [`${REPORT_DIR}/summary.json`]: JSON.stringify(data, null, 1),
    stdout: line,
  };
}
