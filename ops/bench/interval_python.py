#!/usr/bin/env python3
"""The seed design of interval strategies, reproduced to compare with the engine:
one Python service, every strategy an object in it, a scheduler thread that hands
each due execution to a thread pool of 5 workers (the seed's
`max_concurrent_executions`). Python 3.11, standard library only.

It measures, with N interval strategies every 1 s and a no-op step:

- memory: the service's resident set (VmRSS) with N strategies scheduled, over N,
  and with none (the interpreter's own floor);
- lateness: an execution's start minus its due time, p50 / p99 / max;
- "limits": what that design can do for one strategy's limit. `resource.setrlimit`
  is process-wide: a limit set "for" one strategy from its worker thread is the
  limit of every strategy (printed: the same value read from every worker);
- a CPU spinner beside them (one strategy whose step spins for 2 s): the others'
  lateness, with the GIL and one of the 5 workers taken;
- a memory hog beside them (one strategy allocating 8 MB every 50 ms and keeping
  it), with the only limit that design can have for it — the whole service's (a
  memory cgroup of --service-limit-mb, as a container or systemd's MemoryMax would
  give it): the kernel kills the whole service, so every strategy stops.

    python3 ops/bench/interval_python.py [--strategies 1000] [--window 20]

The hog part needs cgroup v1's memory controller mounted at /sys/fs/cgroup/memory
and root (as on this project's machines); without them it says so and skips it.
"""

import argparse
import heapq
import json
import os
import resource
import signal
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

WORKERS = 5


