// The load generator's own ceiling: k6 alone against an nginx location that
// answers 200 with a fixed body (no proxying, no slidegate), at a constant
// arrival rate. What k6 cannot do against that, it cannot do against the
// fleet either; run by tests/load/k6_ceiling.sh.
//
//   RATE=15000 tests/load/k6_ceiling.sh
//
// Same request shape as capacity.js (POST, JSON body, responses checked for
// status only), same VU policy (all made before the start).

import http from 'k6/http';
import { loopbackBaseUrl } from './checks.js';

const URL = `${loopbackBaseUrl()}/v1/check`;
const RATE = Number(__ENV.RATE || '15000');
const SECONDS = Number(__ENV.DURATION || '10');
if (!(RATE > 0 && RATE <= 100000)) throw new Error(`RATE must be in (0, 100000] (got ${__ENV.RATE})`);
if (!(SECONDS > 0 && SECONDS <= 120)) throw new Error(`DURATION must be in (0, 120] seconds (got ${__ENV.DURATION})`);
const VUS = Math.min(1000, Math.max(20, Math.ceil(RATE * 0.02)));
const PARAMS = { headers: { 'Content-Type': 'application/json' }, responseType: 'none', timeout: '5s' };

export const options = {
  scenarios: {
    ceiling: {
      executor: 'constant-arrival-rate',
      rate: RATE,
      timeUnit: '1s',
      duration: `${SECONDS}s`,
      preAllocatedVUs: VUS,
      maxVUs: VUS,
    },
  },
  summaryTrendStats: ['avg', 'med', 'p(95)', 'p(99)'],
};

export default function () {
  http.post(URL, '{"policy":"load-capacity","key":"k"}', PARAMS);
}
