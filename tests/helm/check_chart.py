#!/usr/bin/env python3
"""Checks the Helm chart helm/locus and the image recipe helm/image.

For the default values and every value set in tests/helm/values/*.yaml:
  * `helm lint --strict` passes;
  * `helm template` renders, and every object validates against the Kubernetes API schemas
    (kubernetes-validate, strict: unknown fields are errors); the ServiceMonitor, a CRD outside
    those schemas, gets a structural check of its own;
  * no Secret is rendered, credentials come only through secretKeyRef, no token-like value
    appears anywhere;
  * the daemon's flags are accepted by the real binary (`locus daemon … --check-config`), with
    the Secret files it reads replaced by temporary files, and its settings are the ones asked
    for; the warm Job's flags parse (`locus warm …` fails to connect, not on usage);
  * what each value set is for is really there (privileged + Bidirectional only with the
    mount, the headless peers Service, the checksum annotation, probes, hooks, …).
Then the failure cases (values the chart must refuse) and the image's runtime needs (ldd of the
binary against what debian:bookworm-slim plus the Dockerfile's packages provide).
"""
import argparse
import base64
import copy
import glob
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

import yaml

try:
    import kubernetes_validate
except ImportError:  # pragma: no cover
    print("kubernetes-validate is missing: python3 -m pip install kubernetes-validate", file=sys.stderr)
    raise

