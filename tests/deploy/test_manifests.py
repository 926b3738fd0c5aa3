"""The deployment recipes agree with the daemon, so they cannot drift apart.

Renders deploy/kubernetes/ as `kubectl apply -k` would (resources, the ConfigMap and Secret
generators, replacements, images, namespace: the subset of kustomize the base uses; no kubectl
is needed) and checks the values that must match the daemon: env names against the key table
in src/conf.c (and the built daemon's `check-config`, when one is found), the probe paths
against src/httpd.c, the port against DSW_HTTP_LISTEN, the grace period against
runs.drain_timeout + runs.kill_grace, the hardening, the KEDA trigger against the queue and
the slots. Also the Containerfiles: user, stop signal, health check, the build dependencies
against scripts/deps.sh, and no registry host names anywhere.

    python3 -m pytest -q tests/deploy/test_manifests.py
    DSW_BIN=build/dagster-sqs-worker python3 -m pytest ...   (check-config with a given binary)
"""
import copy
import os
import re
import shutil
import subprocess

import pytest
import yaml

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
KDIR = os.path.join(ROOT, "deploy", "kubernetes")
MARGIN_S = 10  # at least this long after drain + kill grace to record outcomes and exit


def read(*parts):
    with open(os.path.join(ROOT, *parts), encoding="utf-8") as f:
        return f.read()


# ---- the daemon's side --------------------------------------------------------------------


def conf_keys():
    """{(section, name): default} from the key table in src/conf.c."""
    src = read("src", "conf.c")
    keys = {}
    for m in re.finditer(r"\{\s*\.section\s*=\s*\"(\w+)\",\s*\.name\s*=\s*\"(\w+)\",(.*?)\}", src, re.S):
        d = re.search(r"\.def\s*=\s*\"([^\"]*)\"", m.group(3))
        keys[(m.group(1), m.group(2))] = d.group(1) if d else None
    assert len(keys) > 20, "cannot parse the key table of src/conf.c"
    return keys


def env_name_ok(name, keys):
    if name.startswith("DSW_RUNS_ENV_") and len(name) > len("DSW_RUNS_ENV_"):
        return True  # runs.env.NAME
    return any(name == f"DSW_{s}_{k}".upper() for s, k in keys)


def seconds(value):
    m = re.fullmatch(r"\s*(\d+)\s*(ms|s|m|h)?\s*", value)
    assert m, f"not a duration: {value!r}"
    n, unit = int(m.group(1)), m.group(2) or "ms"
    return n * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]


def http_paths():
    src = read("src", "httpd.c")
    return set(re.findall(r"strcmp\(target, \"(/[a-z]+)\"\)", src))


def daemon_binary():
    for cand in [os.environ.get("DSW_BIN"), os.path.join(ROOT, "build", "dagster-sqs-worker"),
                 os.path.join(ROOT, "build-release", "dagster-sqs-worker"),
                 shutil.which("dagster-sqs-worker")]:
        if cand and os.access(cand, os.X_OK):
            return cand
    return None


# ---- a small kustomize ---------------------------------------------------------------------


