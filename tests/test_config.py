"""Every shipped config loads and validates; overrides; every problem reported at once;
every setting documented where its default lives."""

from __future__ import annotations

import typing

import pytest
import yaml
from helpers import REPO, write_yaml
from pydantic import BaseModel, ValidationError

from localsynth.errors import UserError
from localsynth.generation.config import GenerateConfig, load_generate_config
from localsynth.tasks import TaskConfig, available_tasks, configs_root, load_task

TASK_FILES = sorted((REPO / "configs" / "tasks").glob("**/*.yaml"))
ALL_EXPERIMENT_FILES = sorted((REPO / "configs" / "experiments").glob("**/*.yaml"))
TRAIN_FILES = [p for p in ALL_EXPERIMENT_FILES if p.stem.startswith("train-")]
STUDY_FILES = [p for p in ALL_EXPERIMENT_FILES if p.stem.startswith("study-")]  # tested in test_experiment
EXPERIMENT_FILES = [p for p in ALL_EXPERIMENT_FILES if p not in TRAIN_FILES + STUDY_FILES]


def test_shipped_config_counts():
    assert len(TASK_FILES) == 10, TASK_FILES
    assert len(EXPERIMENT_FILES) == 3, EXPERIMENT_FILES  # default, smoke, paper-gpt35
    assert len(TRAIN_FILES) == 1, TRAIN_FILES  # train-mixed
    assert len(STUDY_FILES) == 3, STUDY_FILES  # study-tiny-cpu, study-smol-cpu, study-paper-grid
    assert configs_root() == REPO / "configs"


@pytest.mark.parametrize("path", TASK_FILES, ids=lambda p: p.stem)
def test_task_config_validates(path):
    task = load_task(str(path))
    assert task.name == path.stem
    assert len(task.label_names) >= 2 and task.prompts.few_shot.strip()
    assert load_task(path.stem) == task  # by name resolves to the same file


def test_available_tasks_are_the_task_files():
    assert available_tasks() == sorted(p.stem for p in TASK_FILES)
    assert available_tasks(REPO / "configs" / "experiments") == sorted(p.stem for p in TASK_FILES)


@pytest.mark.parametrize("path", EXPERIMENT_FILES, ids=lambda p: p.stem)
def test_experiment_config_validates_with_every_task(path):
    cfg = load_generate_config(path)
    assert isinstance(cfg, GenerateConfig)
    for task in TASK_FILES:
        swapped = load_generate_config(path, [f"task={task.stem}"])
        assert swapped.task.name == task.stem
        # What the run directory saves loads back to the same config.
        saved = yaml.safe_load(yaml.safe_dump(swapped.model_dump(mode="json"), sort_keys=False))
        assert GenerateConfig.model_validate(saved) == swapped


@pytest.mark.parametrize("path", TRAIN_FILES, ids=lambda p: p.stem)
def test_train_config_validates(path):
    from localsynth.training.config import load_train_config

    cfg = load_train_config(path)
    assert cfg.label_set() and cfg.train


def test_embedded_default_is_the_real_model_and_smoke_is_explicit():
    default = load_generate_config(None)
    assert default == load_generate_config(REPO / "configs" / "experiments" / "default.yaml")
    assert default.generator.model == "smollm2-135m-instruct" and default.quota.per_label == 20
    assert load_generate_config(REPO / "configs" / "experiments" / "smoke.yaml").generator.model == "tiny-random"


# ----------------------------------------------------------------------------- --set


def test_nested_overrides_and_type_parsing():
    cfg = load_generate_config(
        None,
        [
            "generator.backend=openai",
            "generator.model=007",  # a text field keeps the text: not the number 7
            "generator.openai.base_url=http://127.0.0.1:8000/v1",
            "generator.openai.max_concurrency=4",
            "generator.openai.requests_per_minute=90.5",
            "generator.openai.extra_body={top_k: 20}",
            "generator.sampling.stop=[END, '###']",
            "generator.vllm.enforce_eager=true",
            "filters.near_duplicate_jaccard=null",
            "quota.labels=[spam]",
            "run_dir=2024",
            "seed=42",
            "mode=zero-shot",
        ],
    )
    assert cfg.generator.backend == "openai" and cfg.generator.model == "007"
    assert cfg.generator.openai.base_url == "http://127.0.0.1:8000/v1"
    assert cfg.generator.openai.max_concurrency == 4 and cfg.generator.openai.requests_per_minute == 90.5
    assert cfg.generator.openai.extra_body == {"top_k": 20}
    assert cfg.generator.sampling.stop == ["END", "###"]
    assert cfg.generator.vllm.enforce_eager is True
    assert cfg.filters.near_duplicate_jaccard is None
    assert cfg.quota.labels == ["spam"] and cfg.labels == ["spam"]
    assert cfg.run_dir == "2024" and cfg.seed == 42


