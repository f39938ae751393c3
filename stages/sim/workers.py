"""A pool of spawned processes for simulator jobs (recording, closed-loop evaluation).

Each process builds one runner, which keeps its MuJoCo envs (and policies) across jobs: a
Meta-World model costs about a second to build, so jobs go through a queue to long-lived workers.
Processes are spawned, never forked: GL contexts and torch/arrow thread pools do not survive a fork.
A job that raises in a worker is re-raised in the parent as `VlaError` with the worker's last
traceback line; workers that die without answering are reported too.
"""

from __future__ import annotations

import multiprocessing as mp
import queue
import traceback
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from stages.errors import VlaError


class JobRunner(Protocol):
    def run(self, job: Any) -> Any: ...

    def close(self) -> None: ...


# `make_runner(in_worker)` must be picklable (a top-level class or function): workers call it once.
RunnerFactory = Callable[[bool], JobRunner]


def _worker(make_runner: RunnerFactory, jobs: "queue.Queue", results: "queue.Queue") -> None:
    """Body of a worker process: (index, job) items until a `None`, then close the runner."""
    runner = make_runner(True)
    try:
        while (item := jobs.get()) is not None:
            index, job = item
            try:
                results.put((index, runner.run(job), None))
            except Exception:  # noqa: BLE001 - shipped to the parent, which raises it
                results.put((index, None, traceback.format_exc()))
    finally:
        runner.close()


def run_jobs(jobs: Sequence[Any], make_runner: RunnerFactory, *, workers: int, advance: Callable[[float], None],
             what: str, describe: Callable[[Any], str], weight: Callable[[Any], float] = lambda job: 1) -> list[Any]:
    """`runner.run(job)` for every job, in `workers` processes (in this one when `workers <= 1`);
    results in job order. `advance(weight(job))` as each finishes; `describe(job)` names a failed job."""
    if workers <= 1 or len(jobs) <= 1:
        runner = make_runner(False)
        out = []
        try:
            for job in jobs:
                out.append(runner.run(job))
                advance(weight(job))
        finally:
            runner.close()
        return out
    ctx = mp.get_context("spawn")
    job_q, result_q = ctx.Queue(), ctx.Queue()
    for item in enumerate(jobs):
        job_q.put(item)
    procs = [ctx.Process(target=_worker, args=(make_runner, job_q, result_q), daemon=True) for _ in range(min(workers, len(jobs)))]
    for _ in procs:
        job_q.put(None)
    for p in procs:
        p.start()
    results: dict[int, Any] = {}
    try:
        while len(results) < len(jobs):
            try:
                index, result, error = result_q.get(timeout=5.0)
            except queue.Empty:
                if not any(p.is_alive() for p in procs):
                    raise VlaError(f"{what} workers died without finishing", caused_by=f"{len(results)}/{len(jobs)} jobs done") from None
                continue
            if error is not None:
                raise VlaError(f"{describe(jobs[index])} failed", caused_by=error.strip().splitlines()[-1])
            results[index] = result
            advance(weight(jobs[index]))
        for p in procs:
            p.join()
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
    return [results[i] for i in range(len(jobs))]
