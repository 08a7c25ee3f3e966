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
    """pandas: rolling means, the side carried forward, crossovers where it changes."""
    s = pd.Series(closes)
    fast = s.rolling(FAST).mean()
    slow = s.rolling(SLOW).mean()
    side = pd.Series(0, index=s.index, dtype="int8")
    side[fast > slow] = 1
    side[fast < slow] = -1
    side = side.replace(0, pd.NA).ffill().fillna(0).astype("int8")
    side[slow.isna()] = 0
    seen = side.ne(0)
    changed = side.ne(side.shift(1)) & seen & side.shift(1).fillna(0).ne(0)
    target = side.where(changed).ffill().fillna(0) * QTY
    trades = target.diff().fillna(target.iloc[0])
    cash = -(trades * s).sum()
    pnl = cash + target.iloc[-1] * s.iloc[-1]
    return int(changed.sum()), float(pnl)


def best(repeat, f, *args):
    times, result = [], None
    for _ in range(repeat):
        started = time.perf_counter()
        result = f(*args)
        times.append(time.perf_counter() - started)
    return min(times), result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("csv", help="ts,close CSV written by run_bench --csv")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    pd = ensure_pandas()
    closes = read_closes(args.csv)
    n = len(closes)
    t, (orders, pnl) = best(args.repeat, plain_loop, closes)
    print(f"plain Python loop: {n} bars, {n / t / 1e6:.2f} M bars/s ({orders} orders, pnl {pnl:.4f})")
    t, (v_orders, v_pnl) = best(args.repeat, vectorised, pd, closes)
    print(f"pandas vectorised: {n} bars, {n / t / 1e6:.2f} M bars/s ({v_orders} orders, pnl {v_pnl:.4f})")
    if orders != v_orders or abs(pnl - v_pnl) > 1e-6 * max(1.0, abs(pnl)):
        print("the two disagree: a bug in one of them", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