def test_task_swap_applies_before_task_overrides():
    cfg = load_generate_config(None, ["task.max_words=7", "task=ag_news", "task.styles.region=[Asia]"])
    assert cfg.task.name == "ag_news" and cfg.task.max_words == 7
    assert cfg.task.styles["region"] == ["Asia"]
    assert cfg.task.label_names == ["World", "Sports", "Business", "Sci/Tech"]


def test_task_by_path_and_inline(tmp_path):
    path = tmp_path / "my_task.yaml"
    path.write_text((REPO / "configs" / "tasks" / "humor.yaml").read_text(encoding="utf-8"), encoding="utf-8")
    assert load_generate_config(None, [f"task={path}"]).task.name == "humor"
    inline = yaml.safe_load(path.read_text(encoding="utf-8"))
    cfg_path = write_yaml(tmp_path / "gen.yaml", {"task": inline, "quota": {"per_label": 3}})
    assert load_generate_config(cfg_path).task.name == "humor"


def test_text_override_edge_cases():
    assert load_generate_config(None, ["generator.model=null"]).generator.model is None
    assert load_generate_config(None, ["run_dir="]).run_dir == "runs/sms_spam-zero-shot"  # unset: the default, decided once
    assert load_generate_config(None, ["generator.model='0.5'"]).generator.model == "0.5"  # YAML quotes
    assert load_generate_config(None, ["task.title=a: b = c"]).task.title == "a: b = c"


@pytest.mark.parametrize(
    ("override", "fragments"),
    [
        ("quota.per_label", ["--set expects KEY=VALUE"]),
        ("=3", ["--set expects KEY=VALUE"]),
        ("quota..per_label=3", ["--set expects KEY=VALUE"]),
        ("quota.per_label.max=3", ["'quota.per_label' is a value, not a section"]),
        ("generator.opnai.max_concurrency=4", ["generator.opnai", "unknown key", "did you mean 'openai'"]),
        ("quota.per_label=many", ["quota.per_label", "valid integer", "'many'"]),
        ("mode=fewshot", ["mode", "'zero-shot' or 'few-shot'", "'fewshot'"]),
        ("task=nope", ["unknown task 'nope'", "sms_spam", "ag_news"]),
    ],
)
def test_bad_overrides_name_the_key(override, fragments):
    with pytest.raises(UserError) as info:
        load_generate_config(None, [override])
    for fragment in fragments:
        assert fragment in str(info.value)


# ----------------------------------------------------------------------------- all problems at once


def test_all_problems_in_a_file_are_reported_together(tmp_path):
    task = yaml.safe_load((REPO / "configs" / "tasks" / "sms_spam.yaml").read_text(encoding="utf-8"))
    task["prompts"]["generation"] += " Mood: {mood}."  # a placeholder no style defines
    task["labels"][0]["colour"] = "red"  # unknown key inside a list item
    path = write_yaml(
        tmp_path / "bad.yaml",
        {
            "task": task,
            "mode": "few-shot",  # with no few-shot source
            "generator": {"backend": "openai", "sampling": {"temperature": -1}},  # no model; bad value
            "quota": {"per_label": "lots", "labels": ["spam", "eggs"]},
            "filterz": {},
        },
    )
    with pytest.raises(UserError) as info:
        load_generate_config(path)
    message = str(info.value)
    expected = [
        "task.labels.0.colour: unknown key",
        "generator.sampling.temperature: Input should be greater than or equal to 0",
        "quota.per_label: Input should be a valid integer",
        "filterz: unknown key; remove it or check its spelling; did you mean 'filters'?",
        "task.prompts.generation: uses unknown placeholder(s) {mood}",
        "task.few_shot.source: few-shot mode needs real examples",
        "quota.labels: names unknown label(s) ['eggs']",
        "generator.model: is required with the openai backend",
    ]
    for line in expected:
        assert line in message, f"{line!r} missing from:\n{message}"
    assert message.startswith(f"{path}: {len(expected)} problems in the configuration:")
    assert message.count("\n  - ") == len(expected)


