"""How much the notebook machinery costs: runner.py against the same code in one plain process.

    python bench/pipeline.py                 # stages 01-04, 10,000 generated apps, one repeat
    python bench/pipeline.py --repeat 3 --apps 2000 --no-cold

Works in a temporary copy of the project (lib/, notebooks/, runner.py, pipeline.yaml) and resets
its MLflow store, models/ and reports/ before every measurement, so each one does the same work
and nothing is written into the real project. Measures, as subprocesses:

* `python runner.py --force-retrain --stages ...` (kernel pool on, the default) and the same run
  with `run(..., kernel_pool=False)` (a cold kernel per stage, as papermill does by default);
* "plain": one Python process that executes the SAME code cells of the notebooks in order in one
  namespace, with the parameters the runner passes (`orchestrator.inputs_for`), scraps passed on
  like the runner does, `display` stubbed and matplotlib on Agg: literally the same lib calls.

Prints the medians over `--repeat` runs: totals and ratios, and per stage the notebook's wall time
against the same cells in-process (the difference is the stage's fixed cost), the import cell, and
the HTML rendering and scrap reading the runner does after each notebook. Numbers only, no
assertions: the machine may be shared.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

PROJECT = Path(__file__).resolve().parents[1]
COPIED = ("lib", "notebooks", "runner.py", "pipeline.yaml")

# The runner without the kernel pool; otherwise what `python runner.py --force-retrain` does.
COLD_RUNNER = """
import logging, sys
from pathlib import Path
import runner
from lib.config import load_config
logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
logging.getLogger("traitlets").setLevel(logging.ERROR)
root = Path.cwd()  # the project copy (runner.py's directory)
cfg = load_config(root, None, {"synth_apps": sys.argv[1]})
stages = sys.argv[2].split(",")
result = runner.run(cfg, root, stages, True, echo=print, kernel_pool=False)
sys.exit(result.exit_code)
"""


# -- the plain process (runs as `bench/pipeline.py --plain ROOT`) ---------------------------------


def plain_main(root: Path, apps: int, stages: list[str], out: Path) -> None:
    """Execute every notebook's code cells in one namespace, as the runner would parameterize them.

    What the runner does besides the notebooks (config, data check) is done too; what only the
    notebook machinery does (kernel, output rendering, HTML, scrapbook round trip) is not.
    """
    os.chdir(root)  # the notebooks find ROOT from the working directory, as in the kernel
    sys.path.insert(0, str(root))
    import IPython.display

    IPython.display.display = lambda *args, **kwargs: None  # scrapbook's glue displays its value
    import nbformat

    from lib.config import load_config
    from lib.json_safe import json_safe
    from lib.pipeline import data, scraps, synth
    from lib.pipeline.contracts import STAGES
    from lib.pipeline.orchestrator import RunContext, inputs_for
    from lib.pipeline.run_record import RunOutputs

    started = time.perf_counter()
    cfg = load_config(root, None, {"synth_apps": apps})
    synth.ensure_dataset(root / cfg.data_path, n=cfg.synth_apps, seed=cfg.synth_seed)
    data.check_columns(root / cfg.data_path)
    run_dir = root / cfg.reports_dir / "plain"
    run_dir.mkdir(parents=True, exist_ok=True)
    ctx = RunContext("plain", root, run_dir, cfg.resolved_tracking_uri(root), "forced", True)
    outputs = RunOutputs()
    glued: dict[str, Any] = {}
    glue = scraps.glue

    def recording_glue(name: str, value: Any) -> None:
        glue(name, value)
        glued[name] = json.loads(json.dumps(json_safe(value)))  # what the runner reads

    scraps.glue = recording_glue
    setup = time.perf_counter() - started
    namespace: dict[str, Any] = {"__name__": "__main__"}
    seconds: dict[str, float] = {}
    cpu: dict[str, float] = {}
    first_cell: dict[str, float] = {}
    for stage in stages:
        params = inputs_for(stage, cfg, ctx, outputs).model_dump()
        book = nbformat.read(root / "notebooks" / f"{STAGES[stage].notebook}.ipynb", as_version=4)
        glued.clear()
        t0, c0 = time.perf_counter(), process_cpu()
        for i, cell in enumerate(c for c in book.cells if c.cell_type == "code"):
            t1 = time.perf_counter()
            exec(compile(cell.source, f"<{stage} cell {i + 1}>", "exec"), namespace)
            if "parameters" in cell.metadata.get("tags", []):
                namespace.update(copy.deepcopy(params))  # papermill's injected cell
            if "matplotlib.pyplot" in sys.modules:  # the inline backend closes shown figures
                sys.modules["matplotlib.pyplot"].close("all")
            if i == 0:
                first_cell[stage] = time.perf_counter() - t1
        seconds[stage] = time.perf_counter() - t0
        cpu[stage] = process_cpu() - c0
        outputs[stage] = STAGES[stage].check_outputs(glued)
        if stage == "detect" and not glued.get("should_train"):
            break
    out.write_text(json.dumps({"setup": setup, "stages": seconds, "stage_cpu": cpu,
                               "first_cell": first_cell}))  # fmt: skip


def process_cpu() -> float:
    """User + system seconds of this process, all threads."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# Loaded by every kernel of a measured run (IPYTHONDIR points at it): at exit, the kernel's CPU
