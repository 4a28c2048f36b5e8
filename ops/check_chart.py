"""Renders charts/pumphouse with real helm for several value sets and checks what comes out.

Run by ops/check-chart.sh, which then validates the written manifests against Kubernetes'
schemas with kubernetes-validate. For each value set, `helm lint` and `helm template` run;
this script then checks what schemas cannot: that the objects refer to each other correctly
(Secret keys, ServiceAccount, selectors), that the Role grants exactly the verbs the Kubernetes
backend uses in the pumps' namespace only, that no secret value lands in a ConfigMap, and the
ServiceMonitor (a CRD, so outside the schemas). Installing, upgrading and rolling back on a
real API server is tests/e2e/kubernetes.rs.

Usage: check_chart.py HELM CHART_DIR OUT_DIR   (writes OUT_DIR/<value set>/<n>-<kind>-<name>.yaml)
"""

import json
import os
import re
import subprocess
import sys
import tempfile

import yaml

# What orchestrator/src/backend/kubernetes.rs does, by resource: keep in step with it.
BACKEND_VERBS = {
    ("apps", "deployments"): {"get", "list", "create", "patch", "delete"},
    ("", "secrets"): {"create", "patch", "delete"},
    ("", "pods"): {"list", "watch"},
    ("", "pods/log"): {"get"},
}
# Labels the backend puts on every pump (backend::labels).
PUMP_LABELS = {"app.kubernetes.io/managed-by": "pumphouse"}

VALUE_SETS = {
    "defaults": {},
    "production": {
        "replicaCount": 2,
        "image": {"tag": "1.0.0"},
        "imagePullSecrets": [{"name": "registry"}],
        "config": {
            "cluster": "prod",
            "publicUrl": "https://hooks.example.com",
            "pumpImage": "registry.example.com/pump:1.0.0",
            "extra": {"PUMPHOUSE_START_TIMEOUT": "90s", "PUMPHOUSE_CRASH_LIMIT": 3},
        },
        "pumps": {
            "namespace": "pumps",
            "imagePullSecret": "registry",
            "networkPolicy": {
                "redis": {
                    "peers": [{"ipBlock": {"cidr": "10.1.2.3/32"}}],
                    "port": 6380,
                },
                "extraEgress": [
                    {"to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8"]}}],
                     "ports": [{"port": 443, "protocol": "TCP"}]},
                ],
            },
        },
        "secrets": {
            "storeUrl": "postgres://pumphouse:db-password@postgres/pumphouse",
            "redisUrl": "redis://:redis-password@redis:6379",
            "pumpRedisUrl": "redis://redis.internal:6379",
            "apiToken": "api-token-value",
            "metricsToken": "metrics-token-value",
            "masterKey": "bWFzdGVyLWtleS1tYXN0ZXIta2V5LW1hc3Rlci1rZXk=",
        },
        "serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "pumphouse",
                         "effect": "NoSchedule"}],
    },
    "existing-secret": {
        "fullnameOverride": "ph",
        "serviceAccount": {"create": False, "name": "pumphouse-sa"},
        "secrets": {"existingSecret": "pumphouse-secrets"},
        "pumps": {"networkPolicy": {"enabled": False}},
        "podDisruptionBudget": {"enabled": False},
    },
}
SECRET_VALUES = ["db-password", "redis-password", "api-token-value", "metrics-token-value",
                 "bWFzdGVyLWtleS1t"]
# Value sets the chart must refuse, with what its message must say.
REFUSED_SETS = {
    "servicemonitor-without-metrics-token": (
        {"serviceMonitor": {"enabled": True}}, "secrets.metricsToken"),
}


def known_settings():
    """Every PUMPHOUSE_* variable `pumphouse serve` reads: a name the chart sets that the
    server does not read is a setting silently lost (the admin token was, once)."""
    src = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "orchestrator", "src", "cli.rs")
    with open(src) as f:
        names = set(re.findall(r'env = "(PUMPHOUSE_[A-Z_]+)"', f.read()))
    check(names, f"no env = \"PUMPHOUSE_...\" settings found in {src}")
    # Read with std::env::var, not clap: it has no flag, being a key.
    return names | {"PUMPHOUSE_MASTER_KEY"}


class CheckError(Exception):
    pass


def check(cond, what):
    if not cond:
        raise CheckError(what)


def by_kind(docs, kind):
    return [d for d in docs if d["kind"] == kind]


def one(docs, kind):
    found = by_kind(docs, kind)
    check(len(found) == 1, f"expected one {kind}, found {len(found)}")
    return found[0]