def rss_mb(pid="self"):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def percentile(values, p):
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = max(1, min(len(ordered), int(-(-p * len(ordered) // 1))))
    return ordered[k - 1]


class IntervalStrategy:
    """What the seed's strategy objects hold: an id, a name, a config, counters."""

    def __init__(self, index, interval_s=1.0, step=None):
        self.id = str(uuid.uuid4())
        self.name = f"py-{index:04d}"
        self.config = {"interval_ms": 3_600_000}
        self.interval_s = interval_s
        self.executions = 0
        self.skipped = 0
        self.running = False
        self.step = step

    def execute(self):
        self.executions += 1
        if self.step:
            self.step(self)
        return {"ok": True, "message": f"execution {self.executions}"}


class Service:
    """The single service: a heap of (due, seq, strategy), one scheduler thread, a
    pool of WORKERS threads. A due execution waits for a worker (as the engine's
    --max-concurrent-executions)."""

    def __init__(self, strategies):
        self.strategies = strategies
        self.pool = ThreadPoolExecutor(max_workers=WORKERS)
        self.stop = threading.Event()
        self.lateness = []  # (due, start - due, name)
        self.lock = threading.Lock()
        now = time.time()
        # Spread the first due times over the interval, as the engine does.
        self.heap = [
            (now + 1.0 + i / max(1, len(strategies)), i, s)
            for i, s in enumerate(strategies)
        ]
        heapq.heapify(self.heap)
        self.thread = threading.Thread(target=self.schedule, daemon=True)

    def run_one(self, strategy, due):
        started = time.time()
        with self.lock:
            self.lateness.append((due, (started - due) * 1000.0, strategy.name))
        try:
            strategy.execute()
        except MemoryError:
            pass
        finally:
            strategy.running = False

    def schedule(self):
        while not self.stop.is_set():
            due, seq, strategy = self.heap[0]
            wait = due - time.time()
            if wait > 0:
                self.stop.wait(min(wait, 0.05))
                continue
            heapq.heapreplace(self.heap, (due + strategy.interval_s, seq, strategy))
            if strategy.running:
                # One execution of a strategy at a time, as the engine: skipped.
                strategy.skipped += 1
                continue
            strategy.running = True
            self.pool.submit(self.run_one, strategy, due)

    def start(self):
        self.thread.start()

    def shutdown(self):
        self.stop.set()
        self.thread.join()
        self.pool.shutdown(wait=False, cancel_futures=True)


def lateness_of(service, since, until, names=None):
    with service.lock:
        return [
            ms
            for due, ms, name in service.lateness
            if since <= due < until and (names is None or name in names)
        ]


def describe(values):
    return {
        "n": len(values),
        "p50_ms": round(percentile(values, 0.50), 3),
        "p99_ms": round(percentile(values, 0.99), 3),
        "max_ms": round(max(values), 3) if values else None,
    }


def run_service(n, window, extra=None):
    """N no-op interval strategies (and `extra`, a runaway) for `window` seconds
    after 2 s of settling: lateness of the N, RSS."""
    strategies = [IntervalStrategy(i) for i in range(n)]
    if extra:
        strategies.append(extra)
    service = Service(strategies)
    service.start()
    time.sleep(2.0)
    since = time.time()
    time.sleep(window)
    until = time.time()
    names = {s.name for s in strategies[:n]}
    result = describe(lateness_of(service, since, until, names))
    result["expected"] = n * int(window)
    result["rss_mb"] = round(rss_mb(), 1)
    service.shutdown()
    return result


def memory_figures(n):
    """VmRSS with none and with N strategies scheduled (in fresh interpreters, so
    one measurement does not inherit the other's heap)."""
    out = {}
    for count in (0, n):
        code = (
            "import sys, time; sys.path.insert(0, %r); import interval_python as b\n"
            "s = b.Service([b.IntervalStrategy(i) for i in range(%d)]) if %d else None\n"
            "s and s.start(); time.sleep(3); print(b.rss_mb())\n"
            "s and s.shutdown()\n"
        ) % (os.path.dirname(os.path.abspath(__file__)), count, count)
        text = subprocess.check_output([sys.executable, "-c", code], text=True)
        out[count] = float(text.strip().splitlines()[-1])
    return {
        "rss_mb_empty": round(out[0], 1),
        "rss_mb_with_n": round(out[n], 1),
        "rss_kb_per_strategy": round(out[n] * 1024 / n, 1),
        "marginal_kb_per_strategy": round((out[n] - out[0]) * 1024 / n, 2),
    }


def rlimit_is_process_wide():
    """Set RLIMIT_AS "for strategy A" from one worker; read it from the others."""
    before = resource.getrlimit(resource.RLIMIT_AS)
    seen = []
    barrier = threading.Barrier(WORKERS)

    def worker(i):
        barrier.wait()
        if i == 0:
            resource.setrlimit(resource.RLIMIT_AS, (8 << 30, before[1]))
        time.sleep(0.1)
        seen.append((i, resource.getrlimit(resource.RLIMIT_AS)[0]))

    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        list(pool.map(worker, range(WORKERS)))
    resource.setrlimit(resource.RLIMIT_AS, before)
    same = len({limit for _, limit in seen}) == 1
    return {
        "set_by_worker": 0,
        "limit_read_by_each_worker": sorted(seen),
        "process_wide": same,
    }


def spin(_strategy):
    end = time.time() + 2.0
    x = 0
    while time.time() < end:
        x += 1


HOG_CHUNKS = []


def hog_service_main(n, window):
    """Run in a child put in a memory cgroup: N strategies and the hog."""

    def hog(_strategy):
        for _ in range(20):  # 8 MB every 50 ms for 1 s of each execution
            HOG_CHUNKS.append(b"\x01" * (8 << 20))  # filled: resident, not just reserved
            time.sleep(0.05)

    extra = IntervalStrategy(n, step=hog)
    extra.name = "py-hog"
    strategies = [IntervalStrategy(i) for i in range(n)] + [extra]
    service = Service(strategies)
    service.start()
    started = time.time()
    while time.time() - started < window:
        executed = sum(s.executions for s in strategies[:n])
        print(json.dumps({"t": round(time.time() - started, 2), "executed": executed}), flush=True)
        time.sleep(0.5)
    service.shutdown()


def hog_part(n, window, limit_mb):
    base = "/sys/fs/cgroup/memory"
    if not os.path.exists(os.path.join(base, "cgroup.procs")) or os.geteuid() != 0:
        return {"skipped": "needs cgroup v1's memory controller and root"}
    group = os.path.join(base, f"interval-python-{uuid.uuid4().hex[:8]}")
    os.mkdir(group)
    try:
        with open(os.path.join(group, "memory.limit_in_bytes"), "w") as f:
            f.write(str(limit_mb << 20))
        code = (
            "import sys; sys.path.insert(0, %r); import interval_python as b; b.hog_service_main(%d, %d)"
        ) % (os.path.dirname(os.path.abspath(__file__)), n, window)
        child = subprocess.Popen(
            [sys.executable, "-c", code],
            stdout=subprocess.PIPE,
            text=True,
            preexec_fn=lambda: open(os.path.join(group, "cgroup.procs"), "w").write(str(os.getpid())),
        )
        started = time.time()
        last = None
        for line in child.stdout:
            last = json.loads(line)
        code_ = child.wait()
        lived = time.time() - started
        with open(os.path.join(group, "memory.oom_control")) as f:
            oom = dict(line.split() for line in f)
        killed = code_ == -signal.SIGKILL
        return {
            "service_limit_mb": limit_mb,
            "exit": "SIGKILL (the kernel's OOM killer)" if killed else f"code {code_}",
            "oom_kills": int(oom.get("oom_kill", 0)),
            "service_lived_s": round(lived, 1),
            "executions_of_the_others_before_death": last["executed"] if last else 0,
            "strategies_left_running": 0 if killed else n,
        }
    finally:
        for _ in range(50):
            try:
                os.rmdir(group)
                break
            except OSError:
                time.sleep(0.1)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--strategies", type=int, default=1000)
    parser.add_argument("--window", type=int, default=20, help="seconds measured per part")
    parser.add_argument("--service-limit-mb", type=int, default=512)
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    n = args.strategies
    print(f"Python {sys.version.split()[0]}, {n} interval strategies at 1 s, {WORKERS} workers")
    figures = {"python": sys.version.split()[0], "strategies": n, "workers": WORKERS}

    figures["memory"] = memory_figures(n)
    print("memory:", figures["memory"])
    figures["rlimit"] = rlimit_is_process_wide()
    print("rlimit set from worker 0, read from each:", figures["rlimit"])
    figures["quiet"] = run_service(n, args.window)
    print("lateness, quiet:", figures["quiet"])
    spinner = IntervalStrategy(n, step=spin)
    spinner.name = "py-spinner"
    figures["spinner"] = run_service(n, args.window, extra=spinner)
    print("lateness of the others, with a spinner:", figures["spinner"])
    figures["hog"] = hog_part(n, args.window, args.service_limit_mb)
    print("memory hog, the service in a memory group:", figures["hog"])
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=2)
            f.write("\n")


if __name__ == "__main__":
    main()
