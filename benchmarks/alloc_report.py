"""The allocation study's summaries, table and plot (``alloc_study.py`` writes the data).

``summarize`` reads the plans against the uniform plans (the straight line between the neighbouring
ones, and their Pareto front) and the random median per budget; ``rank_agreement`` the Spearman of
each estimator against the measured sensitivities; ``render`` the table, ``plot`` the figure.
"""

from __future__ import annotations

import statistics

import numpy as np


def rank_agreement(sens: dict) -> dict:
    """Spearman of each method's sensitivities against the measured ones: over every (layer, option)
    pair but the reference (zero for all), and over layers (each layer's mean over its options)."""
    from scipy.stats import spearmanr

    meas = sens["measured"]["values"]
    ref = sens["measured"].get("reference")
    out = {}
    for m, s in sens.items():
        if m == "measured":
            continue
        pairs = [(meas[layer][o], s["values"][layer][o]) for layer in meas for o in meas[layer] if o != ref]
        layers = [(sum(meas[layer].values()) / len(meas[layer]),
                   sum(s["values"][layer].values()) / len(s["values"][layer])) for layer in meas]
        out[m] = {"pairs": float(spearmanr(*zip(*pairs)).statistic), "n_pairs": len(pairs),
                  "layers": float(spearmanr(*zip(*layers)).statistic), "n_layers": len(layers)}
    return out


def line(uniform, ms, front: bool = False) -> float:
    """Accuracy on the straight line between the uniform plans that bracket ``ms`` (measured); with
    ``front``, between those on the uniform plans' Pareto front (a uniform plan both slower and
    less accurate than another is no choice a user would make), the stricter reference."""
    pts = sorted((u["measured_ms"], u["accuracy"]) for u in uniform.values())
    if front:
        pts = [(x, y) for i, (x, y) in enumerate(pts) if all(y > y0 for _, y0 in pts[:i])]
    if ms <= pts[0][0]:
        return pts[0][1]
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
        if ms <= x1:
            return y0 + (y1 - y0) * (ms - x0) / (x1 - x0) if x1 > x0 else max(y0, y1)
    return pts[-1][1]


def summarize(rows, uniform, methods) -> dict:
    allocated = [r for r in rows if r["method"] != "random"]
    over = [r["measured_ms"] / r["budget_ms"] - 1 for r in allocated]
    per_budget = []
    for b in sorted({r["budget_ms"] for r in rows}):
        at = [r for r in rows if r["budget_ms"] == b]
        rand = [r["accuracy"] for r in at if r["method"] == "random"]
        entry = {"budget_ms": b, "random_median_accuracy": statistics.median(rand) if rand else None}
        for m in methods:
            r = next(r for r in at if r["method"] == m)
            entry[m] = {"accuracy": r["accuracy"], "measured_ms": r["measured_ms"], "kl": r.get("kl"),
                        "uniform_line": line(uniform, r["measured_ms"]),
                        "uniform_front": line(uniform, r["measured_ms"], front=True)}
        per_budget.append(entry)
    return {"within_budget_3pct": float(np.mean([o <= 0.03 for o in over])) if over else None,
            "worst_over_budget": max(over) if over else None, "per_budget": per_budget}


def render(result) -> str:
    lines = []
    for name, r in result["models"].items():
        lines.append(f"\n{name} on {r['target']} at batch {r['batch']}: allocated plans within budget + 3 %: "
                     f"{r['within_budget_3pct']:.0%} (worst {r['worst_over_budget']:+.1%})")
        if "latency" in r:
            lines.append(f"latencies: ratio to uniform W8A8 timed in alternation, x its {r['latency']['reference_ms']:.3f} ms")
        methods = [m for m in r["per_budget"][0] if m not in ("budget_ms", "random_median_accuracy")]
        lines.append("per method: accuracy %, measured ms, [uniform line / uniform front at that ms]")
        lines.append(f"{'budget ms':>9s} " + " ".join(f"{m:>28s}" for m in methods) + f" {'random med':>10s}")
        for e in r["per_budget"]:
            cells = [f"{e[m]['accuracy']:6.2f} {e[m]['measured_ms']:6.3f} [{e[m]['uniform_line']:5.2f}/"
                     f"{e[m].get('uniform_front', float('nan')):5.2f}]" for m in methods]
            lines.append(f"{e['budget_ms']:9.3f} " + " ".join(f"{c:>28s}" for c in cells)
                         + f" {e['random_median_accuracy']:9.2f}%")
        for m, a in r.get("rank_agreement", {}).items():
            lines.append(f"{m} against measured sensitivities: Spearman {a['pairs']:.2f} over {a['n_pairs']} "
                         f"(layer, option) pairs, {a['layers']:.2f} over {a['n_layers']} layers")
        lines.append("uniform: " + ", ".join(f"{o} {u['measured_ms']:.3f} ms {u['accuracy']:.2f}%"
                                            + (f" (KL {u['kl']:.4f})" if "kl" in u else "")
                                            for o, u in r["uniform"].items()))
    return "\n".join(lines)


def plot(result, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    models = list(result["models"])
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4.5), squeeze=False)
    for ax, name in zip(axes[0], models):
        r = result["models"][name]
        u = sorted(r["uniform"].items(), key=lambda kv: kv[1]["measured_ms"])
        ax.plot([v["measured_ms"] for _, v in u], [v["accuracy"] for _, v in u], "k--o", label="uniform plans")
        for o, v in u:
            ax.annotate(o, (v["measured_ms"], v["accuracy"]), fontsize=7)
        for m, mk in (("random", "x"), ("measured", "o"), ("hessian", "s"), ("duals", "^"), ("budget-dual", "D")):
            pts = [(q["measured_ms"], q["accuracy"]) for q in r["plans"] if q["method"] == m]
            if pts:
                ax.scatter(*zip(*pts), marker=mk, s=22, label=m, alpha=0.6 if m == "random" else 1)
        ax.set_xlabel("measured latency, ms")
        ax.set_ylabel("accuracy, % (MobileNetV2: agreement with fp32)")
        ax.set_title(f"{name}, {r['target']}, batch {r['batch']}")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
