"""Stage `search` of sanas/full: PaddleSlim SANAS — simulated annealing over BlazeFace's 9
tokens (strategies/sa.py), one candidate at a time through the shared search driver
(resumable). A proposal outside the constraint window (MACs, or predicted latency) is skipped
without training and counted; each evaluated candidate is trained briefly from scratch and its
reward is AP@0.5 on the held-out images (pycocotools).

Files: constraint.json (the window searched), output.csv (+ .parquet: id, tokens, macs, params,
predicted_ms, AP50, temperature, accepted), desc_/model_/performance_<id>, best_structure.txt (the
seed's printout)."""
from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger

from core.seeds import derive_seed
from nas_models.blazeface import INIT_TOKENS, RANGE_TABLE, describe
from params.models import FaceTrainParams, Runtime, SanasSearchParams
from strategies.sa import SASearch, stretched_reduce_rate
from tasks.orchestration.context import StageContext
from tasks.orchestration.files import save_handoff, write_json
from tasks.orchestration.handoff import StageResult
from tasks.orchestration.pipeline import candidate_run_name
from tasks.orchestration.search import (ControlReport, SearchSpec, candidate_task, choose, fidelity_of, finalize,
                                        run_control, run_search)
from tasks.orchestration.tables import write_table
from tasks.sanas.data import Faces
from tasks.sanas.latency_table import Latency
from tasks.sanas.shared import Window, constraint_value, cost, train_tokens
from tracking import tracker

STAGE = "search"


@dataclass(frozen=True, kw_only=True)
class Searched(StageResult):
    """What SANAS found: the best tokens (trained again in `train`) and the candidates table."""

    rows: tuple[Mapping[str, Any], ...]  # output.csv's rows, one per trained candidate
    best_tokens: tuple[int, ...]
    best_reward: float                   # the best candidate's AP@0.5 after its short training
    skipped: int                         # proposals outside the window, skipped untrained
    structure: str                       # the best network's printout (best_structure.txt)
    control: ControlReport | None = None  # search vs a same-budget random control (search.control: random)


def evaluate_candidate(candidate: dict[str, Any], data: Faces, latency: Latency,
                       search: SanasSearchParams, train: FaceTrainParams, image_size: int, seed: int,
                       runtime: Runtime, out_dir: Path) -> dict[str, Any]:
    """Train `search.candidate_steps` steps from scratch and score. In rungs (the driver adds
    "rung", "steps", "max_steps", "resume_from"): train until candidate["steps"] steps of a
    candidate["max_steps"]-step schedule — from scratch at rung 0, from the previous rung's
    checkpoint on a promotion — save ckpt_<id>_r<rung>.pth and return it as "checkpoint" (also
    in "files")."""
    started = time.perf_counter()
    rung = None if candidate.get("rung") is None else int(candidate["rung"])
    steps = search.candidate_steps if rung is None else int(candidate["steps"])
    own_seed = derive_seed(seed, "sanas.search", int(candidate["id"]))
    ckpt = None
    if rung is None:
        model, scores = train_tokens(candidate["tokens"], data, train, steps, image_size, own_seed, runtime)
    else:
        ckpt = out_dir / f"ckpt_{candidate['id']}_r{rung}.pth"
        resume_from = candidate.get("resume_from")
        model, scores = train_tokens(candidate["tokens"], data, train, steps, image_size, own_seed, runtime, ckpt,
                                     total=int(candidate.get("max_steps") or steps),
                                     resume_from=Path(resume_from) if resume_from else None)
    performance = {**scores, **cost(candidate["tokens"], latency, image_size), "train_steps": steps,
                   "train_seconds": round(time.perf_counter() - started, 2)}
    if rung is not None:
        performance["rung"] = rung
    desc = {"type": "BlazeFace", **model.arch}
    files = save_handoff(out_dir, str(candidate["id"]), desc, model, performance)
    structure = out_dir / f"structure_{candidate['id']}.txt"
    structure.write_text(describe(candidate["tokens"]) + "\n")
    out = {**candidate, "performance": performance, "desc": desc, "model_path": files[1],
           "files": [*files, str(structure)]}
    if ckpt is not None:
        out.update(checkpoint=str(ckpt), files=[*out["files"], str(ckpt)])
    return out


