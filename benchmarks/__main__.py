"""`python -m benchmarks [--quick] [--only NAME ...]`: every benchmark, printing ratios.

Each figure is the median of `--repeats` runs made in this one invocation. Results (raw and
ratios) also go to run/benchmarks.json; benchmarks/RESULTS.md records a full run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

from benchmarks import cluster, throughput

NAMES = ("throughput", "bayesian", "scaling", "optuna", "overhead", "startup", "docker")


def _median(runs, key):
    return statistics.median(r[key] for r in runs)


def bench_throughput(args, report):
    trials = 600 if args.quick else 2000
    rows = {}
    for workers in (1, 8, 64):
        for kind in ("null", "stock", "ktcluster"):
            runs = [throughput.run_one(kind, workers, trials) for _ in range(args.repeats)]
            rows[(kind, workers)] = throughput.median_of(runs)
            r = rows[(kind, workers)]
            print(f"  {kind:9s} {workers:3d} workers: {r['round_trips_per_s']:7.1f} trials/s, "
                  f"CreateTrial p50 {r['p50_ms']:.2f} ms p99 {r['p99_ms']:.2f} ms", flush=True)
        ceiling = rows[("null", workers)]
        for kind in ("stock", "ktcluster"):
            r = rows[(kind, workers)]
            print(f"  -> {kind} / ceiling at {workers}: throughput x{r['round_trips_per_s'] / ceiling['round_trips_per_s']:.2f}, "
                  f"p99 x{r['p99_ms'] / ceiling['p99_ms']:.2f}", flush=True)
    growth_trials = 1000 if args.quick else 5000
    growth = {}
    for kind in ("stock", "ktcluster"):
        r = throughput.median_of([throughput.run_one(kind, 8, growth_trials, timeout=900) for _ in range(args.repeats)])
        growth[kind] = r
        print(f"  growth {kind}: trials 100-600 at {r['rate_100_600']:.1f}/s, last 500 of {growth_trials} at "
              f"{r['rate_last_500']:.1f}/s (x{r['rate_last_500'] / r['rate_100_600']:.2f})", flush=True)
    report["throughput"] = {f"{k}@{w}": v for (k, w), v in rows.items()}
    report["growth"] = growth


def bench_bayesian(args, report):
    ms = throughput.bayesian_ms_per_trial((100, 500) if not args.quick else (50, 100))
    for n, v in ms.items():
        print(f"  Bayesian oracle: chief {v:.1f} ms per trial around trial {n}", flush=True)
    report["bayesian_ms_per_trial"] = ms


def bench_scaling(args, report):
    trials, epochs = (6, 3) if args.quick else (12, 5)
    one = [cluster.ktcluster(1, trials, epochs) for _ in range(args.repeats)]
    two = [cluster.ktcluster(2, trials, epochs) for _ in range(args.repeats)]
    for key in ("wall", "search"):
        t1, t2 = _median(one, key), _median(two, key)
        print(f"  {key}: 1 worker {t1:.1f} s, 2 workers {t2:.1f} s -> efficiency T1/(2 T2) = {t1 / (2 * t2):.2f}",
              flush=True)
    report["scaling"] = {"one": one, "two": two, "trials": trials, "epochs": epochs}


def bench_optuna(args, report):
    trials, epochs = (6, 3) if args.quick else (12, 5)
    ours = [cluster.ktcluster(2, trials, epochs) for _ in range(args.repeats)]
    theirs = [cluster.optuna_run(2, trials, epochs) for _ in range(args.repeats)]
    if theirs[0] is None:
        print("  optuna is not installed (pip install -r benchmarks/requirements.txt)")
        return
    a, b = _median(ours, "wall"), _median(theirs, "wall")
    print(f"  2 workers, {trials} trials x {epochs} epochs: ktcluster {a:.1f} s, Optuna {b:.1f} s "
          f"-> ktcluster/Optuna = {a / b:.2f}", flush=True)
    report["optuna"] = {"ktcluster": ours, "optuna": theirs, "trials": trials, "epochs": epochs}


def bench_overhead(args, report):
    r = cluster.overhead(10 if args.quick else 50)
    share = r["outside_median"] / (r["fit_median"] + r["outside_median"])
    rss = r["rss_mib"]
    growth = (rss[max(rss)] / rss[min(rss)] - 1) if len(rss) > 1 else 0.0
    print(f"  per trial: fit {r['fit_median'] * 1000:.0f} ms, outside fit {r['outside_median'] * 1000:.0f} ms "
          f"({share:.1%} of a 1-epoch digits trial); RSS MiB {rss} (growth {growth:+.1%})", flush=True)
    report["overhead"] = r


def bench_startup(args, report):
    runs = [cluster.startup() for _ in range(args.repeats)]
    v = _median(runs, "to_first_trial")
    print(f"  local processes: start to first trial running {v:.1f} s", flush=True)
    report["startup"] = runs


def bench_docker(args, report):
    r = cluster.startup_docker(args.repeats)
    if r is None:
        print("  Docker with Compose v2 is not available (.ci/provision-docker.sh): skipped")
        return
    v = statistics.median(r["to_first_trial"])
    print(f"  docker compose up -d (image built) to first trial running {v:.1f} s", flush=True)
    report["docker_startup"] = r


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks")
    parser.add_argument("--quick", action="store_true", help="smaller budgets (a few minutes)")
    parser.add_argument("--repeats", type=int, default=None, help="runs per figure (median); default 3, quick 1")
    parser.add_argument("--only", nargs="*", choices=NAMES, default=list(NAMES))
    args = parser.parse_args()
    args.repeats = args.repeats or (1 if args.quick else 3)
    report = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": platform.platform(),
              "cpus": os.cpu_count(), "quick": args.quick, "repeats": args.repeats}
    for name in args.only:
        print(f"== {name}", flush=True)
        started = time.monotonic()
        globals()[f"bench_{name}"](args, report)
        print(f"   ({time.monotonic() - started:.0f} s)", flush=True)
    os.makedirs("run", exist_ok=True)
    with open("run/benchmarks.json", "w") as f:
        json.dump(report, f, indent=1, default=str)


if __name__ == "__main__":
    main()
