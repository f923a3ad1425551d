"""Holds N WebSockets open on agent-api and reports the server's RSS before and while they are
open (memory per 1,000 open sockets). Each socket sends one chat message first, so that it holds
a conversation too.

    python3 bench/ws_hold.py --url ws://127.0.0.1:18000 --pid PID --count 1000 --key KEY

Needs the `websockets` package (pip install websockets). Traffic goes to the given local URL only.
"""

import argparse
import asyncio
import json


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


async def main():
    import websockets

    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--pid", type=int, required=True)
    p.add_argument("--count", type=int, default=1000)
    p.add_argument("--key", default="")
    p.add_argument("--hold-secs", type=float, default=3)
    a = p.parse_args()
    assert a.url.startswith(("ws://127.0.0.1", "ws://localhost")), "local targets only"

    before = rss_kib(a.pid)
    sockets = []
    sem = asyncio.Semaphore(100)

    async def open_one(i):
        async with sem:
            ws = await websockets.connect(f"{a.url}/ws/hold-{i}?api_key={a.key}", max_size=2**20)
            await ws.send(json.dumps({"message": f"hello {i}"}))
            while True:
                frame = json.loads(await ws.recv())
                if frame.get("done") or frame.get("error"):
                    break
            sockets.append(ws)

    await asyncio.gather(*(open_one(i) for i in range(a.count)))
    await asyncio.sleep(a.hold_secs)
    during = rss_kib(a.pid)
    for ws in sockets:
        await ws.close()
    per = (during - before) / len(sockets) if sockets else 0
    print(json.dumps({"opened": len(sockets), "rss_before_mib": round(before / 1024, 1),
                      "rss_open_mib": round(during / 1024, 1), "kib_per_socket": round(per, 1)}))


asyncio.run(main())
