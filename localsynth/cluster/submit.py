"""Talking to SLURM: sbatch, squeue, scontrol, sinfo, scancel (and sacct where accounting runs).

Every call is bounded by a timeout, because SLURM clients retry for about two minutes when the
controller is down. Submissions are recorded in `<slurm dir>/jobs.json` (written atomically)
with each task's completion marker, so `status` and `cancel` need nothing but that file, and a
resubmit sends only the tasks whose marker is missing.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from localsynth.cluster.render import Job, array_spec
from localsynth.cluster.settings import SlurmSettings
from localsynth.errors import UserError
from localsynth.io import write_json_atomic, write_text_atomic

ACTIVE = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED", "REQUEUED", "REQUEUE_HOLD",
          "REQUEUE_FED", "RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED"}


def slurm(args: list[str], timeout: float, check: bool = True) -> subprocess.CompletedProcess:
    """Run one SLURM client command with a bounded wait; a missing command or a silent
    controller is a user error with the fix."""
    if shutil.which(args[0]) is None:
        raise UserError(
            f"the SLURM command '{args[0]}' is not on PATH; run this on a login node of the cluster, "
            f"or make SLURM's commands available first (for example: module load slurm)"
        )
    try:
        result = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise UserError(
            f"the SLURM controller did not answer within {timeout:g} s ('{' '.join(args[:2])}' timed out); "
            f"check it with 'scontrol ping', or allow longer with --set slurm.submit_timeout_s=SECONDS"
        ) from None
    if check and result.returncode != 0:
        detail = (result.stderr or result.stdout).strip().splitlines()
        raise UserError(f"'{' '.join(args[:2])}' failed: {detail[-1] if detail else f'exit {result.returncode}'}")
    return result


def partitions(timeout: float) -> list[str]:
    out = slurm(["sinfo", "-h", "-o", "%R"], timeout).stdout
    return sorted({line.strip() for line in out.splitlines() if line.strip()})


def check_partitions(jobs: list[Job], settings: SlurmSettings) -> None:
    wanted = {settings.job(stage).partition for stage in ("generate", "server", "train", "report")} - {None}
    if not wanted:
        return
    known = partitions(settings.submit_timeout_s)
    for name in sorted(wanted):
        if name not in known:
            raise UserError(
                f"slurm.partition '{name}' does not exist on this cluster; partitions: {', '.join(known) or 'none'}; "
                f"set slurm.partition (or slurm.<generate|train|report>.partition) to one of them"
            )


# ----------------------------------------------------------------------------- records


def record_path(slurm_dir: Path) -> Path:
    return slurm_dir / "jobs.json"


def read_record(slurm_dir: Path) -> dict[str, Any]:
    path = record_path(slurm_dir)
    if not path.is_file():
        return {"submissions": []}
    return json.loads(path.read_text(encoding="utf-8"))


def latest_ids(record: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per job key, its newest submission entry."""
    latest: dict[str, dict[str, Any]] = {}
    for submission in record.get("submissions", []):
        for entry in submission["jobs"]:
            latest[entry["key"]] = entry
    return latest


def write_scripts(jobs: list[Job]) -> None:
    """Scripts, the configs they read, and the log folder (sbatch fails silently without it)."""
    for job in jobs:
        for path, text in job.files.items():
            write_text_atomic(path, text)
        write_text_atomic(job.script, job.text)
        job.script.chmod(0o755)
        (job.script.parent / "logs").mkdir(parents=True, exist_ok=True)


# ----------------------------------------------------------------------------- submit


def active_jobs(ids: list[str], timeout: float) -> dict[str, str]:
    """Job id -> state, for those of `ids` still queued or running (array tasks folded)."""
    if not ids:
        return {}
    out = slurm(["squeue", "-h", "-o", "%F|%i|%T"], timeout).stdout
    found: dict[str, str] = {}
    for line in out.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 3 and parts[0] in ids and parts[2] in ACTIVE:
            found.setdefault(parts[0], parts[2])
    return found


