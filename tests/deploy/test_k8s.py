"""k8s/: every manifest, and each overlay as `kubectl kustomize` renders it, validated against
Kubernetes' own schemas for a pinned version (kubernetes-validate, strict: unknown fields
fail), the KEDA ScaledObject against its CRD's schema (vendored, schemas/README.md), and the
properties the deployment relies on: hardened pods, probes and draining, one model and (gpu)
one GPU per worker pod, KEDA triggers on exactly the service's queues, NetworkPolicies that let
only the API take outside traffic and only the API and the workers reach Redis, a multi-node
torchrun Job with c10d rendezvous through a headless Service, selectors that select.

Custom resources: keda.sh/v1alpha1 ScaledObject is the only one (the training Job is a plain
batch/v1 Job, no Kubeflow PyTorchJob); any other unknown kind fails the test."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import jsonschema
import kubernetes_validate
import pytest
import yaml

from service.queue import JOB_QUEUE, TASK_QUEUES
from service.settings import Settings, parse_model_specs
from tests.deploy.helpers import (
    K8S,
    K8S_VERSION,
    OVERLAYS,
    SCHEMAS,
    dockerfile_stages,
    exec_form,
    kustomize,
    yaml_documents,
)

NAMESPACE = "pythia"
CUSTOM_SCHEMAS = {("keda.sh/v1alpha1", "ScaledObject"): SCHEMAS / "keda-scaledobject.json"}
WORKLOADS = ("Deployment", "StatefulSet", "Job")


def validate(obj: dict[str, Any]) -> None:
    """Raises on an invalid object (or a kind with no schema)."""
    key = (obj.get("apiVersion"), obj.get("kind"))
    if key in CUSTOM_SCHEMAS:
        schema = json.loads(CUSTOM_SCHEMAS[key].read_text())
        jsonschema.Draft202012Validator(schema).validate(obj)
        return
    kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    return {overlay: kustomize(K8S / "overlays" / overlay) for overlay in OVERLAYS}


def _find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def _container(doc: dict[str, Any], name: str) -> dict[str, Any]:
    pod = _pod_spec(doc)
    (found,) = [c for c in pod["containers"] if c["name"] == name]
    return found


def _pod_spec(doc: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = doc["spec"]["template"]["spec"]
    return spec


def _pod_labels(doc: dict[str, Any]) -> dict[str, str]:
    labels = dict(doc["spec"]["template"]["metadata"].get("labels", {}))
    if doc["kind"] == "Job":  # what the Job controller adds to its pods
        labels["batch.kubernetes.io/job-name"] = doc["metadata"]["name"]
        labels["job-name"] = doc["metadata"]["name"]
    return labels


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    match = selector.get("matchLabels", selector if "matchExpressions" not in selector else {})
    if any(labels.get(k) != v for k, v in match.items()):
        return False
    for expr in selector.get("matchExpressions", []):
        if expr["operator"] == "In" and labels.get(expr["key"]) not in expr["values"]:
            return False
    return True


def _settings(docs: list[dict[str, Any]]) -> dict[str, str]:
    (cm,) = [d for d in docs if d["kind"] == "ConfigMap"
             and d["metadata"]["name"].startswith("pythia-settings")]
    data: dict[str, str] = cm["data"]
    return data


def _env(container: dict[str, Any], settings: dict[str, str]) -> dict[str, str]:
    """The container's environment as the kubelet builds it (envFrom, then env)."""
    env = dict(settings) if container.get("envFrom") else {}
    for item in container.get("env", []):
        env[item["name"]] = item.get("value", "<from " + json.dumps(item.get("valueFrom")) + ">")
    return env


# -- schema validation ----------------------------------------------------------------------
def _kustomizations() -> list[Path]:
    return sorted(K8S.rglob("kustomization.yaml"))


def _referenced() -> tuple[set[Path], set[Path], set[Path]]:
    """(resource files, patch files, generator inputs) named by the kustomizations."""
    resources, patches, inputs = set(), set(), set()
    for kfile in _kustomizations():
        k = yaml.safe_load(kfile.read_text())
        for r in k.get("resources", []):
            path = (kfile.parent / r).resolve()
            assert path.exists(), f"{kfile}: resource {r} does not exist"
            if path.is_file():
                resources.add(path)
        for p in k.get("patches", []):
            path = (kfile.parent / p["path"]).resolve()
            assert path.is_file(), f"{kfile}: patch {p['path']} does not exist"
            patches.add(path)
        for gen in k.get("configMapGenerator", []) + k.get("secretGenerator", []):
            for f in gen.get("envs", []) + gen.get("files", []):
                path = (kfile.parent / f).resolve()
                assert path.is_file(), f"{kfile}: generator input {f} does not exist"
                inputs.add(path)
    return resources, patches, inputs


