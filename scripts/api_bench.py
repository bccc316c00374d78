"""vigil api: start-up catch-up time and request latency on a broker (docs/api.md, Measured).

    vigil broker &   # then, with KAFKA_BOOTSTRAP_SERVERS, VIGIL_TOPIC_PREFIX set and `vigil topics create` run:
    VIGIL_API__TOKENS_SHA256='["<digest of TOKEN>"]' python scripts/api_bench.py PATIENTS ROWS TOKEN
"""
# ruff: noqa
import asyncio, sys, threading, time
from pathlib import Path
import orjson, requests
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_api import score, adt, alert
from vigil.config import load_settings
from vigil.kafka_io import produce_records
from vigil.api.server import ApiServer

s = load_settings(None)
N, ROWS = int(sys.argv[1]), int(sys.argv[2])
recs = []
for i in range(N):
    p = f"bench{i:06d}"
    recs.append((s.topic("adt"), p.encode(), adt(p, "admit", f"W{i % 20}", str(i), i)))
    for r in range(ROWS):
        recs.append((s.topic("scores"), p.encode(), orjson.dumps(score(p, r, 0.1 + (i % 7) / 10, r % 8, f"W{i % 20}"))))
    if i % 10 == 0:
        recs.append((s.topic("alerts"), p.encode(), orjson.dumps(alert(p, f"al{i}", "raised", ROWS, ward=f"W{i % 20}"))))
t = time.perf_counter(); asyncio.run(produce_records(s, recs)); print(f"produced {len(recs)} in {time.perf_counter()-t:.1f}s")
s.api.port = 0
async def main():
    srv = ApiServer(s)
    t = time.perf_counter(); await srv.start(); dt = time.perf_counter() - t
    print(f"catch-up+start {dt:.2f}s, {srv.view.patients} patients")
    return srv
loop = asyncio.new_event_loop()
th = threading.Thread(target=loop.run_forever, daemon=True); th.start()
srv = asyncio.run_coroutine_threadsafe(main(), loop).result(600)
url = f"http://127.0.0.1:{srv.port}"
sess = requests.Session(); H = {"Authorization": f"Bearer {sys.argv[3]}"}
for path in ("/patients/bench000007", "/wards/W3", "/alerts?ward=W3"):
    lat = []
    for _ in range(200):
        t = time.perf_counter(); r = sess.get(url + path, headers=H); lat.append(time.perf_counter() - t); assert r.status_code == 200
    lat.sort(); print(f"{path}: p50 {1000*lat[100]:.2f} ms p95 {1000*lat[190]:.2f} ms ({len(r.content)} bytes)")
asyncio.run_coroutine_threadsafe(srv.stop(), loop).result(30)
