"""What `handle_async` adds over `handle` for one short query, in process: `python overhead_probe.py REPO CALLS`.

Run as its own process with REPO's `e5` on the path, so the benchmark can measure an older commit of this
project (checked out elsewhere) beside the working tree in the same run. Prints one JSON line.
"""

import asyncio
import json
import statistics
import sys
import time

sys.path.insert(0, sys.argv[1])
CALLS = int(sys.argv[2])

from e5 import EmbeddingRequest, load_service  # noqa: E402

QUERY = EmbeddingRequest(query="how much protein should a female eat")


async def main() -> dict:
    service = load_service("demo-all-minilm-l6-v2", batching=True)
    for _ in range(20):  # warm-up of both paths
        service.handle(QUERY)
        await service.handle_async(QUERY)
    sync, concurrent = [], []
    for _ in range(CALLS):  # alternating, so both see the same machine
        started = time.perf_counter()
        service.handle(QUERY)
        sync.append(time.perf_counter() - started)
        started = time.perf_counter()
        await service.handle_async(QUERY)
        concurrent.append(time.perf_counter() - started)
    return {"handle_p50_ms": 1000 * statistics.median(sync), "handle_async_p50_ms": 1000 * statistics.median(concurrent),
            "added_p50_ms": 1000 * statistics.median(b - a for a, b in zip(sync, concurrent))}


print(json.dumps(asyncio.run(main())))