def load_all(path):
    with open(path, encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def env_file(path):
    out = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line and not line.startswith("#"):
                k, _, v = line.partition("=")
                out[k] = v
    return out


def path_get(obj, field_path):
    for part in field_path.split("."):
        m = re.fullmatch(r"\[(\w+)=(.*)\]", part)
        if m:
            obj = next(x for x in obj if x.get(m.group(1)) == m.group(2))
        elif isinstance(obj, list):
            obj = obj[int(part)]
        else:
            obj = obj[part]
    return obj


def path_set(obj, field_path, value):
    parts = field_path.split(".")
    parent = path_get(obj, ".".join(parts[:-1])) if len(parts) > 1 else obj
    last = parts[-1]
    if isinstance(parent, list):
        parent[int(last)] = value
    else:
        assert last in parent, f"{field_path}: no such field to replace"
        parent[last] = value


def render(kdir=KDIR):
    k = yaml.safe_load(open(os.path.join(kdir, "kustomization.yaml"), encoding="utf-8"))
    assert k["kind"] == "Kustomization"
    docs = []
    for r in k.get("resources", []):
        docs += load_all(os.path.join(kdir, r))
    for kind, key in (("ConfigMap", "configMapGenerator"), ("Secret", "secretGenerator")):
        for g in k.get(key, []):
            data = {}
            for e in g.get("envs", []):
                data.update(env_file(os.path.join(kdir, e)))
            for fname in g.get("files", []):
                data[os.path.basename(fname)] = open(os.path.join(kdir, fname), encoding="utf-8").read()
            doc = {"apiVersion": "v1", "kind": kind, "metadata": {"name": g["name"]}}
            doc["stringData" if kind == "Secret" else "data"] = data
            docs.append(doc)
    for rep in k.get("replacements", []):
        src = rep["source"]
        sdoc = next(d for d in docs if d["kind"] == src["kind"] and d["metadata"]["name"] == src["name"])
        value = path_get(sdoc, src["fieldPath"])
        if "options" in src:
            value = value.split(src["options"]["delimiter"])[src["options"]["index"]]
        for t in rep["targets"]:
            sel = t["select"]
            for d in docs:
                if d["kind"] == sel["kind"] and d["metadata"]["name"] == sel["name"]:
                    for fp in t["fieldPaths"]:
                        path_set(d, fp, value)
    for d in docs:
        if "namespace" in k:
            d["metadata"]["namespace"] = k["namespace"]
        for c in pod_spec(d).get("containers", []) if pod_spec(d) else []:
            for img in k.get("images", []):
                if c["image"].split(":")[0] == img["name"]:
                    c["image"] = f"{img.get('newName', img['name'])}:{img.get('newTag', 'latest')}"
    return docs


def pod_spec(doc):
    if doc.get("kind") in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
        return doc["spec"]["template"]["spec"]
    return None


def one(docs, kind, name=None):
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"{len(found)} {kind} {name or ''}"
    return found[0]


@pytest.fixture(scope="module")
def docs():
    return render()


@pytest.fixture(scope="module")
def deployment(docs):
    return one(docs, "Deployment")


@pytest.fixture(scope="module")
def worker(deployment):
    cs = pod_spec(deployment)["containers"]
    assert len(cs) == 1
    return cs[0]


def container_env(docs, container):
    """The container's environment as the kubelet builds it: envFrom, then env with $(VAR)."""
    env = {}
    for ef in container.get("envFrom", []):
        if "configMapRef" in ef:
            env.update(one(docs, "ConfigMap", ef["configMapRef"]["name"])["data"])
        if "secretRef" in ef:
            env.update(one(docs, "Secret", ef["secretRef"]["name"])["stringData"])
    for e in container.get("env", []):
        if "value" in e:
            env[e["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), e["value"])
        else:
            ref = e["valueFrom"]["secretKeyRef"]
            env[e["name"]] = one(docs, "Secret", ref["name"])["stringData"][ref["key"]]
    return env


# ---- every manifest ------------------------------------------------------------------------


def test_every_manifest_parses_and_is_listed():
    k = yaml.safe_load(open(os.path.join(KDIR, "kustomization.yaml"), encoding="utf-8"))
    listed = set(k["resources"])
    for fname in sorted(os.listdir(KDIR)):
        if not fname.endswith((".yaml", ".yml")) or fname in ("kustomization.yaml", "dagster.yaml"):
            continue
        assert fname in listed, f"{fname} is not in kustomization.yaml's resources"
        for d in load_all(os.path.join(KDIR, fname)):
            assert d.get("apiVersion") and d.get("kind") and d["metadata"].get("name"), fname
    for gen in k.get("configMapGenerator", []) + k.get("secretGenerator", []):
        for f in gen.get("envs", []) + gen.get("files", []):
            assert os.path.isfile(os.path.join(KDIR, f)), f


def test_references_resolve(docs, deployment, worker):
    spec = pod_spec(deployment)
    one(docs, "ServiceAccount", spec["serviceAccountName"])
    for ef in worker.get("envFrom", []):
        one(docs, "ConfigMap" if "configMapRef" in ef else "Secret",
            (ef.get("configMapRef") or ef.get("secretRef"))["name"])
    for v in spec.get("volumes", []):
        if "configMap" in v:
            one(docs, "ConfigMap", v["configMap"]["name"])
    mounts = {m["name"] for m in worker.get("volumeMounts", [])}
    assert mounts == {v["name"] for v in spec.get("volumes", [])}
    so = one(docs, "ScaledObject")
    assert so["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    for t in so["spec"]["triggers"]:
        one(docs, "TriggerAuthentication", t["authenticationRef"]["name"])


def test_env_names_are_the_daemons(docs, worker):
    keys = conf_keys()
    env = container_env(docs, worker)
    dsw = sorted(n for n in env if n.startswith("DSW_"))
    assert "DSW_QUEUE_URL" in dsw and "DSW_POSTGRES_CONNINFO" in dsw
    unknown = [n for n in dsw if not env_name_ok(n, keys)]
    assert not unknown, f"not in src/conf.c's key table: {unknown}"
    # The password never in the conninfo (the daemon refuses it), only in the Secret.
    assert "password" not in env["DSW_POSTGRES_CONNINFO"]
    assert "$(" not in env["DSW_POSTGRES_CONNINFO"], "a $(VAR) in the conninfo is not defined before it"


def test_the_daemon_accepts_the_configuration(docs, worker):
    binary = daemon_binary()
    if not binary:
        pytest.skip("no built dagster-sqs-worker (set DSW_BIN)")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DSW_", "DAGSTER_", "AWS_"))}
    env.update(container_env(docs, worker))
    p = subprocess.run([binary, "check-config"], env=env, capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    assert "not a configuration variable" not in p.stderr, p.stderr
    effective = dict(re.findall(r"^(\w+) = (.*)$", p.stdout, re.M))
    assert effective.get("max_concurrent") == env["DSW_RUNS_MAX_CONCURRENT"]
    assert effective.get("listen") == env["DSW_HTTP_LISTEN"]


def drain_bound_s(env):
    keys = conf_keys()
    drain = env.get("DSW_RUNS_DRAIN_TIMEOUT", keys[("runs", "drain_timeout")])
    kill = env.get("DSW_RUNS_KILL_GRACE", keys[("runs", "kill_grace")])
    return seconds(drain) + seconds(kill)


def test_grace_period_covers_the_drain(docs, deployment, worker):
    env = container_env(docs, worker)
    grace = pod_spec(deployment)["terminationGracePeriodSeconds"]
    assert grace >= drain_bound_s(env) + MARGIN_S, (grace, drain_bound_s(env))
    # The systemd unit's bound is the same one.
    unit = read("systemd", "dagster-sqs-worker.service")
    stop = re.search(r"^TimeoutStopSec=(\d+)s?$", unit, re.M)
    assert stop and int(stop.group(1)) >= drain_bound_s({}) + MARGIN_S


def test_probes_and_port(docs, worker):
    env = container_env(docs, worker)
    listen = env["DSW_HTTP_LISTEN"]
    host, _, port = listen.rpartition(":")
    assert host in ("0.0.0.0", "[::]", "::"), "probes cannot reach a loopback-only listener"
    ports = {p["name"]: p["containerPort"] for p in worker["ports"]}
    served = http_paths()
    assert {"/healthz", "/readyz", "/metrics"} <= served, served
    want = {"startupProbe": "/healthz", "livenessProbe": "/healthz", "readinessProbe": "/readyz"}
    for probe, path in want.items():
        get = worker[probe]["httpGet"]
        assert get["path"] == path and get["path"] in served
        assert ports.get(get["port"], get["port"]) == int(port), probe
    # Liveness must not kill a pod that is merely draining or waiting for Postgres: /healthz
    # only says the loop answers; readiness carries the rest.
    assert worker["livenessProbe"]["httpGet"]["path"] != "/readyz"


def test_hardening(deployment, worker):
    spec = pod_spec(deployment)
    psc, csc = spec["securityContext"], worker["securityContext"]
    assert psc["runAsNonRoot"] is True
    # The image's user (Containerfile USER 10001:10001).
    user = re.search(r"^USER (\d+):(\d+)$", read("Containerfile"), re.M)
    assert (psc["runAsUser"], psc["runAsGroup"]) == (int(user.group(1)), int(user.group(2)))
    assert psc["seccompProfile"]["type"] == "RuntimeDefault"
    assert csc["readOnlyRootFilesystem"] is True
    assert csc["allowPrivilegeEscalation"] is False
    assert csc.get("privileged", False) is False
    assert csc["capabilities"]["drop"] == ["ALL"] and not csc["capabilities"].get("add")
    assert spec.get("hostNetwork", False) is False and spec.get("hostPID", False) is False
    # A read-only root needs writable /tmp and HOME.
    mounts = {m["mountPath"] for m in worker["volumeMounts"]}
    assert {"/tmp", "/var/lib/dagster-sqs-worker"} <= mounts
    res = worker["resources"]
    assert res["requests"]["cpu"] and res["requests"]["memory"] and res["limits"]["memory"]


def test_dagster_home_and_command_match_the_example_image(docs, worker):
    env = container_env(docs, worker)
    example = read("deploy", "examples", "Containerfile.dagster")
    for name in ("DSW_RUNS_COMMAND", "DSW_RUNS_DAGSTER_HOME"):
        m = re.search(rf"{name}=(\S+)", example)
        assert m and m.group(1).rstrip("\\").strip() == env[name], name
    mounts = {m["mountPath"]: m for m in worker["volumeMounts"]}
    yaml_mount = mounts[env["DSW_RUNS_DAGSTER_HOME"] + "/dagster.yaml"]
    assert yaml_mount["subPath"] == "dagster.yaml"
    assert read("deploy", "kubernetes", "dagster.yaml") == read("deploy", "examples", "dagster", "dagster.yaml")
    # dagster.yaml's variables reach the run worker: defined, and passed through (DAGSTER_*).
    for var in re.findall(r"env: (\w+)", read("deploy", "kubernetes", "dagster.yaml")):
        assert var in env, var
        assert var.startswith("DAGSTER_")


def test_keda_scales_on_the_daemons_queue(docs, worker):
    env = container_env(docs, worker)
    so = one(docs, "ScaledObject")
    (trigger,) = so["spec"]["triggers"]
    assert trigger["type"] == "aws-sqs-queue"
    meta = trigger["metadata"]
    assert meta["queueURL"] == env["DSW_QUEUE_URL"]
    region = re.match(r"https://sqs\.([a-z0-9-]+)\.amazonaws\.com/", env["DSW_QUEUE_URL"]).group(1)
    assert meta["awsRegion"] == region
    assert meta["queueLength"] == env["DSW_RUNS_MAX_CONCURRENT"], "queueLength must be the slots per pod"
    assert meta.get("scaleOnInFlight", "true") == "true", "running runs must count"
    spec = so["spec"]
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
    auth = one(docs, "TriggerAuthentication")
    assert auth["spec"]["podIdentity"]["provider"] == "aws"


def test_service_account_for_irsa(docs, deployment):
    sa = one(docs, "ServiceAccount", pod_spec(deployment)["serviceAccountName"])
    assert re.fullmatch(r"arn:aws:iam::\d{12}:role/[\w+=,.@/-]+", sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"])


def test_image_is_set_in_one_place(deployment, worker):
    k = yaml.safe_load(open(os.path.join(KDIR, "kustomization.yaml"), encoding="utf-8"))
    (img,) = k["images"]
    raw = load_all(os.path.join(KDIR, "deployment.yaml"))[0]
    assert pod_spec(raw)["containers"][0]["image"] == img["name"]
    assert worker["image"] == f"{img['newName']}:{img['newTag']}"


# ---- the Containerfiles ---------------------------------------------------------------------


def stages(text):
    return re.split(r"^FROM ", text, flags=re.M)[1:]


def test_containerfile():
    cf = read("Containerfile")
    build, runtime = stages(cf)
    assert re.search(r"^ARG BASE=debian:12$", cf, re.M), "BASE defaults to debian:12"
    assert re.search(r"^STOPSIGNAL SIGTERM$", runtime, re.M)
    assert re.search(r"^HEALTHCHECK .*\n?.*/healthz", runtime, re.M)
    assert re.search(r'^ENTRYPOINT \["/usr/bin/dagster-sqs-worker"\]$', runtime, re.M)
    assert re.search(r"^USER 10001:10001$", runtime, re.M)
    assert "DSW_FAILPOINTS=OFF" in build, "the image is the shipped configuration"
    # Every library's -dev package the build needs (scripts/deps.sh, minus test-only ones) is
    # in the build stage, and none in the runtime stage.
    deps = read("scripts", "deps.sh")
    dev = set(re.findall(r"\b(lib[\w.+-]+-dev|zlib1g-dev)\b", deps)) - {"libcmocka-dev", "libclang-rt-14-dev"}
    assert dev and all(d in build for d in dev), sorted(d for d in dev if d not in build)
    assert not re.search(r"\S+-dev\b", runtime.split("ENTRYPOINT")[0].replace("/dev/null", ""))
    assert read(".containerignore") == read(".dockerignore")


REGISTRY = re.compile(r"\b(?:docker\.io|quay\.io|gcr\.io|ghcr\.io|[a-z0-9-]+\.azurecr\.io|"
                      r"[0-9]+\.dkr\.ecr\.[a-z0-9-]+\.amazonaws\.com|registry\.[a-z0-9.-]+)\b")


def test_no_registry_host_names():
    files = ["Containerfile", "tests/deploy/Containerfile.test", "deploy/examples/Containerfile.dagster"]
    files += [os.path.join("deploy", "kubernetes", f) for f in os.listdir(KDIR)]
    for f in files:
        text = read(f)
        assert not REGISTRY.search(text), f"{f}: {REGISTRY.search(text).group(0)}"
        for m in re.finditer(r"^(?:FROM|ARG \w*(?:BASE|IMAGE)\w*=)\s*(\S+)", text, re.M):
            ref = m.group(1)
            first = ref.split("/")[0]
            assert ref.startswith("$") or "/" not in ref or not re.search(r"[.:]", first), f"{f}: {ref}"
    docs = render()
    for d in docs:
        for c in (pod_spec(d) or {}).get("containers", []):
            assert "." not in c["image"].split("/")[0] or "/" not in c["image"], c["image"]


def test_local_dagster_variant_is_the_example():
    """tests/deploy/container_dagster.sh runs the example through Containerfile.dagster-local
    (Dagster from a source tree, no package index): from the code location on, it must be the
    example's own text, so that what runs there is what the example tells users to build."""
    mark = "# The code location and the instance"
    example = read("deploy", "examples", "Containerfile.dagster")
    local = read("tests", "deploy", "Containerfile.dagster-local")
    assert mark in example and mark in local
    assert local[local.index(mark):] == example[example.index(mark):]
    # The example's venv paths are what the local variant provides.
    assert "/opt/venv/bin/dagster" in local and "/opt/venv/bin/python" in local