def test_cross_field_problems_alone_each_get_a_line():
    with pytest.raises(UserError) as info:
        load_generate_config(None, ["mode=few-shot", "generator.backend=openai", "generator.model=null"])
    message = str(info.value)
    assert "2 problems" in message
    assert "\n  - task.few_shot.source: few-shot mode needs real examples" in message
    assert "\n  - generator.model (from --set generator.model=null): is required with the openai backend" in message


def test_direct_validation_still_runs_cross_checks():
    task = load_task("sms_spam").model_dump()
    with pytest.raises(ValidationError) as info:
        GenerateConfig.model_validate({"task": task, "mode": "few-shot"})
    assert "task.few_shot.source" in str(info.value)


def test_bad_task_file_reports_everything(tmp_path):
    task = yaml.safe_load((REPO / "configs" / "tasks" / "sms_spam.yaml").read_text(encoding="utf-8"))
    task["labels"] = task["labels"][:1]
    task["prompts"]["context"] = "You are {persona}."
    del task["subjectivity"]
    path = write_yaml(tmp_path / "task.yaml", task)
    with pytest.raises(UserError) as info:
        load_task(str(path))
    message = str(info.value)
    assert "3 problems" in message
    assert "task.labels" not in message  # a task file's keys are top level
    assert "labels: List should have at least 2 items" in message and "at least two labels" in message
    assert "subjectivity: missing; this key is required" in message
    assert "prompts.context: uses unknown placeholder(s) {persona}" in message