def submit(jobs: list[Job], settings: SlurmSettings, slurm_dir: Path, source: str) -> list[dict[str, Any]]:
    """Submit what is not complete, parents first, with afterok dependencies; dependents of a
    failed parent are cancelled by SLURM (--kill-on-invalid-dep=yes) instead of waiting forever."""
    timeout = settings.submit_timeout_s
    record = read_record(slurm_dir)
    running = active_jobs([e["job_id"] for e in latest_ids(record).values()], timeout)
    if running:
        raise UserError(
            f"jobs of an earlier submission are still queued or running ({', '.join(sorted(running))}); "
            f"wait for them, or stop them with 'localsynth slurm cancel {source}'"
        )
    check_partitions(jobs, settings)
    missing = {job.key: job.missing_tasks() for job in jobs}
    for job in jobs:  # parents come first in a plan
        if job.kind == "server":  # needed while its clients have work
            missing[job.key] = [0] if missing.get(job.key.replace("server:", "generate:")) else []
        elif job.tasks is None and any(missing.get(k) for k in job.after_ok):
            missing[job.key] = [0]  # a single job (the report) reruns when anything before it does
    write_scripts(jobs)
    ids: dict[str, str] = {}
    entries: list[dict[str, Any]] = []
    for job in jobs:
        todo = missing[job.key]
        if not todo:
            continue
        args = ["sbatch", "--parsable"]
        if job.tasks is not None:
            throttle = f"%{settings.max_parallel}" if settings.max_parallel else ""
            args.append(f"--array={array_spec(todo)}{throttle}")
        deps = [f"afterok:{ids[k]}" for k in job.after_ok if k in ids]
        deps += [f"after:{ids[k]}" for k in job.after_start if k in ids]
        if deps:
            args += [f"--dependency={','.join(deps)}", "--kill-on-invalid-dep=yes"]
        args.append(str(job.script))
        try:
            out = slurm(args, timeout).stdout.strip()
        except UserError:
            _save(slurm_dir, record, entries)
            raise
        ids[job.key] = out.split(";")[0].strip()
        entries.append({
            "key": job.key, "kind": job.kind, "name": job.name, "job_id": ids[job.key], "script": str(job.script),
            "tasks": job.tasks, "submitted": todo if job.tasks is not None else None,
            "markers": [str(m) for m in job.markers], "after": deps,
        })
    _save(slurm_dir, record, entries)
    return entries


def _save(slurm_dir: Path, record: dict[str, Any], entries: list[dict[str, Any]]) -> None:
    if entries:
        record.setdefault("submissions", []).append({"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "jobs": entries})
        write_json_atomic(record_path(slurm_dir), record)


# ----------------------------------------------------------------------------- status and cancel


def _fields(line: str) -> dict[str, str]:
    out = {}
    for token in line.split():
        key, sep, value = token.partition("=")
        if sep:
            out[key] = value
    return out


def job_states(job_id: str, timeout: float) -> dict[int | None, dict[str, str]]:
    """Array task id (None for a single job) -> scontrol's fields; {} once SLURM forgot the job
    (then sacct, when accounting runs)."""
    result = slurm(["scontrol", "show", "job", "-o", job_id], timeout, check=False)
    states: dict[int | None, dict[str, str]] = {}
    if result.returncode == 0:
        for line in result.stdout.splitlines():
            f = _fields(line)
            if "JobState" not in f:
                continue
            task = f.get("ArrayTaskId")
            if task and task.isdigit():
                states[int(task)] = f
            elif task:  # pending tasks still folded: "3-5" or "1,4%2"
                for part in task.split("%")[0].split(","):
                    a, _, b = part.partition("-")
                    for t in range(int(a), int(b or a) + 1):
                        states[t] = f
            else:
                states[None] = f
        return states
    if shutil.which("sacct"):
        acct = slurm(["sacct", "-n", "-P", "-X", "-j", job_id, "-o", "JobID,State,ExitCode"], timeout, check=False)
        if acct.returncode == 0:
            for line in acct.stdout.splitlines():
                jid, state, code = (line.split("|") + ["", "", ""])[:3]
                _, _, task = jid.partition("_")
                key = int(task) if task.isdigit() else None
                states[key] = {"JobState": state.split()[0] if state else "UNKNOWN", "ExitCode": code, "Reason": ""}
    return states


def status(slurm_dir: Path, timeout: float) -> list[dict[str, Any]]:
    """One row per array task / job: completion on disk merged with SLURM's state."""
    rows = []
    for key, entry in latest_ids(read_record(slurm_dir)).items():
        states = job_states(entry["job_id"], timeout)
        tasks = entry["tasks"] if entry["tasks"] is not None else [None]
        markers = entry["markers"] or [None] * len(tasks)
        for task, marker in zip(tasks, markers):
            f = states.get(task, states.get(None, {})) if task is not None else states.get(None, {})
            done = bool(marker) and Path(marker).is_file()
            log = _log_path(slurm_dir, entry, task)
            rows.append({
                "key": key, "job": entry["job_id"] + (f"_{task}" if task is not None else ""), "task": task,
                "state": f.get("JobState", "UNKNOWN" if not done else "-"), "reason": f.get("Reason", ""),
                "restarts": f.get("Restarts", ""), "exit": f.get("ExitCode", ""), "done": done,
                "submitted": entry["submitted"] is None or task in entry["submitted"], "log": str(log),
            })
    return rows


def _log_path(slurm_dir: Path, entry: dict[str, Any], task: int | None) -> Path:
    suffix = f"{entry['job_id']}_{task}" if task is not None else entry["job_id"]
    return slurm_dir / "logs" / f"{entry['name']}-{suffix}.out"


def cancel(slurm_dir: Path, timeout: float) -> list[str]:
    ids = [e["job_id"] for e in latest_ids(read_record(slurm_dir)).values()]
    running = sorted(active_jobs(ids, timeout))
    if running:
        slurm(["scancel", *running], timeout)
    return running
