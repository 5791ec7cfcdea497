"""Per-caller request rate limit: a token bucket in Redis, shared by every gateway.

The bucket holds up to `per_minute` tokens (a minute's burst) and refills at `per_minute / 60` per second;
each request takes one. The update is one Lua script, so concurrent requests on several gateways cannot
both take the last token, and it reads Redis's clock, so gateways with skewed clocks agree.
"""

from __future__ import annotations

import math

from redis import Redis

from schemas.errors import ErrorCode
from service.errors import ApiError
from workers.store import PREFIX

# KEYS[1]: the bucket; ARGV[1]: capacity, ARGV[2]: tokens per second.
# Returns {1, 0} when a token was taken, else {0, milliseconds until one is available}.
TAKE_TOKEN = """
local capacity = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1]) or capacity
local ts = tonumber(state[2]) or now
tokens = math.min(capacity, tokens + math.max(0, now - ts) * rate / 1000)
local allowed, wait = 0, 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
else
  wait = math.ceil((1 - tokens) * 1000 / rate)
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', now)
redis.call('PEXPIRE', KEYS[1], math.ceil(capacity * 1000 / rate) + 1000)
return {allowed, wait}
"""


def bucket_key(rate_id: str) -> str:
    return f"{PREFIX}:rate:{rate_id}"


class RateLimiter:
    """`check(redis, rate_id)` takes a token or raises ApiError 429 with Retry-After."""

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute

    def check(self, redis: Redis, rate_id: str) -> None:
        script = redis.register_script(TAKE_TOKEN)
        allowed, wait_ms = script(keys=[bucket_key(rate_id)], args=[self.per_minute, self.per_minute / 60])
        if int(allowed):
            return
        retry_after = max(1, math.ceil(int(wait_ms) / 1000))
        raise ApiError(
            429,
            ErrorCode.rate_limited,
            f"more than {self.per_minute} requests per minute (EDITGAN_RATE_LIMIT); retry in {retry_after} s",
            {"Retry-After": str(retry_after)},
        )
