"""`kdistill serve` under load: concurrent clients on loopback, dynamic batching on against off, in one run.

    python benchmarks/serve_load.py --export RUN_DIR/export [--clients 1 8 32] [--requests 100]

For each setting (batching on: --max_batch 16 --max_wait_ms 5; off: --max_batch 1; on without waiting: --max_wait_ms 0, so a
batch is what queued while the model ran the last one) a fresh `kdistill serve` process
is started on a free 127.0.0.1 port; then, for each client count, that many clients each send --requests
`POST /predict {"text": ...}` requests one after another on a kept-alive connection (real SST-2 dev sentences, each
client starting at its own offset), and the run stops by itself when they are done. Reported per cell: requests per
second, p50/p95/p99 latency, errors (a status other than 200, or a broken connection; target 0), and the server's
peak resident memory (VmHWM). A last run at the largest client count, batching on, makes every tenth request
malformed (not JSON, a number for a text, an empty list, too many texts, in turn): the good requests' figures are
reported apart, and each malformed one must get a 4xx.

Targets (issue 20): at 32 clients, batching on serves at least 3x the requests per second of batching off, with
p99 under 100 ms, on 2 cores. The clients run in this process (asyncio, one connection each) on the same cores as
the server: both settings pay that the same.
Writes benchmarks/results/serve_load.{json,md} with a top-level `summary`; prints the table.
"""

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_env  # noqa: E402

SST2_DEV = os.path.join(ROOT, "..", "shared", "data", "sst2", "dev.tsv")
SETTINGS = {"batching on": ["--max_batch", "16", "--max_wait_ms", "5"], "batching off": ["--max_batch", "1"],
            "batching on, no wait": ["--max_batch", "16", "--max_wait_ms", "0"]}
MALFORMED = [b"this is not json", b'{"text": 42}', b'{"texts": []}', json.dumps({"texts": ["a"] * 1000}).encode()]
SPEEDUP_TARGET, P99_TARGET_MS = 3.0, 100.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(export: str, port: int, flags: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.path.join(ROOT, "src")}
    proc = subprocess.Popen([sys.executable, "-m", "kdistill.cli", "serve", export, "--port", str(port), *flags],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    for _ in range(300):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5):
                return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    sys.exit(f"the server did not start: {proc.communicate()[1]}")


def peak_rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


