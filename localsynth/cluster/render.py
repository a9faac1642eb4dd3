"""SLURM batch scripts, rendered from the templates in `slurm/` by pure functions.

A plan is a list of `Job`s: the rendered script, the array tasks, the completion marker of each
task (so a resubmit sends only what is missing) and the jobs it waits for. Every job runs the
localsynth CLI on a config file, so any task can be rerun by hand with the command its script
shows. Nothing here talks to SLURM; `localsynth.cluster.submit` submits and watches.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from localsynth.cluster.settings import CONTROL, JobSettings, SlurmSettings
from localsynth.errors import UserError
from localsynth.generation.config import GenerationRun

if TYPE_CHECKING:
    from localsynth.study.plan import Cell, Plan

TEMPLATES = ("generate-array", "generate-client-array", "vllm-server", "train", "report")
_PLACEHOLDER = re.compile(r"\{\{\s*(\w+)\s*\}\}")
# Placeholders that hold several lines on purpose; every other value must be one line, or its
# second line would run as a shell command (a newline in a path in a comment line, say).
MULTILINE = ("sbatch", "setup", "preemption", "distributed")
# Placeholders that also appear inside a double-quoted `echo "..."`, where $(...), `...`, " and \
# would still be read by the shell.
IN_DOUBLE_QUOTES = ("what", "run_name", "name", "model")


def one_line(value: str, key: str, header: bool = False, quoted: bool = False) -> str:
    """`value` unchanged, or a UserError naming `key`: a line break or control character would
    turn the rest of the value into a line of its own in the script. In an #SBATCH line
    (`header`), whitespace and quotes would split or garble the option; inside double quotes
    (`quoted`), $, backquote, " and backslash would run or break something."""
    if CONTROL.search(value):
        why = "a line break or control character: the rest would become a line of its own in the batch script"
    elif header and re.search(r"[\s'\"]", value):
        why = "a space or quote, which an #SBATCH line cannot hold (sbatch would split the option there)"
    elif quoted and re.search(r"[$`\"\\]", value):
        why = "one of $ ` \" \\, which the shell would expand where the batch script prints it"
    else:
        return value
    raise UserError(f"{key} {value!r} holds {why}; use a path or name without it")


def check_script_paths(slurm_dir: Path, chdir: Path) -> None:
    """The paths every job's #SBATCH header holds, checked before anything is written."""
    one_line(str(chdir), "the folder jobs start in (the current folder)", header=True)
    one_line(str(slurm_dir / "logs"), "the log folder (under run_dir or out_dir)", header=True, quoted=True)


@dataclass
class Job:
    key: str  # unique in a plan: "generate:<run id>", "train:<group>", "report"
    kind: str  # generate | server | client | train | report
    name: str  # SLURM job name
    script: Path
    text: str
    tasks: list[int] | None = None  # array task ids; None: a single job
    markers: list[Path] = field(default_factory=list)  # completion marker per task (or the one job)
    after_ok: list[str] = field(default_factory=list)  # keys of the jobs that must succeed first
    after_start: list[str] = field(default_factory=list)  # keys of the jobs that must have started
    files: dict[Path, str] = field(default_factory=dict)  # configs the job reads, written with it

    def missing_tasks(self) -> list[int]:
        """Array tasks (or [0] for a single job) whose completion marker is absent."""
        ids = self.tasks if self.tasks is not None else [0]
        return [i for i, marker in zip(ids, self.markers) if not marker.is_file()] if self.markers else list(ids)


def templates_root() -> Path:
    """`slurm/` of a source checkout, or the copy inside the wheel."""
    package = Path(__file__).resolve().parent.parent
    packaged = package / "_slurm"
    return packaged if packaged.is_dir() else package.parent / "slurm"


def fill(template: str, values: dict[str, str], name: str) -> str:
    """Replace {{key}} placeholders; a placeholder without a value is a bug, not a blank."""

    def one(match: re.Match) -> str:
        key = match[1]
        if key not in values:
            raise KeyError(f"template {name} uses {{{{{key}}}}}, which has no value")
        return values[key]

    return _PLACEHOLDER.sub(one, template)