def test_every_file_is_part_of_a_kustomization() -> None:
    resources, patches, inputs = _referenced()
    known = resources | patches | inputs | {p.resolve() for p in _kustomizations()}
    stray = [p for p in K8S.rglob("*") if p.is_file() and p.suffix in (".yaml", ".yml", ".env")
             and p.resolve() not in known]
    assert stray == [], f"files no kustomization uses: {stray}"
    assert {(K8S / "overlays" / o).is_dir() for o in OVERLAYS} == {True}


def test_every_manifest_validates() -> None:
    """Each resource file, on its own, document by document."""
    resources, _, _ = _referenced()
    count = 0
    for path in sorted(resources):
        for doc in yaml_documents(path):
            try:
                validate(doc)
            except (jsonschema.ValidationError, kubernetes_validate.ValidationError) as exc:
                pytest.fail(f"{path.relative_to(K8S)}: {doc['kind']}/"
                            f"{doc['metadata']['name']}: {exc.message}")
            count += 1
    assert count >= 20


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rendered_overlay_validates(rendered: dict[str, list[dict[str, Any]]],
                                    overlay: str) -> None:
    docs = rendered[overlay]
    kinds = {d["kind"] for d in docs}
    assert {"Namespace", "ConfigMap", "Service", "Deployment", "StatefulSet",
            "HorizontalPodAutoscaler", "ScaledObject", "PersistentVolumeClaim", "Job",
            "PodDisruptionBudget", "NetworkPolicy"} <= kinds
    for doc in docs:
        try:
            validate(doc)
        except (jsonschema.ValidationError, kubernetes_validate.ValidationError) as exc:
            pytest.fail(f"{overlay}: {doc['kind']}/{doc['metadata']['name']}: {exc.message}")
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == NAMESPACE, doc["metadata"]


@pytest.mark.parametrize("mutate", [
    lambda docs: _container(_find(docs, "Deployment", "pythia-api"), "api")
    .update(readinessprobe={"httpGet": {"path": "/readyz", "port": 8000}}),  # misspelled
    lambda docs: _find(docs, "Deployment", "pythia-worker")["spec"].update(replicas="two"),
    lambda docs: _find(docs, "Job", "pythia-train")["spec"].update(parallelism="2"),
    lambda docs: _find(docs, "ScaledObject", "pythia-worker")["spec"]
    .update(scaleTarget={"name": "x"}),
    lambda docs: _find(docs, "ScaledObject", "pythia-worker")["spec"].pop("triggers"),
    lambda docs: _find(docs, "ScaledObject", "pythia-worker")["spec"]
    .update(minReplicaCount="one"),
])
def test_validation_catches_mistakes(rendered: dict[str, list[dict[str, Any]]],
                                     mutate: Any) -> None:
    docs = copy.deepcopy(rendered["gpu"])
    before = json.dumps(docs, sort_keys=True)
    mutate(docs)
    changed = [d for d in docs if json.dumps(d, sort_keys=True) not in before]
    assert len(changed) == 1
    with pytest.raises((jsonschema.ValidationError, kubernetes_validate.ValidationError)):
        validate(changed[0])


def test_unknown_kinds_are_not_waved_through() -> None:
    with pytest.raises(kubernetes_validate.SchemaNotFoundError):
        validate({"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob",
                  "metadata": {"name": "x"}, "spec": {}})


# -- security and resources -----------------------------------------------------------------
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_pod_is_hardened_and_sized(rendered: dict[str, list[dict[str, Any]]],
                                         overlay: str) -> None:
    for doc in rendered[overlay]:
        if doc["kind"] not in WORKLOADS:
            continue
        where = f"{overlay}: {doc['kind']}/{doc['metadata']['name']}"
        pod = _pod_spec(doc)
        sc = pod["securityContext"]
        assert sc["runAsNonRoot"] is True and sc["runAsUser"] != 0, where
        assert sc["seccompProfile"]["type"] == "RuntimeDefault", where
        assert pod.get("automountServiceAccountToken") is False, where
        for c in pod["containers"] + pod.get("initContainers", []):
            csc = c["securityContext"]
            assert csc["allowPrivilegeEscalation"] is False, where
            assert csc["capabilities"]["drop"] == ["ALL"], where
            assert csc["readOnlyRootFilesystem"] is True, where
            res = c["resources"]
            assert {"cpu", "memory"} <= set(res["requests"]), where
            assert "memory" in res["limits"], where
            assert ":" in c["image"] and not c["image"].endswith(":latest"), where


