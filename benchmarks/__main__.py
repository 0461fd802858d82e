"""`python -m benchmarks [--quick] [--only NAME ...]`: every benchmark, printing ratios.

Each figure is the median of `--repeats` runs made in this one invocation. Results (raw and
ratios) also go to run/benchmarks.json; benchmarks/RESULTS.md records a full run.
"""

from __future__ import annotations

import argparse
import json
import operator
import os
import platform
import statistics
import time

from benchmarks import cluster, servers, throughput

NAMES = ("throughput", "inprocess", "bayesian", "scaling", "optuna", "overhead", "startup", "idle", "docker")


def _median(runs, key):
    return statistics.median(r[key] for r in runs)


def _fmt(summary, scale=1.0, digits=1):
    """'median (min..max)' of a median_of summary."""
    if summary is None:
        return "n/a"
    f = f"{{:.{digits}f}}"
    return f"{f.format(summary['median'] * scale)} ({f.format(summary['min'] * scale)}..{f.format(summary['max'] * scale)})"


KINDS = ("null", "null-aio", "stock", "ktcluster")  # null first: the ceiling the others are divided by


def _ratios(pairs, get) -> dict:
    """Median (min, max) of a figure's ratio run by run: `pairs` of (run, the run it is divided by)."""
    return throughput.spread([get(a) / get(b) for a, b in pairs])


def _rate(run):
    return run["windows"]["all"]["rate"]


def _cpu_ms(run):
    return run["windows"]["all"]["cpu_ms"]


def _p99(run):
    return run["p99_ms"]


def _server(kind: str, args) -> tuple[str, str]:
    """(server kind, checkout it runs from): "baseline" is ktcluster's chief from --baseline."""
    return ("ktcluster", os.path.abspath(args.baseline)) if kind == "baseline" else (kind, throughput.ROOT)


def bench_throughput(args, report):
    import tempfile

    trials = 600 if args.quick else 2000
    growth_trials = 1000 if args.quick else 5000
    kinds = KINDS + (("baseline",) if args.baseline else ())
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        canned = f"{tmp}/trial.pb"
        servers.canned_trial(canned)
        for workers in (1, 8, 64):
            # Round-robin: each repeat runs every server once, so a ratio compares runs made
            # seconds apart (this machine's speed drifts over minutes); ratios are the median of
            # the per-repeat ratios.
            runs = {kind: [] for kind in kinds}
            for _ in range(args.repeats):
                for kind in kinds:
                    server, root = _server(kind, args)
                    runs[kind].append(throughput.run_one(server, workers, trials, canned, root=root))
            for kind in kinds:
                r = rows[(kind, workers)] = throughput.median_of(runs[kind])
                w = r["windows"]["all"]
                print(f"  {kind:9s} {workers:3d} workers: {_fmt(w['rate'])} trials/s, server CPU "
                      f"{_fmt(w['cpu_ms'], digits=2)} ms/trial, CreateTrial p50 {r['p50_ms']['median']:.2f} ms "
                      f"p99 {r['p99_ms']['median']:.2f} ms", flush=True)
            for kind in kinds[1:]:
                r = rows[(kind, workers)]
                pairs = list(zip(runs[kind], runs["null"]))
                r["x_ceiling"] = {"rate": _ratios(pairs, _rate), "p99": _ratios(pairs, _p99)}
                print(f"  -> {kind} / ceiling at {workers}: throughput x{_fmt(r['x_ceiling']['rate'], digits=2)}, "
                      f"p99 x{_fmt(r['x_ceiling']['p99'], digits=2)}", flush=True)
            pairs = list(zip(runs["ktcluster"], runs["stock"]))
            x = rows[("ktcluster", workers)]["x_stock"] = {"rate": _ratios(pairs, _rate), "cpu_ms": _ratios(pairs, _cpu_ms)}
            print(f"  -> ktcluster / stock at {workers}: throughput x{_fmt(x['rate'], digits=2)}, server CPU per trial "
                  f"x{_fmt(x['cpu_ms'], digits=2)}", flush=True)
            if args.baseline:
                pairs = list(zip(runs["ktcluster"], runs["baseline"]))
                rows[("ktcluster", workers)]["x_baseline"] = {
                    "rate": _ratios(pairs, _rate), "cpu_ms": _ratios(pairs, _cpu_ms), "p99": _ratios(pairs, _p99)}
                x = rows[("ktcluster", workers)]["x_baseline"]
                print(f"  -> ktcluster / baseline at {workers}: throughput x{_fmt(x['rate'], digits=2)}, server CPU "
                      f"per trial x{_fmt(x['cpu_ms'], digits=2)}, p99 x{_fmt(x['p99'], digits=2)}", flush=True)
        growth = {}
        windows = {"early": (100, 600), "late": (growth_trials - 500, growth_trials)}
        for kind in ("stock", "ktcluster"):
            runs = [throughput.run_one(kind, 8, growth_trials, canned, timeout=900, windows=windows)
                    for _ in range(args.repeats)]
            r = growth[kind] = throughput.median_of(runs)
            early, late = r["windows"]["early"], r["windows"]["late"]
            r["late_over_early"] = {  # within each run: last window over early window
                key: _ratios([(run["windows"]["late"], run["windows"]["early"]) for run in runs],
                             operator.itemgetter(key))
                for key in ("rate", "cpu_ms")}
            print(f"  growth {kind}: trials 100-600 at {early['rate']['median']:.1f}/s "
                  f"({early['cpu_ms']['median']:.2f} CPU ms/trial), last 500 of {growth_trials} at "
                  f"{late['rate']['median']:.1f}/s ({late['cpu_ms']['median']:.2f} CPU ms/trial): "
                  f"rate x{_fmt(r['late_over_early']['rate'], digits=2)}, "
                  f"CPU per trial x{_fmt(r['late_over_early']['cpu_ms'], digits=2)} (per-run ratios)", flush=True)
    report["throughput"] = {f"{k}@{w}": v for (k, w), v in rows.items()}
    report["growth"] = growth


