"""The admin API's throughput and latency beside a bare FastAPI JSON endpoint, on one box.

Run: ``.venv/bin/python bench/api.py [--seconds 5] [--concurrency 64]``.

Two uvicorn servers run as subprocesses on 127.0.0.1, each one worker with the same server
stack: the real admin app (on a SQLite file in a temporary data directory, migrated, one
platform-admin key, one tenant) and a bare FastAPI app whose single endpoint returns a
comparable JSON object. The load generator (this process, httpx async, keep-alive
connections) runs on the same box. Each scenario gets a warm-up, then is measured for
``--seconds`` at ``--concurrency`` concurrent connections:

- ``bare``: ``GET /bare`` (no auth, no database);
- ``read``: ``GET /api/v1/tenants/{id}`` with ``Authorization: Bearer`` (an authenticated
  single-row read; the verified key is in the service's key cache, see
  ``coordinator/services/keys.py``);
- ``write``: ``POST /api/v1/tenants`` (a new row plus its hash-chained audit row, one
  transaction, committed).

Goals: read >= 0.5x bare requests/s, read p99 <= 50 ms at 64 connections, write >= 0.25x
bare. Prints a table, then one JSON object on the last line.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import itertools
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from lepton_fl.processes import ManagedProcess, free_port, port_accepts, wait_until

READ_GOAL = 0.5
WRITE_GOAL = 0.25
P99_GOAL_MS = 50.0


def bare_app() -> Any:
    """The baseline: FastAPI, one JSON endpoint, nothing else."""
    from fastapi import FastAPI

    app = FastAPI()
    body = {
        "id": "3cb15578-e714-4151-a2a6-7b8f4c31e1e2",
        "name": "bench-tenant",
        "display_name": "",
        "disabled": False,
        "created_at": "2026-11-25T01:01:39.045705Z",
        "disabled_at": None,
    }

    @app.get("/bare")
    async def bare() -> dict[str, Any]:
        return body

    return app


def serve(kind: str, port: int, data_dir: Path) -> None:
    """Child process: serve one app with uvicorn on 127.0.0.1."""
    import uvicorn

    if kind == "bare":
        app = bare_app()
    else:
        from coordinator.api import AdminSettings, create_app

        app = create_app(AdminSettings(data_dir=data_dir))
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


@dataclass
class Result:
    scenario: str
    requests: int
    errors: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    latencies: list[float] = field(default_factory=list, repr=False)


@dataclass(frozen=True)
class Request:
    """One HTTP/1.1 request, pre-encoded (the body may vary per call)."""

    method: str
    path: str
    headers: dict[str, str]


async def _exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: Request, body: bytes
) -> int:
    head = f"{request.method} {request.path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    for name, value in request.headers.items():
        head += f"{name}: {value}\r\n"
    if body:
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    writer.write(head.encode() + b"\r\n" + body)
    await writer.drain()
    status_line = await reader.readline()
    length = 0
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b""):
            break
        name, _, value = line.decode("latin-1").partition(":")
        if name.strip().lower() == "content-length":
            length = int(value.strip())
    await reader.readexactly(length)
    return int(status_line.split()[1])


async def load(
    port: int,
    scenario: str,
    request: Request,
    make_body: Any,
    *,
    seconds: float,
    warmup: float,
    concurrency: int,
) -> Result:
    """Closed-loop load over `concurrency` keep-alive connections: each sends its next
    request when the previous reply has been read. A minimal HTTP/1.1 client (asyncio
    streams), so that the generator costs far less CPU than the servers it measures."""
    latencies: list[float] = []
    errors = 0
    measuring = False
    stop = False

    async def worker() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while not stop:
                start = time.perf_counter()
                status = await _exchange(reader, writer, request, make_body())
                elapsed = time.perf_counter() - start
                if measuring:
                    if status >= 300:
                        errors += 1
                    latencies.append(elapsed)
        finally:
            writer.close()

    tasks = [asyncio.create_task(worker()) for _ in range(concurrency)]
    await asyncio.sleep(warmup)
    measuring = True
    began = time.perf_counter()
    await asyncio.sleep(seconds)
    measuring = False
    took = time.perf_counter() - began
    stop = True
    await asyncio.gather(*tasks)
    latencies.sort()
    p99 = latencies[max(0, int(len(latencies) * 0.99) - 1)] if latencies else float("nan")
    return Result(
        scenario,
        len(latencies),
        errors,
        took,
        len(latencies) / took,
        statistics.median(latencies) * 1000 if latencies else float("nan"),
        p99 * 1000,
        latencies,
    )


async def measure(
    args: argparse.Namespace, admin_port: int, bare_port: int, key: str
) -> list[Result]:
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(timeout=30) as client:
        created = await client.post(
            f"http://127.0.0.1:{admin_port}/api/v1/tenants",
            json={"name": "bench-read"},
            headers=headers,
        )
        tenant_id = created.json()["id"]
    counter = itertools.count()
    prefix = os.getpid()
    scenarios = [
        ("bare", bare_port, Request("GET", "/bare", {}), lambda: b""),
        (
            "read",
            admin_port,
            Request("GET", f"/api/v1/tenants/{tenant_id}", headers),
            lambda: b"",
        ),
        (
            "write",
            admin_port,
            Request("POST", "/api/v1/tenants", headers),
            lambda: json.dumps({"name": f"w{prefix}-{next(counter)}"}).encode(),
        ),
    ]
    # Interleave short slices of each scenario, so that background load on a shared box
    # hits all three alike; then merge the slices of each scenario.
    slices = max(1, round(args.seconds))
    merged: dict[str, list[Result]] = {name: [] for name, *_ in scenarios}
    for index in range(slices):
        for name, port, request, make_body in scenarios:
            merged[name].append(
                await load(
                    port,
                    name,
                    request,
                    make_body,
                    seconds=args.seconds / slices,
                    warmup=args.warmup if index == 0 else 0.2,
                    concurrency=args.concurrency,
                )
            )
    return [_merge(name, parts) for name, parts in merged.items()]


def _merge(name: str, parts: list[Result]) -> Result:
    latencies = sorted(x for p in parts for x in p.latencies)
    took = sum(p.seconds for p in parts)
    p99 = latencies[max(0, int(len(latencies) * 0.99) - 1)] if latencies else float("nan")
    return Result(
        name,
        len(latencies),
        sum(p.errors for p in parts),
        took,
        len(latencies) / took,
        statistics.median(latencies) * 1000 if latencies else float("nan"),
        p99 * 1000,
        latencies,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--serve", choices=["admin", "bare"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.port, args.data_dir)
        return

    with tempfile.TemporaryDirectory(prefix="lepton-bench-api-") as tmp:
        root = Path(tmp)
        from coordinator.db import Database, default_sqlite_url
        from coordinator.services.keys import bootstrap_admin_key

        database = Database(default_sqlite_url(root))
        database.upgrade()
        _, key = bootstrap_admin_key(database, name="bench")
        database.dispose()
        ports = {"admin": free_port(), "bare": free_port()}
        servers = [
            ManagedProcess(
                name=f"uvicorn ({kind})",
                argv=[
                    sys.executable,
                    __file__,
                    "--serve",
                    kind,
                    "--port",
                    str(port),
                    "--data-dir",
                    str(root),
                ],
                log_path=root / f"{kind}.log",
            ).start()
            for kind, port in ports.items()
        ]
        try:
            for server, port in zip(servers, ports.values(), strict=True):
                wait_until(
                    functools.partial(port_accepts, "127.0.0.1", port),
                    timeout=60,
                    what=server.name,
                    process=server,
                )
            results = asyncio.run(measure(args, ports["admin"], ports["bare"], key))
        finally:
            for server in servers:
                server.stop()

    by = {r.scenario: r for r in results}
    print(f"{'scenario':<8} {'requests':>9} {'errors':>6} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8}")
    for r in results:
        row = f"{r.scenario:<8} {r.requests:>9} {r.errors:>6} {r.rps:>9.0f}"
        print(f"{row} {r.p50_ms:>8.1f} {r.p99_ms:>8.1f}")
    read_ratio = by["read"].rps / by["bare"].rps
    write_ratio = by["write"].rps / by["bare"].rps
    summary = {
        "concurrency": args.concurrency,
        "seconds": args.seconds,
        "cpus": os.cpu_count(),
        "load_average_1m": os.getloadavg()[0],
        "bare_rps": round(by["bare"].rps, 1),
        "read_rps": round(by["read"].rps, 1),
        "write_rps": round(by["write"].rps, 1),
        "read_ratio": round(read_ratio, 3),
        "write_ratio": round(write_ratio, 3),
        "read_p99_ms": round(by["read"].p99_ms, 2),
        "errors": sum(r.errors for r in results),
        "goals": {"read_ratio": READ_GOAL, "read_p99_ms": P99_GOAL_MS, "write_ratio": WRITE_GOAL},
        "meets_goals": {
            "read_ratio": read_ratio >= READ_GOAL,
            "read_p99_ms": by["read"].p99_ms <= P99_GOAL_MS,
            "write_ratio": write_ratio >= WRITE_GOAL,
        },
        "results": [{k: v for k, v in asdict(r).items() if k != "latencies"} for r in results],
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