# seconds and its stage, found in the notebook's first cell (`from ... import TrainInputs`).
KERNEL_CPU = r"""
import atexit, json, os, re, resource


def _bench_kernel_cpu(path=os.environ.get("BENCH_KERNEL_CPU")):
    usage = resource.getrusage(resource.RUSAGE_SELF)
    stage = re.search(r"import (\w+)Inputs", "\n".join(get_ipython().user_ns.get("In", [])))
    with open(path, "a") as f:
        f.write(json.dumps({"stage": stage and stage[1].lower(),
                            "cpu": usage.ru_utime + usage.ru_stime}) + "\n")


if os.environ.get("BENCH_KERNEL_CPU"):
    atexit.register(_bench_kernel_cpu)
"""


# -- measurements -----------------------------------------------------------------------------


def make_project(tmp: Path, source: Path = PROJECT) -> Path:
    """A copy of the project's code: runs never touch the real mlflow.db, models/, reports/."""
    root = tmp / "project"
    root.mkdir()
    for name in COPIED:
        src = source / name
        if src.is_dir():
            shutil.copytree(src, root / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, root / name)
    for name in ("data", "models", "reports"):
        (root / name).mkdir()
    return root


def reset_state(root: Path) -> None:
    """Same starting point for every measurement: no MLflow store, no model, no reports."""
    for name in ("mlflow.db", "mlflow.db-journal", "mlruns", "mlartifacts", "models", "reports"):
        path = root / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    (root / "models").mkdir()
    (root / "reports").mkdir()


def clean_env() -> dict[str, str]:
    """The environment without settings that would change the pipeline's configuration."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIPELINE_")}
    env.pop("MLFLOW_TRACKING_URI", None)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def timed(cmd: list[str], root: Path, env: dict[str, str]) -> tuple[float, float]:
    """Wall and CPU seconds (user + system, kernels included) of one subprocess.

    CPU time says how much work a kind of run does: on a shared 2-core machine it varies less
    than wall time, and wall time cannot go below CPU / cores.
    """
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    if proc.returncode != 0:
        tail = proc.stderr[-3000:]
        raise RuntimeError(f"{' '.join(cmd[:3])} failed ({proc.returncode}):\n{tail}")
    return seconds, cpu


def run_runner(root: Path, apps: int, stages: list[str], pool: bool) -> dict[str, Any]:
    """Wall time of one runner process; per stage: its seconds and the import cell, from the run."""
    import nbformat

    reset_state(root)
    if pool:
        cmd = [sys.executable, "runner.py", "--force-retrain", "--set", f"synth_apps={apps}",
               "--stages", ",".join(stages)]  # fmt: skip
    else:
        cmd = [sys.executable, "-c", COLD_RUNNER, str(apps), ",".join(stages)]
    env, kernel_log = clean_env(), root.parent / "kernel_cpu.jsonl"
    startup = root.parent / "ipython" / "profile_default" / "startup"
    startup.mkdir(parents=True, exist_ok=True)
    (startup / "00-bench-cpu.py").write_text(KERNEL_CPU)
    env.update(IPYTHONDIR=str(startup.parents[1]), BENCH_KERNEL_CPU=str(kernel_log))
    kernel_log.unlink(missing_ok=True)
    wall, cpu = timed(cmd, root, env)
    kernel_cpu = {}  # a kernel started ahead and never used is killed: not recorded
    for line in kernel_log.read_text().splitlines() if kernel_log.exists() else []:
        rec = json.loads(line)
        kernel_cpu[rec["stage"]] = rec["cpu"]
    (report,) = (root / "reports").glob("report_*.json")
    summary = json.loads(report.read_text())
    stages, first_cell = {}, {}
    for stage in summary["stages"]:
        stages[stage["name"]] = stage["seconds"]
        book = nbformat.read(root / stage["notebook"], as_version=4)
        code = [c for c in book.cells if c.cell_type == "code"]
        first_cell[stage["name"]] = code[0].metadata.get("papermill", {}).get("duration") or 0.0
    render, read = render_costs(root / Path(summary["stages"][0]["notebook"]).parent)
    return {"wall": wall, "cpu": cpu, "stages": stages, "first_cell": first_cell, "html": render,
            "scraps": read, "kernel_cpu": kernel_cpu,
            "rest_cpu": cpu - sum(kernel_cpu.values())}  # fmt: skip


def run_plain(root: Path, apps: int, stages: list[str]) -> dict[str, Any]:
    reset_state(root)
    out = root / "plain.json"
    env = clean_env()
    env["MPLBACKEND"] = "Agg"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--plain", str(root), "--apps", str(apps),
           "--stages", ",".join(stages)]  # fmt: skip
    wall, cpu = timed([*cmd, "--out", str(out)], root, env)
    return {"wall": wall, "cpu": cpu, **json.loads(out.read_text())}


def render_costs(run_dir: Path) -> tuple[dict[str, float], dict[str, float]]:
    """Per stage: the runner's in-process HTML rendering and scrap reading, done again here."""
    from lib.pipeline import scraps
    from lib.pipeline.contracts import STAGES
    from lib.pipeline.report_html import render_html

    html, read = {}, {}
    for stage, spec in STAGES.items():
        notebook = run_dir / f"{spec.notebook}.ipynb"
        if notebook.exists():
            t0 = time.perf_counter()
            render_html(notebook)
            html[stage] = time.perf_counter() - t0
            t0 = time.perf_counter()
            scraps.read(notebook)
            read[stage] = time.perf_counter() - t0
    return html, read