def bench_inprocess(args, report):
    r = throughput.chief_ms_per_trial(trials=1000 if args.quick else 3000, repeats=args.repeats)
    print(f"  chief in process (servicer + coordinator, no gRPC): {r['warm_ms']:.3f} ms per trial with warm "
          f"caches, {r['cold_ms']:.3f} ms with {r['flush_mib']} MiB streamed through the caches before each "
          f"call (x{r['cold_ms'] / r['warm_ms']:.1f})", flush=True)
    report["inprocess"] = r


def bench_bayesian(args, report):
    ms = throughput.bayesian_ms_per_trial((100, 500) if not args.quick else (50, 100))
    for kind, by_n in ms.items():
        for n, v in by_n.items():
            print(f"  Bayesian oracle, {kind}: {v['gp_ms']:.1f} ms per trial around trial {n} "
                  f"(random start-up trials before it: {v['random_ms']:.1f} ms)", flush=True)
    report["bayesian_ms_per_trial"] = ms


def _efficiency(label, one, two, key):
    t1, t2 = _median(one, key), _median(two, key)
    print(f"  {label} {key}: 1 process {t1:.1f} s, 2 processes {t2:.1f} s -> T1/(2 T2) = {t1 / (2 * t2):.2f}",
          flush=True)
    return t1 / (2 * t2)


def bench_scaling(args, report):
    trials, epochs = (6, 3) if args.quick else (12, 5)
    one = [cluster.ktcluster(1, trials, epochs) for _ in range(args.repeats)]
    two = [cluster.ktcluster(2, trials, epochs) for _ in range(args.repeats)]
    plain_one = [cluster.plain(1, trials, epochs) for _ in range(args.repeats)]
    plain_two = [cluster.plain(2, trials, epochs) for _ in range(args.repeats)]
    out = {"trials": trials, "epochs": epochs, "one": one, "two": two, "plain_one": plain_one,
           "plain_two": plain_two}
    for key in ("wall", "search"):
        out[f"ktcluster_{key}"] = _efficiency("ktcluster", one, two, key)
        out[f"plain_{key}"] = _efficiency("no tuner (machine ceiling)", plain_one, plain_two, key)
        print(f"  -> {key}: ktcluster's efficiency / the machine's = "
              f"{out[f'ktcluster_{key}'] / out[f'plain_{key}']:.2f}", flush=True)
    report["scaling"] = out


def bench_optuna(args, report):
    """The issue's measure: ktcluster from starting chief and workers together to the chief's exit,
    Optuna from starting its two processes to their exit; ratios run by run (rounds interleaved)."""
    trials, epochs = (6, 3) if args.quick else (12, 5)
    runs = {"ktcluster": [], "optuna": [], "ray": []}
    for _ in range(args.repeats):  # interleaved, so drift on the machine hits all alike
        runs["ktcluster"].append(cluster.ktcluster(2, trials, epochs))
        runs["optuna"].append(cluster.optuna_run(2, trials, epochs))
        if not args.no_ray:
            runs["ray"].append(cluster.ray_run(2, trials, epochs))
    if runs["optuna"][0] is None:
        print("  optuna is not installed (pip install -r benchmarks/requirements.txt)")
        return
    ours = runs["ktcluster"]
    print(f"  2 workers, {trials} trials x {epochs} epochs (median (min..max) of {args.repeats}): ktcluster to the "
          f"chief's exit {_fmt(throughput.spread([r['chief_exit'] for r in ours]))} s, all exited "
          f"{_fmt(throughput.spread([r['wall'] for r in ours]))} s, first trial at "
          f"{_fmt(throughput.spread([r['to_first_trial'] for r in ours]))} s", flush=True)
    ratios = {}
    for rival in ("optuna", "ray"):
        theirs = runs[rival]
        if not theirs or theirs[0] is None:
            continue
        pairs = list(zip(ours, theirs))
        ratios[rival] = {"wall": _ratios(pairs, lambda r: r.get("chief_exit", r["wall"])),
                         "search": _ratios(pairs, lambda r: r["search"])}
        first = f", first trial at {_fmt(throughput.spread([r['to_first_trial'] for r in theirs]))} s" \
            if "to_first_trial" in theirs[0] else ""
        print(f"  {rival}: all exited {_fmt(throughput.spread([r['wall'] for r in theirs]))} s{first}; "
              f"search {_fmt(throughput.spread([r['search'] for r in theirs]))} s (ktcluster "
              f"{_fmt(throughput.spread([r['search'] for r in ours]))} s)", flush=True)
        print(f"  -> ktcluster / {rival}, run by run: wall x{_fmt(ratios[rival]['wall'], digits=2)}, "
              f"search x{_fmt(ratios[rival]['search'], digits=2)}", flush=True)
    report["optuna"] = {**runs, "trials": trials, "epochs": epochs, "ratios": ratios}


