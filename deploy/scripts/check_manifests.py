#!/usr/bin/env python3
"""Cross-checks of k8s/, docker-compose.yml and the alerts that no schema validator makes.

    check_manifests.py [REPO_ROOT]

kubernetes-validate checks each object against the Kubernetes schemas; this checks that the
objects fit together and keep the promises of issue 7 and docs/OPERATIONS.md:
  - kustomization.yaml lists every manifest (but the Secret template);
  - the selectors of the Service, PDB, NetworkPolicy and ServiceMonitor match the pods, the
    ports they name exist, the HPA targets the Deployment;
  - the Deployment's rollout, probes, hardening, resources and shutdown timing;
  - the ConfigMap holds exactly the settings the service reads (src/settings.rs), the Secret
    template exactly the secret ones, with placeholder values only; docker-compose.yml sets
    no variable the service does not read;
  - every alert has a summary, a description, a severity and a runbook_url whose anchor is a
    heading of docs/OPERATIONS.md, and a unit test that sees it fire and sees it silent.
Prints one line per failed check; exits 1 if any failed.
"""
import pathlib
import re
import sys

import yaml

ROOT = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else ".").resolve()
K8S = ROOT / "k8s"
errors: list[str] = []
passed = 0


def check(ok: bool, message: str) -> bool:
    global passed
    if ok:
        passed += 1
    else:
        errors.append(message)
    return ok


def load_k8s() -> dict[str, dict]:
    objects: dict[str, dict] = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                doc["__file"] = path.name
                objects[doc["kind"]] = doc
    return objects


def subset(selector: dict, labels: dict) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


# Variables the service reads only for tests; a deployment must not set them.
TEST_ONLY_VARIABLES = {"SIDECAR_FAILPOINT"}


def settings_variables() -> tuple[set[str], set[str]]:
    """(every variable src/settings.rs reads, the ones it treats as secret)."""
    text = (ROOT / "src" / "settings.rs").read_text()
    calls = re.findall(r'env\.(\w+)\(\s*"([A-Z][A-Z0-9_]+)"', text)
    names = {n for _, n in calls}
    secrets = {n for m, n in calls if "secret" in m}
    # Test-only knobs (fault injection) must never be configured in a deployment.
    names -= TEST_ONLY_VARIABLES
    # Read outside settings.rs (the log filter of telemetry.rs).
    for extra in ("RUST_LOG",):
        if any(f'"{extra}"' in p.read_text() for p in (ROOT / "src").rglob("*.rs")):
            names.add(extra)
    return names, secrets


