"""Run the pipeline's notebooks in order with Papermill and keep the record of every run.

    python runner.py                       # detect -> train -> compare -> decide -> deploy
    python runner.py --force-retrain       # train whatever the new-app count
    python runner.py --stages train,compare --set cv_folds=3
    python runner.py simulate-new-apps --n 150
    python runner.py demo                  # the whole story on generated data, in demo/
    python runner.py serve                 # the model service (champion + canary)
    python runner.py status | rollback [--reason TEXT] | approve V | reject V
    python runner.py deploy V [--run-id ID]    # deploy a version whose 04 decision was auto
    python runner.py promote V --reason TEXT   # a registered version back in production
    python runner.py store-recover         # store the rows a dead service did not write

Each stage's executed notebook and its HTML land in reports/<run-id>/, with report.json, the run's
summary. Values travel between stages as scraps only. 05 deploy runs only after an `auto`
decision (or `approve`). Exit codes: 0 done (nothing to do, deployed, rolled back automatically,
awaiting approval or rejected: see the summary), 1 a stage failed or a deploy left a part undone
(service not reloaded, promotion undone, production service unreachable), 2 a known error (bad
data, bad config, nothing to roll back), 3 another runner is busy, 4 the MLflow registry is
unreachable (in a stage's kernel too), 143 stopped by SIGTERM.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

from lib import progress
from lib.commands import BACKTEST_DATA, OPERATIONS, simulate_new_apps
from lib.config import load_config, parse_set_options
from lib.errors import PipelineError, StageError
from lib.pipeline.contracts import PIPELINE as STAGES
from lib.pipeline.orchestrator import run
from lib.settings import project_root


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="runner.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    # Config options are accepted before or after the command (`runner.py status --set ...`).
    common = argparse.ArgumentParser(add_help=False)
    for p, default in ((parser, None), (common, argparse.SUPPRESS)):
        p.add_argument(
            "--config",
            default=default,
            help="YAML config file, relative to the current directory (default: the project's "
            "pipeline.yaml)",
        )
        p.add_argument(
            "--set",
            action="append",
            default=[] if default is None else default,
            metavar="KEY=VALUE",
            help="override a config key, e.g. --set threshold=50 (repeatable)",
        )
        p.add_argument(
            "-v",
            "--verbose",
            action="store_true",
            default=False if default is None else default,
            help="debug logging",
        )
    sub = parser.add_subparsers(dest="command")

    def command(name: str, text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=text, parents=[common])

    run_p = command("run", "run the pipeline (the default command)")
    for p in (parser, run_p):
        p.add_argument("--stages", help=f"comma-separated subset of {','.join(STAGES)}")
        p.add_argument("--force-retrain", action="store_true", help="train whatever the count")
        p.add_argument(
            "--data",
            help="data CSV(s), comma-separated, relative to the current directory; they must "
            "exist; or an http(s):// CSV URL, or a database URL with #table=NAME or "
            "#query=SELECT... (config key data_path)",
        )
        p.add_argument("--threshold", type=int, help="new apps needed to retrain")
        p.add_argument("--run-id", help="name of the run (default: timestamp + random suffix)")
        p.add_argument("--wait", type=float, help="seconds to wait for another runner to finish")
    serve = command("serve", "run the model service (champion, and canary in rollouts)")
    serve.add_argument("--host", help="bind address (default: serving_host, 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default: serving_port, 8080)")
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        help="replica processes sharing the port (worker i also on port + 1 + i; default 1)",
    )
    command("status", "champion, canary, weight and rollout state")
    command("store-recover", "store the predictions a dead service answered but did not write")
    rb = command("rollback", "put the previous champion back (registry, models/, service)")
    rb.add_argument("--reason", default="manual rollback", help="why (logged and recorded)")
    pr = command("promote", "put a registered version into production (staging smoke tests)")
    pr.add_argument("version")
    pr.add_argument("--reason", help="why (required; logged and recorded)")
    ap = command("approve", "deploy a version that awaits approval (from staging)")
    ap.add_argument("version")
    ap.add_argument("--reason", help="who approved and why (recorded)")
    dp = command("deploy", "deploy a version whose recorded 04 decision is auto (CI's deploy job)")
    dp.add_argument("version")
    for p in (ap, dp):
        p.add_argument("--run-id", help="name of the deploy run (default: timestamp + suffix)")
    rj = command("reject", "close a rollout that awaits approval")
    rj.add_argument("version")
    rj.add_argument("--reason", default="rejected by a person")
    nt = command("notify", "send a test message (or a rollback notice) to every target")
    nt.add_argument("--test", action="store_true", help="a test message")
    nt.add_argument("--rollback", action="store_true", help="a rollback notice")
    nt.add_argument("--reason", help="the reason in a rollback notice")
    bt = command("backtest", "replay the decision policy over time-ordered batches (07)")
    bt.add_argument("--data", help=f"raw Play Store CSV (default {BACKTEST_DATA})")
    bt.add_argument("--batches", type=int, default=5, help="later batches (default 5)")
    bt.add_argument("--initial-share", type=float, default=0.4, help="oldest share (default 0.4)")
    bt.add_argument("--family", default="hist_gradient_boosting", help="model family")
    bt.add_argument("--cv-folds", type=int, default=3, help="folds per candidate (default 3)")
    bt.add_argument("--with-name-text", action="store_true", help="include the name-text stack")
    bt.add_argument("--no-noise", action="store_true", help="skip the noise candidates")
    sim = command("simulate-new-apps", "append generated new apps to the data file")
    sim.add_argument("--n", type=int, default=150, help="number of new apps (default 150)")
    sim.add_argument("--seed", type=int, help="seed of the batch (default: derived from the file)")
    demo = command("demo", "the whole story on generated data in its own folder (a few minutes)")
    demo.add_argument("--dir", help="the demo's folder (default: demo/ in the project; replaced)")
    return parser


class Terminated(SystemExit):
    """SIGTERM (CI cancellation, `kill`): unwind like Ctrl-C so that kernels, services and the
    run's record are cleaned up and written, then exit 128 + 15."""


