"""How ``reftx sweep`` runs its cells: in this process, as local processes, or through submitit.

* ``--jobs 1`` (the default): one cell after the other in this process (reftx.recipes.train.run),
  each resuming its folder's checkpoint when it has one.
* ``--jobs N``: up to N cells at once, each ``python -m reftx.cli run ...`` (the line ``--emit
  commands`` prints) with OMP/MKL/OpenBLAS threads (and so torch's) limited to ``--threads`` (default:
  the CPU count over N), its output in ``{sweep}/logs/{cell}.log``.
* ``--executor slurm`` (or ``local``, submitit's local executor, which CI tests the same path with):
  the cells as one job array through submitit (``pip install 'reftx[sweep]'``), its files in
  ``{sweep}/submitit/``; ``--executor-option key=value`` sets submitit parameters (timeout_min=60,
  slurm_partition=gpu, ...). Each job runs :func:`run_job`; this process waits and records them.

Every executor calls ``events.start(cell)`` and ``events.end(cell, status, wall_s, error)`` (the sweep's
index and progress lines) and returns False when ``--fail-fast`` stopped it. Ctrl-C marks the cells
it stops pending (they resume from their checkpoints) and raises KeyboardInterrupt.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from reftx.core.errors import ConfigError, ReftError

THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def one_line(err: BaseException) -> str:
    """An exception as one line: reftx's own message as it is, anything else with its type."""
    text = " ".join(str(err).split()) or type(err).__name__
    return text if isinstance(err, (ReftError, ValueError)) else f"{type(err).__name__}: {text}"


