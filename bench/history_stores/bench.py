#!/usr/bin/env python3
"""History-store benchmark for c10m issue 13 point 5: Redis Streams vs NATS JetStream.

One invocation = one case: it starts its own server (redis-server / valkey-server or
nats-server) on a loopback port with its data in a fresh temp dir, loads it, measures, stops
it, and prints one JSON object (and appends it to --out). Everything is bounded: the load
stops at --deadline seconds, every sample loop has a fixed count, every request a timeout.

Model (per-user history, the c10m shape):
  Redis     one stream per user  h:u<N>, appended by one Lua script
              XADD h:u<N> MAXLEN <max> * d <payload>; EXPIRE h:u<N> <age>; PUBLISH c:u<N> <payload>
            replay: XRANGE h:u<N> (<id> + COUNT 100
  JetStream one stream HIST, subjects h.>, max_msgs_per_subject=<max>, max_age=<age>,
            allow_direct; a publish to h.u<N> with ack (that publish is also the live fan-out)
            replay: Direct Get {"seq": <pos+1>, "next_by_subj": "h.u<N>", "batch": 100}
            (and, on --consumer-samples, an ephemeral filtered consumer: create, read, delete)
  topic     one stream/subject with --users messages (--topic), replay 100 after a random id.

Users are written round-robin (round r writes message r of every user), so a user's
messages are spread over the whole stream, as they would be in production.

Measured:
  load      appends/s over the whole load and per tenth of it (does the rate fall as the
            key/subject count grows?), latency of each pipelined batch / each windowed ack;
  memory    Redis INFO used_memory (allocator bytes) before/after; nats-server VmRSS and Go
            HeapInuse after a forced GC (pprof ?gc=1 on the loopback prof port), plus the
            stream's own state.bytes; per stored message and per active user;
  serial    --serial appends with one request in flight: p50/p99 (after the memory reading);
  replay    --samples random users (or positions), one request in flight: p50/p99, and a check
            that every reply holds the expected messages;
  restart   (--restart, file storage) SIGTERM then start again; then SIGKILL then start again:
            seconds until the stream answers with all its messages, memory after, replay after;
  expiry    (--expire-check S) wait past a short age and read memory again (0 bytes idle?).

Time: 10k users ~5-10 s, 100k ~15-60 s, 1M ~1-4 min, 10M ~8 min per case on a 2-vCPU box
(Python client; replay loops stop after 120 s, the load at --deadline).
"""
import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))


def pct(xs, p):
    if not xs:
        return None
    xs = sorted(xs)
    k = min(len(xs) - 1, max(0, int(round(p / 100.0 * (len(xs) - 1)))))
    return xs[k]


def lat_summary(xs_s):
    """seconds -> dict of microseconds"""
    if not xs_s:
        return {}
    return {
        "n": len(xs_s),
        "p50_us": round(pct(xs_s, 50) * 1e6, 1),
        "p99_us": round(pct(xs_s, 99) * 1e6, 1),
        "max_us": round(max(xs_s) * 1e6, 1),
    }


def wait_port(port, timeout=20.0):
    t = time.time() + timeout
    while time.time() < t:
        try:
            with socket.create_connection(("127.0.0.1", port), 0.2):
                return True
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} did not open")


