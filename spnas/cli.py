"""`spnas` — what a user does by hand: bring the stack up/down, deploy, run a pipeline, split a
data set, predict with an exported model. Bad input prints one line and exits 2."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.errors import InputError, StackError

if TYPE_CHECKING:
    from params.registry import PipelineSpec


def _pipeline(deployment: str) -> PipelineSpec:
    """The registry entry of `deployment` (InputError naming the known ones)."""
    from params.registry import by_deployment

    return by_deployment(deployment)


def _preflight(spec: PipelineSpec, p: Any) -> None:
    """What the flow checks right after loading its params (files, weights, tables, device),
    checked here too, so a bad file fails in a second, not on the worker."""
    import importlib

    importlib.import_module(f"tasks.{spec.package}.preflight").preflight(p)


def _overrides(pairs: list[str]) -> dict[str, Any]:
    from params.loader import parse_override

    return dict(parse_override(p) for p in pairs)


def cmd_up(args: argparse.Namespace) -> int:
    from spnas import stack

    info = stack.up(stack.StackConfig(db=args.db))
    print(info.describe())
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    from spnas import stack

    stopped = stack.down(stack.StackConfig())
    if stopped.get("postgres"):
        print(f"PostgreSQL server stopped (pid {stopped['postgres']})")
    print("stack stopped")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from spnas import postgres, stack

    cfg = stack.StackConfig()
    report: dict[str, Any] = {"database": postgres.describe(cfg), **stack.status(cfg)}
    print(json.dumps(report, indent=2, default=str))
    return 0


def cmd_env(args: argparse.Namespace) -> int:
    """`eval "$(spnas env)"` points the prefect/mlflow CLIs at this project's servers."""
    import shlex

    from spnas import stack

    for key, value in stack.stack_env(stack.StackConfig()).items():
        print(f"export {key}={shlex.quote(value)}")
    return 0


def cmd_deploy(args: argparse.Namespace) -> int:
    from spnas import stack

    return stack.deploy_all(stack.StackConfig())


def cmd_check_params(args: argparse.Namespace) -> int:
    from params.loader import load_params

    spec = _pipeline(args.deployment)
    p = load_params(spec.model, args.params_file or spec.params_file, _overrides(args.set))
    _preflight(spec, p)
    print(json.dumps(p.model_dump(mode="json"), indent=2))
    return 0


def _output_root(p: Any) -> Path:
    """Where the flow writes its run folders (the worker runs in the repo: relative paths are
    the repo's), for the watcher to read summary.json from."""
    from core.paths import REPO_ROOT, default_output_root

    if not p.output_root:
        return default_output_root()
    root = Path(p.output_root).expanduser()
    return root if root.is_absolute() else (REPO_ROOT / root).resolve()


def _watch_mode(args: argparse.Namespace) -> str:
    if args.no_watch and args.raw_watch:
        raise InputError("--raw-watch", "give --no-watch or --raw-watch, not both")
    return "none" if args.no_watch else "raw" if args.raw_watch else "view"


def _start(cfg: Any, deployment: str, parameters: dict[str, Any], stages: tuple[str, ...], output_root: Path,
           mode: str) -> int:
    """Run `deployment`: watched in spnas's stage view, with Prefect's own event stream, or not."""
    from spnas import stack

    if mode == "view":
        from spnas import watch

        return watch.run_and_watch(cfg, deployment, parameters, stages, output_root)
    return stack.run_deployment(cfg, deployment, parameters, watch=mode == "raw")


PREFECT_PROBE_SECONDS = 3.0


def _require_prefect(cfg: Any) -> None:
    """StackError unless the stack's Prefect server answers its health check within a few seconds.
    Without it, Prefect's client retries an address nobody listens on, then prints a long httpx
    traceback."""
    from spnas.supervise import http_request

    url = cfg.prefect_api_url
    code, body = http_request("GET", f"{url}/health", timeout=PREFECT_PROBE_SECONDS, creds=cfg.credentials)
    if code == 200 and body.strip() == b"true":
        return
    if code == 0:
        raise StackError(f"stack: no Prefect server answers at {url}; start the stack with `spnas up` "
                         "(then `spnas deploy`)")
    if code in (401, 403):
        raise StackError(f"stack: the Prefect server at {url} refuses this stack's credentials (HTTP {code}); "
                         "give the SPNAS_AUTH or SPNAS_AUTH_FILE the stack was started with")
    raise StackError(f"stack: the server at {url} does not answer like a Prefect server (GET /health gave "
                     f"HTTP {code}); check `spnas status`, or set SPNAS_PREFECT_PORT to the stack's port")