def threads_per_job(jobs: int, threads: int | None = None) -> int:
    """``threads`` when given, else the CPU count shared by ``jobs`` processes (at least 1)."""
    return threads if threads else max(1, (os.cpu_count() or 1) // max(1, jobs))


def child_env(threads: int) -> dict[str, str]:
    """The environment of a cell process: thread pools limited to ``threads``, no tokenizer threads."""
    return {**os.environ, **{v: str(threads) for v in THREAD_VARS}, "TOKENIZERS_PARALLELISM": "false"}


def run_inline(todo: list[tuple[Any, Any]], events: Any, fail_fast: bool, show_progress: bool) -> bool:
    """Each cell in this process, one after the other (its recipe: reftx.recipes.registry.run_experiment)."""
    from reftx.recipes.registry import run_experiment

    for cell, resume in todo:
        events.start(cell)
        t0 = time.perf_counter()
        try:
            run_experiment(cell.exp, resume=resume, show_progress=show_progress)
        except KeyboardInterrupt:
            events.end(cell, "pending", time.perf_counter() - t0, "interrupted (resumes from its checkpoint)")
            raise
        except Exception as e:  # noqa: BLE001 - a failed cell is recorded and the others go on
            events.end(cell, "failed", time.perf_counter() - t0, one_line(e))
            if fail_fast:
                return False
            continue
        events.end(cell, "done", time.perf_counter() - t0, None)
    return True


def _last_error(log: Path) -> str:
    """The last ``error:``/``stopped:`` line of a cell's log, or where to read it."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        lines = []
    for line in reversed(lines):
        if line.startswith(("error:", "stopped:")):
            return line
    return f"see {log}"


def _stop(running: dict, events: Any, why: str) -> None:
    """SIGINT to every running cell process (each saves a checkpoint), then wait and mark it pending."""
    for proc in running:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
    for proc, (cell, t0, log) in running.items():
        try:
            proc.wait(timeout=300)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        status = "done" if proc.returncode == 0 else "pending"
        events.end(cell, status, time.perf_counter() - t0, None if status == "done" else why)


def run_processes(todo: list[tuple[Any, Any]], events: Any, fail_fast: bool, jobs: int, threads: int,
                  argv: Any, log_dir: Path) -> bool:
    """Up to ``jobs`` cells at once as ``python -m reftx.cli`` processes; ``argv(cell, resume)``
    gives each its command line (after ``reftx``)."""
    queue, running, ok = list(todo), {}, True
    log_dir.mkdir(parents=True, exist_ok=True)
    try:
        while queue or running:
            while queue and ok and len(running) < jobs:
                cell, resume = queue.pop(0)
                events.start(cell)
                log = open(log_dir / f"{cell.name}.log", "a")  # noqa: SIM115 - closed when the process ends
                proc = subprocess.Popen([sys.executable, "-m", "reftx.cli", *argv(cell, resume), "--no-progress"],
                                        stdout=log, stderr=subprocess.STDOUT, env=child_env(threads))
                running[proc] = (cell, time.perf_counter(), log)
            time.sleep(0.1)
            for proc in [p for p in running if p.poll() is not None]:
                cell, t0, log = running.pop(proc)
                log.close()
                failed = proc.returncode != 0
                events.end(cell, "failed" if failed else "done", time.perf_counter() - t0,
                           _last_error(Path(log.name)) if failed else None)
                if failed and fail_fast:
                    ok = False
            if not ok and running:
                _stop(running, events, "stopped by --fail-fast (resumes from its checkpoint)")
                running = {}
            if not ok:
                return False
    except KeyboardInterrupt:
        _stop(running, events, "interrupted (resumes from its checkpoint)")
        raise
    return True


def run_job(experiment: str, overrides: list[str], resume: str | None, imports: list[str], threads: int) -> dict:
    """One cell inside a submitit job (the job array's function): its status, wall time and error."""
    import torch

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    try:
        from reftx.config.schema import load_experiment
        from reftx.core.plugins import import_modules
        from reftx.recipes.registry import run_experiment

        import_modules(imports, "--import")
        run_experiment(load_experiment(experiment, overrides), resume=Path(resume) if resume else False,
                       show_progress=False)
    except Exception as e:  # noqa: BLE001 - reported to the sweep, which goes on
        return {"status": "failed", "wall_s": time.perf_counter() - t0, "error": one_line(e)}
    return {"status": "done", "wall_s": time.perf_counter() - t0, "error": None}


def make_executor(cluster: str, folder: Path, options: list[str]) -> Any:
    """submitit's executor for ``cluster`` (slurm, local) with ``options`` (key=value) as its
    parameters; a one-line error when submitit is missing, finds no cluster or refuses an option."""
    try:
        import submitit
    except ImportError:
        raise ReftError(f"--executor {cluster} submits through submitit, which is not installed: "
                        "pip install 'reftx[sweep]'") from None
    from reftx.core.convert import parse_value

    try:
        executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
    except RuntimeError as e:  # no srun/sbatch here
        raise ReftError(f"--executor {cluster}: {one_line(e)} (run the sweep where {cluster} jobs are submitted, "
                        "or print the cells' commands with --emit commands)") from None
    params = {}
    for item in options:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError("--executor-option", f"is key=value (e.g. timeout_min=60), got {item!r}")
        params[key.strip()] = parse_value(raw)
    try:
        executor.update_parameters(**params)
    except (ValueError, TypeError, NameError) as e:
        raise ConfigError("--executor-option", f"submitit refused it: {one_line(e)}") from None
    return executor


def run_submitit(todo: list[tuple[Any, Any]], events: Any, fail_fast: bool, executor: Any, threads: int,
                 job_args: Any) -> bool:
    """The cells as one submitit job array; waits for every job and records it as it ends.
    ``job_args(cell, resume)`` gives :func:`run_job`'s arguments. Ctrl-C leaves the jobs running;
    --fail-fast cancels the jobs still waiting or running when one fails (they are pending again)."""
    if not todo:
        return True
    args = [job_args(cell, resume) + (threads,) for cell, resume in todo]
    jobs = executor.map_array(run_job, *zip(*args))
    waiting = {}
    for (cell, _), job in zip(todo, jobs):
        events.start(cell, job_id=str(job.job_id))
        waiting[job] = (cell, time.perf_counter())
    try:
        while waiting:
            time.sleep(0.5)
            for job in [j for j in waiting if j.done()]:
                cell, t0 = waiting.pop(job)
                try:
                    out = job.result()
                except Exception as e:  # noqa: BLE001 - the job itself failed (killed, timed out)
                    out = {"status": "failed", "wall_s": time.perf_counter() - t0, "error": one_line(e)}
                events.end(cell, out["status"], out["wall_s"], out["error"])
                if out["status"] == "failed" and fail_fast:
                    for other, (c, t) in list(waiting.items()):
                        other.cancel(check=False)
                        events.end(c, "pending", time.perf_counter() - t, "cancelled by --fail-fast")
                    return False
    except KeyboardInterrupt:
        ids = ", ".join(str(j.job_id) for j in waiting)
        print(f"interrupted: the submitted jobs go on ({ids}); rerun the sweep to record them", file=sys.stderr)
        raise
    return True


__all__ = ["child_env", "make_executor", "one_line", "run_inline", "run_job", "run_processes", "run_submitit", "threads_per_job"]