NAMESPACE = "ml-infra"
RELEASE = "cache"
CRED_KEYS = ["HF_TOKEN", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_REGION", "AWS_ENDPOINT_URL"]
SENTINEL = "hf_SENTINELdoNotRenderMe0123456789abcdef"
TOKEN_LIKE = re.compile(r"hf_[A-Za-z0-9]{20,}|AKIA[0-9A-Z]{16}|-----BEGIN [A-Z ]*PRIVATE KEY-----")

failures = []
checks = 0


def check(cond, what):
    global checks
    checks += 1
    if not cond:
        failures.append(what)
        print(f"    FAIL {what}")
    return cond


def run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


class Chart:
    def __init__(self, helm, chart):
        self.helm = helm
        self.chart = chart

    def lint(self, values_files, sets=()):
        cmd = [self.helm, "lint", "--strict", self.chart]
        for f in values_files:
            cmd += ["-f", f]
        for s in sets:
            cmd += ["--set", s]
        return run(cmd)

    def template(self, values_files=(), sets=(), extra=()):
        cmd = [self.helm, "template", RELEASE, self.chart, "--namespace", NAMESPACE]
        for f in values_files:
            cmd += ["-f", f]
        for s in sets:
            cmd += ["--set", s]
        cmd += list(extra)
        p = run(cmd)
        objs = []
        if p.returncode == 0:
            objs = [d for d in yaml.safe_load_all(p.stdout) if d]
        return p, objs


def check_notes(chart, label, vfile, workdir):
    """NOTES.txt renders (helm template skips it): render it as a ConfigMap in a copy of the chart."""
    copy_dir = os.path.join(workdir, "notes-chart")
    if not os.path.isdir(copy_dir):
        shutil.copytree(chart.chart, copy_dir)
        shutil.copy(os.path.join(copy_dir, "templates", "NOTES.txt"), os.path.join(copy_dir, "notes.txt"))
        with open(os.path.join(copy_dir, "templates", "zz-notes-test.yaml"), "w") as f:
            f.write('apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes\ndata:\n'
                    '  notes: {{ tpl (.Files.Get "notes.txt") . | toJson }}\n')
    p = run([chart.helm, "template", RELEASE, copy_dir, "--namespace", NAMESPACE, "--show-only", "templates/zz-notes-test.yaml"]
            + (["-f", vfile] if vfile else []))
    ok = check(p.returncode == 0, f"{label}: NOTES.txt renders ({p.stderr.strip()[:200]})")
    if ok:
        notes = yaml.safe_load(p.stdout)["data"]["notes"]
        check("rollout status daemonset/" in notes and "<no value>" not in notes, f"{label}: NOTES.txt names the DaemonSet, no missing value")
        print(f"    NOTES.txt renders ({len(notes.splitlines())} lines)")


def find(objs, kind, name_suffix=None):
    return [o for o in objs if o.get("kind") == kind and (name_suffix is None or o["metadata"]["name"].endswith(name_suffix))]


def strings(x):
    """Every string in a nested structure."""
    if isinstance(x, str):
        yield x
    elif isinstance(x, dict):
        for k, v in x.items():
            yield from strings(k)
            yield from strings(v)
    elif isinstance(x, list):
        for v in x:
            yield from strings(v)


MIN_KUBERNETES = "1.32.0"


def validate_objects(objs, version):
    for o in objs:
        kind, name = o.get("kind"), o.get("metadata", {}).get("name")
        if o.get("apiVersion") == "cert-manager.io/v1":
            spec = o.get("spec", {})
            ok = (kind == "Certificate" and spec.get("secretName") and spec.get("dnsNames") and spec.get("issuerRef", {}).get("name")
                  and spec.get("issuerRef", {}).get("kind") in ("Issuer", "ClusterIssuer"))
            check(ok, f"{kind}/{name}: apiVersion/kind/spec.secretName/dnsNames/issuerRef (CRD, checked without the schema)")
            print(f"    {kind}/{name}: CRD cert-manager.io/v1, not in the Kubernetes schemas: structural check only")
            continue
        if o.get("apiVersion") == "monitoring.coreos.com/v1":
            # A CRD: not in the Kubernetes schemas. A structural check instead.
            spec = o.get("spec", {})
            ok = (
                kind == "ServiceMonitor"
                and isinstance(spec.get("endpoints"), list)
                and spec["endpoints"]
                and all(isinstance(e, dict) and (e.get("port") or e.get("targetPort")) for e in spec["endpoints"])
                and isinstance(spec.get("selector", {}).get("matchLabels"), dict)
                and spec["selector"]["matchLabels"]
            )
            check(ok, f"{kind}/{name}: apiVersion/kind/spec.endpoints/spec.selector (CRD, checked without the schema)")
            print(f"    {kind}/{name}: CRD monitoring.coreos.com/v1, not in the Kubernetes schemas: structural check only")
            continue
        try:
            kubernetes_validate.validate(o, version, strict=True)
            check(True, "")
        except Exception as e:  # ValidationError, SchemaNotFoundError
            check(False, f"{kind}/{name} does not validate against Kubernetes {version}: {str(e).splitlines()[0]}")


def daemon_container(ds):
    cs = ds["spec"]["template"]["spec"]["containers"]
    return next(c for c in cs if c["name"] == "locus")


def chart_makes_token(v):
    """Whether the chart makes the peer-token Secret itself (no token or TLS given, not insecure)."""
    p = v["peerAuth"]
    return not (p["token"]["existingSecret"] or p["tls"]["existingSecret"] or p["tls"]["certManager"]["issuerRef"]["name"] or p["insecure"])


def check_no_secrets(label, objs, v):
    """No credential is ever rendered. The one Secret allowed is the peer token the chart
    generates when none is given: 48 random characters, nothing else in it."""
    secrets = find(objs, "Secret")
    if chart_makes_token(v):
        if check(len(secrets) == 1 and secrets[0]["metadata"]["name"].endswith("-peer-token"),
                 f"{label}: exactly one Secret, the generated peer token ({[x['metadata']['name'] for x in secrets]})"):
            data = secrets[0].get("data", {})
            tok = base64.b64decode(data.get("token", "")).decode(errors="replace")
            check(list(data) == ["token"] and re.fullmatch(r"[A-Za-z0-9]{48}", tok) is not None and "stringData" not in secrets[0],
                  f"{label}: the generated Secret holds one 48-character random token")
        objs = [o for o in objs if o.get("kind") != "Secret"]
    else:
        check(not secrets, f"{label}: no Secret object is rendered")
    for s in strings(objs):
        if TOKEN_LIKE.search(s) or SENTINEL in s:
            check(False, f"{label}: a token-like value is rendered: {s[:40]}…")
    for ds in find(objs, "DaemonSet"):
        if ds["metadata"]["name"].endswith("-mounter"):
            continue
        for e in daemon_container(ds).get("env", []):
            if e["name"] in CRED_KEYS:
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                check("value" not in e and ref is not None, f"{label}: {e['name']} comes from a secretKeyRef, never a value")
                check(ref and ref.get("optional") is True and ref.get("key") == e["name"], f"{label}: {e['name']} secretKeyRef is optional with key {e['name']}")


def run_check_config(locus, label, ds, workdir):
    """`locus daemon ARGS --check-config` with the container's args; returns the settings."""
    c = daemon_container(ds)
    pod = ds["spec"]["template"]["spec"]
    check("command" not in c, f"{label}: the daemon container keeps the image's ENTRYPOINT (tini -- locus)")
    args = list(c["args"])
    check(args[:1] == ["daemon"], f"{label}: args start with the daemon subcommand")
    # Files from Secret volumes: replace the mount paths with temporary files.
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    path_map = {}
    for m in c.get("volumeMounts", []):
        v = volumes.get(m["name"], {})
        if "secret" not in v and not m["name"].startswith("file-root-"):
            continue
        d = os.path.join(workdir, label.replace("/", "_"), m["name"])
        os.makedirs(d, exist_ok=True)
        if "secret" in v:
            for item in v["secret"].get("items", []):
                with open(os.path.join(d, item["path"]), "w") as f:
                    if item["path"] in ("tls.crt", "tls.key", "ca.crt"):
                        f.write("-----BEGIN CERTIFICATE-----\nnot-a-real-certificate\n-----END CERTIFICATE-----\n")
                    elif item["path"] == "s3-gateway-key":
                        f.write("AKIDCHARTTEST:chart-test-secret\n")
                    else:
                        f.write("test-peer-token-0123456789abcdef\n")
        path_map[m["mountPath"]] = d
    env_plain = {e["name"]: e["value"] for e in c.get("env", []) if "value" in e}
    field_env = {e["name"] for e in c.get("env", []) if "fieldRef" in e.get("valueFrom", {})}

    def subst(a):
        # Kubernetes expands $(VAR) from the container's env; the downward API's POD_IP is an IP.
        a = re.sub(r"\$\((\w+)\)", lambda m: "127.0.0.1" if m.group(1) in field_env else env_plain.get(m.group(1), m.group(0)), a)
        for mp, d in sorted(path_map.items(), key=lambda kv: -len(kv[0])):
            if a == mp or a.startswith(mp + "/"):
                return d + a[len(mp):]
        return a

    real = [subst(a) for a in args]
    check(all("$(" not in a for a in real), f"{label}: every $(VAR) in args names a variable of the container")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": workdir}
    env.update({k: v for k, v in env_plain.items() if not k.startswith("LOCUS_") or k == "LOCUS_LOG"})
    p = run([locus] + real + ["--check-config"], env=env, timeout=60)
    ok = check(p.returncode == 0 and "config ok" in p.stdout.splitlines(),
               f"{label}: `locus {' '.join(real)} --check-config` exits 0 with 'config ok' (rc={p.returncode}: {p.stderr.strip()[:300]})")
    settings = {}
    if ok:
        for line in p.stdout.splitlines():
            k, sep, v = line.partition(" = ")
            if sep:
                settings[k] = v
        print(f"    daemon flags accepted by {os.path.basename(locus)} --check-config: {' '.join(args[1:])}")
    return settings


def run_warm(locus, label, job, workdir):
    pod = job["spec"]["template"]["spec"]
    c = next(c for c in pod["containers"] if c["name"] == "warm")
    check("command" not in c, f"{label}: the warm container keeps the image's ENTRYPOINT")
    args = list(c["args"])
    check(args[:1] == ["warm"], f"{label}: warm Job args start with the warm subcommand")
    sock_i = args.index("--socket") + 1 if "--socket" in args else None
    check(sock_i is not None and args[sock_i] == "/run/locus/locus.sock", f"{label}: warm Job uses the daemon's socket")
    missing = os.path.join(workdir, "no-daemon", "locus.sock")
    real = list(args)
    if sock_i is not None:
        real[sock_i] = missing
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": workdir}
    p = run([locus] + real, env=env, timeout=60)
    # A binary built before an origin existed refuses its URIs as "not available in this build";
    # that says nothing about the chart: leave those URIs out (loudly) and check the rest.
    while p.returncode == 2 and "origin is not available in this build" in p.stderr:
        m = re.search(r'invalid URI "([^"]+)"', p.stderr)
        if not m or m.group(1) not in real:
            break
        print(f"    NOTE {os.path.basename(locus)} was built without the origin of {m.group(1)} ({p.stderr.strip().splitlines()[0]}); "
              "checking the warm flags without that URI (rebuild the binary to check it too)")
        real.remove(m.group(1))
        p = run([locus] + real, env=env, timeout=60)
    check(p.returncode == 1 and "cannot reach the locus daemon" in p.stderr,
          f"{label}: `locus {' '.join(real)}` parses and fails only to connect (rc={p.returncode}: {p.stderr.strip()[:300]})")
    if p.returncode == 1:
        print(f"    warm Job flags parse (connection error without a daemon, not a usage error): {' '.join(args[1:])}")
    init = next((i for i in pod.get("initContainers", []) if i["name"] == "wait-for-daemon"), None)
    if check(init is not None, f"{label}: the warm Job waits for the node's daemon"):
        script = init["command"][-1]
        m = re.search(r"locus (status --socket \S+)", script)
        if check(m is not None, f"{label}: the wait runs `locus status --socket …`"):
            sargs = m.group(1).split()
            sargs[-1] = missing
            p = run([locus] + sargs, env=env, timeout=60)
            check(p.returncode == 1, f"{label}: `locus status --socket` parses (rc={p.returncode}: {p.stderr.strip()[:200]})")
    sock_vol = next(v for v in pod["volumes"] if v["name"] == "socket")
    return sock_vol["hostPath"]["path"]


def load_values(path):
    return yaml.safe_load(open(path)) if path else {}


def dig(d, *keys, default=None):
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return default
        d = d[k]
    return d


def check_value_set(chart, locus, version, label, vfile, workdir, defaults):
    print(f"== {label}")
    lint = chart.lint([vfile] if vfile else [])
    check(lint.returncode == 0, f"{label}: helm lint --strict ({lint.stdout.strip()[-300:]} {lint.stderr.strip()[-300:]})")
    print(f"    helm lint --strict: {'ok' if lint.returncode == 0 else 'FAILED'}")
    p, objs = chart.template([vfile] if vfile else [])
    if not check(p.returncode == 0, f"{label}: helm template renders ({p.stderr.strip()[:300]})"):
        return None
    print(f"    helm template: {', '.join(o['kind'] + '/' + o['metadata']['name'] for o in objs)}")
    check_notes(chart, label, vfile, workdir)
    # The newest schemas, and 1.32 (the oldest Kubernetes the chart promises: CSIDriver,
    # internalTrafficPolicy and the rest as it has them).
    for ver in dict.fromkeys([version, MIN_KUBERNETES]):
        validate_objects(objs, ver)
        print(f"    validated against the Kubernetes {ver} schemas (strict)")
    v = copy.deepcopy(defaults)

    def merge(a, b):
        for k, x in b.items():
            if isinstance(x, dict) and isinstance(a.get(k), dict):
                merge(a[k], x)
            else:
                a[k] = x
    merge(v, load_values(vfile))
    check_no_secrets(label, objs, v)

    for o in objs:
        check(o["metadata"].get("namespace", NAMESPACE) == NAMESPACE or o["kind"] == "ServiceMonitor",
              f"{label}: {o['kind']}/{o['metadata']['name']} is in the release namespace")

    dss = [d for d in find(objs, "DaemonSet") if not d["metadata"]["name"].endswith("-mounter")]
    if not check(len(dss) == 1, f"{label}: one DaemonSet"):
        return objs
    ds = dss[0]
    pod = ds["spec"]["template"]["spec"]
    c = daemon_container(ds)
    ann = ds["spec"]["template"]["metadata"].get("annotations", {})
    vols = {x["name"]: x for x in pod.get("volumes", [])}
    mounts = {x["name"]: x for x in c.get("volumeMounts", [])}
    args = c["args"]

    def flag(name):
        return args[args.index(name) + 1] if name in args else None

    # Settings the binary sees.
    s = run_check_config(locus, label, ds, workdir)

    # Cache, socket, metrics, probes, termination, updates.
    check(vols["cache"]["hostPath"] == {"path": v["cache"]["hostPath"], "type": "DirectoryOrCreate"}, f"{label}: cache on hostPath {v['cache']['hostPath']}")
    check(flag("--cache-dir") == mounts["cache"]["mountPath"], f"{label}: --cache-dir is the cache volume's mount path")
    check(flag("--cache-size") == str(v["cache"]["size"]), f"{label}: --cache-size {v['cache']['size']}")
    check(vols["socket"]["hostPath"]["path"] == v["socket"]["hostPath"], f"{label}: socket directory on hostPath {v['socket']['hostPath']}")
    check(flag("--socket") == mounts["socket"]["mountPath"] + "/locus.sock", f"{label}: --socket inside the socket volume")
    mport = v["metrics"]["port"]
    check(flag("--metrics") == f"0.0.0.0:{mport}", f"{label}: --metrics 0.0.0.0:{mport}")
    if s:
        check(s.get("metrics") == f"0.0.0.0:{mport}", f"{label}: the daemon serves metrics on {mport}")
    ports = {x["name"]: x for x in c.get("ports", [])}
    check(ports.get("metrics", {}).get("containerPort") == mport, f"{label}: metrics containerPort {mport}")
    for probe in ("livenessProbe", "readinessProbe"):
        g = c.get(probe, {}).get("httpGet", {})
        check(g.get("path") == "/healthz" and g.get("port") in ("metrics", mport), f"{label}: {probe} is HTTP /healthz on the metrics port")
    check(pod.get("terminationGracePeriodSeconds") == v["terminationGracePeriodSeconds"], f"{label}: terminationGracePeriodSeconds {v['terminationGracePeriodSeconds']}")
    us = ds["spec"].get("updateStrategy", {})
    check(us.get("type") == "RollingUpdate" and us.get("rollingUpdate", {}).get("maxUnavailable") == v["updateStrategy"]["maxUnavailable"],
          f"{label}: RollingUpdate with maxUnavailable {v['updateStrategy']['maxUnavailable']}")
    check(re.fullmatch(r"[0-9a-f]{64}", str(ann.get("checksum/config", ""))) is not None, f"{label}: checksum/config pod annotation (sha256)")
    if v["metrics"]["podAnnotations"]:
        check(ann.get("prometheus.io/scrape") == "true" and ann.get("prometheus.io/port") == str(mport) and ann.get("prometheus.io/path") == "/metrics",
              f"{label}: prometheus.io scrape/port/path pod annotations")
    else:
        check("prometheus.io/scrape" not in ann, f"{label}: no prometheus.io annotations when metrics.podAnnotations is false")
    image = v["image"]["repository"] + ":" + str(v["image"]["tag"] or defaults_app_version)
    check(c["image"] == image and c["imagePullPolicy"] == v["image"]["pullPolicy"], f"{label}: image {image}, pullPolicy {v['image']['pullPolicy']}")
    check(pod.get("imagePullSecrets", []) == v["imagePullSecrets"], f"{label}: imagePullSecrets")
    check(pod.get("nodeSelector", {}) == v["nodeSelector"] and pod.get("tolerations", []) == v["tolerations"] and pod.get("affinity", {}) == v["affinity"],
          f"{label}: nodeSelector, tolerations, affinity from values")
    check(c.get("resources", {}) == v["resources"], f"{label}: resources from values")
    check(pod.get("priorityClassName", "") == v["priorityClassName"], f"{label}: priorityClassName")
    sa = pod.get("serviceAccountName")
    sas = find(objs, "ServiceAccount")
    if v["serviceAccount"]["create"]:
        check([x["metadata"]["name"] for x in sas] == [sa], f"{label}: the ServiceAccount the pods use is created")
    else:
        check(not sas and sa == (v["serviceAccount"]["name"] or "default"), f"{label}: an existing ServiceAccount {sa}")
    check(pod.get("automountServiceAccountToken") is False, f"{label}: no API token mounted (locus uses no Kubernetes API)")

    # The mount: privileged + Bidirectional + /dev/fuse only with it.
    sc = c.get("securityContext", {})
    if v["mount"]["enabled"]:
        check(flag("--mount") == "/mnt/locus" and mounts.get("namespace-view", {}).get("mountPath") == "/mnt/locus", f"{label}: --mount /mnt/locus")
        check(mounts["namespace-view"].get("mountPropagation") == "Bidirectional", f"{label}: the view propagates to the host (Bidirectional)")
        check(vols["namespace-view"]["hostPath"]["path"] == v["mount"]["hostPath"], f"{label}: the view's host path is {v['mount']['hostPath']}")
        check(vols.get("dev-fuse", {}).get("hostPath") == {"path": "/dev/fuse", "type": "CharDevice"} and mounts.get("dev-fuse", {}).get("mountPath") == "/dev/fuse",
              f"{label}: /dev/fuse as a CharDevice hostPath")
        check(sc.get("privileged") is True, f"{label}: privileged (required by Bidirectional propagation and FUSE)")
        check(sc.get("runAsUser") == 0 and sc.get("readOnlyRootFilesystem") is True, f"{label}: root (FUSE) with a read-only root file system")
        check("--mount-allow-other" in args, f"{label}: pods of other users read the view (--mount-allow-other)")
        if s:
            check(s.get("mount") == "/mnt/locus", f"{label}: the daemon mounts the view at /mnt/locus")
            check(s.get("mount-allow-other") == "true", f"{label}: the daemon lets other users read the view")
    else:
        check("--mount" not in args and "namespace-view" not in vols and "dev-fuse" not in vols, f"{label}: no mount, no /dev/fuse")
        check(not sc.get("privileged"), f"{label}: not privileged without the mount")
        ids = v["runAs"]
        check(sc.get("runAsNonRoot") is True and sc.get("runAsUser") == ids["uid"] and sc.get("runAsGroup") == ids["gid"],
              f"{label}: runs as {ids['uid']}:{ids['gid']}, not root, without the mount")
        check(sc.get("allowPrivilegeEscalation") is False and sc.get("readOnlyRootFilesystem") is True
              and sc.get("capabilities", {}).get("drop") == ["ALL"] and not sc.get("capabilities", {}).get("add")
              and sc.get("seccompProfile", {}).get("type") == "RuntimeDefault",
              f"{label}: no capabilities, no privilege escalation, read-only root, RuntimeDefault seccomp")
        check(pod.get("securityContext", {}).get("fsGroup") == ids["gid"], f"{label}: fsGroup {ids['gid']}, so the non-root daemon reads its Secret files")
        inits = {x["name"]: x for x in pod.get("initContainers", [])}
        own = inits.get("own-dirs", {})
        osc = own.get("securityContext", {})
        caps = osc.get("capabilities", {})
        check(bool(own) and set(caps.get("add", [])) <= {"CHOWN", "DAC_READ_SEARCH"} and caps.get("drop") == ["ALL"]
              and osc.get("allowPrivilegeEscalation") is False and not osc.get("privileged"),
              f"{label}: an init container hands the host directories over with CHOWN and DAC_READ_SEARCH only")
        script = " ".join(own.get("command", []))
        check(f"chown -R {ids['uid']}:{ids['gid']}" in script and mounts["cache"]["mountPath"] in script and mounts["socket"]["mountPath"] in script,
              f"{label}: it gives the cache and socket directories to {ids['uid']}:{ids['gid']}")
        # The script itself, on folders like the host's: a cache a root daemon filled (a
        # file deep inside owned by root) is handed over whole.
        if os.geteuid() == 0 and own.get("command", [])[:2] == ["/bin/sh", "-c"]:
            base = os.path.join(workdir, label.replace("/", "_") + "-own")
            cache_d, sock_d = os.path.join(base, "cache"), os.path.join(base, "socket")
            os.makedirs(os.path.join(cache_d, "data"), exist_ok=True)
            os.makedirs(sock_d, exist_ok=True)
            open(os.path.join(cache_d, "data", "7"), "w").close()
            os.chown(cache_d, ids["uid"], ids["gid"])
            os.chown(sock_d, ids["uid"], ids["gid"])
            cmd = own["command"][2].replace(mounts["cache"]["mountPath"], cache_d).replace(mounts["socket"]["mountPath"], sock_d)
            p = run(["/bin/sh", "-c", cmd])
            st = os.stat(os.path.join(cache_d, "data", "7"))
            check(p.returncode == 0 and (st.st_uid, st.st_gid) == (ids["uid"], ids["gid"]),
                  f"{label}: the init script hands over a file deep in the cache ({p.stderr.strip()[:200]})")
        check(all(m.get("mountPropagation") in (None, "None") for m in c.get("volumeMounts", [])), f"{label}: no mount propagation without the mount")
        if s:
            check(s.get("mount") == "(none)", f"{label}: the daemon serves no view")

    # Local access: the socket's and the data files' group.
    group = str(v["localAccess"]["group"])
    psc = pod.get("securityContext", {})
    if group:
        check(flag("--socket-group") == group and flag("--data-group") == group, f"{label}: --socket-group and --data-group {group}")
        check(int(group) in psc.get("supplementalGroups", []), f"{label}: the daemon is in group {group} (to give its files to it)")
        if s:
            check(s.get("socket-group") == group and s.get("data-group") == group, f"{label}: the daemon gives its socket and data files to {group}")
    else:
        check("--socket-group" not in args and "--data-group" not in args, f"{label}: socket and data files for the daemon's own user and group")
        if s:
            check(s.get("data-group") == "(none)", f"{label}: data files for the daemon's user only")

    # Networking and membership.
    check(bool(pod.get("hostNetwork")) == bool(v["hostNetwork"]), f"{label}: hostNetwork {v['hostNetwork']}")
    if v["hostNetwork"]:
        check(pod.get("dnsPolicy") == "ClusterFirstWithHostNet", f"{label}: ClusterFirstWithHostNet DNS with hostNetwork")
    pport = v["peer"]["port"]
    mode = v["membership"]["mode"]
    peers_svc = find(objs, "Service", "-peers")
    env_names = [e["name"] for e in c.get("env", [])]
    if mode == "none":
        check(not any(a in args for a in ("--listen", "--membership", "--peers")) and not peers_svc, f"{label}: no peer port or peers Service without membership")
        if s:
            check(s.get("membership") == "(none)", f"{label}: the daemon has no membership")
    else:
        check(flag("--listen") == f"0.0.0.0:{pport}" and flag("--advertise") == f"$(POD_IP):{pport}", f"{label}: --listen 0.0.0.0:{pport} --advertise $(POD_IP):{pport}")
        pip = next((e for e in c.get("env", []) if e["name"] == "POD_IP"), {})
        check(pip.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "status.podIP", f"{label}: POD_IP from the downward API")
        check(env_names.index("POD_IP") == 0, f"{label}: POD_IP is defined before anything that refers to it")
        check(ports.get("peer", {}).get("containerPort") == pport, f"{label}: peer containerPort {pport}")
        if v["hostNetwork"]:
            check(ports["peer"].get("hostPort") == pport and ports["metrics"].get("hostPort") == mport, f"{label}: hostPorts equal containerPorts with hostNetwork")
        if s:
            check(s.get("listen") == f"0.0.0.0:{pport}" and s.get("advertise") == f"127.0.0.1:{pport}", f"{label}: the daemon listens on {pport} and advertises the pod IP")
        m = flag("--membership")
        if mode == "dns":
            check(len(peers_svc) == 1, f"{label}: a peers Service for DNS membership")
            if peers_svc:
                svc = peers_svc[0]
                name = svc["metadata"]["name"]
                check(svc["spec"].get("clusterIP") == "None" and svc["spec"].get("publishNotReadyAddresses") is True, f"{label}: the peers Service is headless and publishes not-ready addresses")
                check(m == f"dns://{name}.{NAMESPACE}.svc.cluster.local:{pport}", f"{label}: --membership dns://{name}.{NAMESPACE}.svc.cluster.local:{pport} (got {m})")
                sel = svc["spec"]["selector"]
                check(all(ds["spec"]["template"]["metadata"]["labels"].get(k) == x for k, x in sel.items()), f"{label}: the peers Service selects the daemon pods")
                check(svc["spec"]["ports"][0]["port"] == pport, f"{label}: the peers Service's port is the peer port")
            if s:
                check(s.get("membership", "").startswith("Dns {"), f"{label}: the daemon uses DNS membership")
        elif mode == "etcd":
            eps = v["membership"]["etcd"]["endpoints"]
            prefix = v["membership"]["etcd"]["prefix"].strip("/")
            check(m == f"etcd://{','.join(eps)}/{prefix}", f"{label}: --membership etcd://{','.join(eps)}/{prefix} (got {m})")
            check(not peers_svc, f"{label}: no peers Service with etcd membership")
            if s:
                check(s.get("membership") == "Etcd { endpoints: %s, prefix: \"/%s\" }" % (json.dumps(["http://" + e for e in eps]).replace('","', '", "'), prefix),
                      f"{label}: the daemon uses etcd at {eps} under /{prefix} (got {s.get('membership')})")
            e = v["membership"]["etcd"]
            if e["insecure"]:
                check("--insecure-etcd" in args and "--etcd-ca" not in args, f"{label}: --insecure-etcd, said out loud")
            else:
                d = mounts.get("etcd-tls", {}).get("mountPath")
                check(d is not None and vols["etcd-tls"]["secret"]["secretName"] == e["tls"]["existingSecret"], f"{label}: the etcd TLS Secret is mounted")
                check(flag("--etcd-ca") == f"{d}/ca.crt" and flag("--etcd-cert") == f"{d}/tls.crt" and flag("--etcd-key") == f"{d}/tls.key",
                      f"{label}: --etcd-ca/--etcd-cert/--etcd-key from the Secret")
                if s:
                    check(s.get("etcd-auth") in ("tls+cert",), f"{label}: the daemon reaches etcd over TLS with a client certificate (got {s.get('etcd-auth')})")
            if e["auth"]["existingSecret"]:
                pw = flag("--etcd-password-file")
                check(flag("--etcd-user") == e["auth"]["user"] and pw and any(pw.startswith(m["mountPath"] + "/") for n, m in mounts.items() if n == "etcd-auth"),
                      f"{label}: --etcd-user and --etcd-password-file from the Secret")
            if str(v["membership"]["ttl"]) != "":
                check(flag("--membership-ttl") == str(v["membership"]["ttl"]), f"{label}: --membership-ttl {v['membership']['ttl']}")
                if s:
                    check(s.get("membership-ttl") == f"{v['membership']['ttl']}s", f"{label}: the daemon's membership TTL")

    # Tuning flags.
    for key, fl, sk, fmt in [("replicas", "--replicas", "replicas", str), ("loadEpsilon", "--load-epsilon", "load-epsilon", str),
                             ("metadataTtl", "--metadata-ttl", "metadata-ttl", lambda x: f"{x}s"), ("concurrency", "--concurrency", "concurrency", str),
                             ("mountMaxInodes", "--mount-max-inodes", "mount-max-inodes", str)]:
        val = v["config"][key]
        if str(val) != "":
            check(flag(fl) == str(val), f"{label}: {fl} {val}")
            if s:
                check(s.get(sk) == fmt(val), f"{label}: the daemon's {sk} is {fmt(val)} (got {s.get(sk)})")
    if str(v["cache"]["chunkSize"]) != "":
        check(flag("--chunk-size") == str(v["cache"]["chunkSize"]), f"{label}: --chunk-size {v['cache']['chunkSize']}")
    check(args[len(args) - len(v["extraArgs"]):] == v["extraArgs"] or not v["extraArgs"], f"{label}: extraArgs appended")
    for e in v["extraEnv"]:
        check(e in c.get("env", []), f"{label}: extraEnv {e['name']}")

    # Origins.
    if v["s3"]["endpoint"]:
        check(flag("--s3-endpoint") == v["s3"]["endpoint"], f"{label}: --s3-endpoint {v['s3']['endpoint']}")
        if s and "s3-endpoint" in s:
            check(s["s3-endpoint"] == v["s3"]["endpoint"], f"{label}: the daemon's S3 endpoint")
    else:
        check("--s3-endpoint" not in args, f"{label}: no --s3-endpoint")
    check(("--s3-virtual-hosted" in args) == bool(v["s3"]["virtualHosted"]), f"{label}: --s3-virtual-hosted as s3.virtualHosted says")
    roots = [args[i + 1] for i, x in enumerate(args) if x == "--file-root"]
    check(roots == v["fileRoots"], f"{label}: --file-root for each of fileRoots")
    for i, r in enumerate(v["fileRoots"]):
        check(vols.get(f"file-root-{i}", {}).get("hostPath") == {"path": r, "type": "Directory"}
              and mounts.get(f"file-root-{i}", {}).get("mountPath") == r and mounts[f"file-root-{i}"].get("readOnly") is True,
              f"{label}: file root {r} is the node's folder, read-only at the same path")

    # Credentials and peer authentication: Secret names only.
    secret = v["credentials"]["existingSecret"]
    cred_env = [e for e in c.get("env", []) if e["name"] in CRED_KEYS]
    if secret:
        check([e["name"] for e in cred_env] == CRED_KEYS and all(e["valueFrom"]["secretKeyRef"]["name"] == secret for e in cred_env),
              f"{label}: {', '.join(CRED_KEYS)} from Secret {secret} (secretKeyRef)")
    else:
        check(not cred_env, f"{label}: no credential variables without credentials.existingSecret")
    hfe = next((e for e in c.get("env", []) if e["name"] == "HF_ENDPOINT"), None)
    check((hfe or {}).get("value", "") == v["hfEndpoint"], f"{label}: HF_ENDPOINT {v['hfEndpoint'] or '(unset)'}")
    tok = v["peerAuth"]["token"]["existingSecret"]
    tls = v["peerAuth"]["tls"]["existingSecret"]
    cm = v["peerAuth"]["tls"]["certManager"]
    certs = find(objs, "Certificate")
    if cm["issuerRef"]["name"] and v["membership"]["mode"] != "none":
        tls = ds["metadata"]["name"] + "-peer-tls"
        name = v["peerAuth"]["tls"]["serverName"] or "locus-peer"
        if check(len(certs) == 1, f"{label}: a cert-manager Certificate for the members"):
            cs = certs[0]["spec"]
            check(cs["secretName"] == tls and cs["dnsNames"] == [name] and cs["issuerRef"]["name"] == cm["issuerRef"]["name"]
                  and cs["issuerRef"]["kind"] == cm["issuerRef"]["kind"] and {"server auth", "client auth"} <= set(cs["usages"]),
                  f"{label}: the Certificate names {name}, is for server and client auth, from {cm['issuerRef']['kind']}/{cm['issuerRef']['name']}, into {tls}")
    else:
        check(not certs, f"{label}: no Certificate unless peerAuth.tls.certManager.issuerRef is set")
    key = v["peerAuth"]["token"]["key"]
    if chart_makes_token(v):
        gen = find(objs, "Secret", "-peer-token")
        tok, key = (gen[0]["metadata"]["name"] if gen else "(missing)"), "token"
    if v["peerAuth"]["insecure"]:
        check("--insecure-peers" in args and "peer-token" not in vols and not any(a.startswith("--peer-tls") for a in args),
              f"{label}: peerAuth.insecure: --insecure-peers and no authentication")
        if s:
            check(s.get("insecure-peers") == "true", f"{label}: the daemon accepts unauthenticated peers")
    else:
        check("--insecure-peers" not in args, f"{label}: peers authenticate (no --insecure-peers)")
        check(bool(tok) or bool(tls), f"{label}: a peer token or mutual TLS")
    if tok:
        check(vols.get("peer-token", {}).get("secret", {}).get("secretName") == tok, f"{label}: the peer token comes from Secret {tok}")
        check(vols["peer-token"]["secret"]["items"] == [{"key": key, "path": "token"}], f"{label}: the token's key is {key}")
        check(flag("--peer-token-file") == mounts["peer-token"]["mountPath"] + "/token" == "/etc/locus/peer/token", f"{label}: --peer-token-file /etc/locus/peer/token")
        check(mounts["peer-token"].get("readOnly") is True, f"{label}: the token is mounted read-only")
        if s:
            check(s.get("peer-token") == "true", f"{label}: the daemon requires the peer token")
    else:
        check("--peer-token-file" not in args and "peer-token" not in vols, f"{label}: no peer token")
    if tls:
        check(vols.get("peer-tls", {}).get("secret", {}).get("secretName") == tls, f"{label}: peer TLS from Secret {tls}")
        base = mounts["peer-tls"]["mountPath"]
        check((flag("--peer-tls-cert"), flag("--peer-tls-key"), flag("--peer-tls-ca")) == (f"{base}/tls.crt", f"{base}/tls.key", f"{base}/ca.crt"),
              f"{label}: --peer-tls-cert/--peer-tls-key/--peer-tls-ca from the Secret's tls.crt, tls.key, ca.crt")
        if v["peerAuth"]["tls"]["serverName"]:
            check(flag("--peer-tls-name") == v["peerAuth"]["tls"]["serverName"], f"{label}: --peer-tls-name")
        if s:
            check(s.get("peer-tls") == "true", f"{label}: the daemon uses mutual TLS between peers")
            check(s.get("peer-wire") == "false", f"{label}: with TLS, chunk bodies stay inside TLS (no plain-TCP chunk wire)")
    else:
        check(not any(a.startswith("--peer-tls") for a in args) and "peer-tls" not in vols, f"{label}: no peer TLS")
        if s:
            check(s.get("peer-wire") == "true", f"{label}: chunk bodies between peers on the chunk wire")

    # NetworkPolicy: the peer port from locus pods only, metrics from the listed namespaces.
    nps = find(objs, "NetworkPolicy")
    if v["networkPolicy"]["enabled"]:
        if check(len(nps) == 1, f"{label}: one NetworkPolicy"):
            np_ = nps[0]["spec"]
            sel = ds["spec"]["selector"]["matchLabels"]
            check(np_["podSelector"]["matchLabels"] == sel, f"{label}: the NetworkPolicy selects the daemon pods")
            check(np_["policyTypes"] == ["Ingress"], f"{label}: the NetworkPolicy governs ingress")
            rules = np_.get("ingress", [])
            peer_rule = [r for r in rules if [p["port"] for p in r["ports"]] == [pport]]
            check(len(peer_rule) == 1 and peer_rule[0]["from"] == [{"podSelector": {"matchLabels": sel}}],
                  f"{label}: the peer port {pport} only from the daemon pods")
            mns = v["networkPolicy"]["metricsNamespaces"]
            metric_rule = [r for r in rules if [p["port"] for p in r["ports"]] == [mport]]
            if mns:
                check(len(metric_rule) == 1 and metric_rule[0]["from"] == [{"namespaceSelector": {"matchExpressions": [
                    {"key": "kubernetes.io/metadata.name", "operator": "In", "values": mns}]}}],
                      f"{label}: metrics only from namespaces {mns}")
            else:
                check(not metric_rule, f"{label}: no metrics ingress without metricsNamespaces")
            gports = [v["gateways"][g]["port"] for g in ("hub", "s3") if v["gateways"][g]["enabled"]]
            gw_rule = [r for r in rules if gports and [p["port"] for p in r["ports"]] == gports]
            if gports:
                gns = v["gateways"]["namespaces"]
                want = {"matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "In", "values": gns}]} if gns else {}
                check(len(gw_rule) == 1 and gw_rule[0]["from"] == [{"namespaceSelector": want}],
                      f"{label}: the gateway ports {gports} only from pods of namespaces {gns or 'any'}")
            check(len(rules) == len(peer_rule) + len(metric_rule) + len(gw_rule), f"{label}: no other ingress")
            check(all(p.get("protocol") == "TCP" for r in rules for p in r["ports"]), f"{label}: TCP ports")
    else:
        check(not nps, f"{label}: no NetworkPolicy")

    # Gateways: flags, ports (on the node's IP where asked), the key pair from its Secret, a
    # node-local Service.
    gsvc = find(objs, "Service", "-gateway")
    gw = v["gateways"]
    for g, name, flag_ in (("hub", "hub-gateway", "--hub-gateway"), ("s3", "s3-gateway", "--s3-gateway")):
        if gw[g]["enabled"]:
            port = gw[g]["port"]
            check(flag(flag_) == f"0.0.0.0:{port}", f"{label}: {flag_} 0.0.0.0:{port}")
            check(ports.get(name, {}).get("containerPort") == port, f"{label}: {name} containerPort {port}")
            host = gw["hostPort"] or v["hostNetwork"]
            check((ports.get(name, {}).get("hostPort") == port) == bool(host), f"{label}: {name} hostPort {port if host else 'none'}")
            if gw["service"]["enabled"] and check(len(gsvc) == 1, f"{label}: a gateway Service"):
                sp = {x["name"]: x for x in gsvc[0]["spec"]["ports"]}
                check(sp.get(g, {}).get("port") == port and sp[g]["targetPort"] == name, f"{label}: the gateway Service's {g} port {port}")
                check(gsvc[0]["spec"].get("internalTrafficPolicy") == "Local", f"{label}: the gateway Service keeps pods on their node (internalTrafficPolicy Local)")
                check(gsvc[0]["spec"]["selector"] == ds["spec"]["selector"]["matchLabels"], f"{label}: the gateway Service selects the daemon pods")
        else:
            check(flag_ not in args and name not in ports, f"{label}: no {name}")
    if gw["s3"]["enabled"]:
        check(flag("--s3-gateway-buckets") == ",".join(gw["s3"]["buckets"]), f"{label}: --s3-gateway-buckets {gw['s3']['buckets']}")
        if gw["s3"]["anonymous"]:
            check("--s3-gateway-anonymous" in args and "--s3-gateway-key-file" not in args, f"{label}: anonymous S3 gateway reads, no key file")
        else:
            kv = vols.get("s3-gateway-key", {}).get("secret", {})
            check(kv.get("secretName") == gw["s3"]["existingSecret"] and kv.get("defaultMode") == 0o400,
                  f"{label}: the S3 gateway key pair from Secret {gw['s3']['existingSecret']} (0400)")
            check(flag("--s3-gateway-key-file", ) == mounts["s3-gateway-key"]["mountPath"] + "/" + kv["items"][0]["path"],
                  f"{label}: --s3-gateway-key-file inside the Secret's mount")
        if s:
            check(s.get("s3-gateway", "").startswith(f"0.0.0.0:{gw['s3']['port']} buckets "), f"{label}: the daemon serves the S3 gateway")
    if not (gw["service"]["enabled"] and (gw["hub"]["enabled"] or gw["s3"]["enabled"])):
        check(not gsvc, f"{label}: no gateway Service")
    if s and gw["hub"]["enabled"]:
        check(s.get("hub-gateway") == f"0.0.0.0:{gw['hub']['port']}", f"{label}: the daemon serves the Hub gateway")

    # CSI: the driver object, the registrar beside the daemon on one socket folder, the
    # daemon's flags, and kubelet's pods folder at the same path with Bidirectional propagation.
    drivers = find(objs, "CSIDriver")
    if v["csi"]["enabled"]:
        kd = v["csi"]["kubeletDir"]
        if check(len(drivers) == 1, f"{label}: a CSIDriver"):
            spec = drivers[0]["spec"]
            check(drivers[0]["metadata"]["name"] == "csi.locus.dev", f"{label}: the CSIDriver is csi.locus.dev")
            check(spec.get("attachRequired") is False and spec.get("podInfoOnMount") is True
                  and sorted(spec.get("volumeLifecycleModes", [])) == ["Ephemeral", "Persistent"],
                  f"{label}: CSIDriver attachRequired false, podInfoOnMount true, Ephemeral and Persistent")
        regs = [x for x in pod["containers"] if x["name"] == "csi-registrar"]
        if check(len(regs) == 1, f"{label}: a node-driver-registrar sidecar"):
            ra = regs[0]["args"]
            rm = {m["name"]: m["mountPath"] for m in regs[0]["volumeMounts"]}
            check(f"--kubelet-registration-path={kd}/plugins/csi.locus.dev/csi.sock" in ra,
                  f"{label}: the registrar registers {kd}/plugins/csi.locus.dev/csi.sock")
            addr = next((a.split("=", 1)[1] for a in ra if a.startswith("--csi-address=")), "")
            check(flag("--csi-socket") == addr and addr.startswith(rm.get("csi-socket", "?") + "/")
                  and mounts.get("csi-socket", {}).get("mountPath") == rm.get("csi-socket"),
                  f"{label}: the daemon's --csi-socket is the registrar's --csi-address, in the shared folder")
            check(vols["csi-socket"]["hostPath"]["path"] == f"{kd}/plugins/csi.locus.dev"
                  and vols["csi-registration"]["hostPath"]["path"] == f"{kd}/plugins_registry"
                  and rm.get("csi-registration") == "/registration",
                  f"{label}: kubelet's plugin and registration folders")
            rsc = regs[0].get("securityContext", {})
            check(rsc.get("allowPrivilegeEscalation") is False and rsc.get("capabilities", {}).get("drop") == ["ALL"],
                  f"{label}: the registrar has no capabilities")
        kp = mounts.get("kubelet-pods", {})
        check(kp.get("mountPath") == f"{kd}/pods" and kp.get("mountPropagation") == "Bidirectional"
              and vols["kubelet-pods"]["hostPath"]["path"] == f"{kd}/pods",
              f"{label}: kubelet's pods folder at its own path, Bidirectional")
        check(flag("--node-id") == "$(NODE_NAME)", f"{label}: --node-id is the node's name")
        mounters = find(objs, "DaemonSet", "-mounter")
        if v["csi"]["mounter"]["enabled"]:
            if check(len(mounters) == 1, f"{label}: a mounter DaemonSet"):
                m = mounters[0]
                mc = m["spec"]["template"]["spec"]["containers"][0]
                ma = mc["args"]
                mv = {x["name"]: x for x in m["spec"]["template"]["spec"]["volumes"]}
                mm = {x["name"]: x for x in mc["volumeMounts"]}
                check(m["spec"]["updateStrategy"]["type"] == "OnDelete", f"{label}: the mounter is replaced only when its pods are deleted")
                check(ma[0] == "mounter" and ma[ma.index("--listen") + 1] == flag("--csi-mounter"),
                      f"{label}: the daemon's --csi-mounter is the mounter's --listen")
                check(ma[ma.index("--targets-under") + 1] == f"{kd}/pods", f"{label}: the mounter mounts only under kubelet's pods folder")
                check(ma[ma.index("--socket") + 1] == flag("--socket") and mm["socket"]["mountPath"] == mounts["socket"]["mountPath"]
                      and mm["cache"]["mountPath"] == mounts["cache"]["mountPath"] and mm["cache"].get("readOnly") is True,
                      f"{label}: the mounter reaches the daemon's socket and cache at the daemon's paths")
                check(mv["mounter-socket"]["hostPath"]["path"] == vols["mounter-socket"]["hostPath"]["path"]
                      and mounts["mounter-socket"]["mountPath"] == mm["mounter-socket"]["mountPath"],
                      f"{label}: one mounter socket folder for both")
                check(mm["kubelet-pods"].get("mountPropagation") == "Bidirectional" and mc["securityContext"].get("privileged") is True,
                      f"{label}: the mounter mounts into kubelet's pods folder (privileged, Bidirectional)")
        else:
            check(not mounters and "--csi-mounter" not in args, f"{label}: no mounter")
        if s:
            check(s.get("csi", "").startswith("/csi/csi.sock node "), f"{label}: the daemon serves the CSI plugin")
    else:
        check(not drivers and "--csi-socket" not in args, f"{label}: no CSI")

    # Metrics Service and ServiceMonitor.
    msvc = find(objs, "Service", "-metrics")
    sms = find(objs, "ServiceMonitor")
    if v["metrics"]["service"]["enabled"]:
        check(len(msvc) == 1 and msvc[0]["spec"]["ports"][0]["port"] == mport, f"{label}: a metrics Service on {mport}")
    else:
        check(not msvc, f"{label}: no metrics Service")
    smv = v["metrics"]["serviceMonitor"]
    if smv["enabled"] and smv["force"]:
        if check(len(sms) == 1, f"{label}: a ServiceMonitor"):
            sm = sms[0]
            sel = sm["spec"]["selector"]["matchLabels"]
            check(msvc and all(msvc[0]["metadata"]["labels"].get(k) == x for k, x in sel.items()), f"{label}: the ServiceMonitor selects the metrics Service")
            check(peers_svc == [] or not all(peers_svc[0]["metadata"]["labels"].get(k) == x for k, x in sel.items()), f"{label}: the ServiceMonitor does not select the peers Service")
            check(sm["spec"]["endpoints"][0]["port"] == "metrics" and sm["spec"]["endpoints"][0]["path"] == "/metrics", f"{label}: the ServiceMonitor scrapes port metrics at /metrics")
            check(all(sm["metadata"]["labels"].get(k) == x for k, x in smv["labels"].items()), f"{label}: ServiceMonitor labels from values")
    elif not smv["enabled"]:
        check(not sms, f"{label}: no ServiceMonitor")

    # Warm Job.
    jobs = find(objs, "Job")
    if v["warm"]["uris"]:
        if check(len(jobs) == 1, f"{label}: a warm Job"):
            job = jobs[0]
            a = job["metadata"].get("annotations", {})
            check(a.get("helm.sh/hook") == "post-install,post-upgrade" and a.get("helm.sh/hook-delete-policy") == "before-hook-creation",
                  f"{label}: the warm Job is a post-install,post-upgrade hook (before-hook-creation)")
            wargs = job["spec"]["template"]["spec"]["containers"][0]["args"]
            check(wargs[wargs.index("--scope") + 1] == v["warm"]["scope"], f"{label}: --scope {v['warm']['scope']}")
            check(wargs[-len(v["warm"]["uris"]):] == v["warm"]["uris"], f"{label}: the warm Job warms every URI of warm.uris")
            for g in v["warm"]["include"]:
                check(["--include", g] in [wargs[i:i + 2] for i in range(len(wargs))], f"{label}: --include {g}")
            for g in v["warm"]["exclude"]:
                check(["--exclude", g] in [wargs[i:i + 2] for i in range(len(wargs))], f"{label}: --exclude {g}")
            check(("--pin" in wargs) == bool(v["warm"]["pin"]), f"{label}: --pin as warm.pin says")
            host_sock = run_warm(locus, label, job, workdir)
            check(host_sock == v["socket"]["hostPath"], f"{label}: the warm Job mounts the daemon's socket directory {v['socket']['hostPath']}")
            jpod = job["spec"]["template"]["spec"]
            check(jpod.get("nodeSelector", {}) == (v["warm"]["nodeSelector"] or v["nodeSelector"]), f"{label}: the warm Job runs where daemons run")
            for jc in jpod.get("initContainers", []) + jpod["containers"]:
                jsc = jc.get("securityContext", {})
                check(jsc.get("allowPrivilegeEscalation") is False and jsc.get("readOnlyRootFilesystem") is True
                      and jsc.get("capabilities", {}).get("drop") == ["ALL"] and not jsc.get("capabilities", {}).get("add"),
                      f"{label}: warm Job container {jc['name']}: no capabilities, no escalation, read-only root")
            # Its identity reaches the socket (0660: the daemon's user and group, or localAccess.group).
            jsc = jpod.get("securityContext", {})
            if group:
                check(jsc.get("runAsNonRoot") is True and int(group) in jsc.get("supplementalGroups", []),
                      f"{label}: the warm Job runs non-root in group {group}")
            elif v["mount"]["enabled"]:
                check(jsc.get("runAsUser") == 0, f"{label}: the warm Job runs as the daemon's user (root), without capabilities")
            else:
                check(jsc.get("runAsUser") == v["runAs"]["uid"] and jsc.get("runAsGroup") == v["runAs"]["gid"],
                      f"{label}: the warm Job runs as the daemon's non-root user")
    else:
        check(not jobs, f"{label}: no warm Job without warm.uris")
    return objs


def check_refusals(chart):
    print("== values the chart refuses or ignores")
    cases = [
        ("etcd membership without endpoints", ["membership.mode=etcd"], "membership.etcd.endpoints"),
        ("etcd membership without TLS", ["membership.mode=etcd", "membership.etcd.endpoints={e:2379}"], "tls.existingSecret"),
        ("insecure etcd with a TLS Secret", ["membership.mode=etcd", "membership.etcd.endpoints={e:2379}", "membership.etcd.insecure=true", "membership.etcd.tls.existingSecret=a"], "insecure"),
        ("an unknown membership mode", ["membership.mode=gossip"], "membership"),
        ("both peer token and peer TLS", ["peerAuth.token.existingSecret=a", "peerAuth.tls.existingSecret=b"], "either"),
        ("both a TLS Secret and cert-manager", ["peerAuth.tls.existingSecret=b", "peerAuth.tls.certManager.issuerRef.name=ca"], "either"),
        ("insecure peers with a token", ["peerAuth.insecure=true", "peerAuth.token.existingSecret=a"], "insecure"),
        ("the mount with allowPrivilegeEscalation=false", ["securityContext.allowPrivilegeEscalation=false"], "privileged"),
        ("a ServiceMonitor without the metrics Service", ["metrics.serviceMonitor.enabled=true", "metrics.serviceMonitor.force=true", "metrics.service.enabled=false"], "metrics.service.enabled"),
        ("a bad warm URI", ["warm.uris={ftp://x/y}"], "warm"),
        ("a bad cache size", ["cache.size=lots"], "size"),
        ("an S3 gateway without buckets", ["gateways.s3.enabled=true", "gateways.s3.anonymous=true"], "buckets"),
        ("an S3 gateway with neither a key pair nor anonymous", ["gateways.s3.enabled=true", "gateways.s3.buckets={data}"], "existingSecret"),
        ("CSI without the mount", ["csi.enabled=true", "mount.enabled=false"], "mount.enabled"),
        ("a gateway on the metrics port", ["gateways.hub.enabled=true", "gateways.hub.port=9090"], "taken"),
        ("both gateways on one port", ["gateways.hub.enabled=true", "gateways.hub.port=8000", "gateways.s3.enabled=true", "gateways.s3.port=8000", "gateways.s3.buckets={data}", "gateways.s3.anonymous=true"], "taken"),
        ("an anonymous S3 gateway on the host network", ["hostNetwork=true", "gateways.s3.enabled=true", "gateways.s3.buckets={data}", "gateways.s3.anonymous=true"], "hostNetwork"),
        ("an S3 gateway with a key pair and anonymous", ["gateways.s3.enabled=true", "gateways.s3.buckets={data}", "gateways.s3.existingSecret=k", "gateways.s3.anonymous=true"], "either"),
    ]
    for what, sets, expect in cases:
        p, _ = chart.template(sets=sets)
        check(p.returncode != 0 and expect in p.stderr, f"refuses {what} (rc={p.returncode}: {p.stderr.strip()[:200]})")
        err = next((l for l in p.stderr.splitlines() if expect in l), p.stderr.strip().splitlines()[0] if p.stderr.strip() else "(no error!)")
        print(f"    refuses {what}: {err.strip()[:160]}")
    # A secret value offered anywhere the chart could take one: refused by the schema, never rendered.
    keys = ["credentials.hfToken", "credentials.HF_TOKEN", "hfToken", "peerAuth.token.value", "peerAuth.tls.key", "credentials.secret.HF_TOKEN"]
    for key in keys:
        p, objs = chart.template(sets=["credentials.existingSecret=locus-credentials", f"{key}={SENTINEL}"])
        check(SENTINEL not in p.stdout, f"a token given as {key} is never rendered")
        check(p.returncode != 0 and "schema" in p.stderr, f"a token given as {key} is refused by values.schema.json (rc={p.returncode})")
    print(f"    a sentinel token under {len(keys)} value names that could hold a secret ({', '.join(keys)}): refused by the schema, never rendered")
    # The sentinel as a Secret *name* ends up only as a name (secretKeyRef.name), never as a value.
    p, objs = chart.template(sets=[f"credentials.existingSecret={SENTINEL.lower()[:40]}"])
    if check(p.returncode == 0, "renders with any Secret name"):
        ds = find(objs, "DaemonSet")[0]
        env = daemon_container(ds)["env"]
        check(all(e.get("valueFrom", {}).get("secretKeyRef", {}).get("name") == SENTINEL.lower()[:40] for e in env if e["name"] in CRED_KEYS),
              "credentials.existingSecret is used only as secretKeyRef.name")
    # cert-manager without peers (membership none): nothing to mount, nothing rendered.
    p, objs = chart.template(sets=["peerAuth.tls.certManager.issuerRef.name=ca", "membership.mode=none"])
    if check(p.returncode == 0, f"renders cert-manager with membership none ({p.stderr.strip()[:200]})"):
        pod = find(objs, "DaemonSet")[0]["spec"]["template"]["spec"]
        check(not find(objs, "Certificate") and all(v["name"] != "peer-tls" for v in pod.get("volumes", [])),
              "no Certificate and no peer-tls volume without peers")
    # ServiceMonitor only where the API exists, unless forced.
    p, objs = chart.template(sets=["metrics.serviceMonitor.enabled=true"])
    check(p.returncode == 0 and not find(objs, "ServiceMonitor"), "no ServiceMonitor when the cluster lacks monitoring.coreos.com/v1")
    p, objs = chart.template(sets=["metrics.serviceMonitor.enabled=true"], extra=["--api-versions", "monitoring.coreos.com/v1"])
    check(p.returncode == 0 and len(find(objs, "ServiceMonitor")) == 1, "a ServiceMonitor when the cluster has monitoring.coreos.com/v1")
    print("    ServiceMonitor: rendered only with monitoring.coreos.com/v1 (or force)")
    # The checksum follows the settings.
    sums = set()
    for sets in ([], ["cache.size=99GiB"], ["config.concurrency=8"], ["credentials.existingSecret=other"]):
        p, objs = chart.template(sets=sets)
        sums.add(find(objs, "DaemonSet")[0]["spec"]["template"]["metadata"]["annotations"]["checksum/config"])
    check(len(sums) == 4, "checksum/config changes with the daemon's settings")
    p1, o1 = chart.template()
    p2, o2 = chart.template()
    # Without a cluster to look the generated peer token up in, each render makes a new one;
    # everything else, the checksum included, is the same.
    strip = lambda objs: [o for o in objs if not (o.get("kind") == "Secret" and o["metadata"]["name"].endswith("-peer-token"))]
    check(strip(o1) == strip(o2), "rendering is deterministic (the same checksum twice)")
    print("    checksum/config: follows the settings, stable across renders")


def check_image(repo, locus):
    print("== container image (helm/image)")
    df = open(os.path.join(repo, "helm/image/Dockerfile")).read()
    check(re.search(r"^FROM rust:1-bookworm AS builder", df, re.M) is not None, "Dockerfile: builder stage FROM rust:1-bookworm")
    check(re.search(r"cargo build --release --locked --bin locus", df) is not None, "Dockerfile: cargo build --release --locked --bin locus")
    check(re.search(r"^FROM debian:bookworm-slim", df, re.M) is not None, "Dockerfile: runtime FROM debian:bookworm-slim")
    pkgs = set()
    for m in re.finditer(r"apt-get install[^\n]*?((?:\\\n|[^\n])*)", df):
        pkgs.update(t for t in re.split(r"[\s\\]+", m.group(1)) if t and not t.startswith("-") and t not in ("&&", "rm", "apt-get"))
    for p in ("fuse3", "ca-certificates", "tini"):
        check(p in pkgs, f"Dockerfile: the runtime installs {p}")
    check(re.search(r'^ENTRYPOINT \["tini", ?"--", ?"locus"\]', df, re.M) is not None, 'Dockerfile: ENTRYPOINT ["tini", "--", "locus"]')
    check(re.search(r'^CMD \["daemon"\]', df, re.M) is not None, 'Dockerfile: CMD ["daemon"]')
    users = re.findall(r"^USER (\S+)", df, re.M)
    check(users[-1:] == ["65532:65532"], "Dockerfile: runs as a non-root user (the chart runs it as root only for the FUSE view)")
    ign = open(os.path.join(repo, "helm/image/Dockerfile.dockerignore")).read().split()
    check("target" in [x.strip("/") for x in ign] and ".git" in [x.strip("/") for x in ign], "Dockerfile.dockerignore: ignores target/ and .git")

    docker = shutil.which("docker")
    info = run(["docker", "info"]) if docker else None
    if docker and info.returncode == 0 and os.environ.get("LOCUS_HELM_DOCKER_BUILD") == "1":
        tag = "locus-chart-test:dev"
        print("    docker: building the image (LOCUS_HELM_DOCKER_BUILD=1)")
        p = subprocess.run(["docker", "build", "-f", "helm/image/Dockerfile", "-t", tag, "."], cwd=repo)
        if check(p.returncode == 0, "docker build"):
            p = run(["docker", "run", "--rm", tag, "daemon", "--listen", "0.0.0.0:7070", "--advertise", "127.0.0.1:7070", "--peers", "127.0.0.1:7070", "--check-config"])
            check(p.returncode == 0 and "config ok" in p.stdout, f"the image runs `locus daemon --check-config` ({p.stderr.strip()[:200]})")
        return
    why = "no docker client" if not docker else ("no docker daemon" if info.returncode != 0 else "set LOCUS_HELM_DOCKER_BUILD=1 to build it")
    print(f"    docker build skipped ({why}); checking the binary's shared libraries against the runtime image instead")
    # What debian:bookworm-slim (libc6, libgcc-s1) and the Dockerfile's packages (fuse3 -> libfuse3-3) provide.
    allowed = re.compile(r"^(linux-vdso\.so\.1|linux-gate\.so\.1|ld-linux[-\w.]*\.so\.\d+|libc\.so\.6|libm\.so\.6|libgcc_s\.so\.1|libpthread\.so\.0|libdl\.so\.2|librt\.so\.1|libutil\.so\.1|libresolv\.so\.2|libfuse3\.so\.3)$")
    p = run(["ldd", locus])
    if not check(p.returncode == 0, f"ldd {locus} ({p.stderr.strip()[:200]})"):
        return
    libs = []
    for line in p.stdout.splitlines():
        name = os.path.basename(line.strip().split()[0]) if line.strip() else ""
        if name:
            libs.append(name)
            if "not found" in line:
                check(False, f"ldd: {name} not found")
    for name in libs:
        check(allowed.match(name) is not None, f"{os.path.basename(locus)} needs {name}, which debian:bookworm-slim + fuse3/ca-certificates/tini does not provide")
    print(f"    ldd {locus}: {', '.join(libs)} (all in debian:bookworm-slim + the Dockerfile's packages)")


def check_docs(repo, defaults):
    print("== chart README")
    readme = open(os.path.join(repo, "helm/locus/README.md")).read()
    table = readme.split("\n## Values\n", 1)[-1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\| `([A-Za-z0-9_.]+)` \|", table, re.M))
    # Free-form maps (resources, probes, selectors) are documented as one value.
    whole = {"resources", "livenessProbe", "readinessProbe", "warm.resources"}

    def leaves(d, prefix=""):
        for k, x in d.items():
            q = f"{prefix}.{k}" if prefix else k
            if isinstance(x, dict) and x and q not in whole:
                yield from leaves(x, q)
            else:
                yield q
    keys = list(leaves(defaults))
    for k in keys:
        check(k in documented, f"README.md: the values table documents {k}")
    check(not documented - set(keys), f"README.md: the values table documents no value that does not exist ({sorted(documented - set(keys))})")
    for topic in ("privileged", "Bidirectional", "HostToContainer", "mount.enabled=false", "helm uninstall", "membership", "helm upgrade"):
        check(topic in readme, f"README.md: mentions {topic}")
    print(f"    the values table documents all {len(keys)} values of values.yaml")


class FakeKubeApi:
    """The few Kubernetes API paths `helm template --dry-run=server` reads for `lookup "v1"
    "Secret"`: discovery of v1 and GET of a namespaced Secret, from `secrets`. Counts the GETs."""

    def __init__(self):
        import http.server
        import threading

        self.secrets, self.gets = {}, []
        api = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def answer(self, code, obj):
                body = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                path = self.path.split("?")[0]
                parts = path.strip("/").split("/")
                if path == "/version":
                    return self.answer(200, {"major": "1", "minor": "31", "gitVersion": "v1.31.0"})
                if path == "/api":
                    return self.answer(200, {"kind": "APIVersions", "versions": ["v1"]})
                if path == "/apis":
                    return self.answer(200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": []})
                if path == "/api/v1":
                    return self.answer(200, {"kind": "APIResourceList", "groupVersion": "v1", "resources": [
                        {"name": "secrets", "singularName": "secret", "namespaced": True, "kind": "Secret",
                         "verbs": ["get"]}]})
                if len(parts) == 6 and parts[:3] == ["api", "v1", "namespaces"] and parts[4] == "secrets":
                    api.gets.append((parts[3], parts[5]))
                    found = api.secrets.get((parts[3], parts[5]))
                    if found:
                        return self.answer(200, found)
                self.answer(404, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound",
                                  "code": 404})

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self):
        self.server.shutdown()


def check_token_kept_across_upgrades(chart):
    """The generated peer token is made once and read back at every upgrade (`lookup`): helm
    renders against a stand-in API server, first with no Secret (an install), then with the one
    it made (an upgrade)."""
    api = FakeKubeApi()
    try:
        extra = ["--dry-run=server", "--kube-apiserver", api.url, "--show-only", "templates/secret-peer-token.yaml"]
        env_off = {"KUBECONFIG": os.devnull}
        tokens = []
        for step in ("install", "upgrade"):
            p = run([chart.helm, "template", RELEASE, chart.chart, "--namespace", NAMESPACE, *extra],
                    env={**os.environ, **env_off})
            if not check(p.returncode == 0, f"peer token {step}: helm template against the API ({p.stderr[-300:]})"):
                return
            secret = next(d for d in yaml.safe_load_all(p.stdout) if d)
            tokens.append(secret["data"]["token"])
            api.secrets[(NAMESPACE, secret["metadata"]["name"])] = secret
        name = f"{RELEASE}-locus-peer-token"
        check(api.gets == [(NAMESPACE, name)] * 2, f"peer token: looked up at each render ({api.gets})")
        check(re.fullmatch(r"[A-Za-z0-9]{48}", base64.b64decode(tokens[0]).decode(errors="replace")) is not None,
              "peer token: the install makes a 48-character random token")
        if check(tokens[1] == tokens[0], "peer token: an upgrade keeps the installed token"):
            print("    the generated peer token is kept across an upgrade (lookup against a stand-in API server)")
    finally:
        api.close()


defaults_app_version = None


def main():
    global defaults_app_version
    ap = argparse.ArgumentParser()
    ap.add_argument("--helm", required=True)
    ap.add_argument("--locus", required=True)
    ap.add_argument("--repo", default=".")
    ap.add_argument("--kubernetes-version", default=os.environ.get("K8S_VERSION") or kubernetes_validate.latest_version())
    a = ap.parse_args()
    repo = os.path.abspath(a.repo)
    chart = Chart(a.helm, os.path.join(repo, "helm/locus"))
    defaults = yaml.safe_load(open(os.path.join(repo, "helm/locus/values.yaml")))
    defaults_app_version = str(yaml.safe_load(open(os.path.join(repo, "helm/locus/Chart.yaml")))["appVersion"])
    hv = run([a.helm, "version", "--short"]).stdout.strip()
    print(f"helm {hv}; Kubernetes schemas {a.kubernetes_version} (kubernetes-validate {importlib.metadata.version('kubernetes-validate')}); locus binary {a.locus}")
    sets = [("default values", None)] + [(os.path.relpath(f, repo), f) for f in sorted(glob.glob(os.path.join(repo, "tests/helm/values/*.yaml")))]
    with tempfile.TemporaryDirectory(prefix="locus-helm-") as workdir:
        for label, f in sets:
            check_value_set(chart, os.path.abspath(a.locus), a.kubernetes_version, label, f, workdir, defaults)
        check_refusals(chart)
        check_token_kept_across_upgrades(chart)
        check_docs(repo, defaults)
        check_image(repo, os.path.abspath(a.locus))
    print()
    if failures:
        print(f"FAILED: {len(failures)} of {checks} checks:")
        for f in failures:
            print(f"  - {f}")
        return 1
    print(f"ok: {checks} checks over {len(sets)} value sets")
    return 0


if __name__ == "__main__":
    sys.exit(main())