async def one_client(port: int, bodies: list[bytes], n: int, start: int, results: list) -> None:
    """`n` requests in turn on one kept-alive connection: (latency s, status, malformed) each."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for i in range(n):
        body = bodies[(start + i) % len(bodies)]
        request = (b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                   b"Content-Length: %d\r\n\r\n" % len(body)) + body
        t0 = time.perf_counter()
        try:
            writer.write(request)
            await writer.drain()
            status = int((await reader.readline()).split()[1])
            length, close = 0, False
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode("latin-1").partition(":")
                if name.lower() == "content-length":
                    length = int(value)
                elif name.lower() == "connection" and value.strip().lower() == "close":
                    close = True
            await reader.readexactly(length)
        except (OSError, asyncio.IncompleteReadError, IndexError, ValueError):
            status, close = 0, True
        results.append((time.perf_counter() - t0, status, body in MALFORMED))
        if close:
            writer.close()
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.close()


def load(port: int, clients: int, requests: int, texts: list[str], malformed_every: int = 0) -> dict:
    bodies = [json.dumps({"text": t}).encode() for t in texts]
    if malformed_every:
        bodies = [MALFORMED[(i // malformed_every) % len(MALFORMED)] if i % malformed_every == malformed_every - 1
                  else b for i, b in enumerate(bodies)]
    results: list = []

    async def run() -> float:
        t0 = time.perf_counter()
        await asyncio.gather(*(one_client(port, bodies, requests, c * 997, results) for c in range(clients)))
        return time.perf_counter() - t0

    seconds = asyncio.run(run())
    good = [(lat, status) for lat, status, bad in results if not bad]
    bad = [status for _, status, is_bad in results if is_bad]
    lat_ms = sorted(1000 * lat for lat, _ in good)

    def pct(q: float) -> float:
        return lat_ms[min(len(lat_ms) - 1, int(q * len(lat_ms)))]

    return {"clients": clients, "requests": len(results), "seconds": seconds,
            "requests_per_s": len(good) / seconds, "p50_ms": pct(0.50), "p95_ms": pct(0.95), "p99_ms": pct(0.99),
            "errors": sum(status != 200 for _, status in good),
            "malformed": len(bad), "malformed_not_4xx": sum(not 400 <= s < 500 for s in bad)}


def model_alone(export: str, texts: list[str], rounds: int = 3) -> dict:
    """The most batching can give here: the model's texts per second one text a call, and 16 a call (sorted by
    length, as the server batches), on the same texts, in this process, turn about."""
    sys.path.insert(0, os.path.join(ROOT, "src"))
    from kdistill.deploy.runtime import ExportedModel

    model = ExportedModel.load(export)
    sample = texts[:512]
    seconds: dict[int, list[float]] = {1: [], 16: []}
    model.logits(sample[:64])  # warm-up
    for _ in range(rounds):
        for size in seconds:
            t0 = time.perf_counter()
            for i in range(0, len(sample), size):
                model.logits(sample[i:i + size])
            seconds[size].append(time.perf_counter() - t0)
    rates = {size: len(sample) / statistics.median(s) for size, s in seconds.items()}
    return {"texts_per_s_1_a_call": rates[1], "texts_per_s_16_a_call": rates[16], "batch_16_over_1": rates[16] / rates[1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--export", required=True, help="an export directory (kdistill export RUN_DIR --format onnx)")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--requests", type=int, default=100, help="requests per client")
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results"))
    args = parser.parse_args()

    with open(SST2_DEV, encoding="utf-8") as fh:
        next(fh)
        texts = [line.split("\t")[0].strip() for line in fh if line.strip()]
    alone = model_alone(args.export, texts)
    cells, memory = [], {}
    for setting, flags in SETTINGS.items():
        port = free_port()
        server = start_server(args.export, port, flags)
        try:
            load(port, 4, 10, texts)  # warm-up: the first calls of a session are slow
            for clients in args.clients:
                cells.append({"setting": setting, **load(port, clients, args.requests, texts)})
                print(f"{setting}, {clients} clients: {cells[-1]['requests_per_s']:.0f} req/s, "
                      f"p99 {cells[-1]['p99_ms']:.1f} ms, {cells[-1]['errors']} errors", flush=True)
            if setting == "batching on":
                mixed = {"setting": "batching on, 1 in 10 malformed",
                         **load(port, max(args.clients), args.requests, texts, malformed_every=10)}
                cells.append(mixed)
            memory[setting] = peak_rss_mib(server.pid)
        finally:
            server.terminate()
            server.communicate(timeout=60)
    top = max(args.clients)
    cell = {(c["setting"], c["clients"]): c for c in cells}
    on, off = cell[("batching on", top)], cell[("batching off", top)]
    summary = {
        "clients": top,
        "requests_per_s_batching_on": on["requests_per_s"],
        "requests_per_s_batching_off": off["requests_per_s"],
        "batching_speedup": on["requests_per_s"] / off["requests_per_s"],
        "speedup_target": SPEEDUP_TARGET,
        "p99_ms_batching_on": on["p99_ms"],
        "p99_target_ms": P99_TARGET_MS,
        "targets_met": on["requests_per_s"] / off["requests_per_s"] >= SPEEDUP_TARGET and on["p99_ms"] < P99_TARGET_MS,
        "errors": sum(c["errors"] for c in cells),
        "mixed_good_requests_per_s": mixed["requests_per_s"],
        "mixed_good_p99_ms": mixed["p99_ms"],
        "mixed_malformed_not_4xx": mixed["malformed_not_4xx"],
        "server_peak_rss_mib": memory,
        "model_alone_batch_16_over_1": alone["batch_16_over_1"],
    }
    result = {"summary": summary, "date": bench_env.now_utc(), "machine": bench_env.machine(),
              "versions": bench_env.versions(),
              "command": "python " + " ".join([os.path.relpath(__file__, ROOT), *sys.argv[1:]]),
              "export": os.path.abspath(args.export), "settings": SETTINGS, "requests_per_client": args.requests,
              "cells": cells, "model_alone": alone}
    lines = [
        f"# kdistill serve under load ({result['date']})", "",
        f"Machine: {result['machine']['cpu']} ({', '.join(result['machine']['cpu_flags'])}), "
        f"{result['machine']['cores']} cores; clients and server on the same cores. Command: `{result['command']}`",
        "", "| setting | clients | requests | req/s | p50 ms | p95 ms | p99 ms | errors | malformed (not 4xx) |",
        "|---|---|---|---|---|---|---|---|---|",
        *[f"| {c['setting']} | {c['clients']} | {c['requests']} | {c['requests_per_s']:.0f} | {c['p50_ms']:.1f} | "
          f"{c['p95_ms']:.1f} | {c['p99_ms']:.1f} | {c['errors']} | "
          f"{c['malformed']} ({c['malformed_not_4xx']}) |" for c in cells],
        "",
        f"At {top} clients batching serves {summary['batching_speedup']:.2f}x the requests per second of one-at-a-time "
        f"serving (target >= {SPEEDUP_TARGET}x), p99 {on['p99_ms']:.1f} ms (target < {P99_TARGET_MS:g} ms). "
        f"Server peak memory: " + ", ".join(f"{k} {v:.0f} MiB" for k, v in memory.items()) + ".",
        "",
        f"The model alone, in this process on the same texts: {alone['texts_per_s_1_a_call']:.0f} texts/s one a "
        f"call, {alone['texts_per_s_16_a_call']:.0f} texts/s 16 a call sorted by length "
        f"({alone['batch_16_over_1']:.2f}x): the most batching can add where the model is the bottleneck.",
    ]
    bench_env.write_results(args.out, "serve_load", result, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