def check_set(name, values, docs, release_ns):
    pumps_ns = values["pumps"]["namespace"] or release_ns
    for d in docs:
        check(d.get("apiVersion") and d.get("kind"), f"an object without apiVersion/kind: {d}")
        check(d["metadata"].get("name"), f"{d['kind']} without a name")
        check(d["metadata"].get("namespace"), f"{d['kind']} {d['metadata']['name']} without a namespace")

    dep = one(docs, "Deployment")
    pod = dep["spec"]["template"]
    check(dep["spec"]["replicas"] == values["replicaCount"], "replicas follow replicaCount")
    sel = dep["spec"]["selector"]["matchLabels"]
    check(sel.items() <= pod["metadata"]["labels"].items(), "the selector matches the pod's labels")
    c = pod["spec"]["containers"][0]
    check(c["livenessProbe"]["httpGet"]["path"] == "/healthz", "liveness probe on /healthz")
    check(c["readinessProbe"]["httpGet"]["path"] == "/readyz", "readiness probe on /readyz")
    check(c["securityContext"]["readOnlyRootFilesystem"] is True, "read-only root filesystem")
    check(c["securityContext"]["capabilities"]["drop"] == ["ALL"], "capabilities dropped")
    check(pod["spec"]["securityContext"]["runAsNonRoot"] is True, "non-root")

    cm = one(docs, "ConfigMap")
    check(c["envFrom"][0]["configMapRef"]["name"] == cm["metadata"]["name"], "env from the ConfigMap")
    check(cm["data"]["PUMPHOUSE_BACKEND"] == "kubernetes", "the kubernetes backend is selected")
    check(cm["data"]["PUMPHOUSE_KUBE_NAMESPACE"] == pumps_ns, "pumps go to the pumps' namespace")
    check(all(isinstance(v, str) for v in cm["data"].values()), "ConfigMap values are strings")
    cm_text = yaml.safe_dump(cm)
    for secret in SECRET_VALUES:
        check(secret not in cm_text, "a secret value is in the ConfigMap")
    check(secret_free(dep, SECRET_VALUES), "a secret value is in the Deployment")
    known = known_settings()
    for var in [e["name"] for e in c["env"]] + list(cm["data"]):
        check(not var.startswith("PUMPHOUSE_") or var in known,
              f"the chart sets {var}, which pumphouse serve does not read")
    check(not any(a.startswith("--") for a in c.get("args", [])), "settings go in variables, not arguments (ps shows those)")

    secret_name = values["secrets"]["existingSecret"]
    secrets = by_kind(docs, "Secret")
    if secret_name:
        check(not secrets, "no Secret is made when existingSecret is given")
    else:
        s = one(docs, "Secret")
        secret_name = s["metadata"]["name"]
        for key in ("store-url", "redis-url"):
            check(key in s["data"], f"the Secret holds {key}")
    refs = [e["valueFrom"]["secretKeyRef"] for e in c["env"] if "secretKeyRef" in e.get("valueFrom", {})]
    check(refs and all(r["name"] == secret_name for r in refs), "env refers to the chart's Secret")
    if not values["secrets"]["existingSecret"]:
        made = set(one(docs, "Secret")["data"])
        for r in refs:
            check(r["key"] in made or r.get("optional"), f"env needs key {r['key']} the Secret lacks")

    sa_name = values["serviceAccount"]["name"] or dep["metadata"]["name"]
    check(pod["spec"]["serviceAccountName"] == sa_name, "the pod runs as the ServiceAccount")
    check(bool(by_kind(docs, "ServiceAccount")) == values["serviceAccount"]["create"], "ServiceAccount made only when asked")

    role = one(docs, "Role")
    check(role["metadata"]["namespace"] == pumps_ns, "the Role lives in the pumps' namespace")
    granted = {}
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            for res in rule["resources"]:
                granted.setdefault((group, res), set()).update(rule["verbs"])
    check(granted == BACKEND_VERBS, f"the Role grants {granted}, the backend uses {BACKEND_VERBS}")
    check(not by_kind(docs, "ClusterRole") and not by_kind(docs, "ClusterRoleBinding"), "no cluster-wide RBAC")
    rb = one(docs, "RoleBinding")
    check(rb["metadata"]["namespace"] == pumps_ns, "the RoleBinding lives in the pumps' namespace")
    check(rb["roleRef"]["name"] == role["metadata"]["name"], "the RoleBinding binds the Role")
    check(rb["subjects"] == [{"kind": "ServiceAccount", "name": sa_name, "namespace": release_ns}],
          "the RoleBinding binds the orchestrator's ServiceAccount")

    svc = one(docs, "Service")
    check(svc["spec"]["selector"].items() <= pod["metadata"]["labels"].items(), "the Service selects the pods")
    check(svc["spec"]["ports"][0]["targetPort"] == c["ports"][0]["name"], "the Service reaches the http port")

    nps = by_kind(docs, "NetworkPolicy")
    if values["pumps"]["networkPolicy"]["enabled"]:
        np = one(docs, "NetworkPolicy")
        check(np["metadata"]["namespace"] == pumps_ns, "the NetworkPolicy lives in the pumps' namespace")
        want = dict(PUMP_LABELS, **{"pumphouse.dev/cluster": values["config"]["cluster"]})
        check(np["spec"]["podSelector"]["matchLabels"] == want, "the NetworkPolicy selects this installation's pumps")
        check(np["spec"]["policyTypes"] == ["Ingress", "Egress"], "the policy covers both directions")
        check(np["spec"]["ingress"] == [], "pumps take no connections")
        redis_port = values["pumps"]["networkPolicy"]["redis"]["port"]
        check(any(p["port"] == redis_port for rule in np["spec"]["egress"] for p in rule.get("ports", [])),
              "pumps may reach Redis")
        check(len(np["spec"]["egress"]) == 2 + len(values["pumps"]["networkPolicy"]["extraEgress"]),
              "egress is DNS, Redis and extraEgress, nothing more")
    else:
        check(not nps, "no NetworkPolicy when disabled")

    pdbs = by_kind(docs, "PodDisruptionBudget")
    check(bool(pdbs) == values["podDisruptionBudget"]["enabled"], "PodDisruptionBudget only when enabled")
    for pdb in pdbs:
        check(pdb["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items(), "the PDB selects the pods")

    sms = by_kind(docs, "ServiceMonitor")
    check(bool(sms) == values["serviceMonitor"]["enabled"], "ServiceMonitor only when enabled")
    for sm in sms:
        check(sm["apiVersion"] == "monitoring.coreos.com/v1", "ServiceMonitor's apiVersion")
        check(sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items(), "the ServiceMonitor selects the Service")
        ep = sm["spec"]["endpoints"][0]
        check(ep["port"] == svc["spec"]["ports"][0]["name"] and ep["path"] == "/metrics", "it scrapes /metrics on the http port")
        auth = ep.get("authorization", {})
        check(auth.get("type") == "Bearer" and auth.get("credentials") == {"name": secret_name, "key": "metrics-token"},
              "it scrapes with the Secret's metrics-token")
        served = [e for e in c["env"] if e["name"] == "PUMPHOUSE_METRICS_TOKEN"]
        check(served and served[0]["valueFrom"]["secretKeyRef"]["key"] == "metrics-token"
              and served[0]["valueFrom"]["secretKeyRef"]["name"] == secret_name,
              "the server takes the metrics token the ServiceMonitor sends")
        if not values["secrets"]["existingSecret"]:
            check("metrics-token" in one(docs, "Secret")["data"], "the Secret holds the metrics token")
        check(values["serviceMonitor"]["labels"].items() <= sm["metadata"]["labels"].items(), "it carries the labels Prometheus selects by")


def secret_free(obj, secrets):
    text = yaml.safe_dump(obj)
    return not any(s in text for s in secrets)


def merge(base, override):
    """Values as helm merges them: maps deeply, everything else replaced."""
    out = dict(base)
    for k, v in override.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def helm(helm_bin, *args):
    """Runs helm; (ok, stdout, stderr)."""
    p = subprocess.run([helm_bin, *args], capture_output=True, text=True)
    return p.returncode == 0, p.stdout, p.stderr


def main():
    helm_bin, chart_dir, out_dir = sys.argv[1], sys.argv[2], sys.argv[3]
    with open(os.path.join(chart_dir, "values.yaml")) as f:
        defaults = yaml.safe_load(f)
    release_ns = "pumphouse"
    total = 0
    tmp = tempfile.mkdtemp(prefix="check-chart-")

    def values_file(name, override):
        path = os.path.join(tmp, f"{name}.json")
        with open(path, "w") as f:
            json.dump(override, f)
        return path

    for name, override in VALUE_SETS.items():
        values = merge(defaults, override)
        vf = values_file(name, override)
        ok, out, err = helm(helm_bin, "lint", "--strict", chart_dir, "-f", vf)
        check(ok, f"{name}: helm lint --strict failed:\n{out}{err}")
        ok, out, err = helm(helm_bin, "template", "pumphouse", chart_dir, "--namespace", release_ns, "-f", vf)
        check(ok, f"{name}: helm template failed:\n{err}")
        docs = [d for d in yaml.safe_load_all(out) if d is not None]
        check_set(name, values, docs, release_ns)
        target = os.path.join(out_dir, name)
        os.makedirs(target, exist_ok=True)
        for i, doc in enumerate(docs):
            # CRDs have no schema in kubernetes-validate; check_set checked the ServiceMonitor.
            if doc["kind"] == "ServiceMonitor":
                continue
            path = os.path.join(target, f"{i:02d}-{doc['kind'].lower()}-{doc['metadata']['name']}.yaml")
            with open(path, "w") as f:
                yaml.safe_dump(doc, f, sort_keys=False)
            total += 1
        print(f"check_chart.py: {name}: helm lint clean; {len(docs)} objects rendered and cross-checked")
    for name, (override, says) in REFUSED_SETS.items():
        ok, _, err = helm(helm_bin, "template", "pumphouse", chart_dir, "--namespace", release_ns,
                          "-f", values_file(name, override))
        check(not ok, f"{name}: the chart rendered values it must refuse")
        check(says in err, f"{name}: refused, but the message does not name {says}: {err}")
        print(f"check_chart.py: {name}: refused as it should be")
    print(f"check_chart.py: {total} manifests written to {out_dir}")


if __name__ == "__main__":
    try:
        main()
    except CheckError as e:
        print(f"check_chart.py: {e}", file=sys.stderr)
        sys.exit(1)