def github_anchor(heading: str) -> str:
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def main() -> int:
    objs = load_k8s()
    for kind in ("Deployment", "Service", "ConfigMap", "Secret", "HorizontalPodAutoscaler",
                 "PodDisruptionBudget", "NetworkPolicy", "ServiceMonitor", "PrometheusRule",
                 "ServiceAccount", "Kustomization"):
        check(kind in objs, f"k8s/: no {kind}")
    if errors:
        return report()

    # kustomization: every manifest but the Secret template, and nothing missing.
    kust = objs["Kustomization"]
    listed = set(kust.get("resources", []))
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    secret_file = objs["Secret"]["__file"]
    check(secret_file not in listed, f"kustomization.yaml lists the Secret template {secret_file}: applying it would overwrite the real Secret")
    for f in sorted(files - listed - {secret_file}):
        check(False, f"kustomization.yaml does not list {f}")
    for f in sorted(listed - files):
        check(False, f"kustomization.yaml lists {f}, which does not exist")

    dep = objs["Deployment"]
    spec = dep["spec"]
    pod = spec["template"]["spec"]
    pod_labels = spec["template"]["metadata"]["labels"]
    containers = {c["name"]: c for c in pod["containers"]}
    c = containers.get("sidecar")
    if not check(c is not None, "deployment.yaml: no container named sidecar (the restart alerts select it)"):
        return report()
    port_names = {p["name"]: p["containerPort"] for p in c.get("ports", [])}

    # Rollout.
    check(spec.get("replicas") == 3, "deployment: replicas is not 3")
    ru = spec.get("strategy", {}).get("rollingUpdate", {})
    check(spec.get("strategy", {}).get("type") == "RollingUpdate" and ru.get("maxUnavailable") in (0, "0", "0%"),
          "deployment: not a RollingUpdate with maxUnavailable 0")
    check(subset(spec["selector"]["matchLabels"], pod_labels), "deployment: selector does not match its pod labels")

    # Probes.
    def probe_path(name):
        return c.get(name, {}).get("httpGet", {}).get("path")

    def probe_port(name):
        return c.get(name, {}).get("httpGet", {}).get("port")

    check(probe_path("startupProbe") == "/health/live", "deployment: startupProbe is not GET /health/live")
    check(probe_path("livenessProbe") == "/health/live", "deployment: livenessProbe is not GET /health/live")
    check(probe_path("readinessProbe") == "/health/ready", "deployment: readinessProbe is not GET /health/ready")
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        check(probe_port(probe) in port_names or probe_port(probe) in port_names.values(),
              f"deployment: {probe} port {probe_port(probe)} is not a container port")

    # Hardening.
    psc = pod.get("securityContext", {})
    csc = c.get("securityContext", {})
    check(psc.get("runAsNonRoot") is True or csc.get("runAsNonRoot") is True, "deployment: runAsNonRoot is not set")
    check((psc.get("runAsUser") or csc.get("runAsUser") or 0) != 0, "deployment: runAsUser is root")
    check(csc.get("readOnlyRootFilesystem") is True, "deployment: readOnlyRootFilesystem is not true")
    check(csc.get("allowPrivilegeEscalation") is False, "deployment: allowPrivilegeEscalation is not false")
    check("ALL" in csc.get("capabilities", {}).get("drop", []), "deployment: capabilities do not drop ALL")
    check(not csc.get("capabilities", {}).get("add"), "deployment: adds capabilities")
    seccomp = (csc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
    check(seccomp == "RuntimeDefault", "deployment: seccompProfile is not RuntimeDefault")
    check(pod.get("automountServiceAccountToken") is False, "deployment: mounts a service account token")
    res = c.get("resources", {})
    for kind in ("requests", "limits"):
        for r in ("cpu", "memory"):
            check(r in res.get(kind, {}), f"deployment: resources.{kind}.{r} is not set")

    # Shutdown timing: grace period > preStop + SHUTDOWN_GRACE_SECONDS.
    cm = objs["ConfigMap"]["data"]
    pre = c.get("lifecycle", {}).get("preStop", {})
    pre_s = pre.get("sleep", {}).get("seconds")
    if pre_s is None and "exec" in pre:
        m = re.search(r"sleep\s+(\d+)", " ".join(pre["exec"].get("command", [])))
        pre_s = int(m.group(1)) if m else None
    if check(pre_s is not None and pre_s > 0, "deployment: no preStop pause before SIGTERM"):
        grace = float(cm.get("SHUTDOWN_GRACE_SECONDS", 20))
        tgps = pod.get("terminationGracePeriodSeconds", 30)
        check(tgps > pre_s + grace,
              f"deployment: terminationGracePeriodSeconds {tgps} is not above preStop {pre_s} + SHUTDOWN_GRACE_SECONDS {grace:g}")

    # Config and secrets.
    env_from = c.get("envFrom", [])
    cm_refs = {e["configMapRef"]["name"] for e in env_from if "configMapRef" in e}
    secret_refs = {e["secretRef"]["name"] for e in env_from if "secretRef" in e}
    check(objs["ConfigMap"]["metadata"]["name"] in cm_refs, "deployment: envFrom does not name the ConfigMap")
    check(objs["Secret"]["metadata"]["name"] in secret_refs, "deployment: envFrom does not name the Secret")
    names, secrets = settings_variables()
    check(len(names) > 30, f"src/settings.rs: found only {len(names)} variables; has its shape changed?")
    for n in sorted(names - secrets - set(cm)):
        check(False, f"configmap.yaml: missing {n} (read by src/settings.rs)")
    for n in sorted(set(cm) - (names - secrets)):
        check(False, f"configmap.yaml: {n} is " + ("a secret: it belongs in the Secret" if n in secrets else "not read by the service"))
    sdata = {**objs["Secret"].get("stringData", {}), **objs["Secret"].get("data", {})}
    check(set(sdata) == secrets, f"secret template keys {sorted(sdata)} differ from the secret settings {sorted(secrets)}")
    for k, v in sdata.items():
        check("CHANGE_ME" in str(v), f"{secret_file}: {k} is not a CHANGE_ME placeholder; never commit a real secret")

    # Service, PDB, NetworkPolicy, ServiceMonitor, HPA.
    svc = objs["Service"]
    check(subset(svc["spec"]["selector"], pod_labels), "service: selector does not match the pods")
    svc_ports = {p["name"]: p for p in svc["spec"]["ports"]}
    for p in svc_ports.values():
        check(p.get("targetPort") in port_names or p.get("targetPort") in port_names.values(),
              f"service: targetPort {p.get('targetPort')} is not a container port")
    check(subset(objs["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"], pod_labels),
          "pdb: selector does not match the pods")
    np = objs["NetworkPolicy"]["spec"]
    check(subset(np["podSelector"]["matchLabels"], pod_labels), "networkpolicy: podSelector does not match the pods")
    check(set(np.get("policyTypes", [])) == {"Ingress", "Egress"}, "networkpolicy: does not restrict both ingress and egress")
    http_port = port_names.get("http")
    for rule in np.get("ingress", []):
        for p in rule.get("ports", []):
            check(p.get("port") in (http_port, "http"), f"networkpolicy: ingress port {p.get('port')} is not the http port")
    egress_ports = {(p.get("protocol", "TCP"), p.get("port")) for r in np.get("egress", []) for p in r.get("ports", [])}
    check(("UDP", 53) in egress_ports, "networkpolicy: DNS (UDP 53) egress is not allowed")
    sm = objs["ServiceMonitor"]["spec"]
    check(subset(sm["selector"]["matchLabels"], svc["metadata"]["labels"]), "servicemonitor: selector does not match the Service")
    for ep in sm.get("endpoints", []):
        check(ep.get("port") in svc_ports, f"servicemonitor: port {ep.get('port')} is not a Service port name")
        check(ep.get("path", "/metrics") == "/metrics", "servicemonitor: path is not /metrics")
    hpa = objs["HorizontalPodAutoscaler"]["spec"]
    check(hpa["scaleTargetRef"]["kind"] == "Deployment" and hpa["scaleTargetRef"]["name"] == dep["metadata"]["name"],
          "hpa: does not target the Deployment")
    check(hpa.get("minReplicas", 1) >= 3, "hpa: minReplicas below the Deployment's 3")

    # Alerts: annotations, runbook anchors, unit tests.
    ops = ROOT / "docs" / "OPERATIONS.md"
    anchors = {github_anchor(m) for m in re.findall(r"^#{1,6}\s+(.+)$", ops.read_text(), re.M)} if ops.exists() else set()
    check(ops.exists(), "docs/OPERATIONS.md is missing")
    tests = yaml.safe_load((ROOT / "deploy" / "prometheus" / "alerts.test.yml").read_text())
    firing, silent = set(), set()
    for t in tests.get("tests", []):
        for a in t.get("alert_rule_test", []):
            (firing if a.get("exp_alerts") else silent).add(a["alertname"])
    for group in objs["PrometheusRule"]["spec"]["groups"]:
        for rule in group["rules"]:
            name = rule.get("alert")
            if not name:
                continue
            ann = rule.get("annotations", {})
            for key in ("summary", "description", "runbook_url"):
                check(bool(ann.get(key)), f"alert {name}: no {key} annotation")
            check(rule.get("labels", {}).get("severity") in ("critical", "warning", "info"), f"alert {name}: no severity label")
            url = ann.get("runbook_url", "")
            path, _, anchor = url.partition("#")
            check(path.endswith("docs/OPERATIONS.md") and anchor == name.lower(),
                  f"alert {name}: runbook_url {url!r} is not docs/OPERATIONS.md#{name.lower()}")
            check(anchor in anchors, f"alert {name}: docs/OPERATIONS.md has no heading for #{anchor}")
            check(name in firing, f"alert {name}: no unit test in alerts.test.yml where it fires")
            check(name in silent, f"alert {name}: no unit test in alerts.test.yml where it stays silent")

    # docker-compose.yml sets only variables the service reads.
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    env = compose["services"]["sidecar"].get("environment", {})
    env_names = set(env) if isinstance(env, dict) else {e.split("=", 1)[0] for e in env}
    for n in sorted(env_names - names):
        check(False, f"docker-compose.yml: sidecar sets {n}, which the service does not read")
    return report()


def report() -> int:
    for e in errors:
        print(f"  FAIL {e}")
    print(f"  {passed} cross-checks passed, {len(errors)} failed")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
