"""Site settings of the SLURM jobs: partition, account, time, resources, set-up lines.

They sit under `slurm:` in a study config or in a site file (`--site site.yaml`, the same
keys at the top level), and `--set slurm.KEY=VALUE` overrides either. The top-level keys apply
to every job; `generate`, `server`, `train` and `report` override them for one kind of job.
Same conventions as `localsynth.config`: unknown keys are errors that name the key, and every
problem is reported at once.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator, model_validator

from localsynth.config import (
    ConfigProblems,
    Strict,
    load,
)
from localsynth.errors import UserError
from localsynth.secrets import looks_secret

# sbatch --time: "minutes", "minutes:seconds", "hours:minutes:seconds", "days-hours",
# "days-hours:minutes", "days-hours:minutes:seconds".
_TIME = re.compile(r"(\d+|\d+:\d{1,2}|\d+:\d{1,2}:\d{1,2}|\d+-\d+|\d+-\d+:\d{1,2}|\d+-\d+:\d{1,2}:\d{1,2})")
_MEM = re.compile(r"\d+[KMGT]?")
# Values that land in #SBATCH lines and the job's shell: SLURM's own name syntax, nothing a
# shell would read as a second command. Partition, account and qos may be comma lists.
_NAMES = re.compile(r"[A-Za-z0-9_.,-]+")
_GRES_TYPE = re.compile(r"[A-Za-z0-9_.-]+")
CONTROL = re.compile(r"[\x00-\x1f\x7f]")  # newline, carriage return, tab, NUL, escape, ...
TIME_HINT = "use minutes (90), MM:SS, HH:MM:SS or D-HH:MM:SS, for example 04:00:00"
JOB_KINDS = ("generate", "server", "train", "report")


def time_seconds(value: str) -> int:
    """Seconds in a SLURM time limit (already validated)."""
    days, _, rest = value.rpartition("-") if "-" in value else ("0", "", value)
    parts = [int(p) for p in rest.split(":")]
    if "-" in value:  # days-hours[:minutes[:seconds]]
        parts += [0] * (3 - len(parts))
        h, m, s = parts
    elif len(parts) == 1:  # minutes
        h, m, s = 0, parts[0], 0
    elif len(parts) == 2:  # minutes:seconds
        h, m, s = 0, parts[0], parts[1]
    else:
        h, m, s = parts
    return ((int(days or 0) * 24 + h) * 60 + m) * 60 + s


class JobSettings(Strict):
    """Settings of one kind of job; a key left out (null) takes the top-level value."""

    partition: str | None = Field(default=None, description="Partition (queue); null: the cluster's default.")
    account: str | None = Field(default=None, description="Account charged for the job.")
    qos: str | None = Field(default=None, description="Quality of service.")
    time: str | None = Field(default=None, description="Time limit: minutes, HH:MM:SS or D-HH:MM:SS.")
    cpus: int | None = Field(default=None, ge=1, description="CPUs per task (--cpus-per-task).")
    mem: str | None = Field(default=None, description="Memory per node, e.g. 64G (--mem); null: the cluster's default.")
    gpus: int | None = Field(default=None, ge=0, description="GPUs per node; 0 writes no GPU lines at all.")
    gpu_type: str | None = Field(default=None, description="GPU type in --gres=gpu:TYPE:N (a100, h100, ...).")
    nodes: int | None = Field(default=None, ge=1, description="Nodes per job (training across nodes uses srun).")
    setup: list[str] | None = Field(default=None, description="Shell lines run first: module load, venv activation, exports.")
    sbatch: list[str] | None = Field(default=None, description="Extra #SBATCH options, e.g. '--constraint=a100'.")
    signal_s: int | None = Field(default=None, ge=10, description="Seconds before the time limit when the job saves and requeues.")

    @field_validator("time", mode="before")
    @classmethod
    def _time_text(cls, value: Any) -> Any:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            # YAML 1.1 reads unquoted 04:00:00 as 14400: the unit is lost, so ask for quotes.
            raise ValueError(f"write the time limit in quotes ('04:00:00', '90'): YAML read it as the number {value}")
        return value

    @field_validator("time")
    @classmethod
    def _time(cls, value: str | None) -> str | None:
        if value is not None and not _TIME.fullmatch(value.strip()):
            raise ValueError(f"'{value}' is not a SLURM time limit; {TIME_HINT}")
        return value.strip() if value else value

    @field_validator("mem")
    @classmethod
    def _mem(cls, value: str | None) -> str | None:
        if value is not None and not _MEM.fullmatch(str(value).strip()):
            raise ValueError(f"'{value}' is not a SLURM memory size; use a number with K, M, G or T, for example 64G")
        return value.strip() if value else value

    @field_validator("partition", "account", "qos")
    @classmethod
    def _name(cls, value: str | None, info) -> str | None:
        if value is not None and not _NAMES.fullmatch(value):
            example = {"partition": "gpu", "account": "nlp-lab", "qos": "normal"}[info.field_name]
            raise ValueError(
                f"not a SLURM {info.field_name} name: use letters, digits, '_', '.', '-' (and ',' between several), "
                f"with no spaces, quotes, line breaks or shell characters; for example {info.field_name}: {example}"
            )
        return value

    @field_validator("gpu_type")
    @classmethod
    def _gpu_type(cls, value: str | None) -> str | None:
        if value is not None and not _GRES_TYPE.fullmatch(value):
            raise ValueError(
                "not a GPU type for --gres=gpu:TYPE:N: use letters, digits, '_', '.' and '-' only "
                "(the names 'sinfo -o %G' lists), for example a100"
            )
        return value

    @field_validator("setup", "sbatch")
    @classmethod
    def _no_secrets(cls, value: list[str] | None, info) -> list[str] | None:
        if any(looks_secret(line) for line in value or []):
            raise ValueError(
                f"a {info.field_name} line holds what looks like an API key or password, and the batch scripts "
                f"are saved in the run directory; export it in the shell you submit from instead (sbatch "
                f"passes that environment on to the jobs)"
            )
        return value

    @field_validator("sbatch")
    @classmethod
    def _sbatch(cls, value: list[str] | None) -> list[str] | None:
        bad = [v for v in value or [] if not v.strip().startswith("-") or CONTROL.search(v.strip())]
        if bad:
            raise ValueError(
                f"write each extra option as one '--name=value' line, without '#SBATCH' and without line breaks "
                f"(one list item per option); got {bad}"
            )
        return value


class SlurmSettings(JobSettings):
    """Defaults for every job, plus per-kind overrides and how jobs run."""

    time: str | None = Field(default="04:00:00", description="Time limit: minutes, HH:MM:SS or D-HH:MM:SS.")
    cpus: int | None = Field(default=4, ge=1, description="CPUs per task (--cpus-per-task).")
    gpus: int | None = Field(default=0, ge=0, description="GPUs per node; 0 writes no GPU lines at all.")
    nodes: int | None = Field(default=1, ge=1, description="Nodes per job (training across nodes uses srun).")
    signal_s: int | None = Field(
        default=300, ge=10, description="Seconds before the time limit when the job saves and requeues."
    )
    generate: JobSettings = Field(default_factory=JobSettings, description="Overrides for generation array tasks.")
    server: JobSettings = Field(default_factory=JobSettings, description="Overrides for the vLLM server job.")
    train: JobSettings = Field(default_factory=JobSettings, description="Overrides for training jobs.")
    report: JobSettings = Field(default_factory=JobSettings, description="Overrides for the report job.")
    command: str = Field(
        default="localsynth", description="How jobs call localsynth after the set-up lines (e.g. 'python -m localsynth')."
    )
    requeue: bool = Field(default=True, description="Jobs are requeueable and requeue themselves before the time limit.")
    max_parallel: int | None = Field(default=None, ge=1, description="Most array tasks running at once (--array=...%N).")
    vllm_server: bool = Field(
        default=False, description="Generate through one `vllm serve` job and a client array (else one engine per task)."
    )
    server_port: int = Field(default=8000, ge=1024, le=65535, description="Port of the vLLM server job.")
    server_wait_s: int = Field(default=1800, ge=10, description="How long clients wait for the server to answer.")
    submit_timeout_s: float = Field(default=30.0, gt=0, description="Bound on every sbatch / squeue / scontrol call.")

    @field_validator("command")
    @classmethod
    def _command(cls, value: str) -> str:
        if not value.strip() or CONTROL.search(value):
            raise ValueError(
                "not a command line: give how the jobs start localsynth, on one line, for example "
                "'localsynth' or 'python -m localsynth' (shell set-up belongs in slurm.setup)"
            )
        return value.strip()

    @model_validator(mode="after")
    def _signal_before_time(self) -> SlurmSettings:
        """The requeue signal must come after the job starts: signal_s below the time limit.
        Only generation and training jobs requeue (the server and report jobs do not)."""
        if not self.requeue:
            return self
        problems = []
        for stage in ("generate", "train"):
            own, job = getattr(self, stage), self.job(stage)
            if job.time is None or job.signal_s is None or job.signal_s < time_seconds(job.time):
                continue
            where = f"{stage}." if own.signal_s is not None or own.time is not None else ""
            if any(k == f"{where}signal_s" for k, _ in problems):
                continue
            problems.append((f"{where}signal_s", (
                f"is {job.signal_s} s, not shorter than the {stage} jobs' time limit '{job.time}' "
                f"({time_seconds(job.time)} s), so they would be told to stop as they start; lower "
                f"slurm.{where}signal_s or raise slurm.{where}time"
            )))
        if problems:
            raise ConfigProblems(problems)
        return self

    def job(self, kind: str) -> JobSettings:
        """The settings of one kind of job: its overrides over the top-level values."""
        if kind not in JOB_KINDS:
            raise ValueError(f"unknown job kind {kind}")
        own = getattr(self, kind).model_dump(exclude_none=True)
        base = {k: getattr(self, k) for k in JobSettings.model_fields}
        return JobSettings.model_validate({**base, **own})


def load_slurm_settings(
    site: Path | None = None, section: dict[str, Any] | None = None, overrides: list[str] | None = None,
    source: str = "the SLURM settings",
) -> SlurmSettings:
    """Site file, then the config's `slurm:` section, then `--set slurm.KEY=VALUE` overrides."""
    if section and not isinstance(section, dict):
        raise UserError(f"{site or source}: 'slurm' must be a mapping of settings; got {type(section).__name__}")
    return load(
        SlurmSettings, site, overrides, base=section, what="SLURM site file",
        source=str(site) if site is not None else source, prefix="slurm.",
    )

