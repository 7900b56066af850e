"""`spnas` — what a user does by hand: bring the stack up/down, deploy, run a pipeline, split a
data set, predict with an exported model. Bad input prints one line and exits 2."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from spnas.errors import InputError

MAIN_DEPLOYMENT = "spnas/full"

# deployment -> (params model import path, default params file)
PIPELINES: dict[str, tuple[str, str]] = {
    "lcnet/full": ("params.models:LcnetParams", "params/lcnet.yaml"),
    "spnas/full": ("params.models:SpnasParams", "params/spnas.yaml"),
    "prune-ea/full": ("params.models:PruneEaParams", "params/prune_ea.yaml"),
    "spos/full": ("params.models:SposParams", "params/spos.yaml"),
    "sanas/full": ("params.models:SanasParams", "params/sanas.yaml"),
}


def _params_model(deployment: str) -> tuple[type, str]:
    if deployment not in PIPELINES:
        raise InputError("deployment", f"unknown deployment {deployment!r}; known: {', '.join(PIPELINES)}")
    import importlib

    target, default_file = PIPELINES[deployment]
    module, name = target.split(":")
    return getattr(importlib.import_module(module), name), default_file


def _overrides(pairs: list[str]) -> dict[str, Any]:
    from params.loader import parse_override

    return dict(parse_override(p) for p in pairs)


def cmd_up(args: argparse.Namespace) -> int:
    from spnas import stack

    info = stack.up(stack.StackConfig())
    print(info.describe())
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    from spnas import stack

    stack.down(stack.StackConfig())
    print("stack stopped")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from spnas import stack

    print(json.dumps(stack.status(stack.StackConfig()), indent=2, default=str))
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

    model, default_file = _params_model(args.deployment)
    p = load_params(model, args.params_file or default_file, _overrides(args.set))
    print(json.dumps(p.model_dump(mode="json"), indent=2))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """Validate the parameters here first, so a typo fails in a second, not on the worker."""
    from params.loader import load_params
    from spnas import stack

    from tasks.pipeline import REFRESH_ALL, check_refresh

    model, default_file = _params_model(args.deployment)
    params_file = args.params_file or default_file
    overrides = _overrides(args.set)
    load_params(model, params_file, overrides)
    refresh_from = REFRESH_ALL if args.refresh else args.refresh_from
    if args.refresh and args.refresh_from:
        raise InputError("--refresh-from", "give --refresh (every stage) or --refresh-from STAGE, not both")
    check_refresh(refresh_from, model.STAGES)
    cfg = stack.StackConfig()
    parameters = {"params_file": params_file, "overrides": overrides, "refresh_from": refresh_from}
    return stack.run_deployment(cfg, args.deployment, parameters, watch=not args.no_watch)


def cmd_demo(args: argparse.Namespace) -> int:
    """Up (or reuse) the stack, deploy everything, run the main job and say where to look."""
    from spnas import stack

    cfg = stack.StackConfig()
    info = stack.up(cfg)
    print(info.describe(), flush=True)
    code = stack.deploy_all(cfg)
    if code != 0:
        return code
    params_file = args.params_file or _params_model(args.deployment)[1]
    code = stack.run_deployment(cfg, args.deployment, {"params_file": params_file, "overrides": _overrides(args.set)},
                                watch=True)
    print()
    print(info.describe())
    outputs = Path(stack.stack_env(cfg)["SPNAS_HOME"]) / "outputs"
    summaries = sorted(outputs.glob("*/summary.json"), key=lambda f: f.stat().st_mtime)
    if summaries:
        print(f"outputs of this run: {summaries[-1].parent}")
        print(json.dumps(json.loads(summaries[-1].read_text()), indent=2))
    else:
        print(f"outputs: {outputs}/<flow-run-name>/")
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spnas", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("up", help="start (or reuse) Prefect server, worker and MLflow server").set_defaults(fn=cmd_up)
    sub.add_parser("down", help="stop exactly the processes `up` started").set_defaults(fn=cmd_down)
    sub.add_parser("status", help="pids and health of the stack").set_defaults(fn=cmd_status)
    sub.add_parser("env", help="print export lines for the prefect/mlflow CLIs").set_defaults(fn=cmd_env)
    sub.add_parser("deploy", help="register every deployment in prefect.yaml").set_defaults(fn=cmd_deploy)

    def add_params_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--params-file", help="YAML of parameters (default: params/<flow>.yaml)")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override one parameter (repeatable), e.g. --set epochs=20")

    p = sub.add_parser("run", help="run a deployment and watch it")
    p.add_argument("deployment", help=f"one of {', '.join(PIPELINES)}")
    add_params_args(p)
    p.add_argument("--no-watch", action="store_true")
    p.add_argument("--refresh", action="store_true", help="recompute every stage (ignore cached results)")
    p.add_argument("--refresh-from", metavar="STAGE",
                   help="recompute this stage and every stage after it (e.g. serial, fully_train)")
    p.set_defaults(fn=cmd_run)

    p = sub.add_parser("demo", help="up + deploy + run the main job end to end")
    p.add_argument("--deployment", default=MAIN_DEPLOYMENT)
    add_params_args(p)
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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.fn(args) or 0)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        if type(exc).__name__ == "StackError":
            print(f"error: {exc}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
