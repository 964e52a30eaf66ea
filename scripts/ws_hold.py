#!/usr/bin/env python3
"""Holds N idle WebSocket connections to c10m and counts the broadcasts they receive.

Used by scripts/c30k.sh, which runs several of these (each process is limited to ~19,000
file descriptors here) so one server holds more connections than one process could.

  ws_hold.py --host 127.0.0.1 --port 8080 --source 127.0.0.10 --conns 10000 \
             --expect 1 --hold-s 120

Prints `up N` once all connections are open, then `got N` when every connection has
received --expect messages (or `timeout ...` when --hold-s passes first), and exits;
with --expect 0 the connections stay idle, unread, for --hold-s. With
--until-close it waits for each connection's close frame instead and also prints
`closes N goaways M first T last T` (Unix times of the first and last close). With
--tls-ca CA.pem it speaks TLS (wss), trusting that CA.
"""
import argparse
import asyncio
import base64
import os
import ssl
import sys
import time


async def read_frame(reader):
    """One unmasked server frame: (opcode, payload)."""
    b0, b1 = await reader.readexactly(2)
    n = b1 & 0x7F
    if n == 126:
        n = int.from_bytes(await reader.readexactly(2), "big")
    elif n == 127:
        n = int.from_bytes(await reader.readexactly(8), "big")
    return b0 & 0x0F, await reader.readexactly(n)


async def one(args, idx, up, got, done_events, closes):
    key = base64.b64encode(os.urandom(16)).decode()
    reader, writer = await asyncio.open_connection(
        args.host, args.port, local_addr=(args.source, 0), ssl=args.ssl)
    user = f"{args.user_prefix}{idx}"
    writer.write((f"GET /ws?user={user} HTTP/1.1\r\nHost: {args.host}\r\n"
                  f"Upgrade: websocket\r\nConnection: Upgrade\r\n"
                  f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 101"):
        raise RuntimeError(head[:40])
    up[0] += 1
    if up[0] == args.conns:
        print(f"up {up[0]}", flush=True)
    seen = 0
    if args.expect == 0 and not args.until_close:
        # Idle holding (memory measurements): stay connected, read nothing, until killed.
        await asyncio.sleep(args.hold_s)
        return
    while args.until_close:
        op, payload = await read_frame(reader)
        if op == 0x8:
            code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else None
            closes.append((time.time(), code, payload[2:].decode("utf-8", "replace")))
            got[0] += 1
            if got[0] == args.conns:
                done_events.set()
            return
    while seen < args.expect:
        op, payload = await read_frame(reader)
        if op == 0x9:  # ping: answer with a masked pong
            mask = os.urandom(4)
            body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
            writer.write(bytes([0x8A, 0x80 | len(payload)]) + mask + body)
        elif op in (0x1, 0x2):
            seen += 1
    got[0] += 1
    if got[0] == args.conns:
        done_events.set()
    # Stay connected until the whole run ends.
    await asyncio.sleep(args.hold_s)


async def main(args):
    up, got = [0], [0]
    closes = []
    done = asyncio.Event()
    tasks = []
    for i in range(args.conns):
        tasks.append(asyncio.ensure_future(one(args, args.first + i, up, got, done, closes)))
        if i % 500 == 499:
            await asyncio.sleep(0.05)
    try:
        await asyncio.wait_for(done.wait(), timeout=args.hold_s)
        print(f"got {got[0]}", flush=True)
        if args.until_close:
            goaways = sum(1 for _, code, reason in closes
                          if code == 1001 and '"goaway":true' in reason)
            first = min(t for t, _, _ in closes)
            last = max(t for t, _, _ in closes)
            print(f"closes {len(closes)} goaways {goaways} first {first:.3f} last {last:.3f}",
                  flush=True)
    except asyncio.TimeoutError:
        failed = sum(1 for t in tasks if t.done() and t.exception())
        print(f"timeout up={up[0]} got={got[0]} failed={failed}", flush=True)
        for t in tasks:
            if t.done() and t.exception():
                print(f"first error: {t.exception()!r}", file=sys.stderr)
                break
    # Hold until told to stop (stdin closes) or the hold time passes.
    for t in tasks:
        t.cancel()


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--source", default="127.0.0.1")
    p.add_argument("--conns", type=int, default=1000)
    p.add_argument("--first", type=int, default=0)
    p.add_argument("--user-prefix", default="u")
    p.add_argument("--expect", type=int, default=1)
    p.add_argument("--hold-s", type=float, default=120)
    p.add_argument("--until-close", action="store_true",
                   help="wait for the server's close frame on every connection and report "
                        "close codes and goaways (instead of counting --expect messages)")
    p.add_argument("--tls-ca", help="speak TLS, trusting the CA certificate in this PEM file")
    a = p.parse_args()
    a.ssl = None
    if a.tls_ca:
        a.ssl = ssl.create_default_context(cafile=a.tls_ca)
        a.ssl.set_alpn_protocols(["http/1.1"])
    asyncio.run(main(a))