def cmd_run(args: argparse.Namespace) -> int:
    """Validate the parameters here first, so a typo fails in a second, not on the worker."""
    from params.loader import load_params
    from spnas import stack
    from spnas.watch import stack_environ

    from tasks.orchestration.pipeline import REFRESH_ALL, check_dask_address, check_refresh

    mode = _watch_mode(args)
    spec = _pipeline(args.deployment)
    params_file = args.params_file or spec.params_file
    overrides = _overrides(args.set)
    p = load_params(spec.model, params_file, overrides)
    _preflight(spec, p)
    check_dask_address(p.dask_address)  # a scheduler that does not answer fails here, not on the worker
    refresh_from = REFRESH_ALL if args.refresh else args.refresh_from
    if args.refresh and args.refresh_from:
        raise InputError("--refresh-from", "give --refresh (every stage) or --refresh-from STAGE, not both")
    check_refresh(refresh_from, spec.stages)
    cfg = stack.StackConfig()
    _require_prefect(cfg)  # the stack being down is one line, in seconds
    parameters = {"params_file": params_file, "overrides": overrides, "refresh_from": refresh_from}
    # The watcher's Prefect client is pinned to this stack's API whatever prefect was imported with;
    # the environment is the stack's while it runs (and restored: tests call main() in-process).
    with stack_environ(cfg):
        return _start(cfg, args.deployment, parameters, spec.stages, _output_root(p), mode)


def cmd_demo(args: argparse.Namespace) -> int:
    """Up (or reuse) the stack, deploy everything, run the main job and say where to look."""
    from params.loader import load_params
    from spnas import stack
    from spnas.watch import stack_environ

    mode = _watch_mode(args)
    spec = _pipeline(args.deployment)
    params_file = args.params_file or spec.params_file
    overrides = _overrides(args.set)
    p = load_params(spec.model, params_file, overrides)  # a typo fails before the stack starts
    _preflight(spec, p)
    cfg = stack.StackConfig(db=args.db)
    info = stack.up(cfg)
    print(info.describe(), flush=True)
    code = stack.deploy_all(cfg)
    if code != 0:
        return code
    with stack_environ(cfg):
        code = _start(cfg, args.deployment, {"params_file": params_file, "overrides": overrides}, spec.stages,
                      _output_root(p), mode)
    print()
    print(info.describe())
    return code


def cmd_split(args: argparse.Namespace) -> int:
    from data.split import format_split_summary, split_imagenet_folder

    if args.format != "ImageNet":
        raise InputError("--format", f"{args.format!r} is not supported; use ImageNet")
    result = split_imagenet_folder(Path(args.dataset_dir), args.val_value, args.test_value, args.seed)
    print(format_split_summary(result))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from deploy.predictor import ClassifierPredictor, check_count

    # The predictor's argument names -> the flags a user typed, so errors name what to fix.
    flags = {"model_dir": "--model-dir", "topk": "--topk", "batch_size": "--batch-size",
             "threads": "--threads", "warmup": "--warmup", "repeats": "--repeats"}
    try:
        # Counts first: nothing is loaded when one is out of range.
        for name, minimum in (("topk", 1), ("batch_size", 1), ("threads", 1), ("warmup", 0),
                              ("repeats", 1)):
            check_count(name, getattr(args, name), minimum)
        predictor = ClassifierPredictor(args.model_dir, threads=args.threads)
        results = predictor.predict(list(args.images), topk=args.topk, batch_size=args.batch_size,
                                    warmup=args.warmup, repeats=args.repeats)
    except InputError as exc:
        if exc.field not in flags:
            raise
        message = str(exc)[len(exc.field) + 2:]  # InputError's text is "<field>: <message>"
        raise InputError(flags[exc.field], message) from exc
    for image, result in zip(args.images, results):
        print(json.dumps({"image": image, "result": result}))
    print(predictor.time_info.report())
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    """Side by side: differing params, final figures, Pareto fronts (table + PNG, also in MLflow).
    Reads the stack's MLflow server unless MLFLOW_TRACKING_URI points elsewhere."""
    import os

    if not os.environ.get("MLFLOW_TRACKING_URI"):
        from spnas import stack

        cfg = stack.StackConfig()
        if not stack.status(cfg)[stack.MLFLOW]["healthy"]:
            raise StackError(f"the stack's MLflow server ({cfg.mlflow_url}) is not running: start it with "
                                   "`spnas up`, or set MLFLOW_TRACKING_URI to the tracking store to read")
        # The URI and, when the stack serves with credentials, MLflow's basic-auth login.
        os.environ.update({k: v for k, v in stack.stack_env(cfg).items() if k.startswith("MLFLOW_TRACKING_")})
    from spnas.compare import compare

    print(compare(args.runs, args.out, log=not args.no_log).report())
    return 0


