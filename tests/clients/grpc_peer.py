#!/usr/bin/python3
"""A real gRPC server and client (Debian's python3-grpcio, the C-core library Triton's and
TF Serving's Python clients use), without generated code: the messages are raw bytes.

  grpc_peer.py server ADDR VERSION [--delay-ms N] [--fail CODE]
      Serves model.Model/Predict (unary), /Stream (server streaming: the request says how
      many messages) and /Slow (unary, sleeps the seconds the request says). A request
      `fail:CODE` fails with that status code; --fail fails every call. Prints `listening`.

  grpc_peer.py client TARGET [--calls N] [--per-channel K] [--concurrency C]
                             [--method M] [--request BYTES] [--deadline S] [--cancel-after S]
                             [--seconds S] [--think-ms T]
      Makes calls on channels it keeps for K calls each (C at once on one channel:
      multiplexed), then prints one JSON line: per version, the calls answered OK, their
      latencies (ms) and the wall-clock time of the last, and the failed calls by status code.
"""

import argparse
import json
import sys
import threading
import time
from concurrent import futures

import grpc

SERVICE = "model.Model"


def serve(args):
    fail = getattr(grpc.StatusCode, args.fail) if args.fail else None

    def pause():
        if args.delay_ms:
            time.sleep(args.delay_ms / 1000.0)

    def check(request, context):
        text = request.decode(errors="replace")
        code = fail
        if text.startswith("fail:"):
            code = getattr(grpc.StatusCode, text[5:])
        if code is not None:
            context.abort(code, args.version)

    def predict(request, context):
        pause()
        check(request, context)
        return args.version.encode()

    def stream(request, context):
        pause()
        check(request, context)
        count = int(request.decode() or "3")
        for i in range(count):
            yield f"{args.version} {i}".encode()

    def slow(request, context):
        time.sleep(float(request.decode() or "1"))
        return args.version.encode()

    handler = grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Predict": grpc.unary_unary_rpc_method_handler(predict),
            "Stream": grpc.unary_stream_rpc_method_handler(stream),
            "Slow": grpc.unary_unary_rpc_method_handler(slow),
        },
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=64), handlers=[handler])
    if server.add_insecure_port(args.addr) == 0:
        sys.exit(f"cannot listen on {args.addr}")
    server.start()
    print("listening", flush=True)
    server.wait_for_termination()


class Tally:
    def __init__(self):
        self.lock = threading.Lock()
        self.ok = {}
        self.latency_ms = {}
        self.codes = {}
        self.calls = 0
        self.last_ok = {}

    def answered(self, version, ms):
        with self.lock:
            self.calls += 1
            self.ok[version] = self.ok.get(version, 0) + 1
            self.last_ok[version] = time.time()
            self.latency_ms.setdefault(version, []).append(round(ms, 3))

    def failed(self, version, code):
        with self.lock:
            self.calls += 1
            per = self.codes.setdefault(version, {})
            per[code] = per.get(code, 0) + 1


def one_call(channel, args, tally):
    method = f"/{SERVICE}/{args.method}"
    request = args.request.encode()
    started = time.monotonic()
    try:
        if args.method == "Stream":
            call = channel.unary_stream(method)(request, timeout=args.deadline)
            version = None
            for message in call:
                version = version or message.decode().split()[0]
            tally.answered(version or "?", (time.monotonic() - started) * 1000.0)
        elif args.cancel_after is not None:
            future = channel.unary_unary(method).future(request, timeout=args.deadline)
            time.sleep(args.cancel_after)
            future.cancel()
            try:
                version = future.result().decode()
                tally.answered(version, (time.monotonic() - started) * 1000.0)
            except grpc.FutureCancelledError:
                tally.failed("?", "CANCELLED")
        else:
            version = channel.unary_unary(method)(request, timeout=args.deadline).decode()
            tally.answered(version, (time.monotonic() - started) * 1000.0)
    except grpc.RpcError as error:
        # The server names its version in the details of the errors it sends.
        details = error.details() or ""
        version = details if details in ("blue", "green") else "?"
        if version == "?" and error.code() == grpc.StatusCode.UNAVAILABLE:
            # The transport's own words: what a person debugging a failed call needs.
            print(f"grpc_peer: {error.code().name}: {details}", file=sys.stderr, flush=True)
        tally.failed(version, error.code().name)


def run_client(args):
    tally = Tally()
    deadline = time.monotonic() + args.seconds
    made = 0
    while made < args.calls and time.monotonic() < deadline:
        with grpc.insecure_channel(args.target) as channel:
            on_channel = 0
            while on_channel < args.per_channel and made < args.calls:
                if time.monotonic() >= deadline:
                    break
                batch = min(args.concurrency, args.calls - made, args.per_channel - on_channel)
                threads = [
                    threading.Thread(target=one_call, args=(channel, args, tally))
                    for _ in range(batch)
                ]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                made += batch
                on_channel += batch
                if args.think_ms:
                    time.sleep(args.think_ms / 1000.0)
    print(
        json.dumps(
            {
                "calls": tally.calls,
                "ok": tally.ok,
                "codes": tally.codes,
                "latency_ms": tally.latency_ms,
                "last_ok": tally.last_ok,
            }
        ),
        flush=True,
    )


def main():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="mode", required=True)
    s = sub.add_parser("server")
    s.add_argument("addr")
    s.add_argument("version")
    s.add_argument("--delay-ms", type=float, default=0.0)
    s.add_argument("--fail", default=None)
    c = sub.add_parser("client")
    c.add_argument("target")
    c.add_argument("--calls", type=int, default=100)
    c.add_argument("--per-channel", type=int, default=5)
    c.add_argument("--concurrency", type=int, default=1)
    c.add_argument("--method", default="Predict")
    c.add_argument("--request", default="")
    c.add_argument("--deadline", type=float, default=10.0)
    c.add_argument("--cancel-after", type=float, default=None)
    c.add_argument("--seconds", type=float, default=60.0)
    c.add_argument("--think-ms", type=float, default=0.0)
    args = parser.parse_args()
    if args.mode == "server":
        serve(args)
    else:
        run_client(args)


if __name__ == "__main__":
    main()