def _on_sigterm(signum: int, frame: Any) -> None:
    raise Terminated(128 + signum)


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _on_sigterm)
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:  # nbconvert's accessibility hints about plots are not actionable here
        logging.getLogger("traitlets").setLevel(logging.ERROR)
    from lib.watch.redaction import install_redacting_filter

    install_redacting_filter()  # webhook URLs, SMTP passwords and keys never reach a log
    # progress of long steps (CV folds, canary steps) on this terminal, from the kernels too
    # (they inherit the environment); PIPELINE_PROGRESS=0 silences it
    os.environ.setdefault(progress.ENV, "1")
    try:
        overrides: dict[str, Any] = parse_set_options(args.set)
        if getattr(args, "data", None):
            overrides["data_path"] = args.data
        if getattr(args, "threshold", None) is not None:
            overrides["threshold"] = args.threshold
        if getattr(args, "wait", None) is not None:
            overrides["lock_timeout"] = args.wait
        # the project is this file's directory, or PIPELINE_ROOT (then the kernels, which read it
        # too, agree); never where lib is installed
        root = project_root(Path(__file__).resolve().parent)
        cfg = load_config(root, args.config, overrides, cwd=Path.cwd())
        if args.command in OPERATIONS:
            return OPERATIONS[args.command](cfg, root, args, print)
        if args.command == "simulate-new-apps":
            n = simulate_new_apps(cfg, root, args.n, args.seed)
            print(f"appended {n} new apps to {cfg.data_path.split(',')[0]}")
            return 0
        if args.command == "demo":
            from lib.demo import run_demo

            folder = Path(args.dir).resolve() if args.dir else root / "demo"
            story = run_demo(root, folder, print)
            return (
                0 if story.good_outcome == "promoted" and story.bad_outcome == "rolled_back" else 1
            )
        stages = args.stages.split(",") if args.stages else None
        result = run(cfg, root, stages, args.force_retrain, args.run_id, echo=print)
        return result.exit_code
    except Terminated:
        print("stopped by SIGTERM", file=sys.stderr)
        return 143
    except StageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