def render(template: str, values: dict[str, str]) -> str:
    for key, value in values.items():  # the last guard: the callers check each setting by name
        if key not in MULTILINE:
            one_line(value, f"the value of {{{{{key}}}}} in the {template} script", quoted=key in IN_DOUBLE_QUOTES)
    path = templates_root() / f"{template}.sbatch.tmpl"
    text = fill(path.read_text(encoding="utf-8"), values, path.name)
    return re.sub(r"\n{3,}", "\n\n", text)  # empty optional blocks leave no gaps


def sbatch_lines(
    job: JobSettings, settings: SlurmSettings, name: str, chdir: Path, log_dir: Path, tasks: list[int] | None,
) -> str:
    """The #SBATCH header. No GPU line at all when the job asks for 0 GPUs: a node without
    GPUs rejects even --gres=gpu:0."""
    check_script_paths(log_dir.parent, chdir)
    lines = [f"--job-name={one_line(name, 'the job name', header=True)}", f"--chdir={chdir}"]
    lines.append(f"--output={log_dir}/%x-{'%A_%a' if tasks is not None else '%j'}.out")
    lines.append("--open-mode=append")  # a requeued attempt appends to the same log
    if tasks is not None:
        throttle = f"%{settings.max_parallel}" if settings.max_parallel else ""
        lines.append(f"--array={array_spec(tasks)}{throttle}")
    for key, option in (("partition", "partition"), ("account", "account"), ("qos", "qos"), ("time", "time")):
        if getattr(job, key):
            lines.append(f"--{option}={getattr(job, key)}")
    lines += [f"--nodes={job.nodes}", "--ntasks-per-node=1", f"--cpus-per-task={job.cpus}"]
    if job.mem:
        lines.append(f"--mem={job.mem}")
    if job.gpus:
        lines.append(f"--gres=gpu:{job.gpu_type + ':' if job.gpu_type else ''}{job.gpus}")
    if settings.requeue:
        lines += ["--requeue", f"--signal=B:USR1@{job.signal_s}"]
    else:
        lines.append("--no-requeue")
    lines += [s.strip() for s in job.sbatch or []]
    return "\n".join(f"#SBATCH {line}" for line in lines)


def array_spec(tasks: list[int]) -> str:
    """[0, 1, 2, 5] -> '0-2,5'."""
    ranges: list[list[int]] = []
    for t in sorted(set(tasks)):
        if ranges and t == ranges[-1][1] + 1:
            ranges[-1][1] = t
        else:
            ranges.append([t, t])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in ranges)


def common_values(job: JobSettings, settings: SlurmSettings) -> dict[str, str]:
    setup = [
        "export PYTHONUNBUFFERED=1",
        '# Compute nodes rarely reach the hub: read models from local folders unless told otherwise.',
        'export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"',
        *(job.setup or []),
    ]
    preemption = (templates_root() / "preemption.sh.part").read_text(encoding="utf-8")
    return {
        "setup": "\n".join(setup),
        "preemption": fill(preemption, {"signal_s": str(job.signal_s)}, "preemption.sh.part").rstrip("\n"),
        "command": settings.command,
    }


# ----------------------------------------------------------------------------- generation


def check_generation(run: GenerationRun, job: JobSettings, key: str) -> None:
    vllm = run.cfg.generator.vllm
    if run.cfg.generator.backend == "vllm" and vllm.tensor_parallel_size > (job.gpus or 0):
        raise UserError(
            f"{run.config}: generator.vllm.tensor_parallel_size is {vllm.tensor_parallel_size} but {key}.gpus is "
            f"{job.gpus}; ask for at least as many GPUs per task (--set {key}.gpus={vllm.tensor_parallel_size})"
        )


