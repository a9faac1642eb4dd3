"""Every SLURM template renders for sample configs (golden files) and passes `bash -n`.

Regenerate the golden files after a deliberate template change with
    LOCALSYNTH_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/test_slurm_render.py
and read the diff before committing it.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from localsynth.cluster.render import (
    TEMPLATES,
    stage_train_jobs,
    study_jobs,
    templates_root,
)
from localsynth.cluster.settings import SlurmSettings, time_seconds
from localsynth.errors import UserError
from localsynth.generation.config import GenerateConfig, GenerationRun
from localsynth.study.plan import Cell, Plan
from localsynth.tasks import resolve_task

GOLDEN = Path(__file__).parent / "golden" / "slurm"
STUDY = Path("/shared/studies/paper")
CHDIR = Path("/shared/project")
SITE = {
    "partition": "gpu", "account": "nlp-lab", "qos": "normal", "time": "1-00:00:00", "cpus": 8, "mem": "64G",
    "gpus": 1, "gpu_type": "a100", "setup": ["module load cuda/12.4", "source /shared/project/.venv/bin/activate"],
    "sbatch": ["--constraint=a100_80gb"], "signal_s": 600,
    "train": {"gpus": 4, "time": "12:00:00"},
    "report": {"gpus": 0, "partition": "cpu", "time": "30", "mem": "16G"},
}


def gen_cfg(run_dir: Path, tp: int = 1) -> GenerateConfig:
    return GenerateConfig.model_validate({
        "task": resolve_task("sms_spam", None), "mode": "zero-shot", "run_dir": str(run_dir),
        "generator": {"backend": "vllm", "model": "/shared/models/Llama-3.1-8B-Instruct",
                      "vllm": {"tensor_parallel_size": tp, "max_model_len": 4096, "gpu_memory_utilization": 0.9}},
    })


def study_plan() -> Plan:
    runs_dir = STUDY / "runs"
    runs = [
        GenerationRun(f"sms_spam/{m}", "sms_spam", m, STUDY / f"stages/generate/sms_spam-{m}.yaml",
                      runs_dir / f"sms_spam-{m}", 4, gen_cfg(runs_dir / f"sms_spam-{m}"))
        for m in ("zero-shot", "few-shot")
    ]
    cells = [
        Cell(cell_id, index, "sms_spam", cell_id.split("/")[1], "minilm", 50, 0, needs, "", "", str(STUDY / f"eval/{index}"))
        for index, (cell_id, needs) in enumerate([
            ("sms_spam/real/minilm/n50/s0", []),
            ("sms_spam/zero-shot/minilm/n50/s0", ["sms_spam/zero-shot"]),
            ("sms_spam/few-shot/minilm/n50/s0", ["sms_spam/few-shot"]),
            ("sms_spam/real+zero-shot/minilm/n50/s0", ["sms_spam/zero-shot"]),
        ])
    ]
    return Plan(str(STUDY), str(STUDY / "experiment.yaml"), runs, cells, str(STUDY / "report"), {})


def cases() -> dict[str, dict[str, str]]:
    """Case name -> {script file name: text}."""
    out: dict[str, dict[str, str]] = {}
    plan = study_plan()
    for name, extra in (("study-engine", {}), ("study-server", {"vllm_server": True, "server": {"time": "1-00:00:00"}})):
        jobs = study_jobs(plan, "paper", SlurmSettings.model_validate({**SITE, **extra}), CHDIR)
        out[name] = {job.script.name: job.text for job in jobs} | {p.name: t for job in jobs for p, t in job.files.items()}
    for name, site in (
        ("train-cpu", {"time": "02:00:00", "cpus": 2, "setup": ["source .venv/bin/activate"]}),
        ("train-multinode", {**SITE, "train": {"gpus": 4, "nodes": 2}}),
    ):
        out_dir = Path("/shared/runs/train-minilm")
        jobs = stage_train_jobs(out_dir / "slurm/train.yaml", out_dir, SlurmSettings.model_validate(site), out_dir / "slurm", CHDIR)
        out[name] = {job.script.name: job.text for job in jobs}
    return out


def rendered() -> list[tuple[str, str, str]]:
    return [(case, name, text) for case, files in cases().items() for name, text in files.items()]


@pytest.mark.parametrize("case,name,text", rendered(), ids=lambda v: v if "\n" not in str(v) else "")
def test_matches_golden_file(case, name, text):
    path = GOLDEN / case / name
    if os.environ.get("LOCALSYNTH_UPDATE_GOLDEN"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    assert path.is_file(), f"no golden file {path}; run with LOCALSYNTH_UPDATE_GOLDEN=1 and review it"
    assert text == path.read_text(encoding="utf-8"), f"{case}/{name} differs from {path}"


def test_every_script_passes_bash_n(tmp_path):
    scripts = [(c, n, t) for c, n, t in rendered() if n.endswith(".sbatch")]
    assert len(scripts) == 16
    for case, name, text in scripts:
        path = tmp_path / f"{case}-{name}"
        path.write_text(text, encoding="utf-8")
        result = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
        assert result.returncode == 0, f"{case}/{name}: {result.stderr}"
        assert "{{" not in text, f"{case}/{name} has an unfilled placeholder"


def test_every_template_is_rendered():
    found = sorted(p.name.removesuffix(".sbatch.tmpl") for p in templates_root().glob("*.sbatch.tmpl"))
    assert found == sorted(TEMPLATES) and len(found) == 5
    used = set()
    for _, _, text in rendered():
        for template in TEMPLATES:
            first = (templates_root() / f"{template}.sbatch.tmpl").read_text().splitlines()[2]
            if first.split("{{")[0] in text:
                used.add(template)
    assert used == set(TEMPLATES)


def test_no_gpu_lines_when_gpus_is_zero():
    cpu = cases()["train-cpu"]["train-train-minilm.sbatch"]
    assert "gpu" not in cpu.lower().replace("gpus", "")  # nothing like --gres=gpu:0 or --gpus
    assert not [line for line in cpu.splitlines() if line.startswith("#SBATCH") and "gpu" in line.lower()]
    report = cases()["study-engine"]["report.sbatch"]
    assert not [line for line in report.splitlines() if line.startswith("#SBATCH") and "gpu" in line.lower()]
    train = cases()["study-engine"]["train-paper-0.sbatch"]
    assert "#SBATCH --gres=gpu:a100:4" in train and "--num_processes 4" in train


def test_dependencies_and_markers():
    plan = study_plan()
    jobs = {j.key: j for j in study_jobs(plan, "paper", SlurmSettings.model_validate(SITE), CHDIR)}
    assert list(jobs) == ["generate:sms_spam/zero-shot", "generate:sms_spam/few-shot", "train:0", "train:1", "train:2", "report"]
    assert jobs["train:0"].tasks == [0] and jobs["train:0"].after_ok == []
    assert jobs["train:1"].tasks == [1, 3] and jobs["train:1"].after_ok == ["generate:sms_spam/zero-shot"]
    assert jobs["report"].after_ok == ["train:0", "train:1", "train:2"]
    assert [m.name for m in jobs["generate:sms_spam/zero-shot"].markers] == [f"0000{i}-of-00004.done" for i in range(4)]


def test_tensor_parallel_needs_as_many_gpus():
    plan = study_plan()
    plan.generate[0].loaded = gen_cfg(plan.generate[0].run_dir, tp=2)
    with pytest.raises(UserError, match=r"tensor_parallel_size is 2 but slurm.generate.gpus is 1"):
        study_jobs(plan, "paper", SlurmSettings.model_validate(SITE), CHDIR)


@pytest.mark.parametrize("text,seconds", [("90", 5400), ("10:30", 630), ("04:00:00", 14400), ("1-00", 86400),
                                          ("2-12:30", 217800), ("1-00:00:10", 86410)])
def test_time_formats(text, seconds):
    assert SlurmSettings(time=text).time == text
    assert time_seconds(text) == seconds


def test_secrets_never_rendered(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret-value")
    monkeypatch.setenv("LOCALSYNTH_SERVER_KEY", "sk-other-secret")
    for _, _, text in rendered():
        assert "sk-" not in text


def test_odd_but_safe_values_stay_inside_their_line(tmp_path):
    """A model folder with a space and a dtype with shell characters: quoted, one line each,
    and the scripts still parse."""
    plan = study_plan()
    cfg = gen_cfg(plan.generate[0].run_dir)
    cfg.generator.model = "/shared/models/My Model (v2)"
    cfg.generator.vllm.dtype = "auto; reboot"
    plan.generate[0].loaded = cfg
    jobs = study_jobs(plan, "paper", SlurmSettings.model_validate({**SITE, "vllm_server": True}), CHDIR)
    server = next(j for j in jobs if j.kind == "server")
    assert "--dtype 'auto; reboot'" in server.text and "'/shared/models/My Model (v2)'" in server.text
    for job in jobs:
        path = tmp_path / job.script.name
        path.write_text(job.text, encoding="utf-8")
        result = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
        assert result.returncode == 0, f"{job.script.name}: {result.stderr}"
        assert not [line for line in job.text.splitlines() if line.startswith(("reboot", "; reboot"))]


def test_train_job_name_from_an_odd_folder_name():
    out_dir = Path("/shared/runs/my model #1")
    with pytest.raises(UserError, match="space or quote"):  # the log folder would hold the space
        stage_train_jobs(out_dir / "slurm/train.yaml", out_dir, SlurmSettings.model_validate({}), out_dir / "slurm", CHDIR)
    out_dir = Path("/shared/runs/model#1")
    jobs = stage_train_jobs(out_dir / "slurm/train.yaml", out_dir, SlurmSettings.model_validate({}), out_dir / "slurm", CHDIR)
    assert "#SBATCH --job-name=ls-train-model-1" in jobs[0].text
