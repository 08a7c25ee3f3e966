#!/usr/bin/env python3
"""The same SMA crossover backtest as the engine's `sma_crossover` run, written as
what a user would pick instead: a plain Python loop, and pandas vectorised.

Reads the CSV (`ts,close`) that `run_bench --csv PATH` writes, runs both over the
same closes (fast 5, slow 20, order_qty 1, shorts allowed, a crossover needs two
observations of the averages, the position moved straight to its target at the
close) and prints bars/s of each, the best of --repeat. Both must end with the same
number of orders and the same PnL as each other.

    python3 ops/bench/sma_python.py /tmp/bench.csv [--repeat 3]

pandas is installed with pip if it is missing.
"""

import argparse
import subprocess
import sys
import time

FAST, SLOW, QTY = 5, 20, 1.0


def ensure_pandas():
    try:
        import pandas  # noqa: F401
    except ImportError:
        print("pandas is missing: installing it with pip", file=sys.stderr)
        subprocess.check_call(
            [sys.executable, "-m", "pip", "install", "--quiet", "pandas"]
        )
    import pandas

    return pandas


def read_closes(path):
    closes = []
    with open(path) as f:
        next(f)
        for line in f:
            closes.append(float(line.split(",", 1)[1]))
    return closes


def plain_loop(closes):
    """Event by event, as the strategy does: rolling sums, the side, the target."""
    fast_sum = slow_sum = 0.0
    side = 0
    position = 0.0
    cash = 0.0
    orders = 0
    for i, price in enumerate(closes):
        fast_sum += price
        slow_sum += price
        if i >= FAST:
            fast_sum -= closes[i - FAST]
        if i >= SLOW:
            slow_sum -= closes[i - SLOW]
        if i + 1 < SLOW:
            continue
        fast = fast_sum / FAST
        slow = slow_sum / SLOW
        now = 1 if fast > slow else (-1 if fast < slow else side)
        if side != 0 and now != side:
            target = QTY if now > 0 else -QTY
            delta = target - position
            cash -= delta * price
            position = target
            orders += 1
        side = now
    pnl = cash + position * closes[-1]
    return orders, pnl


def vectorised(pd, closes):
    """pandas (and its numpy): rolling means, the side carried forward over equal
    averages, crossovers where a known side changes, the target held until the next."""
    import numpy as np

    s = pd.Series(closes)
    prices = s.to_numpy()
    diff = (s.rolling(FAST).mean() - s.rolling(SLOW).mean()).to_numpy()
    sign = np.sign(diff)
    side = pd.Series(np.where(sign == 0, np.nan, sign)).ffill().to_numpy()
    before = np.empty_like(side)
    before[0] = np.nan
    before[1:] = side[:-1]
    changed = ~np.isnan(before) & ~np.isnan(side) & (side != before)
    target = pd.Series(np.where(changed, side * QTY, np.nan)).ffill().fillna(0.0).to_numpy()
    trades = np.diff(target, prepend=0.0)
    cash = -(trades * prices).sum()
    pnl = cash + target[-1] * prices[-1]
    return int(changed.sum()), float(pnl)


def best(repeat, f, *args):
    """The best wall time of `repeat` runs, and the CPU time of one run on average
    (on a shared machine the wall time also counts other processes' turns)."""
    times, result = [], None
    cpu_started = time.process_time()
    for _ in range(repeat):
        started = time.perf_counter()
        result = f(*args)
        times.append(time.perf_counter() - started)
    cpu = (time.process_time() - cpu_started) / repeat
    return min(times), cpu, result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("csv", help="ts,close CSV written by run_bench --csv")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    pd = ensure_pandas()
    closes = read_closes(args.csv)
    n = len(closes)
    t, cpu, (orders, pnl) = best(args.repeat, plain_loop, closes)
    print(
        f"plain Python loop: {n} bars, {n / t / 1e6:.2f} M bars/s by wall time, "
        f"{n / cpu / 1e6:.2f} M bars/s by CPU time ({orders} orders, pnl {pnl:.4f})"
    )
    t, cpu, (v_orders, v_pnl) = best(args.repeat, vectorised, pd, closes)
    print(
        f"pandas vectorised: {n} bars, {n / t / 1e6:.2f} M bars/s by wall time, "
        f"{n / cpu / 1e6:.2f} M bars/s by CPU time ({v_orders} orders, pnl {v_pnl:.4f})"
    )
    if orders != v_orders or abs(pnl - v_pnl) > 1e-6 * max(1.0, abs(pnl)):
        print("the two disagree: a bug in one of them", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
