// What the k6 scenarios share: the original's stages, the environment
// checks, and what every POST /v1/check response must satisfy: status 200 or 429; JSON body with
// allowed == (status == 200), the expected policy and limit, 0 <= remaining
// <= limit, retry_after_ms 0 when allowed and > 0 when denied, no fallback
// (Redis decided); RateLimit-Policy, RateLimit, X-RateLimit-* consistent with
// the body; Retry-After on 429 only. Returns the list of what failed.

// The response's headers by lower-case name, built once per response: k6
// gives them in Go's canonical case (Ratelimit-Policy), and a case-blind
// search per header cost more JS time than the rest of the checks together.
function headersOf(res) {
  const byName = {};
  for (const key in res.headers) byName[key.toLowerCase()] = res.headers[key];
  return byName;
}

export function problems(res, policy, limit) {
  const bad = [];
  if (res.status !== 200 && res.status !== 429) {
    return [`status ${res.status} ${res.error || ''} ${String(res.body).slice(0, 200)}`];
  }
  let body;
  try {
    body = JSON.parse(res.body);
  } catch (e) {
    return [`body is not JSON: ${String(res.body).slice(0, 200)}`];
  }
  const ok = res.status === 200;
  const headers = headersOf(res);
  const header = (name) => headers[name];
  if (body.allowed !== ok) bad.push(`allowed=${body.allowed} with status ${res.status}`);
  if (body.policy !== policy) bad.push(`policy ${body.policy}`);
  if (body.limit !== limit) bad.push(`limit ${body.limit}`);
  if (!(Number.isInteger(body.remaining) && body.remaining >= 0 && body.remaining <= limit)) bad.push(`remaining ${body.remaining}`);
  if (ok ? body.retry_after_ms !== 0 : !(body.retry_after_ms > 0)) bad.push(`retry_after_ms ${body.retry_after_ms}`);
  if (body.fallback !== undefined) bad.push(`fallback ${body.fallback}`);
  const policyHeader = header('ratelimit-policy') || '';
  if (!policyHeader.startsWith(`"${policy}";q=${limit};w=`)) bad.push(`RateLimit-Policy ${policyHeader}`);
  const rl = /^"([^"]+)";r=(\d+);t=(\d+)$/.exec(header('ratelimit') || '');
  if (!rl || rl[1] !== policy || Number(rl[2]) !== body.remaining) bad.push(`RateLimit ${header('ratelimit')}`);
  if (header('x-ratelimit-limit') !== String(limit)) bad.push(`X-RateLimit-Limit ${header('x-ratelimit-limit')}`);
  if (header('x-ratelimit-remaining') !== String(body.remaining)) bad.push(`X-RateLimit-Remaining ${header('x-ratelimit-remaining')}`);
  if (header('x-ratelimit-reset') === undefined || (rl && header('x-ratelimit-reset') !== rl[3])) {
    bad.push(`X-RateLimit-Reset ${header('x-ratelimit-reset')}`);
  }
  const retryAfter = header('retry-after');
  if (ok && retryAfter !== undefined) bad.push(`Retry-After ${retryAfter} on a 200`);
  if (!ok && retryAfter !== String(Math.max(1, Math.ceil(body.retry_after_ms / 1000)))) {
    bad.push(`Retry-After ${retryAfter} for retry_after_ms ${body.retry_after_ms}`);
  }
  return bad;
}

// The original's five stages: users, seconds.
export const STAGES = [
  { users: 10, seconds: 10 },
  { users: 50, seconds: 20 },
  { users: 100, seconds: 20 },
  { users: 150, seconds: 20 },
  { users: 10, seconds: 10 },
];

// Each stage's length in ms at `scale` (at least 100 ms), and the index of
// the stage a moment `elapsedMs` into the run falls in.
export function stagePlan(scale) {
  const ms = STAGES.map((s) => Math.max(100, Math.round(s.seconds * 1000 * scale)));
  const ends = [];
  ms.forEach((length, i) => ends.push((i ? ends[i - 1] : 0) + length));
  const stageAt = (elapsedMs) => {
    const i = ends.findIndex((end) => elapsedMs < end);
    return i < 0 ? ends.length - 1 : i;
  };
  return { ms, stageAt };
}

export function loopbackBaseUrl() {
  const base = __ENV.BASE_URL || 'http://127.0.0.1:8080';
  if (!/^http:\/\/(127\.\d+\.\d+\.\d+|localhost|\[::1\])(:\d+)?$/.test(base)) {
    throw new Error(`BASE_URL must be a loopback http://host:port (got ${base})`);
  }
  return base;
}

export function stageScale() {
  const scale = Number(__ENV.STAGE_SCALE || '1');
  if (!(scale > 0 && scale <= 10)) {
    throw new Error(`STAGE_SCALE must be in (0, 10] (got ${__ENV.STAGE_SCALE})`);
  }
  return scale;
}