def build_parser() -> argparse.ArgumentParser:
    from params.registry import MAIN, deployments

    parser = argparse.ArgumentParser(prog="spnas", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    db_help = ("database of both servers: sqlite (files in the state folder) or postgres (a local "
               "PostgreSQL server, or SPNAS_DATABASE_URL's); default: what this state folder last used, "
               "else sqlite")
    p = sub.add_parser("up", help="start (or reuse) Prefect server, worker and MLflow server")
    p.add_argument("--db", choices=("sqlite", "postgres"), default=None, help=db_help)
    p.set_defaults(fn=cmd_up)
    sub.add_parser("down", help="stop exactly the processes `up` started").set_defaults(fn=cmd_down)
    sub.add_parser("status", help="pids and health of the stack").set_defaults(fn=cmd_status)
    sub.add_parser("env", help="print export lines for the prefect/mlflow CLIs").set_defaults(fn=cmd_env)
    sub.add_parser("deploy", help="register every deployment in prefect.yaml").set_defaults(fn=cmd_deploy)

    def add_params_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--params-file", help="YAML of parameters (default: params/<flow>.yaml)")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override one parameter (repeatable), e.g. --set epochs=20")

    def add_watch_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--no-watch", action="store_true", help="start the flow run and return")
        p.add_argument("--raw-watch", action="store_true",
                       help="watch with Prefect's own event stream instead of the per-stage view")

    p = sub.add_parser("run", help="run a deployment and watch it (one line per stage, then the summary)")
    p.add_argument("deployment", help=f"one of {', '.join(deployments())}")
    add_params_args(p)
    add_watch_args(p)
    p.add_argument("--refresh", action="store_true", help="recompute every stage (ignore cached results)")
    p.add_argument("--refresh-from", metavar="STAGE",
                   help="recompute this stage and every stage after it (e.g. serial, fully_train)")
    p.set_defaults(fn=cmd_run)

    p = sub.add_parser("demo", help="up + deploy + run the main job end to end")
    p.add_argument("--deployment", default=MAIN.deployment)
    p.add_argument("--db", choices=("sqlite", "postgres"), default=None, help=db_help)
    add_params_args(p)
    add_watch_args(p)
    p.set_defaults(fn=cmd_demo)

    p = sub.add_parser("check-params", help="validate a deployment's parameters without running it")
    p.add_argument("deployment")
    add_params_args(p)
    p.set_defaults(fn=cmd_check_params)

    p = sub.add_parser("split-dataset", help="PaddleX-style split: writes *_list.txt and labels.txt into the folder")
    p.add_argument("--format", default="ImageNet")
    p.add_argument("--dataset-dir", required=True)
    p.add_argument("--val-value", type=float, required=True)
    p.add_argument("--test-value", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(fn=cmd_split)

    p = sub.add_parser("predict", help="top-k classes of images with an exported model folder")
    p.add_argument("--model-dir", required=True, help="inference_model folder written by the export stage")
    p.add_argument("images", nargs="+", help="image files (PNG, JPEG, BMP, ...)")
    p.add_argument("--topk", type=int, default=1, help="classes per image, >= 1")
    p.add_argument("--batch-size", type=int, default=1, help="images per ONNX Runtime call, >= 1")
    p.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads, >= 1")
    p.add_argument("--warmup", type=int, default=5, help="untimed passes first, >= 0")
    p.add_argument("--repeats", type=int, default=1, help="timed passes, >= 1")
    p.set_defaults(fn=cmd_predict)

    p = sub.add_parser("compare", help="compare runs of one deployment: differing params, final figures, "
                                       "overlaid Pareto fronts (also logged to MLflow)")
    p.add_argument("runs", nargs="+", metavar="RUN", help="flow-run name (e.g. polar-ermine) or MLflow run id")
    p.add_argument("--out", help="folder for compare.csv and pareto_fronts.png (default: ./compare-<timestamp>/)")
    p.add_argument("--no-log", action="store_true", help="write the files only; no comparison run in MLflow")
    p.set_defaults(fn=cmd_compare)
    return parser


def main(argv: list[str] | None = None) -> int:
    # Commands import prefect (parameter checks use the task modules): keep its home, profiles and
    # local database in the state folder rather than creating ~/.prefect.
    import os

    from core.paths import state_dir

    os.environ.setdefault("PREFECT_HOME", str(state_dir() / "prefect"))
    args = build_parser().parse_args(argv)
    try:
        return int(args.fn(args) or 0)
    except (InputError, StackError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