def generation_jobs(run: GenerationRun, settings: SlurmSettings, slurm_dir: Path, chdir: Path) -> list[Job]:
    """One engine per array task, or (slurm.vllm_server) a server job and a client array."""
    if run.shards < 1:
        raise UserError(f"--shards must be at least 1 (array tasks of the run {run.id}); got {run.shards}")
    log_dir, tasks, q = slurm_dir / "logs", list(range(run.shards)), shlex.quote
    one_line(str(run.run_dir), "run_dir")
    one_line(str(run.config), "the config path")
    if run.cfg.generator.model:
        one_line(run.cfg.generator.model, "generator.model", quoted=True)
    base = {"run_name": run.id, "run_dir": q(str(run.run_dir)), "shards": str(run.shards)}
    if not settings.vllm_server:
        job = settings.job("generate")
        check_generation(run, job, "slurm.generate")
        name = f"ls-gen-{run.slug}"
        values = {
            **common_values(job, settings), **base, "config": q(str(run.config)), "backend": run.cfg.generator.backend,
            "sbatch": sbatch_lines(job, settings, name, chdir, log_dir, tasks),
        }
        text = render("generate-array", values)
        return [Job(f"generate:{run.id}", "generate", name, slurm_dir / f"generate-{run.slug}.sbatch", text, tasks, run.markers())]

    if run.cfg.generator.backend != "vllm" or not run.cfg.generator.model:
        raise UserError(
            f"{run.config}: slurm.vllm_server needs generator.backend: vllm and a generator.model folder; "
            f"got backend {run.cfg.generator.backend}; set generator.backend=vllm or slurm.vllm_server=false"
        )
    server, client = settings.job("server"), settings.job("generate")
    check_generation(run, server, "slurm.server")
    url_file = slurm_dir / f"server-{run.slug}.url"
    client_name, server_name = f"ls-client-{run.slug}", f"ls-server-{run.slug}"
    v = run.cfg.generator.vllm
    vllm_args = [f"--tensor-parallel-size {v.tensor_parallel_size}", f"--gpu-memory-utilization {v.gpu_memory_utilization or 0.9}",
                 f"--dtype {q(one_line(v.dtype, 'generator.vllm.dtype'))}"]
    if v.max_model_len:
        vllm_args.append(f"--max-model-len {v.max_model_len}")
    vllm_args.append("--enable-prefix-caching" if v.enable_prefix_caching else "--no-enable-prefix-caching")
    if v.enforce_eager:
        vllm_args.append("--enforce-eager")
    server_values = {
        **common_values(server, settings), **base, "url_file": q(str(url_file)), "model": q(run.cfg.generator.model),
        "port": str(settings.server_port), "vllm_args": " ".join(vllm_args), "wait_s": str(settings.server_wait_s),
        "python": "python", "client_name": client_name, "shards_padded": f"{run.shards:05d}",
        "sbatch": sbatch_lines(server, settings.model_copy(update={"requeue": False}), server_name, chdir, log_dir, None),
    }
    client_cfg = run.cfg.model_copy(deep=True)
    gen = client_cfg.generator
    gen.backend = "openai"
    # The URL is known only once the server runs: the client reads OPENAI_BASE_URL at run time.
    gen.openai = gen.openai.model_copy(update={"base_url": None, "api_key_env": "LOCALSYNTH_SERVER_KEY"})
    client_cfg_path = slurm_dir / f"client-{run.slug}.yaml"
    import yaml

    client_text = yaml.safe_dump(client_cfg.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
    client_values = {
        **common_values(client, settings), **base, "url_file": q(str(url_file)), "config": q(str(client_cfg_path)),
        "wait_s": str(settings.server_wait_s), "sbatch": sbatch_lines(client, settings, client_name, chdir, log_dir, tasks),
    }
    return [
        Job(f"server:{run.id}", "server", server_name, slurm_dir / f"server-{run.slug}.sbatch",
            render("vllm-server", server_values), None, run.markers()[-1:]),
        Job(f"generate:{run.id}", "client", client_name, slurm_dir / f"client-{run.slug}.sbatch",
            render("generate-client-array", client_values), tasks, run.markers(),
            after_start=[f"server:{run.id}"], files={client_cfg_path: client_text}),
    ]


# ----------------------------------------------------------------------------- training and report


def launch_line(job: JobSettings, settings: SlurmSettings, args: str, key: str) -> tuple[str, str, str]:
    """(launch command, distributed set-up lines, a sentence on processes)."""
    gpus, nodes = job.gpus or 0, job.nodes or 1
    if nodes > 1 and gpus < 1:
        raise UserError(f"{key}.nodes is {nodes} but {key}.gpus is 0; training across nodes needs GPUs ({key}.gpus=N)")
    if nodes == 1 and gpus <= 1:
        return f"{settings.command} {args}", "", "One process"
    accel = f"accelerate launch --multi_gpu --num_machines {nodes} --num_processes {gpus * nodes}"
    if nodes == 1:
        return f"{accel} -m localsynth {args}", "", f"{gpus} processes on one node (accelerate launch)"
    distributed = "\n".join([
        "# One launcher per node (srun); rank 0's node is the rendezvous point.",
        'export LOCALSYNTH_MAIN_IP="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"',
        'export LOCALSYNTH_MAIN_PORT="$((20000 + SLURM_JOB_ID % 20000))"',
    ])
    inner = (f'{accel} --machine_rank "$SLURM_NODEID" --main_process_ip "$LOCALSYNTH_MAIN_IP" '
             f'--main_process_port "$LOCALSYNTH_MAIN_PORT" --rdzv_backend static -m localsynth {args}')
    launch = f"srun --ntasks-per-node=1 --kill-on-bad-exit=1 bash -c {shlex.quote(inner)}"
    return launch, distributed, f"{nodes} nodes x {gpus} GPUs = {gpus * nodes} processes (srun + accelerate launch)"


def train_job(
    key: str, name: str, what: str, args: str, rerun: str, tasks: list[int] | None, markers: list[Path],
    after_ok: list[str], settings: SlurmSettings, slurm_dir: Path, chdir: Path,
) -> Job:
    job = settings.job("train")
    launch, distributed, processes = launch_line(job, settings, args, "slurm.train")
    values = {
        **common_values(job, settings), "what": what, "processes": processes, "rerun": rerun, "launch": launch,
        "distributed": distributed, "sbatch": sbatch_lines(job, settings, name, chdir, slurm_dir / "logs", tasks),
    }
    script = slurm_dir / f"{name.removeprefix('ls-')}.sbatch"
    return Job(key, "train", name, script, render("train", values), tasks, markers, after_ok)


def stage_train_jobs(config: Path, out_dir: Path, settings: SlurmSettings, slurm_dir: Path, chdir: Path) -> list[Job]:
    args = f"train {shlex.quote(str(config))}"
    one_line(str(out_dir), "out_dir", quoted=True)
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", out_dir.name).strip("-") or "run"
    return [train_job("train", f"ls-train-{name}", f"training into {out_dir}", args,
                      f"{settings.command} {args}", None, [out_dir / "train.done"], [], settings, slurm_dir, chdir)]


def study_jobs(plan: Plan, name: str, settings: SlurmSettings, chdir: Path) -> list[Job]:
    """Generation per run, one training array per set of generation runs the cells need (cells
    on real data alone start at once), and the report after every cell."""
    slurm_dir = Path(plan.out_dir) / "slurm"
    config = shlex.quote(str(plan.config))
    jobs: list[Job] = []
    for run in plan.generate:
        jobs += generation_jobs(run, settings, slurm_dir, chdir)
    groups: dict[tuple[str, ...], list[Cell]] = {}
    for cell in plan.cells:
        groups.setdefault(tuple(sorted(cell.needs)), []).append(cell)
    train_keys = []
    for n, (needs, cells) in enumerate(groups.items()):
        args = f'experiment {config} --stage train --cell "${{SLURM_ARRAY_TASK_ID}}"'
        what = f"cells of {', '.join(needs) if needs else 'real data only'}"
        key = f"train:{n}"
        train_keys.append(key)
        jobs.append(train_job(
            key, f"ls-train-{name}-{n}", what, args, f"{settings.command} experiment {config} --stage train --cell INDEX",
            [c.index for c in cells], [Path(c.eval_dir) / "eval.done" for c in cells],
            [f"generate:{r}" for r in needs], settings, slurm_dir, chdir,
        ))
    report = settings.job("report")
    values = {
        **common_values(report, settings), "name": name, "config": config,
        "sbatch": sbatch_lines(report, settings.model_copy(update={"requeue": False}), f"ls-report-{name}", chdir,
                               slurm_dir / "logs", None),
    }
    jobs.append(Job("report", "report", f"ls-report-{name}", slurm_dir / "report.sbatch", render("report", values),
                    None, [Path(plan.report_dir) / "report.md"], train_keys))
    return jobs
