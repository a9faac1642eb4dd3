"""`localsynth slurm render | submit | status | cancel`: a stage or a whole study as SLURM jobs."""

from __future__ import annotations

from pathlib import Path

import typer

from localsynth.cli.groups import command_group

app = command_group("Run a generation config, a training config or a whole experiment as SLURM jobs.")

CONFIG = typer.Argument(..., help="A generation, training or study config YAML (told apart by its keys).")
SITE = typer.Option(None, "--site", help="YAML of SLURM settings (partition, account, time, gpus, setup, ...).")
SET = typer.Option([], "--set", help="Override a key: --set slurm.partition=gpu or a config key (repeatable).")
SHARDS = typer.Option(None, "--shards", help="Array tasks per generation run (default: 1, or generation.shards).")


def _plan(config: Path, set_: list[str], site: Path | None, shards: int | None):
    from localsynth.cluster.plan import build
    from localsynth.cluster.submit import write_scripts

    built = build(config, list(set_), site, shards)
    write_scripts(built.jobs)
    return built


@app.command("render")
def render(config: Path = CONFIG, site: Path | None = SITE, set_: list[str] = SET, shards: int | None = SHARDS) -> None:
    """Write the batch scripts (and the configs they read) into the run directory; submit nothing."""
    built = _plan(config, set_, site, shards)
    for job in built.jobs:
        tasks = f" (array {len(job.tasks)} tasks)" if job.tasks is not None else ""
        typer.echo(f"{job.script}{tasks}")
    typer.echo(f"logs: {built.slurm_dir / 'logs'}")


@app.command("submit")
def submit(config: Path = CONFIG, site: Path | None = SITE, set_: list[str] = SET, shards: int | None = SHARDS) -> None:
    """Submit every job whose work is not complete, with afterok dependencies; a resubmit sends
    only the missing shards and cells."""
    from localsynth.cluster.submit import submit as do_submit

    built = _plan(config, set_, site, shards)
    entries = do_submit(built.jobs, built.settings, built.slurm_dir, str(config))
    if not entries:
        typer.echo("nothing to submit: every job of this config is complete")
        return
    for e in entries:
        tasks = f" tasks {','.join(map(str, e['submitted']))}" if e["submitted"] is not None else ""
        after = f" after {' '.join(e['after'])}" if e["after"] else ""
        typer.echo(f"submitted {e['job_id']} {e['name']}{tasks}{after}")
    typer.echo(f"record: {built.slurm_dir / 'jobs.json'}; logs: {built.slurm_dir / 'logs'}")
    typer.echo(f"status: localsynth slurm status {config}")


@app.command("status")
def status(
    config: Path = CONFIG, site: Path | None = SITE, set_: list[str] = SET,
    all_tasks: bool = typer.Option(False, "--all", help="One line per task, finished ones included."),
) -> None:
    """Each job's state from squeue / scontrol (sacct when accounting runs), merged with the
    completion markers on disk."""
    from localsynth.cluster.plan import slurm_dir_of, split_overrides
    from localsynth.cluster.settings import load_slurm_settings
    from localsynth.cluster.submit import read_record
    from localsynth.cluster.submit import status as do_status
    from localsynth.errors import UserError

    slurm_dir = slurm_dir_of(config, site, list(set_))
    if not read_record(slurm_dir)["submissions"]:
        raise UserError(f"nothing was submitted for {config} (no {slurm_dir / 'jobs.json'}); run 'localsynth slurm submit {config}'")
    timeout = load_slurm_settings(site, _section(config), split_overrides(list(set_))[0]).submit_timeout_s
    rows = do_status(slurm_dir, timeout)
    _print(rows, all_tasks)


def _section(config: Path) -> dict | None:
    from localsynth.config import read_yaml

    section = read_yaml(config).get("slurm")
    return section if isinstance(section, dict) else None


def _print(rows: list[dict], all_tasks: bool) -> None:
    from rich.console import Console
    from rich.table import Table

    summary = Table(title="localsynth slurm status", show_lines=False)
    for column in ("job", "name", "done", "running", "pending", "failed", "other"):
        summary.add_column(column)
    detail = Table(show_lines=False)
    for column in ("task", "state", "reason", "restarts", "exit", "done", "log"):
        detail.add_column(column)
    by_key: dict[str, list[dict]] = {}
    for row in rows:
        by_key.setdefault(row["key"], []).append(row)
    for key, group in by_key.items():
        done = sum(r["done"] for r in group)
        states = [r["state"] for r in group if not r["done"]]
        failed = sum(s in ("FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE")
                     or s.startswith("CANCELLED") for s in states)
        running, pending = states.count("RUNNING"), states.count("PENDING")
        other = len(states) - failed - running - pending
        summary.add_row(group[0]["job"].split("_")[0], key, f"{done}/{len(group)}", str(running), str(pending),
                        str(failed), str(other))
        for r in group:
            if all_tasks or not r["done"]:
                detail.add_row(r["job"], r["state"], r["reason"], r["restarts"], r["exit"], "yes" if r["done"] else "no", r["log"])
    console = Console(width=200)
    console.print(summary)
    if detail.row_count:
        console.print(detail)


@app.command("cancel")
def cancel(config: Path = CONFIG, site: Path | None = SITE, set_: list[str] = SET) -> None:
    """Cancel the queued and running jobs of the last submission (finished shards stay done)."""
    from localsynth.cluster.plan import slurm_dir_of, split_overrides
    from localsynth.cluster.settings import load_slurm_settings
    from localsynth.cluster.submit import cancel as do_cancel

    slurm_dir = slurm_dir_of(config, site, list(set_))
    timeout = load_slurm_settings(site, _section(config), split_overrides(list(set_))[0]).submit_timeout_s
    cancelled = do_cancel(slurm_dir, timeout)
    typer.echo(f"cancelled {' '.join(cancelled)}" if cancelled else "no queued or running job to cancel")