def test_yaml_that_is_not_a_mapping(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- task: sms_spam\n", encoding="utf-8")
    with pytest.raises(UserError, match="must be a YAML mapping"):
        load_generate_config(path)


def test_task_file_given_as_the_config(tmp_path):
    with pytest.raises(UserError, match="is a task file, not a generation config"):
        load_generate_config(REPO / "configs" / "tasks" / "imdb.yaml")


# ----------------------------------------------------------------------------- defaults


def _models(root: type[BaseModel]) -> list[type[BaseModel]]:
    seen: list[type[BaseModel]] = []

    def visit(annotation) -> None:
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            if annotation not in seen:
                seen.append(annotation)
                for field in annotation.model_fields.values():
                    visit(field.annotation)
        for arg in typing.get_args(annotation):
            visit(arg)

    visit(root)
    return seen


def test_every_setting_is_documented_where_its_default_lives():
    models = _models(GenerateConfig)
    assert TaskConfig in models and len(models) >= 15
    undocumented = [
        f"{model.__name__}.{name}"
        for model in models
        for name, field in model.model_fields.items()
        if not (field.description or "").strip()
    ]
    assert undocumented == []
    # Scalar defaults appear in the JSON schema, so `--help`-style docs can show them.
    schema = GenerateConfig.model_json_schema()
    for model in models:
        properties = schema["$defs"].get(model.__name__, schema)["properties"]
        for name, field in model.model_fields.items():
            if not field.is_required() and field.default_factory is None:
                assert "default" in properties[name], f"{model.__name__}.{name}"


def test_minimal_config_gets_the_model_defaults(tmp_path):
    path = write_yaml(tmp_path / "min.yaml", {"task": "sms_spam"})
    cfg = load_generate_config(path)
    fields = GenerateConfig.model_fields
    assert cfg.mode == fields["mode"].default and cfg.seed == fields["seed"].default
    assert cfg.quota == fields["quota"].default_factory()
    assert cfg.generator == fields["generator"].default_factory()
    assert cfg.filters == fields["filters"].default_factory()


# ----------------------------------------------------------------------------- bounds and cross-checks


@pytest.mark.parametrize(
    ("overrides", "fragments"),
    [
        (["filters.min_words=10", "filters.max_words=5"], ["filters.min_words", "is 10 but max_words is 5"]),
        # filters.max_words unset: twice task.max_words (40 for sms_spam), known only with the task
        (["filters.min_words=81"], ["filters.min_words", "80 words", "twice task.max_words 40"]),
        (["task.max_words=4", "filters.min_words=9"], ["filters.min_words", "8 words"]),
        (["quota.per_label=1000000000000"], ["quota.per_label", "at most 10,000,000", "several runs"]),
        (["quota.overgenerate=1e12"], ["quota.overgenerate", "less than or equal to 10"]),
    ],
)
def test_impossible_or_unbounded_settings_are_refused(overrides, fragments):
    with pytest.raises(UserError) as info:
        load_generate_config(None, overrides)
    for fragment in fragments:
        assert fragment in str(info.value), str(info.value)


def test_word_range_at_the_edge_is_accepted():
    assert load_generate_config(None, ["filters.min_words=80"]).max_words == 80
    assert load_generate_config(None, ["filters.min_words=5", "filters.max_words=5"]).max_words == 5


def test_problems_from_set_name_the_flag_not_the_file(tmp_path):
    path = write_yaml(tmp_path / "gen.yaml", {"task": "sms_spam", "quota": {"per_label": "x"}})
    with pytest.raises(UserError) as info:
        load_generate_config(path, ["filters.min_words=-1"])
    message = str(info.value)
    assert message.startswith(f"{path}: 2 problems")  # one from the file, one from the flag
    assert "quota.per_label: Input should be a valid integer" in message
    assert "filters.min_words (from --set filters.min_words=-1):" in message
    with pytest.raises(UserError) as info:
        load_generate_config(path, ["quota.per_label=0"])
    assert str(info.value).startswith(f"--set quota.per_label=0 (on {path}): 1 problem")


# ----------------------------------------------------------------------------- secrets

FAKE_KEY = "sk-localsynthFAKE0123456789abcdefXYZ"


@pytest.mark.parametrize(
    "text",
    [
        FAKE_KEY,
        "hf_FAKEabcdefghijklmnopqrstuvwxyz012345",
        "Authorization: Bearer FAKEtoken.abc-123_xyz",
        "http://alice:hunter2-FAKE@10.0.0.1:8000/v1",
        "https://host/v1?api_key=FAKE123&x=1",
        "token=aZ3kQ9vL2mX8pR4tW7yB1nC6dF5gH0jKs",  # 33 random-looking characters
        "5d94f9e56d0d0da345d0f5d5efc95a54d995bad5",  # hex keys too (and git shas, harmlessly)
    ],
)
def test_redact_masks_key_shapes(text):
    from localsynth.secrets import MASK, redact

    masked = redact(f"the value is {text} here")
    assert MASK in masked and masked.startswith("the value is ") and masked.endswith(" here")
    for secret in ("FAKE", "hunter2", "aZ3kQ9vL2mX8pR4tW7yB1nC6dF5gH0jKs", "5d94f9e56d0d"):
        assert secret not in masked


@pytest.mark.parametrize(
    "text",
    [
        "meta-llama/Llama-3.1-8B-Instruct", "NousResearch/Hermes-3-Llama-3-8B-Instruct-GGUF-Q4_K_M",
        "/shared/models/Qwen2.5-72B-Instruct-AWQ", "runs/sms_spam-zero-shot/shards/00000-of-00004.parquet",
        "MyExperiment2024SyntheticDataV3Final", "generate --set generator.openai.api_key_env=OPENAI_API_KEY",
        "http://127.0.0.1:8000/v1", "quota.per_label=1000000",
    ],
)
def test_redact_leaves_names_paths_and_settings_alone(text):
    from localsynth.secrets import redact

    assert redact(text) == text


def test_run_record_masks_secrets(tmp_path, monkeypatch):
    """config.yaml and environment/*.json of a run directory, whatever reaches them."""
    from localsynth.generation.rundir import Shard, ShardPaths, check_config, prepare

    monkeypatch.setattr("sys.argv", ["localsynth", "generate", "--set", f"task.title={FAKE_KEY}"])
    paths = ShardPaths(tmp_path / "run", Shard(0, 1))
    config = {"task": {"title": FAKE_KEY}, "generator": {"openai": {"extra_body": {"api_key": "plain"}}}, "seed": 1}
    prepare(paths, config)
    files = [p for p in (tmp_path / "run").rglob("*") if p.is_file()]
    assert {p.name for p in files} == {"config.yaml", "00000-of-00001.json"}
    for file in files:
        text = file.read_text()
        assert FAKE_KEY not in text and "plain" not in text and "***" in text, file
    # The masked record still matches the same config when the run resumes.
    (paths.rows.parent).mkdir(parents=True)
    paths.done.write_text("{}")
    check_config(paths, config)
    with pytest.raises(UserError, match="seed"):
        check_config(paths, {**config, "seed": 2})


def test_config_files_named_yaml_that_are_not_files(tmp_path):
    import os

    fifo = tmp_path / "pipe.yaml"
    os.mkfifo(fifo)
    with pytest.raises(UserError, match="not a regular file"):
        load_generate_config(fifo)
    assert "pipe" not in available_tasks(tmp_path)  # listing tasks never opens it (it would block)