def _name(candidate: dict[str, Any], base: str) -> str:
    rung = candidate.get("rung")
    return f"{base}-r{rung}" if rung else base


@candidate_task(name="sanas_candidate",
                task_run_name=candidate_run_name(
                    lambda c: _name(c, f"sa-{c.get('id', '?')}-{''.join(map(str, c.get('tokens', [])))}")))
def sanas_candidate_task(candidate: dict[str, Any], data: Faces, latency: Latency,
                         search: SanasSearchParams, train: FaceTrainParams, image_size: int, seed: int,
                         ctx: StageContext) -> dict[str, Any]:
    """One SA step's candidate; its MLflow run (sa-<id>, sa-<id>-r<rung> for a promotion) holds the
    tokens, the structure printout (describe) as an artifact, MACs, params, predicted latency and AP@0.5."""
    tokens = "".join(map(str, candidate["tokens"]))
    params = {"id": candidate["id"], "tokens": tokens, "temperature": candidate["temperature"]}
    if candidate.get("rung") is not None:
        params.update(rung=candidate["rung"], steps=candidate["steps"])
    with tracker.child_run(ctx.parent_run_id, _name(candidate, f"sa-{candidate['id']}"), params) as run_id:
        out = evaluate_candidate(candidate, data, latency, search, train, image_size, seed, ctx.runtime, ctx.work)
        tracker.log_metrics(run_id, out["performance"])
        tracker.log_files(run_id, [f for f in out["files"] if f != out.get("checkpoint")], "candidate")
    perf = out["performance"]
    get_run_logger().info("SA step %s tokens %s%s: AP@0.5 %.4f  MACs %.2fM  predicted %.3f ms", candidate["id"], tokens,
                          "" if "rung" not in perf else f" rung {perf['rung']}",
                          perf["AP50"], perf["macs"] / 1e6, perf["predicted_ms"])
    return out


def _row(result: dict[str, Any]) -> dict[str, Any]:
    perf = result.get("performance") or {}
    return {"tokens": "".join(map(str, result.get("tokens", []))), "temperature": result.get("temperature"),
            "skipped_before": result.get("skipped_before"), "macs": perf.get("macs"), "params": perf.get("params"),
            "predicted_ms": perf.get("predicted_ms"), "AP50": perf.get("AP50"), "AP": perf.get("AP"),
            "status": "ok" if perf else "failed"}


def trace_file(strategy: SASearch, rows: list[dict[str, Any]], work: Path) -> list[str]:
    """sa_trace.csv: each step's proposal kind, temperature and whether SA accepted its candidate."""
    reward = {r["id"]: r["AP50"] for r in rows}
    trace = [{"step": k.id, "proposal": strategy.proposal_of(k.id), "tokens": "".join(map(str, k.tokens)),
              "temperature": k.temperature,
              "skipped_before": k.skipped_before, "AP50": reward.get(k.id), "accepted": k.accepted}
             for k in strategy.candidates]
    return [str(p) for p in write_table(trace, work / "sa_trace.csv")]


