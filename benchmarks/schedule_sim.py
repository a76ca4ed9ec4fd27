"""Simulate the 2-worker pool on the default suite's 63 protocol-5 jobs from recorded job times: the order
pool_executor.py hands work out today (teachers costliest first, then transfer sets, then ready jobs in the
suite's order, first in first out) against a critical-path-first order.

Job times are each record's train_seconds + eval_seconds; the first jobs (ce, at, trades) ran beside other work,
so their times are replaced by like jobs' (ce by the median of kd, dkd, fitnets, dtkd; at by the median of ard,
rslad, iad, mtard; trades 1.15x at). Teachers' training times are not in the records: they are set from the run's
profile (16.5 % of 1298 s of CPU for 12 teachers), in the ratio of their passes per step (adversarial: 1 + 5 PGD
steps; defensive 1.2x standard). Transfer sets: 2 s each.

    python benchmarks/schedule_sim.py results/robustness
"""
import json, glob, heapq, statistics, sys
recs = [json.load(open(f)) for f in glob.glob(sys.argv[1] + "/records/*.json")]
scale_eval = float(sys.argv[2]) if len(sys.argv) > 2 else 1.0
methods = ["ce","kd","pointwise","hierarchical","attention","multi-teacher","noise-kd","defensive","ard","rslad","dtkd","at","trades","iad","adaad","mtard","dkd","fitnets"]
teach_of = {"ce":[], "at":[], "trades":[], "defensive":["defensive"], "ard":["adversarial"], "rslad":["adversarial"],
            "iad":["adversarial"], "adaad":["adversarial"], "mtard":["adversarial","standard"],
            "multi-teacher":["standard","standard1001"]}
dur = {}
for r in recs:
    key = (r["method"], r["seed"])
    dur[key] = r["train_seconds"] + r["eval_seconds"]
# ce/at/trades ran first beside other work: replace by like jobs of the same cost class (see docs)
med = lambda ms, f: statistics.median(f(r) for r in recs if r["method"] in ms)
for s in (1,2,3):
    dur[("ce",s)] = med(["kd","dkd","fitnets","dtkd"], lambda r: r["train_seconds"] + r["eval_seconds"])
    dur[("at",s)] = med(["ard","rslad","iad","mtard"], lambda r: r["train_seconds"] + r["eval_seconds"])
    dur[("trades",s)] = dur[("at",s)] * 1.15
tdur = {"standard": 7.75, "standard1001": 7.75, "defensive": 9.3, "adversarial": 46.5}
xdur = 2.0
tasks = {}  # name -> (duration, deps, order)
order = 0
for kind in ("adversarial","defensive","standard","standard1001"):  # costliest first (pool_executor sorts by cost)
    for s in (1,2,3):
        tasks[f"T:{kind}:{s}"] = (tdur[kind], [], order); order += 1
for kind, m in (("standard","teacher:standard"),("defensive","teacher:defensive"),("adversarial","teacher:adversarial")):
    for s in (1,2,3):
        tasks[f"J:{m}:{s}"] = (dur[(m,s)], [f"T:{kind}:{s}"], order); order += 1
for m in methods:
    for s in (1,2,3):
        deps = [f"T:{k}:{s}" for k in teach_of.get(m, ["standard"])]
        if deps:
            first = teach_of.get(m, ["standard"])[0]
            deps.append(f"X:{first}:{s}")
        tasks[f"J:{m}:{s}"] = (dur[(m,s)], deps, order); order += 1
for kind in ("standard","defensive","adversarial"):
    for s in (1,2,3):
        tasks[f"X:{kind}:{s}"] = (xdur, [f"T:{kind}:{s}"], -1)
total = sum(d for d, _, _ in tasks.values())

def simulate(policy, workers=2):
    done_at = {}; ready_q = []; submitted = set(); running = []; t = 0.0; free = workers; seq = 0
    # successors' total work, for critical-path priority
    succ = {n: [m for m, (_, deps, _) in tasks.items() if n in deps] for n in tasks}
    memo = {}
    def tail(n):
        if n not in memo:
            memo[n] = tasks[n][0] + max((tail(m) for m in succ[n]), default=0.0)
        return memo[n]
    def release():
        nonlocal seq
        cands = [n for n in tasks if n not in submitted and all(d in done_at for d in tasks[n][1])]
        if policy == "fifo":  # pool_executor: teachers sorted first, then transfer, then jobs in file order
            cands.sort(key=lambda n: (0 if n.startswith("T") else 1 if n.startswith("X") else 2, tasks[n][2]))
        for n in cands:
            submitted.add(n)
            pri = seq if policy == "fifo" else -tail(n)
            heapq.heappush(ready_q, (pri, seq, n)); seq += 1
    release()
    busy = 0.0
    while len(done_at) < len(tasks):
        while free and ready_q:
            _, _, n = heapq.heappop(ready_q)
            heapq.heappush(running, (t + tasks[n][0], n)); free -= 1
        t, n = heapq.heappop(running); free += 1; done_at[n] = t
        release()
    return t
for pol in ("fifo", "critical-path"):
    mk = simulate(pol)
    print(f"{pol}: makespan {mk:.0f}s = {mk/60:.1f} min, total work {total:.0f}s, busy {total/(2*mk):.1%}")
print("lower bound total/2:", round(total/2), "longest chain:", round(max(tdur.values()) + xdur + max(dur[(m,s)] for m in ("ard","rslad","iad","adaad","mtard") for s in (1,2,3))))
