"""A model-serving client as users run them: one `requests.Session` (urllib3's connection
pool) shared by worker threads, each sending a request, then thinking, then the next one, on
keep-alive connections. Prints one JSON line per request: the wall-clock time it was answered
(or failed), the version that answered (the body), and the error if it failed.

usage: pooled_client.py URL WORKERS THINK_MS SECONDS
"""

import json
import sys
import threading
import time

import requests
from requests.adapters import HTTPAdapter


def main():
    url, workers, think_ms, seconds = (
        sys.argv[1],
        int(sys.argv[2]),
        int(sys.argv[3]),
        float(sys.argv[4]),
    )
    session = requests.Session()
    # As many pooled connections as workers, kept between requests; no retries, so every
    # failure is seen.
    adapter = HTTPAdapter(pool_connections=1, pool_maxsize=workers, max_retries=0)
    session.mount("http://", adapter)
    deadline = time.time() + seconds
    lock = threading.Lock()

    def worker():
        while time.time() < deadline:
            try:
                response = session.get(url, timeout=5)
                line = {"at": time.time(), "version": response.text.strip(), "status": response.status_code}
            except Exception as error:  # noqa: BLE001 - every failure is reported as it is
                line = {"at": time.time(), "error": f"{type(error).__name__}: {error}"}
            with lock:
                print(json.dumps(line), flush=True)
            time.sleep(think_ms / 1000.0)

    threads = [threading.Thread(target=worker) for _ in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


if __name__ == "__main__":
    main()
