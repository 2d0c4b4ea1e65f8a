"""What the allocator trades: each layer's measured speed at every option the target offers.

For each model and target: ``hwq profile`` (resumed from the user's table for this CPU, so every
number comes from this machine), then per layer and option the measured kernel time at batch 1
and 16 (input at 8 bits) and the time the layer costs in the model (the kernel, the cold-cache
term and the glue the option brings: pads, shifts, an fp32 layer's float borders), with each
option's ratio to ``w8a8``. Prints a table per model and target and writes
benchmarks/results/option_speeds.json with the machine, versions and date.

    python benchmarks/option_speeds.py --targets x86-host,x86-avx2 --models rescnn,mobilenetv2
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
BATCHES = (1, 16)


def layer_rows(model: str, target_name: str, log=print) -> tuple[list[dict], dict]:
    from hwq.cost import CostModel
    from hwq.cost.glue import layer_ops
    from hwq.cost.options import has_kernels, layer_options, option_kernel
    from hwq.cost.workload import Workload, layer_nodes
    from hwq.models.zoo import example_graph
    from hwq.profile_job import ProfileConfig, run_profile

    table = run_profile(ProfileConfig(models=(model,), target=target_name, batches=BATCHES, time_budget_s=3600,
                                      progress=False), log=lambda s: None)
    cost = CostModel(target_name, table)
    graph = example_graph(model)
    nhwc = has_kernels(cost.target)
    rows = []
    for node in layer_nodes(graph):
        wl = Workload.of(node, graph.tensors[node.input].shape)
        signed = graph.tensors[node.input].dtype == "int8"
        row = {"layer": node.name, "workload": wl.key, "options": {}}
        for o in layer_options(wl, cost.target, node.requant is not None):
            k = option_kernel(wl, cost.target, o, 8, signed)
            cell = {"kernel": k.name}
            for b in BATCHES:
                est = cost.kernel(wl, k, b)
                in_model = cost.in_model_ms(wl, k, b) + cost.extra_glue_ms(layer_ops(graph, node, k, wl, nhwc), b)
                cell[f"b{b}"] = {"kernel_ms": est.ms, "source": est.source, "in_model_ms": in_model}
            row["options"][o.name] = cell
        rows.append(row)
    return rows, {"table": table.describe(), "note": cost.note}


def format_rows(model, target, rows) -> str:
    opts = list(dict.fromkeys(o for r in rows for o in r["options"]))
    lines = [f"\n{model} on {target}: in-model ms per layer (batch 1 | batch 16), ratio to w8a8 at batch 16"]
    lines.append(f"{'layer':28s}" + "".join(f"{o:>22s}" for o in opts))
    for r in rows:
        base = r["options"].get("w8a8", {}).get("b16", {}).get("in_model_ms")
        cells = []
        for o in opts:
            c = r["options"].get(o)
            if c is None:
                cells.append(f"{'-':>22s}")
                continue
            ratio = f" {c['b16']['in_model_ms'] / base:4.2f}x" if base else ""
            cells.append(f"{c['b1']['in_model_ms']:7.3f} |{c['b16']['in_model_ms']:7.3f}{ratio:>6s}")
        lines.append(f"{r['layer'][:28]:28s}" + "".join(cells))
    return "\n".join(lines)


def main():
    from hwq.timing import environment

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--targets", default="x86-host,x86-avx2")
    ap.add_argument("--models", default="rescnn,mobilenetv2")
    ap.add_argument("--out", default=str(RESULTS / "option_speeds.json"))
    args = ap.parse_args()
    results = {"environment": environment(), "batches": list(BATCHES), "runs": []}
    for target in args.targets.split(","):
        for model in args.models.split(","):
            rows, meta = layer_rows(model, target)
            print(format_rows(model, target, rows), flush=True)
            results["runs"].append({"model": model, "target": target, "layers": rows, **meta})
    from hwq.fileio import atomic_write_text

    atomic_write_text(Path(args.out), json.dumps(results, indent=1))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