def rss_bytes(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return None


def cpu_s(pid):
    """utime+stime of a process in seconds"""
    with open(f"/proc/{pid}/stat") as f:
        parts = f.read().rsplit(")", 1)[1].split()
    return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")


def payload_of(n):
    rnd = random.Random(42)
    alphabet = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    return bytes(rnd.choice(alphabet) for _ in range(n))


# --------------------------------------------------------------------------------------- Redis

LUA = """
local id = redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[1], '*', 'd', ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('PUBLISH', KEYS[2], ARGV[3])
return id
"""


def run_redis(a, res):
    import redis

    tmp = tempfile.mkdtemp(prefix="hs_redis_", dir=a.tmpdir)
    port = a.port or 16379
    cmd = [a.redis_bin, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
           "--appendonly", "no", "--dir", tmp, "--daemonize", "no", "--logfile",
           os.path.join(tmp, "server.log"), "--protected-mode", "yes"]
    if a.node_bytes:
        cmd += ["--stream-node-max-bytes", str(a.node_bytes)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        r = redis.Redis(host="127.0.0.1", port=port, socket_timeout=30)
        for _ in range(100):
            try:
                r.ping()
                break
            except redis.exceptions.BusyLoadingError:
                time.sleep(0.1)
        info = r.info("server")
        res["server"] = {"name": "valkey" if "valkey" in a.redis_bin else "redis",
                         "version": info.get("valkey_version") or info.get("redis_version"),
                         "malloc": r.info("memory").get("mem_allocator"),
                         "stream-node-max-bytes": r.config_get("stream-node-max-bytes"),
                         "stream-node-max-entries": r.config_get("stream-node-max-entries")}
        sha = r.script_load(LUA)
        pl = payload_of(a.payload)
        N, K = a.users, a.msgs
        maxlen = a.topic_max if a.topic else a.max_per_user
        rnd = random.Random(1)
        sample = set(rnd.sample(range(N), min(a.samples, N))) if not a.topic else set()
        first_id = {}
        topic_ids = []
        time.sleep(0.2)
        mem0 = r.info("memory")["used_memory"]
        total = N * K
        chunk = max(1, total // 10)
        pipe_lat, chunks = [], []
        c0, cc0 = cpu_s(proc.pid), time.process_time()
        t0 = time.perf_counter()
        tc, done, stopped = t0, 0, False
        batch = a.batch
        p = r.pipeline(transaction=False)
        pend = []
        for rd in range(K):
            for u in range(N):
                if a.topic:
                    key, ch = "topic:news", "c:topic:news"
                else:
                    key, ch = f"h:u{u}", f"c:u{u}"
                p.evalsha(sha, 2, key, ch, maxlen, a.age, pl)
                pend.append(u if rd == 0 and u in sample else (-1 if not a.topic else -2))
                if len(pend) >= batch:
                    tb = time.perf_counter()
                    out = p.execute()
                    pipe_lat.append(time.perf_counter() - tb)
                    for uu, rid in zip(pend, out):
                        if uu >= 0:
                            first_id[uu] = rid
                        elif uu == -2:
                            topic_ids.append(rid)
                    done += len(pend)
                    pend = []
                    if done // chunk > len(chunks):
                        now = time.perf_counter()
                        chunks.append({"done": done, "rate": round(chunk / (now - tc)),
                                       "used_memory": r.info("memory")["used_memory"]})
                        tc = time.perf_counter()
                    if now_over(t0, a.deadline):
                        stopped = True
                        break
            if stopped:
                break
        if pend and not stopped:
            tb = time.perf_counter()
            out = p.execute()
            pipe_lat.append(time.perf_counter() - tb)
            for uu, rid in zip(pend, out):
                if uu >= 0:
                    first_id[uu] = rid
                elif uu == -2:
                    topic_ids.append(rid)
            done += len(pend)
        el = time.perf_counter() - t0
        c1, cc1 = cpu_s(proc.pid), time.process_time()
        time.sleep(0.5)
        mi = r.info("memory")
        mem1 = mi["used_memory"]
        dbsize = r.dbsize()
        res["load"] = {"appends": done, "seconds": round(el, 2), "rate": round(done / el),
                       "stopped_at_deadline": stopped, "batch": batch,
                       "server_cpu_us_per_append": round((c1 - c0) / max(1, done) * 1e6, 2),
                       "client_cpu_us_per_append": round((cc1 - cc0) / max(1, done) * 1e6, 2),
                       "batch_latency": lat_summary(pipe_lat), "chunks": chunks}
        stored = sum(r.xlen(f"h:u{u}") for u in list(sample)[:200]) if not a.topic else r.xlen("topic:news")
        res["memory"] = {"used_memory_before": mem0, "used_memory_after": mem1,
                         "delta": mem1 - mem0, "used_memory_rss": mi.get("used_memory_rss"),
                         "keys": dbsize,
                         "per_user_B": round((mem1 - mem0) / max(1, dbsize), 1),
                         "per_msg_B": round((mem1 - mem0) / max(1, done if not a.topic else stored), 1),
                         "payload_B": a.payload}
        # replay
        lat, bad, got = [], 0, 0
        ts = time.perf_counter()
        if a.topic:
            for i in range(min(a.samples, 10000)):
                j = rnd.randrange(max(1, len(topic_ids) - 200))
                pos = topic_ids[j]
                tb = time.perf_counter()
                out = r.xrange("topic:news", b"(" + pos, "+", count=100)
                lat.append(time.perf_counter() - tb)
                got += len(out)
                bad += len(out) != 100
                if now_over(ts, 60):
                    break
            res["replay_after_pos"] = dict(lat_summary(lat), msgs_per_reply=100, bad=bad)
        else:
            users = list(first_id.keys())
            rnd.shuffle(users)
            for mode in (["from_start"] + (["after_first"] if K > 1 else [])):
                lat, bad, got = [], 0, 0
                for u in users:
                    tb = time.perf_counter()
                    if mode == "from_start":
                        out = r.xrange(f"h:u{u}", "-", "+", count=100)
                        exp = K
                    else:
                        out = r.xrange(f"h:u{u}", b"(" + first_id[u], "+", count=100)
                        exp = K - 1
                    lat.append(time.perf_counter() - tb)
                    got += len(out)
                    bad += len(out) < min(exp, a.max_per_user)
                    if now_over(ts, 120):
                        break
                res["replay_" + mode] = dict(lat_summary(lat), msgs_avg=round(got / max(1, len(lat)), 2), short=bad)
        # serial appends, one in flight
        lat = []
        ts = time.perf_counter()
        for i in range(a.serial):
            u = rnd.randrange(N)
            key, ch = ("topic:news", "c:topic:news") if a.topic else (f"h:u{u}", f"c:u{u}")
            tb = time.perf_counter()
            r.evalsha(sha, 2, key, ch, maxlen, a.age, pl)
            lat.append(time.perf_counter() - tb)
            if now_over(ts, 60):
                break
        res["serial_append"] = lat_summary(lat)
        lat = []
        for i in range(min(a.serial, 5000)):
            tb = time.perf_counter()
            r.ping()
            lat.append(time.perf_counter() - tb)
        res["ping_rtt"] = lat_summary(lat)
        if a.expire_check:
            time.sleep(a.expire_check)
            # touch a few so lazy expiry also runs; active expiry does the rest
            for _ in range(100):
                if r.dbsize() == 0:
                    break
                time.sleep(0.2)
            res["after_expiry"] = {"waited_s": a.expire_check, "keys": r.dbsize(),
                                   "used_memory": r.info("memory")["used_memory"],
                                   "delta_vs_before": r.info("memory")["used_memory"] - mem0}
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(tmp, ignore_errors=True)


def now_over(t0, limit):
    return time.perf_counter() - t0 > limit


# ----------------------------------------------------------------------------------- JetStream

def heap_stats(prof_port):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{prof_port}/debug/pprof/heap?debug=1&gc=1",
                                    timeout=60) as f:
            txt = f.read().decode(errors="replace")
    except Exception as e:  # noqa
        return {"error": str(e)}
    out = {}
    for line in txt.splitlines():
        if line.startswith("# HeapInuse = ") or line.startswith("# HeapAlloc = ") or line.startswith("# Sys = "):
            k, v = line[2:].split(" = ")
            out[k] = int(v)
    return out


class NatsServer:
    def __init__(self, a, tmp):
        self.a = a
        self.tmp = tmp
        self.port = a.port or 14222
        self.prof = self.port + 1838  # 16060 by default
        conf = os.path.join(tmp, "nats.conf")
        with open(conf, "w") as f:
            f.write(f"""listen: 127.0.0.1:{self.port}
prof_port: {self.prof}
server_name: hs1
max_payload: 1MB
jetstream {{
  store_dir: "{os.path.join(tmp, 'js')}"
  max_memory_store: 12GB
  max_file_store: 40GB
}}
""")
        self.conf = conf
        self.proc = None

    def start(self):
        self.log = open(os.path.join(self.tmp, "server.log"), "ab")
        self.proc = subprocess.Popen([self.a.nats_bin, "-c", self.conf], stdout=self.log, stderr=self.log)
        wait_port(self.port, 120)

    def stop(self, sig=signal.SIGTERM):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


async def js_api(nc, subj, body, timeout=30):
    m = await nc.request(subj, json.dumps(body).encode() if body is not None else b"", timeout=timeout)
    return json.loads(m.data)


class Muxed:
    """One wildcard inbox for many in-flight requests (acks or direct-get batches)."""

    def __init__(self, nc, prefix):
        self.nc, self.prefix = nc, prefix
        self.waiters = {}

    async def start(self, cb):
        self.sub = await self.nc.subscribe(self.prefix + ".*", cb=cb, pending_msgs_limit=1 << 20,
                                           pending_bytes_limit=1 << 30)


async def run_nats_async(a, res, srv):
    import nats

    nc = await nats.connect(f"nats://127.0.0.1:{srv.port}", max_reconnect_attempts=0,
                            pending_size=64 * 1024 * 1024)
    js = nc.jetstream()
    acc = await js_api(nc, "$JS.API.INFO", None)
    res["server"] = {"name": "nats-server", "version": nc._server_info.get("version"),
                     "go": nc._server_info.get("go"), "storage": a.storage,
                     "jetstream_api_level": acc.get("api", {}).get("level") if isinstance(acc.get("api"), dict) else None}
    N, K = a.users, a.msgs
    stream = "HIST"
    if a.topic:
        cfg = {"name": stream, "subjects": ["t.>"], "storage": a.storage, "num_replicas": 1,
               "max_msgs_per_subject": a.topic_max, "max_age": a.age * 10**9,
               "discard": "old", "allow_direct": True}
    else:
        cfg = {"name": stream, "subjects": ["h.>"], "storage": a.storage, "num_replicas": 1,
               "max_msgs_per_subject": a.max_per_user, "max_age": a.age * 10**9,
               "discard": "old", "allow_direct": True}
    if a.dup_window is not None:
        cfg["duplicate_window"] = a.dup_window * 10**9
    cr = await js_api(nc, f"$JS.API.STREAM.CREATE.{stream}", cfg)
    if "error" in cr:
        raise RuntimeError(f"stream create: {cr['error']}")
    res["stream_config"] = {k: cr["config"].get(k) for k in
                            ("subjects", "storage", "max_msgs_per_subject", "max_age", "allow_direct",
                             "duplicate_window", "discard")}
    pl = payload_of(a.payload)
    rnd = random.Random(1)
    sample = set(rnd.sample(range(N), min(a.samples, N))) if not a.topic else set()
    first_seq, topic_seqs = {}, []
    await asyncio.sleep(0.3)
    pid = srv.proc.pid
    h0, rss0 = heap_stats(srv.prof), rss_bytes(pid)

    # ---- windowed publish with acks on one muxed inbox
    inbox = "_HSACK." + nc._nuid.next().decode()
    sem = asyncio.Semaphore(a.batch)
    sent_at = {}
    ack_lat, errors = [], [0, None]
    acked = [0]
    all_acked = asyncio.Event()
    total = N * K
    meta = {}

    async def on_ack(msg):
        tok = msg.subject[len(inbox) + 1:]
        t = sent_at.pop(tok, None)
        if t is not None:
            ack_lat.append(time.perf_counter() - t)
        d = msg.data
        if b'"error"' in d:
            errors[0] += 1
            errors[1] = d[:200].decode(errors="replace")
        else:
            m = meta.pop(tok, None)
            if m is not None:
                seq = json.loads(d)["seq"]
                if m >= 0:
                    first_seq[m] = seq
                else:
                    topic_seqs.append(seq)
        acked[0] += 1
        sem.release()
        if acked[0] >= target[0]:
            all_acked.set()

    target = [total]
    sub = await nc.subscribe(inbox + ".*", cb=on_ack, pending_msgs_limit=1 << 20, pending_bytes_limit=1 << 30)
    chunk = max(1, total // 10)
    chunks = []
    c0, cc0 = cpu_s(pid), time.process_time()
    t0 = time.perf_counter()
    tc, done, stopped = t0, 0, False
    for rd in range(K):
        for u in range(N):
            subj = "t.news" if a.topic else f"h.u{u}"
            await sem.acquire()
            tok = str(done)
            if a.topic:
                meta[tok] = -1
            elif rd == 0 and u in sample:
                meta[tok] = u
            sent_at[tok] = time.perf_counter()
            await nc.publish(subj, pl, reply=f"{inbox}.{tok}")
            done += 1
            if done % chunk == 0:
                now = time.perf_counter()
                chunks.append({"done": done, "rate": round(chunk / (now - tc)), "rss": rss_bytes(pid)})
                tc = now
            if now_over(t0, a.deadline):
                stopped = True
                break
        if stopped:
            break
    target[0] = done
    if acked[0] < done:
        try:
            await asyncio.wait_for(all_acked.wait(), 120)
        except asyncio.TimeoutError:
            pass
    el = time.perf_counter() - t0
    c1, cc1 = cpu_s(pid), time.process_time()
    await sub.unsubscribe()
    res["load"] = {"appends": done, "acked": acked[0], "errors": errors[0], "last_error": errors[1],
                   "seconds": round(el, 2), "rate": round(done / el), "stopped_at_deadline": stopped,
                   "server_cpu_us_per_append": round((c1 - c0) / max(1, done) * 1e6, 2),
                   "client_cpu_us_per_append": round((cc1 - cc0) / max(1, done) * 1e6, 2),
                   "window": a.batch, "ack_latency": lat_summary(ack_lat), "chunks": chunks}
    await asyncio.sleep(1.0)
    si = await js_api(nc, f"$JS.API.STREAM.INFO.{stream}", {})
    st = si["state"]
    h1, rss1 = heap_stats(srv.prof), rss_bytes(pid)
    msgs = st["messages"]
    res["memory"] = {"rss_before": rss0, "rss_after": rss1, "rss_delta": rss1 - rss0,
                     "heap_inuse_before": h0.get("HeapInuse"), "heap_inuse_after": h1.get("HeapInuse"),
                     "heap_delta": (h1.get("HeapInuse") or 0) - (h0.get("HeapInuse") or 0),
                     "go_sys_after": h1.get("Sys"),
                     "stream_bytes": st["bytes"], "stream_msgs": msgs,
                     "num_subjects": st.get("num_subjects"),
                     "stream_bytes_per_msg": round(st["bytes"] / max(1, msgs), 1),
                     "rss_per_msg_B": round((rss1 - rss0) / max(1, msgs), 1),
                     "heap_per_msg_B": round(((h1.get("HeapInuse") or 0) - (h0.get("HeapInuse") or 0)) / max(1, msgs), 1),
                     "rss_per_user_B": round((rss1 - rss0) / max(1, st.get("num_subjects") or 1), 1),
                     "payload_B": a.payload}
    if a.storage == "file":
        res["memory"]["disk_bytes"] = du(os.path.join(srv.tmp, "js"))

    await replay_nats(a, res, nc, stream, first_seq, topic_seqs, rnd, "")
    if a.consumer_samples and not a.topic:
        await consumer_replay(a, res, nc, stream, first_seq, rnd)
    # ---- serial publishes
    lat = []
    ts = time.perf_counter()
    for i in range(a.serial):
        subj = "t.news" if a.topic else f"h.u{rnd.randrange(N)}"
        tb = time.perf_counter()
        await js.publish(subj, pl, timeout=10)
        lat.append(time.perf_counter() - tb)
        if now_over(ts, 60):
            break
    res["serial_append"] = lat_summary(lat)
    lat = []
    for i in range(min(a.serial, 5000)):
        tb = time.perf_counter()
        await nc.flush(timeout=5)
        lat.append(time.perf_counter() - tb)
    res["ping_rtt"] = lat_summary(lat)

    if a.expire_check:
        await asyncio.sleep(a.expire_check)
        si = await js_api(nc, f"$JS.API.STREAM.INFO.{stream}", {})
        h2 = heap_stats(srv.prof)
        res["after_expiry"] = {"waited_s": a.expire_check, "msgs": si["state"]["messages"],
                               "num_subjects": si["state"].get("num_subjects"),
                               "rss": rss_bytes(pid), "rss_delta_vs_before": rss_bytes(pid) - rss0,
                               "heap_inuse": h2.get("HeapInuse"),
                               "heap_delta_vs_before": (h2.get("HeapInuse") or 0) - (h0.get("HeapInuse") or 0)}
    await nc.close()
    return first_seq, topic_seqs, msgs


async def direct_get_batch(nc, mux, stream, body, timeout=10):
    tok = str(mux.n)
    mux.n += 1
    fut = asyncio.get_running_loop().create_future()
    mux.waiters[tok] = (fut, [])
    await nc.publish(f"$JS.API.DIRECT.GET.{stream}", json.dumps(body).encode(), reply=f"{mux.prefix}.{tok}")
    try:
        return await asyncio.wait_for(fut, timeout)
    finally:
        mux.waiters.pop(tok, None)


async def replay_nats(a, res, nc, stream, first_seq, topic_seqs, rnd, label):
    mux = Muxed(nc, "_HSDG." + nc._nuid.next().decode())
    mux.n = 0

    async def on_msg(msg):
        tok = msg.subject[len(mux.prefix) + 1:]
        w = mux.waiters.get(tok)
        if not w:
            return
        fut, acc = w
        st = msg.headers.get("Status") if msg.headers else None
        if st is None:
            acc.append(msg)
            # without batch support the server answers one message and no EOB
            if not a.batch_get:
                fut.done() or fut.set_result((acc, None))
        else:
            fut.done() or fut.set_result((acc, st))

    await mux.start(on_msg)
    N, K = a.users, a.msgs
    n = min(a.samples, 10000)
    ts = time.perf_counter()
    if a.topic:
        lat, bad = [], 0
        for i in range(n):
            j = rnd.randrange(max(1, len(topic_seqs) - 200))
            body = {"seq": topic_seqs[j] + 1, "next_by_subj": "t.news", "batch": 100}
            tb = time.perf_counter()
            msgs, st = await direct_get_batch(nc, mux, stream, body)
            lat.append(time.perf_counter() - tb)
            bad += len(msgs) != 100
            if now_over(ts, 60):
                break
        res["replay_after_pos" + label] = dict(lat_summary(lat), msgs_per_reply=100, bad=bad)
    else:
        users = list(first_seq.keys())
        rnd.shuffle(users)
        for mode in (["from_start"] + (["after_first"] if K > 1 else [])):
            lat, bad, got = [], 0, 0
            for u in users[:n]:
                if mode == "from_start":
                    body, exp = {"seq": 1, "next_by_subj": f"h.u{u}"}, K
                else:
                    body, exp = {"seq": first_seq[u] + 1, "next_by_subj": f"h.u{u}"}, K - 1
                if a.batch_get:
                    body["batch"] = 100
                tb = time.perf_counter()
                msgs, st = await direct_get_batch(nc, mux, stream, body)
                lat.append(time.perf_counter() - tb)
                got += len(msgs)
                bad += len(msgs) < (exp if a.batch_get else min(1, exp))
                if now_over(ts, 120):
                    break
            res["replay_" + mode + label] = dict(lat_summary(lat), msgs_avg=round(got / max(1, len(lat)), 2), short=bad)
    await mux.sub.unsubscribe()


async def consumer_replay(a, res, nc, stream, first_seq, rnd):
    """The pre-2.11 way: an ephemeral filtered push consumer per replay (create, read, delete)."""
    users = list(first_seq.keys())
    rnd.shuffle(users)
    K = a.msgs
    lat_total, lat_create = [], []
    bad = 0
    ts = time.perf_counter()
    for i, u in enumerate(users[:a.consumer_samples]):
        inbox = nc.new_inbox()
        q = asyncio.Queue()

        async def cb(m, q=q):
            await q.put(m)

        tb = time.perf_counter()
        sub = await nc.subscribe(inbox, cb=cb)
        name = f"rp{i}"
        cfg = {"stream_name": stream, "config": {
            "name": name, "deliver_subject": inbox, "filter_subject": f"h.u{u}",
            "deliver_policy": "by_start_sequence", "opt_start_seq": 1, "ack_policy": "none",
            "mem_storage": True, "num_replicas": 1, "inactive_threshold": 5 * 10**9}}
        r = await js_api(nc, f"$JS.API.CONSUMER.CREATE.{stream}.{name}", cfg)
        lat_create.append(time.perf_counter() - tb)
        if "error" in r:
            bad += 1
            await sub.unsubscribe()
            continue
        pending = r.get("num_pending", K)
        got = 0
        try:
            while got < pending:
                await asyncio.wait_for(q.get(), 5)
                got += 1
        except asyncio.TimeoutError:
            bad += 1
        await js_api(nc, f"$JS.API.CONSUMER.DELETE.{stream}.{name}", None)
        lat_total.append(time.perf_counter() - tb)
        await sub.unsubscribe()
        if now_over(ts, 60):
            break
    res["replay_consumer"] = {"create": lat_summary(lat_create), "create_read_delete": lat_summary(lat_total),
                              "bad": bad}


def du(path):
    t = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                t += os.path.getsize(os.path.join(root, f))
            except OSError:
                pass
    return t


async def wait_stream(srv, expect, limit=300):
    import nats

    t0 = time.perf_counter()
    srv.start()
    while not now_over(t0, limit):
        try:
            nc = await nats.connect(f"nats://127.0.0.1:{srv.port}", max_reconnect_attempts=0, connect_timeout=2)
            try:
                si = await js_api(nc, "$JS.API.STREAM.INFO.HIST", {}, timeout=5)
                if "state" in si and si["state"]["messages"] >= expect:
                    return time.perf_counter() - t0, nc, si
            except Exception:
                pass
            await nc.close()
        except Exception:
            pass
        await asyncio.sleep(0.05)
    return None, None, None


async def restart_checks(a, res, srv, first_seq, topic_seqs, msgs):
    rnd = random.Random(2)
    for how, sig in (("sigterm", signal.SIGTERM), ("sigkill", signal.SIGKILL)):
        t = time.perf_counter()
        srv.stop(sig)
        stop_s = time.perf_counter() - t
        secs, nc, si = await wait_stream(srv, msgs)
        out = {"stop_s": round(stop_s, 2), "ready_s": round(secs, 2) if secs else None}
        if nc:
            out["msgs"] = si["state"]["messages"]
            out["rss"] = rss_bytes(srv.proc.pid)
            h = heap_stats(srv.prof)
            out["heap_inuse"] = h.get("HeapInuse")
            saved = a.samples
            a.samples = min(a.samples, 2000)
            await replay_nats(a, res, nc, "HIST", first_seq, topic_seqs, rnd, "_after_" + how)
            a.samples = saved
            await nc.close()
        res["restart_" + how] = out


def run_nats(a, res):
    tmp = tempfile.mkdtemp(prefix="hs_nats_", dir=a.tmpdir)
    srv = NatsServer(a, tmp)
    srv.start()
    try:
        first_seq, topic_seqs, msgs = asyncio.run(run_nats_async(a, res, srv))
        if a.restart and a.storage == "file":
            asyncio.run(restart_checks(a, res, srv, first_seq, topic_seqs, msgs))
    finally:
        srv.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engine", choices=["redis", "nats"], required=True)
    ap.add_argument("--redis-bin", default=shutil.which("redis-server") or "/usr/bin/redis-server")
    ap.add_argument("--nats-bin", default=shutil.which("nats-server") or "/usr/sbin/nats-server")
    ap.add_argument("--storage", choices=["memory", "file"], default="memory", help="JetStream storage")
    ap.add_argument("--node-bytes", type=int, default=0, help="Redis stream-node-max-bytes (0 = default 4096)")
    ap.add_argument("--users", type=int, default=10000)
    ap.add_argument("--msgs", type=int, default=1, help="messages per user")
    ap.add_argument("--payload", type=int, default=256)
    ap.add_argument("--max-per-user", type=int, default=100)
    ap.add_argument("--topic", action="store_true", help="one stream/subject holding --users messages")
    ap.add_argument("--topic-max", type=int, default=100000)
    ap.add_argument("--age", type=int, default=900, help="window age in s (EXPIRE / max_age)")
    ap.add_argument("--dup-window", type=int, default=None, help="JetStream duplicate_window s")
    ap.add_argument("--batch", type=int, default=256, help="Redis pipeline depth / JetStream acks in flight")
    ap.add_argument("--samples", type=int, default=10000, help="replay samples")
    ap.add_argument("--serial", type=int, default=5000, help="serial appends for latency")
    ap.add_argument("--consumer-samples", type=int, default=0)
    ap.add_argument("--no-batch-get", dest="batch_get", action="store_false")
    ap.add_argument("--restart", action="store_true")
    ap.add_argument("--expire-check", type=int, default=0)
    ap.add_argument("--deadline", type=float, default=600)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--tmpdir", default=None)
    ap.add_argument("--label", default="")
    ap.add_argument("--out", default=None, help="append the JSON line here")
    a = ap.parse_args()
    res = {"label": a.label, "engine": a.engine, "args": {k: v for k, v in vars(a).items() if k not in ("out",)},
           "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "loadavg_start": os.getloadavg()[0]}
    t = time.perf_counter()
    try:
        (run_redis if a.engine == "redis" else run_nats)(a, res)
    except Exception as e:  # record and go on
        import traceback
        res["error"] = f"{type(e).__name__}: {e}"
        traceback.print_exc()
    res["wall_s"] = round(time.perf_counter() - t, 1)
    res["loadavg_end"] = os.getloadavg()[0]
    line = json.dumps(res)
    print(line, flush=True)
    if a.out:
        with open(a.out, "a") as f:
            f.write(line + "\n")


if __name__ == "__main__":
    main()
