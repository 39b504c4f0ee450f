"""Where the host threads run vs single-stream decode speed: raw mlx-lm (and the compiled step of
bench/compiled_step.py) in child processes pinned to different CPU sets with `taskset`.

A single stream of a small model on a GPU is bound by host work per step, and earlier runs on the
H200 landed near one of two rates (~320 or ~530 tok/s) depending on where the threads ran. This
measures that directly: each placement runs in its own process (load, two warm-up runs, then
`--runs` timed runs), and placements are interleaved over `--rounds` so drift hits all of them.
The placements are derived from the machine's topology (sysfs): every CPU, one CPU, two SMT
siblings of one core, four distinct cores of the GPU's NUMA node, four of another node (when the
machine has one); `--placements "0-3;8"` names them instead, and `--envs` compares
environments (MLX's CUDA graph limits, say) on every CPU instead.

    python bench/placement.py --model DIR [--runs 5] [--rounds 3] [--tokens 256]
        [--modes raw,compiled] [--placements "0-3;8" | --envs "VAR=V;VAR=W"]

Linux only (taskset, sysfs). Prints and writes a JSON report with the topology and every rate.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
SYS_CPU = Path("/sys/devices/system/cpu")
SYS_NODE = Path("/sys/devices/system/node")


def parse_cpulist(text: str) -> list[int]:
    """'0-3,8,10-11' -> [0, 1, 2, 3, 8, 10, 11]."""
    cpus: list[int] = []
    for part in text.strip().split(","):
        if not part:
            continue
        low, _, high = part.partition("-")
        cpus += range(int(low), int(high or low) + 1)
    return cpus


def read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def topology() -> dict[str, Any]:
    """CPUs this process may use, their cores and nodes, the GPU's local CPUs (where sysfs says)."""
    allowed = sorted(os.sched_getaffinity(0))
    cores = {
        cpu: read(SYS_CPU / f"cpu{cpu}/topology/thread_siblings_list") or str(cpu)
        for cpu in allowed
    }
    nodes = {
        path.name: parse_cpulist(read(path / "cpulist"))
        for path in sorted(SYS_NODE.glob("node[0-9]*"))
    }
    gpus = {}
    for driver in (Path("/sys/bus/pci/drivers/nvidia"),):
        for device in sorted(driver.glob("0000:*")):
            gpus[device.name] = {
                "local_cpulist": read(device / "local_cpulist"),
                "numa_node": read(device / "numa_node"),
            }
    return {"allowed": allowed, "siblings": cores, "nodes": nodes, "gpus": gpus}


def derived_placements(topo: dict[str, Any]) -> dict[str, list[int]]:
    allowed: list[int] = topo["allowed"]
    siblings = {cpu: parse_cpulist(text) for cpu, text in topo["siblings"].items()}
    placements = {"all": allowed, "one_cpu": allowed[:1]}
    pair = next(
        (group for group in siblings.values() if len(group) > 1 and set(group) <= set(allowed)),
        None,
    )
    if pair:
        placements["smt_pair"] = pair[:2]

    def distinct_cores(pool: list[int], count: int) -> list[int]:
        chosen: list[int] = []
        for cpu in pool:
            if cpu in allowed and not any(cpu in siblings.get(c, [c]) for c in chosen):
                chosen.append(cpu)
            if len(chosen) == count:
                break
        return chosen

    gpu_local = next(
        (parse_cpulist(g["local_cpulist"]) for g in topo["gpus"].values() if g["local_cpulist"]), []
    )
    placements["four_cores_gpu_node"] = distinct_cores(gpu_local or allowed, 4)
    for name, cpus in topo["nodes"].items():
        if gpu_local and not set(cpus) & set(gpu_local):
            remote = distinct_cores(cpus, 4)
            if remote:
                placements[f"four_cores_{name}"] = remote
            break
    return {name: cpus for name, cpus in placements.items() if cpus}


def child(model_dir: str, mode: str, runs: int, tokens: int) -> None:
    """One placement: load, warm up, time `runs` greedy decodes; print their tok/s as JSON."""
    sys.path.insert(0, str(HERE.parent))
    sys.path.insert(0, str(HERE.parent.parent))
    from compiled_step import run_compiled, run_mlx_lm

    from engines.weights.checkpoint import load_checkpoint

    model, tokenizer = load_checkpoint(Path(model_dir))
    prompt = tokenizer.encode("Write a long story about a lighthouse keeper and the sea.")
    run = run_compiled if mode == "compiled" else run_mlx_lm
    for _ in range(2):
        run(model, prompt, 32)
    rates = [run(model, prompt, tokens)[1] for _ in range(runs)]
    print(json.dumps({"rates": rates}))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--modes", default="raw")
    parser.add_argument(
        "--placements", default="", help="';'-separated cpulists instead of derived ones"
    )
    parser.add_argument(
        "--envs",
        default="",
        help="';'-separated environments (VAR=V,VAR2=W) to run on every CPU instead of placements, "
        "e.g. MLX's CUDA graph limits: 'MLX_MAX_OPS_PER_BUFFER=20;MLX_USE_CUDA_GRAPHS=0'",
    )
    parser.add_argument("--out", type=Path, default=Path("bench/results/placement.json"))
    parser.add_argument("--print", default="", help="print one derived placement's cpulist, exit")
    parser.add_argument("--child", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.model, args.child, args.runs, args.tokens)
        return
    topo = topology()
    if args.print:
        print(",".join(map(str, derived_placements(topo)[args.print])))
        return
    variants: dict[str, tuple[list[int], dict[str, str]]]
    if args.envs:
        variants = {"default": (topo["allowed"], {})}
        for text in args.envs.split(";"):
            variants[text] = (topo["allowed"], dict(pair.split("=", 1) for pair in text.split(",")))
    elif args.placements:
        variants = {text: (parse_cpulist(text), {}) for text in args.placements.split(";")}
    else:
        variants = {name: (cpus, {}) for name, cpus in derived_placements(topo).items()}
    print(json.dumps({"topology": topo, "variants": variants}), flush=True)
    rates: dict[str, list[float]] = {}
    for round_index in range(args.rounds):
        for mode in args.modes.split(","):
            for name, (cpus, env) in variants.items():
                key = f"{mode}@{name}"
                command = ["taskset", "-c", ",".join(map(str, cpus)), sys.executable, str(HERE)]
                command += ["--model", args.model, "--child", mode, "--runs", str(args.runs)]
                command += ["--tokens", str(args.tokens)]
                started = time.monotonic()
                environment = {**os.environ, **env}
                done = subprocess.run(
                    command, capture_output=True, text=True, check=False, env=environment
                )
                lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
                if done.returncode or not lines:
                    print(f"{key}: failed rc={done.returncode}: {done.stderr[-500:]}", flush=True)
                    continue
                got = json.loads(lines[-1])["rates"]
                rates.setdefault(key, []).extend(got)
                shown = " ".join(f"{r:.0f}" for r in got)
                print(
                    f"round {round_index} {key}: {shown} ({time.monotonic() - started:.0f} s)",
                    flush=True,
                )
    report = {
        "topology": topo,
        "variants": variants,
        "tokens": args.tokens,
        "rates": rates,
        "medians": {key: statistics.median(values) for key, values in rates.items()},
    }
    print(json.dumps(report["medians"], indent=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