def kernel_costs(root: Path) -> dict[str, float]:
    """A cold kernel's start, the warm-up imports in it, and its exit once asked to shut down."""
    from jupyter_core.utils import run_sync

    from lib.pipeline.kernels import KernelPool, warm_code

    with KernelPool(cwd=root, total=1) as pool:
        t0 = time.perf_counter()
        km = pool.acquire()
        start = time.perf_counter() - t0
        kc = km.client()
        kc.start_channels(iopub=False, stdin=False, hb=False, control=False)
        t0 = time.perf_counter()
        msg_id = kc.execute(warm_code(), silent=True, store_history=False)
        while run_sync(kc.get_shell_msg)(timeout=300)["parent_header"].get("msg_id") != msg_id:
            pass
        imports = time.perf_counter() - t0
        process = km.provisioner.process
        t0 = time.perf_counter()
        pool.release(km)
        while process.poll() is None and time.perf_counter() - t0 < 30:  # close() kills it
            time.sleep(0.02)
        exit_s = time.perf_counter() - t0
    return {"kernel start": start, "warm-up imports": imports, "kernel exit": exit_s}


# -- report -----------------------------------------------------------------------------------


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def per_stage(runs: list[dict[str, Any]], key: str, stage: str) -> float:
    return median([r[key][stage] for r in runs if stage in r.get(key, {})])


def report(results: dict[str, list[dict[str, Any]]], costs: list[dict[str, float]]) -> str:
    """Markdown tables: totals and ratios, per-stage fixed costs, kernel costs."""
    pool, cold, plain = results["pool"], results["cold"], results["plain"]
    base = median([r["wall"] for r in plain])
    base_cpu = median([r["cpu"] for r in plain])
    lines = ["", "## Totals (seconds, whole process tree)", "",
             "| run | wall median | wall best | wall median vs plain | CPU median | CPU vs plain |",
             "|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    kinds = (("`runner.py --force-retrain`, kernel pool", pool),
             ("runner, cold kernel per stage (`kernel_pool=False`)", cold),
             ("plain Python process, same cells", plain))  # fmt: skip
    for label, runs in kinds:
        if runs:
            wall, cpu = median([r["wall"] for r in runs]), median([r["cpu"] for r in runs])
            best = min(r["wall"] for r in runs)
            lines.append(f"| {label} | {wall:.1f} | {best:.1f} | {wall / base:.2f}x "
                         f"| {cpu:.1f} | {cpu / base_cpu:.2f}x |")  # fmt: skip
    lines += ["", "## Per stage (median seconds)", "",
              "| stage | same cells in-process | notebook, pool | fixed, pool | notebook, cold "
              "| fixed, cold | import cell pool / cold / plain | HTML | scraps |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for stage in plain[0]["stages"] if plain else []:
        cells = per_stage(plain, "stages", stage)
        row = [stage, f"{cells:.2f}"]
        for runs in (pool, cold):
            if not runs:
                row += ["-", "-"]
                continue
            nb = per_stage(runs, "stages", stage)
            extra = per_stage(runs, "html", stage) + per_stage(runs, "scraps", stage)
            row += [f"{nb:.2f}", f"{nb - cells + extra:.2f}"]
        imports = [per_stage(r, "first_cell", stage) for r in (pool, cold, plain) if r]
        row.append(" / ".join(f"{v:.2f}" for v in imports))
        row.append(f"{per_stage(pool or cold, 'html', stage):.2f}")
        row.append(f"{per_stage(pool or cold, 'scraps', stage):.3f}")
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "notebook = the runner's stage seconds (kernel, papermill, cells); fixed = "
              "notebook - same cells in-process + HTML + scraps: what running it as a notebook "
              "adds. The plain process's setup (config, data check) took "
              f"{median([r['setup'] for r in plain]):.2f}s."]  # fmt: skip
    lines += cpu_table(pool, cold, plain)
    if costs:
        lines += ["", "## Kernel costs (median seconds)", "", "| cost | seconds |", "|---|---:|"]
        for name in costs[0]:
            lines.append(f"| {name} | {median([c[name] for c in costs]):.2f} |")
    return "\n".join(lines)


