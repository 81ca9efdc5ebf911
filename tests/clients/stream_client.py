#!/usr/bin/python3
"""A client of streamed HTTP/1.1 responses (chunked, headers first, then tokens), the way
OpenAI-compatible LLM clients read them: Python `requests` with `stream=True`, one `Session`
(urllib3's keep-alive pool) for `per_session` requests, then a new one.

  stream_client.py URL REQUESTS PER_SESSION SECONDS

Prints one JSON line: per version (the `X-Served-By` header), the time to the first body chunk
(the first token) and to the end, in ms, and the failures.
"""

import json
import sys
import time

import requests


def main():
    url, total, per_session, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    deadline = time.monotonic() + seconds
    seen = {}
    failures = []
    made = 0
    while made < total and time.monotonic() < deadline:
        with requests.Session() as session:
            for _ in range(per_session):
                if made >= total or time.monotonic() >= deadline:
                    break
                made += 1
                started = time.monotonic()
                try:
                    with session.get(url, stream=True, timeout=10) as response:
                        chunks = response.iter_content(chunk_size=None)
                        next(chunks)
                        first = time.monotonic()
                        for _ in chunks:
                            pass
                        end = time.monotonic()
                    version = response.headers.get("X-Served-By", "?")
                    times = seen.setdefault(version, {"first_token_ms": [], "whole_ms": []})
                    times["first_token_ms"].append((first - started) * 1000.0)
                    times["whole_ms"].append((end - started) * 1000.0)
                except Exception as error:  # a failure is reported, not fatal
                    failures.append(repr(error))
    print(json.dumps({"versions": seen, "failures": failures}), flush=True)


if __name__ == "__main__":
    main()