@flow(name="sanas-search")
def sanas_search(data: Faces, latency: Latency, constraint: Window, search: SanasSearchParams,
                 train: FaceTrainParams, image_size: int, seed: int, ctx: StageContext,
                 refresh: bool = False) -> Searched:
    """`constraint`: the window from tasks.sanas.shared.constraint_window."""
    logger = get_run_logger()
    c = constraint
    ctx.work.mkdir(parents=True, exist_ok=True)
    window_file = write_json(ctx.work / "constraint.json", c.to_dict())

    # null: the seed's cooling stretched over this search's steps (anneals even at 12 steps)
    rate = search.reduce_rate if search.reduce_rate is not None else stretched_reduce_rate(search.search_steps)

    def annealing(steps: int, own_seed: int, proposal: str, starts: int = 0) -> SASearch:
        return SASearch(list(RANGE_TABLE), list(INIT_TOKENS), own_seed, init_temperature=search.init_temperature,
                        reduce_rate=rate, search_steps=steps,
                        constraint_of=lambda t: constraint_value(t, c.ctype, latency, image_size),
                        low=c.min, high=c.max, proposal=proposal, random_starts=starts)

    strategy = annealing(search.search_steps, seed, "neighbour", search.random_starts)

    def control(n: int) -> SASearch:
        # Uniform tokens within the same window (the initial tokens first, as in the search), n in all.
        return annealing(n, derive_seed(seed, "sanas.control"), "uniform")
    spec = SearchSpec(STAGE, sanas_candidate_task, 1,
                      lambda k: {"id": k.id, "tokens": list(k.tokens), "temperature": k.temperature,
                                 "skipped_before": k.skipped_before},
                      lambda r: {"reward": r["performance"]["AP50"], "macs": r["performance"]["macs"]}, _row,
                      ("macs", "AP50"), f"SANAS ({c.ctype} in [{c.min}, {c.max}] {c.unit})",
                      extra_outputs=trace_file, control=control if search.control == "random" else None,
                      fidelity=fidelity_of(search))
    window_params = {f"constraint_{k}": v for k, v in c.to_dict().items()}
    logger.info("annealing: %d random starts, then T0 %g, reduce_rate %.4g%s: T falls to %.3g by the last of %d steps",
                search.random_starts, search.init_temperature, rate,
                "" if search.reduce_rate is not None else " (the seed's 0.85 stretched over the steps)",
                strategy.temperature(search.search_steps - 1), search.search_steps)
    with tracker.child_run(ctx.parent_run_id, STAGE,
                           {**search.model_dump(), "reduce_rate": rate, **window_params}) as run_id:
        common = dict(data=data, latency=latency, search=search, train=train, image_size=image_size, seed=seed)
        outcome = run_search(strategy, spec, ctx, run_id, refresh, **common)
        report = run_control(strategy, spec, outcome, ctx, run_id, refresh, None, **common)
        if spec.fidelity is None:
            best_id = next(k.id for k in strategy.candidates if list(k.tokens) == list(strategy.best_tokens))
        else:  # annealing remembers rung-0 rewards; the winner is the best of the top rung
            best_id = choose(strategy, {}, STAGE).id
        best_tokens = list(strategy.candidates[best_id].tokens)
        best_reward = float(outcome.results[best_id]["performance"]["AP50"])
        rows = finalize(strategy, spec, outcome, ctx.work, best_id, "best", needed=set())
        structure = describe(best_tokens)
        path = ctx.work / "best_structure.txt"
        path.write_text(structure + "\n")
        outcome.files += [str(path), str(window_file)]
        tracker.log_files(run_id, outcome.files, STAGE)
        tracker.log_metrics(run_id, {"evaluated": len(outcome.results), "skipped_outside_constraint": strategy.skipped,
                                     "accepted": strategy.accepted_count, "best_AP50": best_reward})
    tracker.publish_markdown("sanas-structure", f"```\n{structure}\n```", f"found BlazeFace structure (tokens {best_tokens})")
    logger.info("SANAS: %d candidates trained, %d proposals outside the constraint skipped untrained, %d accepted; "
                "best tokens %s (AP@0.5 %.4f)\n%s", len(outcome.results), strategy.skipped, strategy.accepted_count,
                best_tokens, best_reward, structure)
    return Searched(rows=tuple(rows), best_tokens=tuple(best_tokens), best_reward=best_reward,
                    skipped=strategy.skipped, structure=structure, control=report, files=tuple(outcome.files))