def bench_overhead(args, report):
    trials = 10 if args.quick else 50
    r = cluster.overhead(trials)
    for who, f in r.items():
        fit, outside, rss = statistics.median(f["fit"]), statistics.median(f["outside"]), f["rss_mib"]
        at = {n: rss[n - 1] for n in (1, 10, 50) if len(rss) >= n}
        growth = rss[-1] / rss[0] - 1
        print(f"  {who}: fit {fit * 1000:.0f} ms, outside fit {outside * 1000:.0f} ms "
              f"({outside / (fit + outside):.1%} of a 1-epoch digits trial); outside fit over trials 2-10 "
              f"{statistics.median(f['outside'][:9]) * 1000:.0f} ms, last 10 "
              f"{statistics.median(f['outside'][-10:]) * 1000:.0f} ms; RSS MiB "
              f"{', '.join(f'{n}: {v:.0f}' for n, v in at.items())} (growth {growth:+.1%})", flush=True)
    ours, floor = (statistics.median(r[who]["outside"]) for who in ("ktcluster", "no tuner"))
    trial = ours + statistics.median(r["ktcluster"]["fit"])
    print(f"  -> ktcluster's own part of the time outside fit (over the no-tuner floor): "
          f"{(ours - floor) * 1000:.0f} ms ({(ours - floor) / trial:.1%} of a trial)", flush=True)
    report["overhead"] = r


def bench_startup(args, report):
    runs = [cluster.startup() for _ in range(args.repeats)]
    v = _median(runs, "to_first_trial")
    print(f"  local processes: start to first trial running {v:.1f} s", flush=True)
    report["startup"] = runs


def bench_idle(args, report):
    runs = [cluster.idle() for _ in range(args.repeats)]
    chief, worker = _median(runs, "chief_percent"), _median(runs, "worker_percent")
    print(f"  idle CPU over 10 s: chief serving, no worker {chief:.2f}% of a core; "
          f"worker waiting for its chief {worker:.2f}%", flush=True)
    report["idle"] = runs


def bench_docker(args, report):
    from benchmarks import docker_startup

    r = docker_startup.run(args.repeats, cold_cache=args.cold_cache)
    if r is None:
        print("  Docker with Compose v2 is not available (.ci/provision-docker.sh): skipped")
        return
    cold = "cold (page cache dropped, nothing of the stack left)" if r["cold_cache_dropped"] else \
        "cold (nothing of the stack left; page cache NOT dropped: --cold-cache needs root)"
    for kind, label in (("cold", cold), ("warm", "warm (again, fresh volumes)")):
        runs = r[kind]
        print(f"  docker compose up -d, 2 workers, digits, {label}: oracle serving at "
              f"{_fmt(throughput.spread([x['to_serving'] for x in runs]))} s, first trial at "
              f"{_fmt(throughput.spread([x['to_first_trial'] for x in runs]))} s", flush=True)
    report["docker_startup"] = r


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks")
    parser.add_argument("--quick", action="store_true", help="smaller budgets (a few minutes)")
    parser.add_argument("--repeats", type=int, default=None, help="runs per figure (median); default 3, quick 1")
    parser.add_argument("--only", nargs="*", choices=NAMES, default=list(NAMES))
    parser.add_argument("--cold-cache", action="store_true", help="docker: drop the kernel's page cache before "
                        "each cold run (root; slows every process on the machine for a moment)")
    parser.add_argument("--no-ray", action="store_true", help="optuna: leave Ray Tune out of the rounds")
    parser.add_argument("--baseline", metavar="CHECKOUT", help="throughput: also run the chief of another "
                        "checkout (e.g. `git worktree add /tmp/base <commit>`) in the same rounds, and compare")
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