def test_the_namespace_enforces_the_restricted_pod_security_profile(
        rendered: dict[str, list[dict[str, Any]]]) -> None:
    ns = _find(rendered["cpu"], "Namespace", NAMESPACE)
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


# -- the API --------------------------------------------------------------------------------
def test_api_probes_drain_and_secret(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["gpu"]
    api = _find(docs, "Deployment", "pythia-api")
    c = _container(api, "api")
    settings = _settings(docs)
    env = _env(c, settings)
    stages = dockerfile_stages()
    assert c["command"] == exec_form(stages["api"].last("CMD").args)  # type: ignore[union-attr]
    assert env["PYTHIA_QUEUE"] == "celery"
    port = int(env["PYTHIA_PORT"])
    assert [p["containerPort"] for p in c["ports"]] == [port]
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["startupProbe"]["httpGet"]["path"] == "/healthz"
    # preStop keeps the pod serving while it leaves the endpoints; then SIGTERM drains for
    # up to the request timeout (+5 s uvicorn); the grace period covers both
    pre_stop = c["lifecycle"]["preStop"]["sleep"]["seconds"]
    readiness = c["readinessProbe"]
    assert pre_stop >= readiness["periodSeconds"] * readiness["failureThreshold"]
    grace = _pod_spec(api)["terminationGracePeriodSeconds"]
    assert grace > pre_stop + float(settings["PYTHIA_REQUEST_TIMEOUT_S"]) + 5
    secret = [e for e in c["env"] if e["name"] == "PYTHIA_API_KEY"]
    assert secret and secret[0]["valueFrom"]["secretKeyRef"]["name"] == "pythia-api-key"
    assert secret[0]["valueFrom"]["secretKeyRef"].get("optional") is not True
    assert not any(d["kind"] == "Secret" for d in docs), "no secret value in the repository"
    hpa = _find(docs, "HorizontalPodAutoscaler", "pythia-api")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": "pythia-api"}
    assert hpa["spec"]["minReplicas"] >= 2 and "replicas" not in api["spec"]
    service = _find(docs, "Service", "pythia-api")
    assert service["spec"]["ports"][0]["targetPort"] == c["ports"][0]["name"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_settings_are_valid_and_one_model_per_worker_pod(
        rendered: dict[str, list[dict[str, Any]]], overlay: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    docs = rendered[overlay]
    settings = _settings(docs)
    for name, container in (("pythia-api", "api"), ("pythia-worker", "worker")):
        env = _env(_container(_find(docs, "Deployment", name), container), settings)
        with monkeypatch.context() as m:
            for key, value in env.items():
                if key.startswith("PYTHIA_") and not value.startswith("<from"):
                    m.setenv(key, value)
            s = Settings()
        assert len(s.model_specs()) == 1, f"{name}: one model per pod"
        assert urlparse(s.redis_url).hostname == "redis"
        if container == "worker":
            cmd = _container(_find(docs, "Deployment", name), "worker")["command"]
            assert int(cmd[cmd.index("--concurrency") + 1]) >= s.max_batch_size
            assert s.device == ("cuda" if overlay == "gpu" else "cpu")
    (spec,) = parse_model_specs([settings["PYTHIA_MODELS"]])
    assert spec.path.is_absolute()


# -- workers and KEDA -----------------------------------------------------------------------
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_worker_gpu_resources(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    docs = rendered[overlay]
    worker = _find(docs, "Deployment", "pythia-worker")
    c = _container(worker, "worker")
    stages = dockerfile_stages()
    assert c["command"] == exec_form(stages["worker"].last("CMD").args)  # type: ignore[union-attr]
    probe = c["livenessProbe"]["exec"]["command"]
    assert probe == ["python", "docker/healthcheck.py", "worker"]
    gpus = {d["metadata"]["name"]: _container(d, d["spec"]["template"]["spec"]["containers"][0]
                                              ["name"])["resources"]["limits"]
            .get("nvidia.com/gpu") for d in docs if d["kind"] in WORKLOADS}
    tolerations = _pod_spec(worker).get("tolerations", [])
    if overlay == "gpu":
        assert gpus["pythia-worker"] == 1
        assert _container(worker, "worker")["resources"]["requests"]["nvidia.com/gpu"] == 1
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in \
            tolerations
        assert c["image"].endswith("-cuda")
        assert gpus["pythia-train"] and gpus["pythia-predict"]
        assert gpus["pythia-api"] is None and gpus["redis"] is None
    else:
        assert set(gpus.values()) == {None} and tolerations == []
        assert all("cuda" not in cc["image"] for d in docs if d["kind"] in WORKLOADS
                   for cc in _pod_spec(d)["containers"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_keda_scales_workers_on_every_queue(rendered: dict[str, list[dict[str, Any]]],
                                            overlay: str) -> None:
    docs = rendered[overlay]
    so = _find(docs, "ScaledObject", "pythia-worker")
    target = so["spec"]["scaleTargetRef"]
    assert target["name"] == "pythia-worker" and target.get("kind", "Deployment") == "Deployment"
    _find(docs, "Deployment", "pythia-worker")
    triggers = so["spec"]["triggers"]
    assert {t["type"] for t in triggers} == {"redis"}
    assert sorted(t["metadata"]["listName"] for t in triggers) == \
        sorted([*TASK_QUEUES.values(), JOB_QUEUE])
    settings = _settings(docs)
    url = urlparse(settings["PYTHIA_REDIS_URL"])
    redis_port = _find(docs, "Service", "redis")["spec"]["ports"][0]["port"]
    for t in triggers:
        host, port = t["metadata"]["address"].rsplit(":", 1)
        assert host in (url.hostname, f"{url.hostname}.{NAMESPACE}.svc.cluster.local")
        assert int(port) == (url.port or 6379) == redis_port
        assert t["metadata"]["databaseIndex"] == url.path.strip("/")
        assert 0 < int(t["metadata"]["listLength"]) < int(settings["PYTHIA_QUEUE_SIZE"])
    assert so["spec"]["minReplicaCount"] >= 1
    assert so["spec"]["maxReplicaCount"] >= so["spec"]["minReplicaCount"]
    # KEDA owns the worker's HPA: no second autoscaler on it
    assert not [d for d in docs if d["kind"] == "HorizontalPodAutoscaler"
                and d["spec"]["scaleTargetRef"]["name"] == "pythia-worker"]


def test_redis_never_evicts_and_keeps_its_data(rendered: dict[str, list[dict[str, Any]]]
                                               ) -> None:
    redis = _find(rendered["cpu"], "StatefulSet", "redis")
    args = _container(redis, "redis")["args"]
    assert args[args.index("--maxmemory-policy") + 1] == "noeviction"
    assert args[args.index("--appendonly") + 1] == "yes"
    assert redis["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "redis-data"
    assert _find(rendered["cpu"], "Service", "redis")["spec"]["clusterIP"] == "None"


# -- selectors, storage, policies -----------------------------------------------------------
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_selectors_select_and_claims_exist(rendered: dict[str, list[dict[str, Any]]],
                                           overlay: str) -> None:
    docs = rendered[overlay]
    pods = {d["metadata"]["name"]: _pod_labels(d) for d in docs if d["kind"] in WORKLOADS}
    for d in docs:
        where = f"{d['kind']}/{d['metadata']['name']}"
        if d["kind"] == "Service":
            assert any(_selects(d["spec"]["selector"], labels) for labels in pods.values()), where
        if d["kind"] == "PodDisruptionBudget":
            assert any(_selects(d["spec"]["selector"], labels) for labels in pods.values()), where
        if d["kind"] in ("Deployment", "StatefulSet"):
            assert _selects(d["spec"]["selector"], pods[d["metadata"]["name"]]), where
    claims = {d["metadata"]["name"] for d in docs if d["kind"] == "PersistentVolumeClaim"}
    assert {"pythia-models", "pythia-data", "pythia-runs"} <= claims
    for d in docs:
        if d["kind"] in WORKLOADS:
            for v in _pod_spec(d).get("volumes", []):
                if "persistentVolumeClaim" in v:
                    assert v["persistentVolumeClaim"]["claimName"] in claims, d["metadata"]
    pdbs = {d["metadata"]["name"] for d in docs if d["kind"] == "PodDisruptionBudget"}
    assert {"pythia-api", "pythia-worker"} <= pdbs


def _allowed_sources(docs: list[dict[str, Any]], labels: dict[str, str]) -> list[Any]:
    """The ingress rules that apply to a pod with ``labels`` (``None`` = from anywhere)."""
    sources: list[Any] = []
    for pol in docs:
        if pol["kind"] != "NetworkPolicy" or not _selects(pol["spec"]["podSelector"], labels):
            continue
        assert "Ingress" in pol["spec"]["policyTypes"]
        for rule in pol["spec"].get("ingress", []):
            sources += rule.get("from", [None])
    return sources


def test_network_policies(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["gpu"]
    deny = [p for p in docs if p["kind"] == "NetworkPolicy" and p["spec"]["podSelector"] == {}
            and "ingress" not in p["spec"] and p["spec"]["policyTypes"] == ["Ingress"]]
    assert deny, "no default deny of ingress"
    pods = {d["metadata"]["name"]: _pod_labels(d) for d in docs if d["kind"] in WORKLOADS}
    open_to_all = [name for name, labels in pods.items()
                   if None in _allowed_sources(docs, labels)]
    assert open_to_all == ["pythia-api"], "only the API takes outside traffic"
    redis_sources = _allowed_sources(docs, pods["redis"])
    from_pods = [s["podSelector"] for s in redis_sources if "namespaceSelector" not in s]
    in_namespace = {name for name, labels in pods.items()
                    if any(_selects(sel, labels) for sel in from_pods)}
    assert in_namespace == {"pythia-api", "pythia-worker"}
    others = [s for s in redis_sources if "namespaceSelector" in s]
    assert others == [{"namespaceSelector": {"matchLabels": {
        "kubernetes.io/metadata.name": "keda"}}, "podSelector": {"matchLabels": {
            "app": "keda-operator"}}}], "besides the API and workers only KEDA's operator"
    for name in ("pythia-worker", "pythia-predict", "pythia-seed-data"):
        assert _allowed_sources(docs, pods[name]) == [], name
    trainer_sources = _allowed_sources(docs, pods["pythia-train"])
    assert trainer_sources and all(_selects(s["podSelector"], pods["pythia-train"])
                                   for s in trainer_sources)


# -- jobs -----------------------------------------------------------------------------------
def _vars(args: list[str]) -> set[str]:
    return {m for a in args for m in re.findall(r"\$\((\w+)\)", a)}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_multi_node_training_job(rendered: dict[str, list[dict[str, Any]]],
                                 overlay: str) -> None:
    docs = rendered[overlay]
    job = _find(docs, "Job", "pythia-train")
    spec = job["spec"]
    c = _container(job, "trainer")
    cmd = c["command"]
    flags = dict(a[2:].split("=", 1) for a in cmd if a.startswith("--") and "=" in a)
    assert cmd[0] == "torchrun" and "training/train.py" in cmd
    assert spec["suspend"] is True, "applying the manifests must not start a training"
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] == int(flags["nnodes"]) >= 2
    assert flags["rdzv_backend"] == "c10d"
    host, port = flags["rdzv_endpoint"].rsplit(":", 1)
    pod = _pod_spec(job)
    assert host == f"{job['metadata']['name']}-0.{pod['subdomain']}"
    service = _find(docs, "Service", pod["subdomain"])
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"].get("publishNotReadyAddresses") is True
    assert _selects(service["spec"]["selector"], _pod_labels(job))
    assert int(port) in [p["port"] for p in service["spec"]["ports"]]
    env = {e["name"]: e for e in c["env"]}
    assert _vars(cmd) <= set(env), _vars(cmd) - set(env)
    assert env["JOB_UID"]["valueFrom"]["fieldRef"]["fieldPath"] == \
        "metadata.labels['batch.kubernetes.io/controller-uid']"
    mounts = {m["mountPath"] for m in c["volumeMounts"]}
    assert {"/data", "/runs", "/dev/shm"} <= mounts
    gpus = c["resources"]["limits"].get("nvidia.com/gpu")
    if overlay == "gpu":
        assert env["TRAIN_DEVICE"]["value"] == "cuda"
        assert int(env["NPROC_PER_NODE"]["value"]) == gpus
    else:
        assert env["TRAIN_DEVICE"]["value"] == "cpu" and gpus is None


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_batch_prediction_and_seed_jobs(rendered: dict[str, list[dict[str, Any]]],
                                        overlay: str) -> None:
    docs = rendered[overlay]
    job = _find(docs, "Job", "pythia-predict")
    c = _container(job, "predict")
    assert c["command"][:3] == ["python", "-m", "training.predict"]
    env = {e["name"]: e["value"] for e in c["env"]}
    assert _vars(c["command"]) <= set(env)
    assert job["spec"]["suspend"] is True
    assert env["PREDICT_OUT"].startswith("/runs/")
    assert env["PREDICT_DATA_DIR"].startswith(_settings(docs)["PYTHIA_DATA_ROOT"])
    seed = _find(docs, "Job", "pythia-seed-data")
    assert seed["spec"].get("suspend") is not True
    assert "/data/shapes" in " ".join(_container(seed, "seed")["command"])
