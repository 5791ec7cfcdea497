"""Load the service with many concurrent clients on loopback and print a JSON report (tests/loading.py).

    .venv/bin/python scripts/load.py                       # 200 clients, 60 s, shipped demo model, 1 worker
    .venv/bin/python scripts/load.py --clients 50 --seconds 20 --workers 2

It starts its own embedded Redis (in a temporary directory), `editgan serve` and the workers, so no
existing database is touched. Requests: vector edits with the shipped `smile` vector and, for a tenth of them,
inversion jobs of a few steps; the queue bound (EDITGAN_MAX_QUEUED_JOBS, default here 200) turns the excess
into deliberate 429s. Exit status 1 when a request failed (anything but 200/201/202/429) or a job was lost.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the checkout: tests/ holds the harness

from service.embedded import EmbeddedRedis  # noqa: E402
from tests.loading import LoadConfig, run_load  # noqa: E402
from tests.processes import free_port, service_env, start, stop, wait_ready  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--warmup", type=float, default=10.0, help="seconds of load before memory is first read")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--models", type=Path, default=ROOT / "models", help="models directory")
    parser.add_argument("--model", default="demo-faces")
    parser.add_argument("--vector", default="smile")
    parser.add_argument("--job-share", type=float, default=0.1)
    parser.add_argument("--max-queued-jobs", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    args = parser.parse_args()
    cfg = LoadConfig(clients=args.clients, seconds=args.seconds, warmup_seconds=args.warmup, job_share=args.job_share)
    with tempfile.TemporaryDirectory(prefix="editgan-load-") as tmp:
        root = Path(tmp)
        server = EmbeddedRedis(root / "redis")
        port = free_port()
        env = service_env(
            server.url,
            args.models,
            port,
            EDITGAN_THREADS=str(args.threads),
            EDITGAN_MAX_QUEUED_JOBS=str(args.max_queued_jobs),
            EDITGAN_MAX_QUEUED_PER_KEY=str(args.max_queued_jobs),
        )
        log = root / "service.log"
        gateway = start(["serve"], env, log)
        workers = [start(["worker"], env, log) for _ in range(args.workers)]
        base_url = f"http://127.0.0.1:{port}"
        try:
            wait_ready(base_url, [gateway, *workers], log)
            pids = {"gateway": gateway.pid} | {f"worker{i}": w.pid for i, w in enumerate(workers)}
            report = run_load(base_url, cfg, pids, vector=args.vector, model=args.model)
        finally:
            for proc in [gateway, *workers]:
                stop(proc)
            server.close()
    print(json.dumps(report, indent=2))
    return 1 if report["failed"] or report["lost"] else 0


if __name__ == "__main__":
    sys.exit(main())