def cpu_table(pool: list[dict], cold: list[dict], plain: list[dict]) -> list[str]:
    """CPU seconds per stage: a kernel's whole life against the same cells in one process. Less
    moved by other jobs than wall time; the last row is the runner's own process (papermill,
    HTML, scraps, record) plus any kernel started ahead and never used, against the rest of the
    plain process (imports, config, data check)."""
    lines = ["", "## CPU per stage (median seconds)", "",
             "| stage | same cells in-process | kernel, pool | extra, pool | kernel, cold "
             "| extra, cold |", "|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    for stage in plain[0]["stage_cpu"] if plain else []:
        cells = per_stage(plain, "stage_cpu", stage)
        row = [stage, f"{cells:.2f}"]
        for runs in (pool, cold):
            kernel = per_stage(runs, "kernel_cpu", stage)
            row += [f"{kernel:.2f}", f"{kernel - cells:.2f}"] if runs else ["-", "-"]
        lines.append("| " + " | ".join(row) + " |")
    if plain:
        base = median([r["cpu"] - sum(r["stage_cpu"].values()) for r in plain])
        row = ["runner process / rest", f"{base:.2f}"]
        for runs in (pool, cold):
            rest = median([r["rest_cpu"] for r in runs])
            row += [f"{rest:.2f}", f"{rest - base:.2f}"] if runs else ["-", "-"]
        lines.append("| " + " | ".join(row) + " |")
    return lines


def machine() -> str:
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    system = f"{platform.machine()}, {platform.system()} {platform.release()}"
    return (f"machine: {os.cpu_count()} cores, {system}; Python {platform.python_version()}; "
            f"load average {load}")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=1, help="runs of each kind (median shown)")
    parser.add_argument("--apps", type=int, default=10_000, help="generated apps (default 10000)")
    parser.add_argument("--no-cold", action="store_true", help="skip the run without kernel pool")
    parser.add_argument(
        "--stages",
        default="detect,train,compare,decide",
        help="stages to run (default: detect,train,compare,decide)",
    )
    parser.add_argument("--source", type=Path, default=PROJECT,
                        help="project whose code is copied (default: this one)")  # fmt: skip
    parser.add_argument("--plain", type=Path, help=argparse.SUPPRESS)  # child mode
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    stages = args.stages.split(",")
    if args.plain:
        plain_main(args.plain, args.apps, stages, args.out)
        return 0

    print(machine())
    results: dict[str, list[dict[str, Any]]] = {"pool": [], "cold": [], "plain": []}
    costs: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        root = make_project(Path(tmp), args.source.resolve())
        sys.path.insert(0, str(root))  # render and kernel costs with the copy's code
        from lib.config import load_config
        from lib.pipeline import synth

        cfg = load_config(root, None, {"synth_apps": args.apps})
        synth.ensure_dataset(root / cfg.data_path, n=cfg.synth_apps, seed=cfg.synth_seed)
        for i in range(args.repeat):  # interleaved, so a noisy neighbour hits every kind alike
            kinds = ["pool", "plain"] if args.no_cold else ["pool", "cold", "plain"]
            for kind in kinds:
                if kind == "plain":
                    result = run_plain(root, args.apps, stages)
                else:
                    result = run_runner(root, args.apps, stages, pool=kind == "pool")
                results[kind].append(result)
                print(f"run {i + 1}/{args.repeat} {kind}: {result['wall']:.1f}s wall, "
                      f"{result['cpu']:.1f}s CPU", flush=True)  # fmt: skip
            costs.append(kernel_costs(root))
    print(report(results, costs))
    print(f"\nstages {args.stages}; {args.apps} apps; {args.repeat} repeat(s); {machine()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
