"""A bounded load test of ``fcnseg serve`` on loopback: latency percentiles, errors, throughput, peak RSS.

    python benchmarks/serve_load.py                       # 200 requests, 8 at a time, without and with batching
    python benchmarks/serve_load.py --max-batch 8 --max-delay-ms 20 --requests 100 --time-limit 120
    python benchmarks/serve_load.py --url http://127.0.0.1:8000 --server-pid PID   # an already running server

Every request uploads the same photo (default: fcnseg/demo_images/leuvenA.jpg) to ``POST /predict`` and reads the
JSON answer. An error is any answer but 200, or no answer. The server's peak RSS is the kernel's high-water mark
(``VmHWM`` in ``/proc/PID/status``) of the server process. Only loopback addresses are accepted: this is not a
tool for loading other people's machines.

Unless ``--url`` is given, the test runs twice, each time against a server of its own: without dynamic batching,
then with it (``fcnseg serve --max-batch N --max-delay-ms T``), and prints one table row for each. Each run is
bounded by ``--requests`` and ``--time-limit``.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlparse

import httpx

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "fcnseg" / "demo_images" / "leuvenA.jpg"


def _mb(pid: int, key: str) -> float | None:
    """A ``kB`` field of ``/proc/PID/status`` (VmRSS, VmHWM) in MB, or None when it cannot be read."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _start_server(args, batch: tuple[int, float] | None = None) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "fcnseg.cli", "serve", "--port", str(port), "--log-level", "warning",
           "--workers", str(args.workers), "--queue", str(max(args.concurrency, 1)), "--threads", str(args.threads)]
    for m in args.serve_model or []:
        cmd += ["--model", m]
    if batch is not None:
        cmd += ["--max-batch", str(batch[0]), "--max-delay-ms", str(batch[1])]
    proc = subprocess.Popen(cmd, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.3)
    proc.kill()
    raise SystemExit("serve_load: the server did not start")


def run(url: str, image: Path, requests: int, concurrency: int, model: str | None, time_limit: float) -> dict:
    """Sends ``requests`` uploads of ``image``, ``concurrency`` at a time; stops early after ``time_limit`` s."""
    data = image.read_bytes()
    fields = {"model": model} if model else {}
    latencies: list[float] = []
    model_ms: list[float] = []
    statuses: Counter = Counter()
    lock = threading.Lock()
    counter = iter(range(requests))
    stop = time.monotonic() + time_limit

    def worker() -> None:
        with httpx.Client(timeout=120) as client:
            while time.monotonic() < stop:
                with lock:
                    if next(counter, None) is None:
                        return
                t = time.perf_counter()
                try:
                    r = client.post(url + "/predict", files={"file": (image.name, data, "image/jpeg")}, data=fields)
                    status = r.status_code
                    ms = r.json().get("ms") if status == 200 else None
                except httpx.HTTPError as e:
                    status, ms = type(e).__name__, None
                dt = 1000 * (time.perf_counter() - t)
                with lock:
                    statuses[status] += 1
                    latencies.append(dt)
                    if ms is not None:
                        model_ms.append(ms)

    start = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    q = statistics.quantiles(latencies, n=100, method="inclusive") if len(latencies) > 1 else latencies * 99
    errors = sum(n for s, n in statuses.items() if s != 200)
    return {"sent": len(latencies), "statuses": dict(statuses), "errors": errors,
            "p50": q[49], "p95": q[94], "p99": q[98], "max": max(latencies), "wall": wall, "rps": len(latencies) / wall,
            "model_ms": statistics.median(model_ms) if model_ms else float("nan")}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--image", type=Path, default=DEMO)
    p.add_argument("--model", help="the model field of each request (default: the server's default)")
    p.add_argument("--url", help="an already running server (loopback only); default: start one")
    p.add_argument("--server-pid", type=int, help="the running server's process id, for its peak RSS")
    p.add_argument("--serve-model", action="append", help="--model for the started server (repeatable)")
    p.add_argument("--workers", type=int, default=1, help="--workers for the started server")
    p.add_argument("--threads", type=int, default=2, help="torch threads of the started server")
    p.add_argument("--time-limit", type=float, default=600, help="stop sending after this many seconds (per run)")
    p.add_argument("--max-batch", type=int, default=4, help="--max-batch of the started server's batched run")
    p.add_argument("--max-delay-ms", type=float, default=10, help="--max-delay-ms of the batched run")
    args = p.parse_args(argv)
    if args.requests < 1 or args.concurrency < 1 or args.max_batch < 2:
        p.error("--requests and --concurrency must be at least 1, --max-batch at least 2")
    if args.url:
        host = urlparse(args.url).hostname or ""
        if host not in ("127.0.0.1", "localhost", "::1"):
            p.error(f"--url must be a loopback address (127.0.0.1, localhost, ::1); got {host}")
        runs = [("the running server", None)]
    else:
        runs = [("no batching", None),
                (f"--max-batch {args.max_batch} --max-delay-ms {args.max_delay_ms:g}", (args.max_batch,
                                                                                    args.max_delay_ms))]
    rows = []
    for name, batch in runs:
        proc = None
        if args.url:
            url, pid = args.url.rstrip("/"), args.server_pid
        else:
            proc, url = _start_server(args, batch)
            pid = proc.pid
        try:
            rss_start = _mb(pid, "VmRSS") if pid else None
            r = run(url, args.image, args.requests, args.concurrency, args.model, args.time_limit)
            r["peak"], r["rss_start"] = (_mb(pid, "VmHWM") if pid else None), rss_start
        finally:
            if proc is not None:
                proc.terminate()
                proc.wait(30)
        rows.append((name, r))
    print(f"fcnseg serve load test: {args.image.name}, up to {args.requests} requests per run, concurrency "
          f"{args.concurrency}, server --workers {args.workers} --threads {args.threads}")
    print("| server | requests | errors | requests/s | p50 ms | p95 ms | p99 ms | max ms | model ms (median) "
          "| peak RSS MB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, r in rows:
        peak = f"{r['peak']:.0f}" if r["peak"] is not None else "unknown (give --server-pid)"
        print(f"| {name} | {r['sent']} | {r['errors']} | {r['rps']:.2f} | {r['p50']:.0f} | {r['p95']:.0f} | "
              f"{r['p99']:.0f} | {r['max']:.0f} | {r['model_ms']:.0f} | {peak} |")
    for name, r in rows:
        if r["errors"]:
            print(f"{name}: statuses {r['statuses']}")
    return 0 if all(r["errors"] == 0 for _, r in rows) else 1

if __name__ == "__main__":
    sys.exit(main())
