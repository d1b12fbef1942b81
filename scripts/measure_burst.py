#!/usr/bin/env python3
"""Scripted measurement of a payment burst on a local devnet (release build).

Starts `timed devnet` with N nodes, waits until they are meshed, then has
node 1's wallet pay node 2 as fast as the RPC accepts: SEQ payments one
after the other, then CONC payments from CLIENTS concurrent clients. Reports
how many were accepted, how long the RPC took, the time to finality on each
node (each node's own `finality_ms`, first sight to 2/3 of the weight), the
time from `sendtoaddress` to the payment being in a block on every node, and
whether any connection was dropped or any peer banned.

Usage: cargo build --release && scripts/measure_burst.py [--nodes 3] [--seq 80] [--conc 300]
Only loopback addresses (127.7.x.y) are used; the devnet is stopped at the end.
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

BIN = os.path.join(os.path.dirname(__file__), "..", "target", "release", "timed")


def call(rpc, method, params=None):
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params or []}).encode()
    req = urllib.request.Request(f"http://{rpc}/", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        reply = json.loads(resp.read())
    if reply.get("error"):
        raise RuntimeError(reply["error"])
    return reply["result"]


def wait(what, pred, limit=120.0):
    deadline = time.time() + limit
    while time.time() < deadline:
        try:
            value = pred()
            if value:
                return value
        except Exception:
            pass
        time.sleep(0.05)
    sys.exit(f"timed out waiting for {what}")


def percentiles(values):
    values = sorted(values)
    if not values:
        return "n/a"
    pick = lambda q: values[min(len(values) - 1, int(q * len(values)))]
    return f"p50 {pick(0.5):.3f} s, p95 {pick(0.95):.3f} s, max {values[-1]:.3f} s"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--seq", type=int, default=80)
    parser.add_argument("--conc", type=int, default=300)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--block-interval", type=int, default=2)
    args = parser.parse_args()
    if not os.path.exists(BIN):
        sys.exit(f"{BIN} not found: run cargo build --release first")

    workdir = tempfile.mkdtemp(prefix="timed-burst-")
    first_ip = f"127.7.{args.nodes}.1"
    devnet = subprocess.Popen(
        [BIN, "devnet", "--nodes", str(args.nodes), "--block-interval", str(args.block_interval),
         "--first-ip", first_ip, "--dir", os.path.join(workdir, "devnet")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rpcs = [f"127.7.{args.nodes}.{i}:24201" for i in range(1, args.nodes + 1)]
    try:
        for rpc in rpcs:
            wait(f"{rpc} meshed", lambda: call(rpc, "getconnectioncount") == args.nodes - 1)
        wait("a first block", lambda: call(rpcs[0], "getblockcount") >= 1)
        to = call(rpcs[1], "listunspent")[0]["address"]
        before = [sorted((p["id"], p["conn_id"]) for p in call(r, "getpeerinfo")) for r in rpcs]

        sent = {}
        start = time.time()
        for _ in range(args.seq):
            t = time.time()
            sent[call(rpcs[0], "sendtoaddress", [to, "1", False, True])] = t
        seq_time = time.time() - start

        lock = threading.Lock()
        refused = []

        def client(n):
            for _ in range(n):
                t = time.time()
                try:
                    txid = call(rpcs[0], "sendtoaddress", [to, "0.5", False, True])
                    with lock:
                        sent[txid] = t
                except Exception as e:  # counted, not raised
                    with lock:
                        refused.append(str(e))

        per = args.conc // args.clients
        threads = [threading.Thread(target=client, args=(per,)) for _ in range(args.clients)]
        start = time.time()
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        conc_time = time.time() - start

        # Time to block on every node: poll until each payment is in a block
        # everywhere (1 pass over the pending set per round).
        in_block = {}
        pending = {(txid, rpc) for txid in sent for rpc in rpcs}
        finality_ms = []
        deadline = time.time() + 300
        while pending and time.time() < deadline:
            for txid, rpc in list(pending):
                try:
                    tx = call(rpc, "gettransaction", [txid])
                except RuntimeError:
                    continue  # not there yet
                if tx["status"] == "block" and tx["final"]:
                    pending.discard((txid, rpc))
                    in_block[txid] = max(in_block.get(txid, 0), time.time())
                    ms = tx["votes"].get("finality_ms")
                    if ms is not None:
                        finality_ms.append(ms / 1000.0)
            time.sleep(0.05)
        after = [sorted((p["id"], p["conn_id"]) for p in call(r, "getpeerinfo")) for r in rpcs]
        bans = [call(r, "listbanned") for r in rpcs]

        print(f"nodes: {args.nodes}, block interval {args.block_interval} s")
        print(f"accepted: {len(sent)} of {args.seq + per * args.clients} payments "
              f"({len(refused)} refused{': ' + refused[0] if refused else ''})")
        print(f"sequential: {args.seq} in {seq_time:.3f} s ({args.seq / seq_time:.0f}/s)")
        print(f"concurrent: {per * args.clients} from {args.clients} clients in {conc_time:.3f} s "
              f"({per * args.clients / conc_time:.0f}/s)")
        print(f"time to finality (each node, first sight to 2/3 of the weight): {percentiles(finality_ms)}")
        print(f"time from sendtoaddress to in a block on every node: "
              f"{percentiles([in_block[t] - sent[t] for t in in_block])}")
        print(f"not in a block after 300 s: {len(pending)}")
        print(f"connections kept: {before == after}; bans: {sum(len(b) for b in bans)}")
    finally:
        devnet.send_signal(signal.SIGINT)
        try:
            devnet.wait(timeout=30)
        except subprocess.TimeoutExpired:
            devnet.kill()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
