#!/usr/bin/env python3
"""Offline validation of the deployment manifests under deploy/.

What it checks (one line per problem, exit 1 on any; exit 2 if it cannot run):

- every YAML file parses, without duplicate keys (PyYAML keeps the last one silently);
- Kubernetes (deploy/k8s): every object has apiVersion, kind and metadata.name; every
  kustomization's resources and generator files exist and every manifest is listed in one;
  Deployments/StatefulSets select their own pod labels, every container has an image and
  cpu/memory requests and limits, terminationGracePeriodSeconds exceeds the binary's drain
  (--drain-timeout, ORCH_DRAIN_TIMEOUT from env or a ConfigMap, else the binary's default,
  read from the Rust source) by a margin; ConfigMap/Secret references resolve; the vision
  Deployment asks for nvidia.com/gpu, pins a GPU node pool and keeps --concurrency 1;
  mounted Secrets stay readable by the non-root containers that mount them;
  every PodDisruptionBudget selects a workload, every workload has one, and none blocks all
  evictions; the ScaledObject targets an existing Deployment (which leaves `replicas` to
  it), on stream ORCH_WORK / consumer orch-vision-default, via a Service with port 8222;
  Services select pods; every slot of the coordinator's chains has a worker; NATS server
  configs include only files a ConfigMap/Secret provides, and `nats-server -t` accepts them;
- docker compose (deploy/docker-compose*.yml): services have an image or a build whose
  Dockerfile and target exist; named volumes, env files, bind sources and depends_on
  resolve; stop_grace_period exceeds each orch service's drain; every chain slot has a worker;
- systemd (deploy/systemd): [Unit]/[Service]/[Install] sections, absolute ExecStart,
  TimeoutStopSec above the drain, KillSignal=SIGTERM, KillMode=mixed, Restart=on-failure,
  a dedicated or dynamic user, hardening (NoNewPrivileges, ProtectSystem=strict, ...),
  environment-file examples; `systemd-analyze verify` when it is installed;
- the Dockerfile names every binary of the workspace, installs Chromium only in its `web`
  stage, runs as a non-root user and copies only from stages it defines.

`kubectl kustomize` (when kubectl is installed) must also render deploy/k8s.

`--self-test` copies deploy/ to a temporary directory, checks that the copy passes, then
breaks it in many ways (one at a time) and asserts that each is caught.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable

try:
    import yaml
except ImportError:  # pragma: no cover - depends on the machine
    try:
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "pyyaml"],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        import yaml  # type: ignore[no-redef]
    except Exception:  # noqa: BLE001 - any failure ends the same way
        print(
            "check_manifests: PyYAML is missing and `python3 -m pip install pyyaml` failed; "
            "install it and run again",
            file=sys.stderr,
        )
        sys.exit(2)

try:
    import tomllib
except ImportError:  # Python < 3.11
    tomllib = None  # type: ignore[assignment]

PROG = "check_manifests"
HERE = Path(__file__).resolve().parent

# Grace periods must exceed the drain by this much: after the drain deadline the process
# still answers what is left with `shutting_down`, flushes telemetry and exits, and a
# SIGKILL in the middle of that loses those replies.
MARGIN_S = 5.0
COORDINATOR = "orch-coordinator"
WORKER_ROLES = {"orch-vision": "vision", "orch-web": "web", "orch-reasoner": "reasoner", "orch-verifier": "verifier"}
# Least-loaded vision dispatch (issue 5): the work-queue stream and the vision consumer
# (read from shared/src/subjects.rs when it defines them).
WORK_STREAM = "ORCH_WORK"
VISION_CONSUMER = "orch-vision-default"
# The coordinator's default fallback chains (coordinator/core/src/config.rs).
DEFAULT_CHAINS = {"reasoner": "kimi_k2,chatgpt,local", "verifier": "chatgpt,local", "vision": "default", "web": "default"}
CHAIN_ENV = {"reasoner": "ORCH_REASONER_CHAIN", "verifier": "ORCH_VERIFIER_CHAIN", "vision": "ORCH_VISION_CHAIN", "web": "ORCH_WEB_CHAIN"}
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet"}
DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
# Hardening every orch systemd unit must carry (key -> accepted values).
SYSTEMD_HARDENING = {
    "NoNewPrivileges": {"yes", "true"},
    "ProtectSystem": {"strict"},
    "ProtectHome": {"yes", "true", "read-only", "tmpfs"},
    "PrivateTmp": {"yes", "true"},
    "ProtectKernelTunables": {"yes", "true"},
    "ProtectKernelModules": {"yes", "true"},
    "ProtectControlGroups": {"yes", "true"},
    "RestrictSUIDSGID": {"yes", "true"},
    "CapabilityBoundingSet": {""},
}


# --------------------------------------------------------------------------------------
# Parsing helpers


# libyaml's parser when PyYAML was built with it (about 5x faster), else pure Python.
_BaseLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _UniqueKeyLoader(_BaseLoader):  # type: ignore[misc, valid-type]
    """A SafeLoader that reports duplicate mapping keys instead of keeping the last."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=deep)
        try:
            hash(key)
        except TypeError:
            continue
        if key in seen:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping", node.start_mark,
                f"duplicate key {key!r} (first at line {seen[key] + 1})", key_node.start_mark,
            )
        seen[key] = key_node.start_mark.line
    loader.flatten_mapping(node)
    return yaml.constructor.SafeConstructor.construct_mapping(loader, node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def parse_orch_duration(s: Any) -> float | None:
    """Seconds of an orch duration (`250ms`, `5s`, `2m`, `1h`, bare = ms), as parse_duration."""
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*(ms|s|m|h)?\s*", str(s))
    if not m:
        return None
    n = float(m.group(1))
    return n * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, None: 0.001}[m.group(2)]


def parse_compose_duration(s: Any) -> float | None:
    """Seconds of a compose duration (Go style: `1m30s`, `105s`, `500ms`)."""
    if isinstance(s, (int, float)):
        return float(s)
    text = str(s).strip()
    parts = re.findall(r"([0-9]+(?:\.[0-9]+)?)(us|ms|s|m|h)", text)
    if not parts or "".join(a + b for a, b in parts) != text:
        return None
    return sum(float(n) * {"us": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}[u] for n, u in parts)


def parse_systemd_timespan(s: str) -> float | None:
    """Seconds of a systemd time span (`45s`, `1min 30s`, bare = seconds); None if infinite/bad."""
    text = s.strip()
    if not text or text == "infinity":
        return None
    units = {
        "us": 1e-6, "usec": 1e-6, "ms": 1e-3, "msec": 1e-3, "s": 1, "sec": 1, "second": 1, "seconds": 1,
        "m": 60, "min": 60, "minute": 60, "minutes": 60, "h": 3600, "hr": 3600, "hour": 3600, "hours": 3600,
    }
    total = 0.0
    pos = 0
    for m in re.finditer(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-z]*)", text):
        if m.start() != pos:
            return None
        unit = m.group(2) or "s"
        if unit not in units:
            return None
        total += float(m.group(1)) * units[unit]
        pos = m.end()
    return total if pos == len(text) else None


def flag_value(args: list[str], flag: str) -> str | None:
    """Value of `--flag VALUE` or `--flag=VALUE` in an argument list (last one wins)."""
    value = None
    for i, a in enumerate(args):
        if a == flag and i + 1 < len(args):
            value = args[i + 1]
        elif a.startswith(flag + "="):
            value = a[len(flag) + 1:]
    return value


def fmt_s(x: float) -> str:
    return f"{x:g}s"


class Workspace:
    """What the manifests must agree with: the binaries and their default drains."""

    def __init__(self, root: Path):
        self.root = root
        self.binaries: set[str] = set()
        self.drain_defaults: dict[str, float] = {}
        self.work_stream = WORK_STREAM
        self.vision_consumer = VISION_CONSUMER
        self.problems: list[str] = []
        self._load()

    def _load(self) -> None:
        manifest = self.root / "Cargo.toml"
        members: list[str] = []
        if manifest.is_file():
            text = manifest.read_text()
            if tomllib is not None:
                members = tomllib.loads(text).get("workspace", {}).get("members", [])
            else:
                block = re.search(r"members\s*=\s*\[(.*?)\]", text, re.S)
                members = re.findall(r'"([^"]+)"', block.group(1)) if block else []
        for member in members:
            self._load_member(self.root / member)
        if not self.binaries:
            self.problems.append(f"{manifest}: no binaries found in the workspace")
        # Default drains, from the flags' definitions, so a changed default is noticed.
        sources = {
            COORDINATOR: self.root / "coordinator/core/src/config.rs",
            "worker": self.root / "workers/runtime/src/args.rs",
        }
        pattern = re.compile(r'env\s*=\s*"ORCH_DRAIN_TIMEOUT"\s*,\s*default_value\s*=\s*"([^"]+)"')
        for key, path in sources.items():
            m = pattern.search(path.read_text()) if path.is_file() else None
            secs = parse_orch_duration(m.group(1)) if m else None
            if secs is None:
                self.problems.append(f"{path}: cannot find the default of ORCH_DRAIN_TIMEOUT (update {PROG}.py)")
                secs = 90.0 if key == COORDINATOR else 30.0
            self.drain_defaults[key] = secs

        # The pull-dispatch names, from shared/src/subjects.rs once they are defined there.
        subjects = self.root / "shared/src/subjects.rs"
        text = subjects.read_text() if subjects.is_file() else ""
        m = re.search(r'pub const STREAM_WORK: &str = "([^"]+)"', text)
        if m:
            self.work_stream = m.group(1)
        m = re.search(r'fn queue_consumer\(.*?format!\("([^"{]*)\{\}-\{\}"', text, re.S)
        if m:
            self.vision_consumer = f"{m.group(1)}vision-default"

    def _load_member(self, member: Path) -> None:
        path = member / "Cargo.toml"
        if not path.is_file():
            return
        text = path.read_text()
        if tomllib is not None:
            data = tomllib.loads(text)
            bins = [b.get("name") for b in data.get("bin", [])]
            package = data.get("package", {}).get("name")
            explicit_main = any(b.get("path") == "src/main.rs" for b in data.get("bin", []))
        else:
            bins = re.findall(r'\[\[bin\]\][^\[]*?name\s*=\s*"([^"]+)"', text, re.S)
            m = re.search(r'\[package\][^\[]*?name\s*=\s*"([^"]+)"', text, re.S)
            package = m.group(1) if m else None
            explicit_main = "src/main.rs" in text
        self.binaries.update(b for b in bins if b)
        if (member / "src/main.rs").is_file() and not explicit_main and package:
            self.binaries.add(package)

    def drain_default(self, binary: str) -> float:
        return self.drain_defaults[COORDINATOR if binary == COORDINATOR else "worker"]


def default_slot(role: str, provider: str | None) -> str:
    """The slot a worker serves without --slot (workers/runtime/src/args.rs)."""
    if role in ("vision", "web"):
        return "default"
    if provider == "local":
        return "local"
    return {"reasoner": "kimi_k2", "verifier": "chatgpt"}[role]


# --------------------------------------------------------------------------------------
# The checker


class Checker:
    def __init__(self, deploy: Path, workspace: Workspace, external_tools: bool = True):
        self.deploy = deploy
        self.ws = workspace
        self.external = external_tools
        self.problems: list[str] = list(workspace.problems)
        self.notes: list[str] = []
        self.files_checked = 0

    def problem(self, where: Path | str, msg: str) -> None:
        if isinstance(where, Path):
            try:
                where = str(where.relative_to(self.deploy))
            except ValueError:
                where = str(where)
        self.problems.append(f"{where}: {msg}")

    def run(self) -> list[str]:
        self.yaml_docs: dict[Path, list[Any]] = {}
        for path in sorted(self.deploy.rglob("*")):
            if path.suffix in (".yaml", ".yml") and path.is_file():
                self.yaml_docs[path] = self.load_yaml(path)
        self.check_dockerfiles()
        self.check_compose()
        self.check_k8s()
        self.check_systemd()
        return self.problems

    def load_yaml(self, path: Path) -> list[Any]:
        self.files_checked += 1
        try:
            return [d for d in yaml.load_all(path.read_text(), Loader=_UniqueKeyLoader) if d is not None]
        except yaml.YAMLError as e:
            self.problem(path, f"invalid YAML: {' '.join(str(e).split())}")
            return []

    # ---------------------------------------------------------------- Dockerfile

    def dockerfile_stages(self, path: Path) -> list[dict]:
        """FROM stages of a Dockerfile, each with its base, name and instruction lines."""
        stages: list[dict] = []
        logical: list[str] = []
        buf = ""
        for raw in path.read_text().splitlines():
            line = raw.rstrip()
            if not buf and (not line.strip() or line.lstrip().startswith("#")):
                continue
            if line.endswith("\\"):
                buf += line[:-1] + " "
                continue
            logical.append(buf + line)
            buf = ""
        if buf:
            logical.append(buf)
        for line in logical:
            m = re.match(r"(?i)^\s*FROM\s+(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?\s*$", line)
            if m:
                stages.append({"base": m.group(1), "name": (m.group(2) or "").lower(), "lines": []})
            elif stages:
                stages[-1]["lines"].append(line.strip())
        return stages

    def check_dockerfiles(self) -> None:
        paths = sorted(p for p in (self.deploy / "docker").glob("Dockerfile*") if p.is_file() and not p.name.endswith(".dockerignore"))
        if not paths:
            self.problem(self.deploy / "docker", "no Dockerfile")
            return
        for path in paths:
            self.files_checked += 1
            text = path.read_text()
            for binary in sorted(self.ws.binaries):
                if not re.search(rf"(?<![\w-]){re.escape(binary)}(?![\w-])", text):
                    self.problem(path, f"does not build or install binary `{binary}`")
            stages = self.dockerfile_stages(path)
            if not stages:
                self.problem(path, "no FROM")
                continue
            names = {s["name"] for s in stages if s["name"]}
            by_name = {s["name"]: s for s in stages if s["name"]}
            if "web" not in names:
                self.problem(path, "no `web` stage (the only image with Chromium)")
            for s in stages:
                for line in s["lines"]:
                    if re.match(r"(?i)^RUN\b", line) and re.search(r"\bchromium\b", line) and s["name"] != "web":
                        self.problem(path, f"stage `{s['name'] or s['base']}` installs chromium; only the `web` stage may")
                    m = re.match(r"(?i)^COPY\s+.*--from=(\S+)", line)
                    if m and m.group(1).lower() not in names and ":" not in m.group(1) and "/" not in m.group(1):
                        self.problem(path, f"COPY --from={m.group(1)}: no such stage")
                base = s["base"]
                if "${" not in base and base.lower() not in names and s is stages[0] and not base.startswith("rust:"):
                    self.problem(path, f"the first stage builds from `{base}`, expected the rust image")
            if "fetch-model.sh" not in text:
                self.problem(path, "does not fetch the local model with deploy/fetch-model.sh")
            # Final images (web and the last stage) run as a non-root user.
            for target in {"web", stages[-1]["name"]} - {""}:
                user = self.stage_user(target, by_name)
                if user is None or user.split(":")[0] in ("root", "0"):
                    self.problem(path, f"stage `{target}` runs as root (add USER)")
            if not any(re.match(r"(?i)^(ENTRYPOINT|CMD)\b", l) for s in stages for l in s["lines"]):
                self.problem(path, "no ENTRYPOINT or CMD")

    def stage_user(self, name: str, by_name: dict[str, dict]) -> str | None:
        seen = set()
        while name in by_name and name not in seen:
            seen.add(name)
            s = by_name[name]
            users = [l.split(None, 1)[1].strip() for l in s["lines"] if re.match(r"(?i)^USER\s+\S", l)]
            if users:
                return users[-1]
            name = s["base"].lower()
        return None

    # ---------------------------------------------------------------- binaries and env

    def orch_binary(self, argv: list[str]) -> str | None:
        """The orch binary an argv runs (skipping wrappers such as tini), if any."""
        for a in argv:
            base = os.path.basename(str(a))
            if base in self.ws.binaries:
                return base
        return None

    def drain_of(self, binary: str, argv: list[str], env: dict[str, str], where: Path | str) -> float:
        flag = flag_value(argv, "--drain-timeout")
        raw = flag if flag is not None else env.get("ORCH_DRAIN_TIMEOUT")
        if raw is None:
            return self.ws.drain_default(binary)
        secs = parse_orch_duration(raw)
        if secs is None:
            self.problem(where, f"drain timeout `{raw}` is not a duration (e.g. 30s)")
            return self.ws.drain_default(binary)
        return secs

    # ---------------------------------------------------------------- compose

    def check_compose(self) -> None:
        files = sorted(p for p in self.deploy.glob("docker-compose*.y*ml"))
        base = self.deploy / "docker-compose.yml"
        if base not in files:
            self.problem(self.deploy, "no docker-compose.yml")
            return
        docs = self.yaml_docs.get(base) or [{}]
        compose = docs[0] if isinstance(docs[0], dict) else {}
        services = compose.get("services") or {}
        if not services:
            self.problem(base, "no services")
            return
        for path in files:
            if path == base:
                continue
            odocs = self.yaml_docs.get(path) or [{}]
            for name in (odocs[0] or {}).get("services", {}) or {}:
                if name not in services:
                    self.problem(path, f"overrides service `{name}`, which docker-compose.yml does not define")
        volumes = compose.get("volumes") or {}
        dockerfiles: dict[Path, set[str]] = {}
        workers: list[tuple[str, str, str]] = []
        coordinator_env: dict[str, str] | None = None
        for name, svc in services.items():
            where = f"{base.name}: service {name}"
            if not isinstance(svc, dict):
                self.problem(base, f"service {name} is not a mapping")
                continue
            profiled = bool(svc.get("profiles"))
            build = svc.get("build")
            if not svc.get("image") and not build:
                self.problem(base, f"service {name}: neither image nor build")
            if build:
                bctx = build if isinstance(build, str) else build.get("context", ".")
                rel = build.get("dockerfile", "Dockerfile") if isinstance(build, dict) else "Dockerfile"
                dockerfile = self.repo_path(bctx, rel)
                if not dockerfile.is_file():
                    self.problem(base, f"service {name}: build Dockerfile {dockerfile} does not exist")
                elif isinstance(build, dict) and build.get("target"):
                    if dockerfile not in dockerfiles:
                        dockerfiles[dockerfile] = {s["name"] for s in self.dockerfile_stages(dockerfile)}
                    if build["target"] not in dockerfiles[dockerfile]:
                        self.problem(base, f"service {name}: build target `{build['target']}` is not a stage of {dockerfile.name}")
            for vol in svc.get("volumes") or []:
                self.check_compose_volume(base, name, vol, volumes, profiled)
            for ef in self.compose_env_files(svc):
                path, required = ef
                if required and not (self.deploy / path).is_file():
                    self.problem(base, f"service {name}: env_file {path} does not exist")
            deps = svc.get("depends_on") or []
            for dep in (deps if isinstance(deps, list) else deps.keys()):
                if dep not in services:
                    self.problem(base, f"service {name}: depends_on unknown service `{dep}`")
                elif not profiled and services[dep].get("profiles"):
                    self.problem(base, f"service {name}: depends on `{dep}`, which only runs with a profile")
                elif isinstance(deps, dict):
                    cond = (deps[dep] or {}).get("condition", "service_started")
                    if cond not in ("service_started", "service_healthy", "service_completed_successfully"):
                        self.problem(base, f"service {name}: depends_on {dep}: unknown condition `{cond}`")
                    if cond == "service_healthy" and not services[dep].get("healthcheck"):
                        self.problem(base, f"service {name}: waits for `{dep}` to be healthy, but it has no healthcheck")
            hc = svc.get("healthcheck")
            if hc and not hc.get("disable"):
                test = hc.get("test")
                if not (isinstance(test, str) or (isinstance(test, list) and test and test[0] in ("CMD", "CMD-SHELL", "NONE"))):
                    self.problem(base, f"service {name}: healthcheck test must be a string or start with CMD/CMD-SHELL")
            argv = self.compose_argv(svc)
            binary = self.orch_binary(argv)
            if binary is None:
                continue
            env = self.compose_env(svc)
            if binary in (COORDINATOR, *WORKER_ROLES):
                drain = self.drain_of(binary, argv, env, where)
                grace_raw = svc.get("stop_grace_period", "10s")
                grace = parse_compose_duration(grace_raw)
                if grace is None:
                    self.problem(base, f"service {name}: stop_grace_period `{grace_raw}` is not a duration")
                elif grace < drain + MARGIN_S:
                    self.problem(base, f"service {name}: stop_grace_period {fmt_s(grace)} must exceed the drain "
                                       f"({fmt_s(drain)}) by at least {fmt_s(MARGIN_S)}")
                if svc.get("stop_signal", "SIGTERM") not in ("SIGTERM", "TERM", 15):
                    self.problem(base, f"service {name}: stop_signal must be SIGTERM (it starts the drain)")
            if binary == COORDINATOR:
                coordinator_env = {**env, **self.chain_flags(argv)}
            elif binary in WORKER_ROLES:
                role = WORKER_ROLES[binary]
                provider = flag_value(argv, "--provider") or env.get("ORCH_PROVIDER")
                slot = flag_value(argv, "--slot") or env.get("ORCH_SLOT") or default_slot(role, provider)
                workers.append((role, slot, name))
                if role == "vision":
                    self.check_vision_concurrency(base, f"service {name}", argv, env)
        if coordinator_env is None:
            self.problem(base, "no coordinator service")
        else:
            self.check_chain_coverage(base, coordinator_env, workers)

    def repo_path(self, context: str, rel: str) -> Path:
        """A file relative to a build context that may be the repository root (`..`).

        The repository is the directory above deploy/, except in the self-test's copies,
        where deploy/ stands alone: paths into deploy/ are mapped onto the copy."""
        ctx = (self.deploy / context).resolve()
        path = (ctx / rel).resolve()
        if ctx == self.deploy.parent.resolve():
            parts = Path(rel).parts
            if parts and parts[0] == "deploy":
                return self.deploy.joinpath(*parts[1:])
        return path

    def check_compose_volume(self, base: Path, name: str, vol: Any, volumes: dict, profiled: bool) -> None:
        if isinstance(vol, str):
            parts = vol.split(":")
            if len(parts) < 2:
                return  # anonymous volume
            source, kind = parts[0], None
        else:
            source, kind = vol.get("source"), vol.get("type")
            if kind not in (None, "volume", "bind") or not source:
                return
        is_path = source.startswith((".", "/", "~", "$"))
        if kind == "volume" or (kind is None and not is_path):
            if source not in volumes:
                self.problem(base, f"service {name}: volume `{source}` is not declared under top-level volumes")
        elif source.startswith("."):
            if not (self.deploy / source).exists():
                msg = f"service {name}: bind source {source} does not exist"
                if profiled:
                    # Compose fails only when that profile is used; owners may add it later.
                    self.notes.append(f"{base.name}: {msg} (profile-only service)")
                else:
                    self.problem(base, msg)

    @staticmethod
    def compose_env_files(svc: dict) -> list[tuple[str, bool]]:
        ef = svc.get("env_file")
        if ef is None:
            return []
        items = ef if isinstance(ef, list) else [ef]
        out = []
        for it in items:
            if isinstance(it, str):
                out.append((it, True))
            elif isinstance(it, dict) and it.get("path"):
                out.append((it["path"], it.get("required", True) is not False))
        return out

    @staticmethod
    def compose_argv(svc: dict) -> list[str]:
        argv: list[str] = []
        for key in ("entrypoint", "command"):
            v = svc.get(key)
            if isinstance(v, str):
                argv += v.split()
            elif isinstance(v, list):
                argv += [str(x) for x in v]
        return argv

    def compose_env(self, svc: dict) -> dict[str, str]:
        env: dict[str, str] = {}
        for path, _ in self.compose_env_files(svc):
            env.update(read_env_file(self.deploy / path))
        e = svc.get("environment") or {}
        if isinstance(e, list):
            for item in e:
                k, _, v = str(item).partition("=")
                env[k] = v
        else:
            env.update({str(k): "" if v is None else str(v) for k, v in e.items()})
        return env

    @staticmethod
    def chain_flags(argv: list[str]) -> dict[str, str]:
        out = {}
        for role, var in CHAIN_ENV.items():
            v = flag_value(argv, f"--{role}-chain")
            if v is not None:
                out[var] = v
        return out

    def check_vision_concurrency(self, where: Path, what: str, argv: list[str], env: dict[str, str]) -> None:
        conc = flag_value(argv, "--concurrency") or env.get("ORCH_CONCURRENCY") or "1"
        if str(conc).strip() != "1":
            self.problem(where, f"{what}: orch-vision must run with --concurrency 1 (one image per GPU), got {conc}")

    def check_chain_coverage(self, where: Path, coordinator_env: dict[str, str], workers: list[tuple[str, str, str]]) -> None:
        served = {(r, s) for r, s, _ in workers}
        for role, default in DEFAULT_CHAINS.items():
            chain = coordinator_env.get(CHAIN_ENV[role], default)
            for slot in [s.strip() for s in chain.split(",") if s.strip()]:
                if (role, slot) not in served:
                    self.problem(where, f"no worker serves {role}/{slot}, which the coordinator's {role} chain names")

    # ---------------------------------------------------------------- Kubernetes

    def check_k8s(self) -> None:
        root = self.deploy / "k8s"
        root_kust = root / "kustomization.yaml"
        if not root_kust.is_file():
            self.problem(root, "no kustomization.yaml")
            return
        self.generated: dict[tuple[str, str], dict[str, str]] = {}
        included: set[Path] = set()
        kust_files: set[Path] = set()
        self.walk_kustomization(root, included, kust_files, set())
        for path in sorted(self.yaml_docs):
            if root not in path.parents:
                continue
            if path in kust_files or path.name.endswith(".example.yaml") or path.name.endswith(".example.yml"):
                continue
            if path not in included:
                self.problem(path, "not listed in any kustomization.yaml (it would never be applied)")
        objects: list[tuple[Path, dict]] = []
        examples: list[tuple[Path, dict]] = []
        for path, docs in self.yaml_docs.items():
            if root not in path.parents or path in kust_files:
                continue
            if path not in included and not path.name.endswith((".example.yaml", ".example.yml")):
                continue
            for doc in docs:
                if not isinstance(doc, dict):
                    self.problem(path, "a document is not a mapping")
                    continue
                missing = [f for f in ("apiVersion", "kind") if not doc.get(f)]
                name = (doc.get("metadata") or {}).get("name")
                if not name:
                    missing.append("metadata.name")
                if missing:
                    self.problem(path, f"{doc.get('kind', 'object')}: missing {', '.join(missing)}")
                    continue
                if not DNS1123.match(str(name)) or len(str(name)) > 253:
                    self.problem(path, f"{doc['kind']}/{name}: metadata.name is not a valid DNS-1123 name")
                (objects if path in included else examples).append((path, doc))
        seen: dict[tuple[str, str], Path] = {}
        for path, doc in objects:
            key = (doc["kind"], doc["metadata"]["name"])
            if key in seen:
                self.problem(path, f"{key[0]}/{key[1]} is also defined in {seen[key].relative_to(self.deploy)}")
            seen[key] = path
        self.k8s_data: dict[tuple[str, str], dict[str, str] | None] = dict(self.generated)
        for _, doc in objects + examples:
            if doc["kind"] in ("ConfigMap", "Secret"):
                data = {**(doc.get("data") or {}), **(doc.get("stringData") or {})}
                self.k8s_data[(doc["kind"], doc["metadata"]["name"])] = {str(k): str(v) for k, v in data.items()}
        workloads = [(p, d) for p, d in objects if d["kind"] in WORKLOAD_KINDS]
        services = [(p, d) for p, d in objects if d["kind"] == "Service"]
        workers: list[tuple[str, str, str]] = []
        coordinator_env: dict[str, str] | None = None
        for path, doc in workloads:
            info = self.check_workload(path, doc, services)
            for binary, argv, env in info:
                if binary == COORDINATOR:
                    coordinator_env = {**env, **self.chain_flags(argv)}
                elif binary in WORKER_ROLES:
                    role = WORKER_ROLES[binary]
                    provider = flag_value(argv, "--provider") or env.get("ORCH_PROVIDER")
                    slot = flag_value(argv, "--slot") or env.get("ORCH_SLOT") or default_slot(role, provider)
                    workers.append((role, slot, doc["metadata"]["name"]))
        self.check_pdbs(objects, workloads)
        self.check_autoscalers(objects, workloads, services)
        self.check_services(services, workloads)
        if coordinator_env is None:
            self.problem(root, "no coordinator Deployment")
        else:
            self.check_chain_coverage(root, coordinator_env, workers)
        for conf in sorted(root.rglob("*.conf")):
            self.check_nats_conf(conf)
        if self.external:
            self.kustomize_render(root)

    def walk_kustomization(self, d: Path, included: set[Path], kust_files: set[Path], visiting: set[Path]) -> None:
        kpath = next((d / n for n in ("kustomization.yaml", "kustomization.yml", "Kustomization") if (d / n).is_file()), None)
        if kpath is None:
            self.problem(d, "directory listed as a resource has no kustomization.yaml")
            return
        if kpath in visiting:
            return
        visiting.add(kpath)
        kust_files.add(kpath)
        docs = self.yaml_docs.get(kpath) or self.load_yaml(kpath)
        k = docs[0] if docs and isinstance(docs[0], dict) else {}
        for field in ("resources", "components"):
            for res in k.get(field) or []:
                if re.match(r"^[a-z]+://|^github\.com/", str(res)):
                    continue
                target = (d / res).resolve()
                if target.is_dir():
                    self.walk_kustomization(target, included, kust_files, visiting)
                elif target.is_file():
                    included.add(target)
                    if target not in self.yaml_docs:
                        self.yaml_docs[target] = self.load_yaml(target)
                else:
                    self.problem(kpath, f"{field} entry `{res}` does not exist")
        for field in ("patches", "patchesStrategicMerge"):
            for p in k.get(field) or []:
                ppath = p.get("path") if isinstance(p, dict) else (p if isinstance(p, str) and "\n" not in p else None)
                if ppath and not (d / ppath).is_file():
                    self.problem(kpath, f"{field} entry `{ppath}` does not exist")
        for field, kind in (("configMapGenerator", "ConfigMap"), ("secretGenerator", "Secret")):
            for gen in k.get(field) or []:
                name = gen.get("name")
                if not name:
                    self.problem(kpath, f"{field} entry without a name")
                    continue
                data: dict[str, str] = {}
                for lit in gen.get("literals") or []:
                    key, _, val = str(lit).partition("=")
                    data[key] = val
                for f in gen.get("files") or []:
                    key, _, src = str(f).partition("=") if "=" in str(f) else (os.path.basename(str(f)), "", str(f))
                    if not (d / src).is_file():
                        self.problem(kpath, f"{field} {name}: file `{src}` does not exist")
                    data[key] = ""
                for e in gen.get("envs") or []:
                    if not (d / e).is_file():
                        self.problem(kpath, f"{field} {name}: env file `{e}` does not exist")
                    else:
                        data.update(read_env_file(d / e))
                self.generated[(kind, name)] = data

    def pod_env(self, container: dict, where: str, path: Path) -> dict[str, str]:
        """The container's environment as far as the manifests tell (env overrides envFrom)."""
        env: dict[str, str] = {}
        for ef in container.get("envFrom") or []:
            for ref_key, kind in (("configMapRef", "ConfigMap"), ("secretRef", "Secret")):
                ref = ef.get(ref_key)
                if ref is None:
                    continue
                data = self.k8s_data.get((kind, ref.get("name")))
                if data is None and (kind, ref.get("name")) not in self.k8s_data:
                    if not ref.get("optional"):
                        self.problem(path, f"{where}: envFrom {kind} `{ref.get('name')}` is not defined")
                else:
                    env.update({(ef.get("prefix") or "") + k: v for k, v in (data or {}).items()})
        for e in container.get("env") or []:
            if "name" not in e:
                self.problem(path, f"{where}: env entry without a name")
                continue
            if "value" in e:
                env[e["name"]] = str(e["value"])
            vf = e.get("valueFrom") or {}
            for ref_key, kind in (("configMapKeyRef", "ConfigMap"), ("secretKeyRef", "Secret")):
                ref = vf.get(ref_key)
                if ref is None:
                    continue
                key = (kind, ref.get("name"))
                if key not in self.k8s_data:
                    if not ref.get("optional"):
                        self.problem(path, f"{where}: env {e['name']}: {kind} `{ref.get('name')}` is not defined")
                elif self.k8s_data[key] is not None and ref.get("key") not in self.k8s_data[key] and not ref.get("optional"):
                    self.problem(path, f"{where}: env {e['name']}: {kind} `{ref.get('name')}` has no key `{ref.get('key')}`")
                elif self.k8s_data[key]:
                    env[e["name"]] = self.k8s_data[key].get(ref.get("key"), "")
        return env

    def check_workload(self, path: Path, doc: dict, services: list[tuple[Path, dict]]) -> list[tuple[str, list[str], dict[str, str]]]:
        kind, name = doc["kind"], doc["metadata"]["name"]
        obj = f"{kind}/{name}"
        spec = doc.get("spec") or {}
        template = spec.get("template") or {}
        labels = (template.get("metadata") or {}).get("labels") or {}
        match = (spec.get("selector") or {}).get("matchLabels") or {}
        if not match:
            self.problem(path, f"{obj}: spec.selector.matchLabels is empty")
        elif any(labels.get(k) != v for k, v in match.items()):
            self.problem(path, f"{obj}: spec.selector {match} does not match the pod template labels {labels}")
        pod = template.get("spec") or {}
        containers = pod.get("containers") or []
        inits = pod.get("initContainers") or []
        if not containers:
            self.problem(path, f"{obj}: no containers")
        volume_names = {v.get("name") for v in pod.get("volumes") or []}
        volume_names |= {(t.get("metadata") or {}).get("name") for t in spec.get("volumeClaimTemplates") or []}
        for v in pod.get("volumes") or []:
            for src, kind_ in (("configMap", "ConfigMap"), ("secret", "Secret")):
                if src in v:
                    ref = v[src].get("name") if src == "configMap" else v[src].get("secretName")
                    if (kind_, ref) not in self.k8s_data and not v[src].get("optional"):
                        self.problem(path, f"{obj}: volume {v.get('name')}: {kind_} `{ref}` is not defined")
        grace = pod.get("terminationGracePeriodSeconds", 30)
        pod_sc = pod.get("securityContext") or {}
        self.check_volume_modes(path, obj, pod, inits + containers)
        found: list[tuple[str, list[str], dict[str, str]]] = []
        gpu = False
        for c in inits + containers:
            cname = c.get("name") or "?"
            where = f"{obj} container {cname}"
            if not c.get("image"):
                self.problem(path, f"{where}: no image")
            res = c.get("resources") or {}
            for section in ("requests", "limits"):
                for r in ("cpu", "memory"):
                    if r not in (res.get(section) or {}):
                        self.problem(path, f"{where}: resources.{section}.{r} is not set")
            if str((res.get("limits") or {}).get("nvidia.com/gpu", "0")) not in ("0", ""):
                gpu = True
            for vm in c.get("volumeMounts") or []:
                if vm.get("name") not in volume_names:
                    self.problem(path, f"{where}: volumeMount `{vm.get('name')}` has no volume")
            argv = [str(a) for a in (c.get("command") or []) + (c.get("args") or [])]
            env = self.pod_env(c, where, path)
            binary = self.orch_binary(argv)
            if binary is None:
                if str(c.get("image", "")).split(":")[0].split("/")[-1].startswith("orch"):
                    self.problem(path, f"{where}: runs the orch image without naming a binary in command/args")
                continue
            if c in inits and c.get("restartPolicy") != "Always":
                continue
            sc = c.get("securityContext") or {}
            if not (sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True):
                self.problem(path, f"{where}: set runAsNonRoot: true (the image runs as uid 10001)")
            if binary in (COORDINATOR, *WORKER_ROLES):
                drain = self.drain_of(binary, argv, env, f"{path.relative_to(self.deploy)}: {where}")
                if not isinstance(grace, (int, float)) or grace < drain + MARGIN_S:
                    self.problem(path, f"{obj}: terminationGracePeriodSeconds {grace} must exceed the drain of "
                                       f"{cname} ({fmt_s(drain)}) by at least {fmt_s(MARGIN_S)}")
            if binary == "orch-vision":
                self.check_vision_concurrency(path, where, argv, env)
            found.append((binary, argv, env))
        if any(b == "orch-vision" for b, _, _ in found):
            if not gpu:
                self.problem(path, f"{obj}: a vision pod must request a GPU (resources.limits nvidia.com/gpu)")
            affinity = ((pod.get("affinity") or {}).get("nodeAffinity"))
            if not pod.get("nodeSelector") and not affinity:
                self.problem(path, f"{obj}: vision pods need a nodeSelector or nodeAffinity for the GPU node pool")
            if not pod.get("tolerations"):
                self.problem(path, f"{obj}: vision pods need tolerations for the GPU node pool's taint")
        if kind == "StatefulSet":
            svc_name = spec.get("serviceName")
            svc = next((d for _, d in services if d["metadata"]["name"] == svc_name), None)
            if svc is None:
                self.problem(path, f"{obj}: serviceName `{svc_name}` is not a Service here")
            elif (svc.get("spec") or {}).get("clusterIP") != "None":
                self.problem(path, f"{obj}: serviceName `{svc_name}` must be a headless Service (clusterIP: None)")
        return found

    def check_volume_modes(self, path: Path, obj: str, pod: dict, containers: list[dict]) -> None:
        """A Secret/ConfigMap volume with a restrictive defaultMode must stay readable by
        the non-root users that mount it (group-readable plus fsGroup)."""
        pod_sc = pod.get("securityContext") or {}
        for v in pod.get("volumes") or []:
            src = v.get("secret") or v.get("configMap")
            if not src or "defaultMode" not in src:
                continue
            mode = src["defaultMode"]
            if not isinstance(mode, int) or mode & 0o004:
                continue
            group_ok = bool(mode & 0o040) and pod_sc.get("fsGroup") is not None
            for c in containers:
                if not any(m.get("name") == v.get("name") for m in c.get("volumeMounts") or []):
                    continue
                uid = (c.get("securityContext") or {}).get("runAsUser", pod_sc.get("runAsUser"))
                if uid not in (None, 0) and not group_ok:
                    self.problem(path, f"{obj}: volume {v.get('name')} (defaultMode {oct(mode)}) is unreadable for "
                                       f"container {c.get('name')} (uid {uid}): make it group-readable and set fsGroup")

    def check_pdbs(self, objects: list[tuple[Path, dict]], workloads: list[tuple[Path, dict]]) -> None:
        covered: set[str] = set()
        for path, doc in objects:
            if doc["kind"] != "PodDisruptionBudget":
                continue
            obj = f"PodDisruptionBudget/{doc['metadata']['name']}"
            spec = doc.get("spec") or {}
            match = (spec.get("selector") or {}).get("matchLabels") or {}
            if ("minAvailable" in spec) == ("maxUnavailable" in spec):
                self.problem(path, f"{obj}: set exactly one of minAvailable and maxUnavailable")
            targets = [d for _, d in workloads if match and all(
                ((d["spec"].get("template") or {}).get("metadata") or {}).get("labels", {}).get(k) == v for k, v in match.items())]
            if not targets:
                self.problem(path, f"{obj}: selector {match} selects no Deployment/StatefulSet")
            for t in targets:
                covered.add(f"{t['kind']}/{t['metadata']['name']}")
                replicas = t["spec"].get("replicas")
                min_av = spec.get("minAvailable")
                if isinstance(min_av, int) and isinstance(replicas, int) and min_av >= replicas:
                    self.problem(path, f"{obj}: minAvailable {min_av} >= replicas {replicas} of "
                                       f"{t['kind']}/{t['metadata']['name']}: no pod could ever be evicted")
                if spec.get("maxUnavailable") in (0, "0", "0%"):
                    self.problem(path, f"{obj}: maxUnavailable 0 blocks every node drain")
        for path, d in workloads:
            key = f"{d['kind']}/{d['metadata']['name']}"
            if key not in covered:
                self.problem(path, f"{key}: no PodDisruptionBudget selects it")

    def check_autoscalers(self, objects: list[tuple[Path, dict]], workloads: list[tuple[Path, dict]],
                          services: list[tuple[Path, dict]]) -> None:
        deployments = {d["metadata"]["name"]: d for _, d in workloads if d["kind"] == "Deployment"}
        targeted: dict[str, str] = {}
        vision_scaled = False
        for path, doc in objects:
            kind = doc["kind"]
            if kind not in ("ScaledObject", "HorizontalPodAutoscaler"):
                continue
            obj = f"{kind}/{doc['metadata']['name']}"
            ref = (doc.get("spec") or {}).get("scaleTargetRef") or {}
            tkind, tname = ref.get("kind", "Deployment"), ref.get("name")
            target = deployments.get(tname) if tkind == "Deployment" else None
            if target is None:
                self.problem(path, f"{obj}: scaleTargetRef {tkind}/{tname} is not a Deployment here")
                continue
            if tname in targeted:
                self.problem(path, f"{obj}: Deployment/{tname} is already scaled by {targeted[tname]}")
            targeted[tname] = obj
            if "replicas" in target["spec"]:
                self.problem(path, f"{obj}: Deployment/{tname} sets spec.replicas, which every apply would reset "
                                   "under the autoscaler; leave it out")
            if kind != "ScaledObject":
                continue
            argvs = [c.get("args", []) + c.get("command", []) for c in target["spec"]["template"]["spec"].get("containers", [])]
            is_vision = any(self.orch_binary([str(a) for a in argv]) == "orch-vision" for argv in argvs)
            triggers = [t for t in (doc["spec"].get("triggers") or []) if t.get("type") == "nats-jetstream"]
            if is_vision:
                vision_scaled = True
                if not triggers:
                    self.problem(path, f"{obj}: the vision ScaledObject needs a nats-jetstream trigger")
            for t in triggers:
                md = t.get("metadata") or {}
                if is_vision and md.get("stream") != self.ws.work_stream:
                    self.problem(path, f"{obj}: trigger stream `{md.get('stream')}` must be {self.ws.work_stream}")
                if is_vision and md.get("consumer") != self.ws.vision_consumer:
                    self.problem(path, f"{obj}: trigger consumer `{md.get('consumer')}` must be {self.ws.vision_consumer}")
                if not md.get("account"):
                    self.problem(path, f"{obj}: trigger needs an account (\"$G\" without NATS accounts)")
                try:
                    if int(str(md.get("lagThreshold"))) < 1:
                        raise ValueError
                except ValueError:
                    self.problem(path, f"{obj}: lagThreshold `{md.get('lagThreshold')}` must be a positive integer")
                endpoint = str(md.get("natsServerMonitoringEndpoint", ""))
                host, _, port = endpoint.rpartition(":")
                svc = next((d for _, d in services if d["metadata"]["name"] == host.split(".")[0]), None)
                if port != "8222" or svc is None or 8222 not in [p.get("port") for p in svc["spec"].get("ports", [])]:
                    self.problem(path, f"{obj}: natsServerMonitoringEndpoint `{endpoint}` must be a Service here "
                                       "exposing the NATS monitoring port 8222")
        for _, d in workloads:
            argvs = [c.get("args", []) + c.get("command", []) for c in d["spec"]["template"]["spec"].get("containers", [])]
            if any(self.orch_binary([str(a) for a in argv]) == "orch-vision" for argv in argvs) and not vision_scaled:
                self.problem(self.deploy / "k8s", f"{d['kind']}/{d['metadata']['name']}: no ScaledObject scales the vision workers")

    def check_services(self, services: list[tuple[Path, dict]], workloads: list[tuple[Path, dict]]) -> None:
        for path, svc in services:
            obj = f"Service/{svc['metadata']['name']}"
            sel = (svc.get("spec") or {}).get("selector") or {}
            pods = [((d["spec"].get("template") or {}).get("spec") or {}) for _, d in workloads if sel and all(
                ((d["spec"].get("template") or {}).get("metadata") or {}).get("labels", {}).get(k) == v for k, v in sel.items())]
            if not pods:
                self.problem(path, f"{obj}: selector {sel} selects no pods")
                continue
            port_names = {p.get("name") for pod in pods for c in pod.get("containers", []) for p in c.get("ports") or []}
            for p in svc["spec"].get("ports") or []:
                tp = p.get("targetPort")
                if isinstance(tp, str) and tp not in port_names:
                    self.problem(path, f"{obj}: targetPort `{tp}` is not a named container port")

    def check_nats_conf(self, conf: Path) -> None:
        """A NATS server config: its includes come from a ConfigMap/Secret defined here
        (mounted beside it), and `nats-server -t` accepts the whole (when installed)."""
        self.files_checked += 1
        text = conf.read_text()
        with tempfile.TemporaryDirectory() as tmp:
            cdir = Path(tmp) / "config"
            cdir.mkdir()
            shutil.copy(conf, cdir / conf.name)
            for inc in re.findall(r'^\s*include\s+"?([^"\s;]+)"?', text, re.M):
                target = (cdir / inc).resolve()
                if Path(tmp).resolve() not in target.parents:
                    self.problem(conf, f"include {inc}: must stay beside the config's mount")
                    continue
                content = next((data[target.name] for data in self.k8s_data.values()
                                if data and target.name in data), None)
                if content is None:
                    self.problem(conf, f"include {inc}: no ConfigMap or Secret here (or in *.example.yaml) has a key `{target.name}`")
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(content)
            if not self.external:
                return
            tool = shutil.which("nats-server") or next(
                (str(p) for p in [Path.home() / ".local/bin/nats-server"] if p.is_file()), None)
            if tool is None:
                self.notes.append("nats-server not found: NATS config test skipped")
                return
            env = dict(os.environ)
            for var in set(re.findall(r"\$([A-Za-z_][A-Za-z0-9_]*)", text)):
                env.setdefault(var, "check-0")
            r = subprocess.run([tool, "-t", "-c", str(cdir / conf.name)], capture_output=True, text=True, env=env, timeout=60)
            if r.returncode != 0:
                first = ((r.stderr + r.stdout).strip().splitlines() or ["(no output)"])[-1]
                self.problem(conf, f"`nats-server -t` rejects it: {first}")

    def kustomize_render(self, root: Path) -> None:
        kubectl = shutil.which("kubectl")
        if kubectl is None:
            self.notes.append("kubectl not found: `kubectl kustomize` render skipped")
            return
        r = subprocess.run([kubectl, "kustomize", str(root)], capture_output=True, text=True, timeout=120)
        if r.returncode != 0:
            first = (r.stderr.strip().splitlines() or ["(no output)"])[0]
            self.problem(root, f"`kubectl kustomize` failed: {first}")

    # ---------------------------------------------------------------- systemd

    def check_systemd(self) -> None:
        d = self.deploy / "systemd"
        units = sorted(p for p in d.glob("*") if p.suffix in (".service", ".target", ".socket", ".timer"))
        if not units:
            self.problem(d, "no systemd units")
            return
        sysusers: set[str] = set()
        for p in d.glob("*.sysusers.conf"):
            for line in p.read_text().splitlines():
                parts = line.split()
                if len(parts) >= 2 and parts[0] == "u":
                    sysusers.add(parts[1])
        have_orch_service = False
        for path in units:
            self.files_checked += 1
            sections = parse_unit(path.read_text())
            if sections is None:
                self.problem(path, "not a unit file (a line outside any [Section])")
                continue
            required = ["Unit", "Install"] + (["Service"] if path.suffix == ".service" else [])
            for s in required:
                if s not in sections:
                    self.problem(path, f"missing [{s}] section")
            if path.suffix != ".service" or "Service" not in sections:
                continue
            svc = sections["Service"]
            if "@." in path.name and "%i" not in path.read_text() and "%I" not in path.read_text():
                self.problem(path, "a template unit that never uses its instance (%i)")
            execs = svc.get("ExecStart", [])
            if len(execs) != 1:
                self.problem(path, "needs exactly one ExecStart=")
                continue
            argv = execs[0].lstrip("-@:+!").split()
            if not argv or not argv[0].startswith("/"):
                self.problem(path, "ExecStart= must start with an absolute path")
                continue
            if "TimeoutStopSec" not in svc:
                self.problem(path, "set TimeoutStopSec= explicitly (the default 90s has nothing to do with the drain)")
            binary = self.orch_binary(argv)
            if binary is None:
                continue
            have_orch_service = True
            env = {}
            for line in svc.get("Environment", []):
                for item in split_systemd_words(line):
                    k, _, v = item.partition("=")
                    env[k] = v
            drain = self.drain_of(binary, argv, env, path.name)
            timeout = parse_systemd_timespan(svc.get("TimeoutStopSec", ["90s"])[-1])
            if timeout is None or timeout < drain + MARGIN_S:
                self.problem(path, f"TimeoutStopSec={svc.get('TimeoutStopSec', ['(default 90s)'])[-1]} must exceed the "
                                   f"drain ({fmt_s(drain)}) by at least {fmt_s(MARGIN_S)}")
            if svc.get("KillSignal", [""])[-1] not in ("SIGTERM", "TERM", "15"):
                self.problem(path, "KillSignal=SIGTERM must be set (SIGTERM starts the drain)")
            if svc.get("KillMode", ["control-group"])[-1] != "mixed":
                self.problem(path, "KillMode=mixed: with the default, children (local model, Chromium) get SIGTERM "
                                   "at once and in-flight work fails instead of draining")
            if svc.get("Restart", [""])[-1] != "on-failure":
                self.problem(path, "Restart=on-failure must be set")
            if not svc.get("EnvironmentFile"):
                self.problem(path, "no EnvironmentFile= (settings and secrets come from one)")
            for ef in svc.get("EnvironmentFile", []):
                self.check_env_example(path, ef)
            user = svc.get("User", [""])[-1]
            if svc.get("DynamicUser", ["no"])[-1] not in ("yes", "true") and (not user or user in ("root", "0")):
                self.problem(path, "runs as root: set User= (a dedicated user) or DynamicUser=yes")
            elif user and sysusers and user not in sysusers:
                self.problem(path, f"User={user} is not created by any *.sysusers.conf here")
            for key, ok in SYSTEMD_HARDENING.items():
                if key not in svc or svc[key][-1] not in ok:
                    want = " or ".join(sorted(v or "(empty)" for v in ok))
                    self.problem(path, f"hardening: {key}= must be {want}")
        if not have_orch_service:
            self.problem(d, "no unit runs an orch binary")
        if self.external:
            self.systemd_verify(units)

    def check_env_example(self, unit: Path, env_file: str) -> None:
        path = env_file.lstrip("-")
        if not path.startswith("/etc/orch/"):
            return
        rel = path[len("/etc/orch/"):]
        pattern = re.escape(rel).replace("%i", ".+").replace("%I", ".+")
        examples = [p.name for p in (unit.parent / "env").glob("*.example")]
        if not any(re.fullmatch(pattern + r"\.example", e) for e in examples):
            self.problem(unit, f"EnvironmentFile={env_file}: no example env/{rel}.example to copy from")

    def systemd_verify(self, units: list[Path]) -> None:
        tool = shutil.which("systemd-analyze")
        if tool is None:
            self.notes.append("systemd-analyze not found: unit syntax verification skipped")
            return
        with tempfile.TemporaryDirectory() as tmp:
            paths = []
            for u in units:
                name = u.name.replace("@.", "@check.") if "@." in u.name else u.name
                shutil.copy(u, Path(tmp) / name)
                paths.append(str(Path(tmp) / name))
            r = subprocess.run([tool, "verify", "--man=no", *paths], capture_output=True, text=True, timeout=120)
            for line in (r.stdout + r.stderr).splitlines():
                line = line.strip()
                # The binaries are not installed here; everything else is a real finding.
                if not line or "is not executable" in line or "Failed to prepare filename" in line:
                    continue
                self.problems.append(f"systemd-analyze verify: {line.replace(tmp + '/', 'systemd/')}")


def split_systemd_words(line: str) -> list[str]:
    """Splits an Environment= value into assignments, honouring double quotes."""
    out, cur, quoted = [], "", False
    for ch in line:
        if ch == '"':
            quoted = not quoted
        elif ch.isspace() and not quoted:
            if cur:
                out.append(cur)
            cur = ""
        else:
            cur += ch
    if cur:
        out.append(cur)
    return out


def parse_unit(text: str) -> dict[str, dict[str, list[str]]] | None:
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if pending:
            line = pending + " " + line
            pending = ""
        if not line or line.startswith(("#", ";")):
            continue
        if line.endswith("\\"):
            pending = line[:-1]
            continue
        m = re.fullmatch(r"\[([A-Za-z0-9-]+)\]", line)
        if m:
            current = sections.setdefault(m.group(1), {})
            continue
        if current is None or "=" not in line:
            return None
        k, _, v = line.partition("=")
        current.setdefault(k.strip(), []).append(v.strip())
    return sections


def read_env_file(path: Path) -> dict[str, str]:
    env: dict[str, str] = {}
    if not path.is_file():
        return env
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        k, _, v = line.partition("=")
        env[k.strip()] = v.strip().strip('"').strip("'")
    return env


# --------------------------------------------------------------------------------------
# Self-test: break a copy of deploy/ in known ways and expect each to be caught.


def _edit_text(rel: str, old: str, new: str) -> Callable[[Path], bool]:
    def apply(d: Path) -> bool:
        p = d / rel
        text = p.read_text()
        if old not in text:
            return False
        p.write_text(text.replace(old, new, 1))
        return True
    return apply


def _edit_yaml(rel: str, fn: Callable[[list[Any]], bool]) -> Callable[[Path], bool]:
    def apply(d: Path) -> bool:
        p = d / rel
        docs = list(yaml.safe_load_all(p.read_text()))
        if not fn(docs):
            return False
        p.write_text(yaml.safe_dump_all(docs, sort_keys=False))
        return True
    return apply


def _find(docs: list[Any], kind: str) -> dict:
    return next(d for d in docs if isinstance(d, dict) and d.get("kind") == kind)


def _strip_gpu(docs: list[Any]) -> bool:
    pod = _find(docs, "Deployment")["spec"]["template"]["spec"]
    hit = False
    for c in pod.get("initContainers", []) + pod.get("containers", []):
        for section in ("requests", "limits"):
            if (c.get("resources") or {}).get(section, {}).pop("nvidia.com/gpu", None) is not None:
                hit = True
    return hit


def _set(path_keys: list[Any], value: Any, kind: str) -> Callable[[list[Any]], bool]:
    def fn(docs: list[Any]) -> bool:
        node = _find(docs, kind)
        for k in path_keys[:-1]:
            node = node[k]
        if value is _DELETE:
            return node.pop(path_keys[-1], None) is not None
        node[path_keys[-1]] = value
        return True
    return fn


_DELETE = object()


def _drop_section(rel: str, section: str) -> Callable[[Path], bool]:
    def apply(d: Path) -> bool:
        p = d / rel
        text = p.read_text()
        m = re.search(rf"^\[{section}\]\n(?:(?!^\[).*\n?)*", text, re.M)
        if not m:
            return False
        p.write_text(text[: m.start()] + text[m.end():])
        return True
    return apply


def _remove_file_and_listing(rel_file: str, listing: str) -> Callable[[Path], bool]:
    def apply(d: Path) -> bool:
        k = d / "k8s/kustomization.yaml"
        text = k.read_text()
        if listing not in text or not (d / rel_file).is_file():
            return False
        k.write_text(text.replace(listing, "", 1))
        (d / rel_file).unlink()
        return True
    return apply


def _remove_word(rel: str, word: str) -> Callable[[Path], bool]:
    def apply(d: Path) -> bool:
        p = d / rel
        text = p.read_text()
        new = re.sub(rf"(?<![\w-]){re.escape(word)}(?![\w-])", "", text)
        if new == text:
            return False
        p.write_text(new)
        return True
    return apply


def mutations() -> list[tuple[str, Callable[[Path], bool], str]]:
    """(what breaks, how, a phrase the resulting problem must contain)."""
    vision_pod = ["spec", "template", "spec"]
    return [
        ("vision Deployment without a GPU", _edit_yaml("k8s/workers/vision.yaml", _strip_gpu), "nvidia.com/gpu"),
        ("vision Deployment without GPU tolerations",
         _edit_yaml("k8s/workers/vision.yaml", _set(vision_pod + ["tolerations"], _DELETE, "Deployment")), "tolerations"),
        ("coordinator grace period below its 90s drain",
         _edit_text("k8s/coordinator.yaml", "terminationGracePeriodSeconds: 105", "terminationGracePeriodSeconds: 60"),
         "terminationGracePeriodSeconds"),
        ("worker drain raised without its grace period",
         _edit_yaml("k8s/workers/reasoner-kimi-k2.yaml", lambda docs: _set_env(docs, "ORCH_DRAIN_TIMEOUT", "120s")),
         "terminationGracePeriodSeconds"),
        ("Deployment selector not matching its pods",
         _edit_yaml("k8s/coordinator.yaml", _set(["spec", "selector", "matchLabels"], {"app.kubernetes.io/name": "nope"}, "Deployment")),
         "does not match the pod template labels"),
        ("container without resources",
         _edit_yaml("k8s/workers/reasoner-local.yaml", lambda docs: _find(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0].pop("resources", None) is not None),
         "resources."),
        ("object without metadata.name",
         _edit_yaml("k8s/namespace.yaml", _set(["metadata", "name"], _DELETE, "Namespace")), "metadata.name"),
        ("YAML that does not parse", _edit_text("k8s/coordinator.yaml", "kind: Deployment", "kind: [Deployment"), "invalid YAML"),
        ("duplicate key", _edit_text("k8s/coordinator.yaml", "  replicas: 2\n", "  replicas: 2\n  replicas: 3\n"), "duplicate key"),
        ("password file unreadable by the non-root container",
         _edit_text("k8s/coordinator.yaml", "defaultMode: 0440", "defaultMode: 0400"), "unreadable"),
        ("PDB selecting nothing",
         _edit_yaml("k8s/workers/web.yaml", _set(["spec", "selector", "matchLabels"], {"app.kubernetes.io/name": "orch-webb"}, "PodDisruptionBudget")),
         "selects no Deployment"),
        ("PDB that blocks every eviction",
         _edit_yaml("k8s/coordinator.yaml", _set(["spec", "minAvailable"], 2, "PodDisruptionBudget")), "no pod could ever be evicted"),
        ("ScaledObject on the wrong consumer",
         _edit_text("k8s/workers/vision.yaml", "consumer: orch-vision-default", "consumer: orch-vision"), VISION_CONSUMER),
        ("ScaledObject on the wrong stream",
         _edit_text("k8s/workers/vision.yaml", "stream: ORCH_WORK", "stream: ORCH_TASKS"), WORK_STREAM),
        ("ScaledObject targeting a missing Deployment",
         _edit_yaml("k8s/workers/vision.yaml", _set(["spec", "scaleTargetRef", "name"], "orch-visio", "ScaledObject")), "scaleTargetRef"),
        ("autoscaled Deployment with fixed replicas",
         _edit_yaml("k8s/workers/vision.yaml", _set(["spec", "replicas"], 1, "Deployment")), "spec.replicas"),
        ("kustomization listing a missing file",
         _edit_text("k8s/kustomization.yaml", "  - coordinator.yaml\n", "  - coordinator.yaml\n  - workers/missing.yaml\n"), "does not exist"),
        ("manifest not listed in the kustomization",
         _edit_text("k8s/kustomization.yaml", "  - workers/web.yaml\n", ""), "not listed in any kustomization"),
        ("a slot of the chain without a worker",
         _remove_file_and_listing("k8s/workers/verifier-local.yaml", "  - workers/verifier-local.yaml\n"), "verifier/local"),
        ("reference to an undefined Secret",
         _edit_text("k8s/workers/reasoner-kimi-k2.yaml", "name: orch-model-keys", "name: orch-model-keyz"), "orch-model-keyz"),
        ("NATS config including a file no Secret provides",
         _edit_text("k8s/nats/nats.conf", 'include "../auth/accounts.conf"', 'include "../auth/auth.conf"'), "auth.conf"),
        ("compose grace period below the coordinator's drain",
         _edit_text("docker-compose.yml", "stop_grace_period: 105s", "stop_grace_period: 30s"), "stop_grace_period"),
        ("compose volume not declared",
         _edit_text("docker-compose.yml", "  ollama-models:\n", ""), "not declared under top-level volumes"),
        ("compose build target missing from the Dockerfile",
         _edit_text("docker-compose.yml", "target: web", "target: webb"), "build target"),
        ("compose vision worker with concurrency > 1",
         _edit_text("docker-compose.yml", 'ORCH_CONCURRENCY: "1"', 'ORCH_CONCURRENCY: "4"'), "--concurrency 1"),
        ("systemd unit without [Install]", _drop_section("systemd/orch-coordinator.service", "Install"), "[Install]"),
        ("systemd stop timeout below the drain",
         _edit_text("systemd/orch-reasoner@.service", "\nTimeoutStopSec=45s", "\nTimeoutStopSec=20s"), "TimeoutStopSec"),
        ("systemd unit without hardening",
         _edit_text("systemd/orch-web@.service", "\nProtectSystem=strict", "\nProtectSystem=full"), "ProtectSystem"),
        ("systemd unit signalling the whole cgroup",
         _edit_text("systemd/orch-verifier@.service", "\nKillMode=mixed", "\nKillMode=control-group"), "KillMode=mixed"),
        ("Dockerfile missing a binary", _remove_word("docker/Dockerfile", "orch-verifier"), "orch-verifier"),
        ("Chromium outside the web stage",
         _edit_text("docker/Dockerfile", "ca-certificates tini", "ca-certificates chromium tini"), "chromium"),
    ]


def _set_env(docs: list[Any], name: str, value: str) -> bool:
    c = _find(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    for e in c.get("env", []):
        if e.get("name") == name:
            e["value"] = value
            return True
    return False


def self_test(deploy: Path, ws: Workspace) -> int:
    failures: list[str] = []
    with tempfile.TemporaryDirectory(prefix="check-manifests-") as tmp:
        def fresh() -> Path:
            d = Path(tmp) / f"deploy-{len(os.listdir(tmp))}"
            shutil.copytree(deploy, d, ignore=shutil.ignore_patterns("__pycache__"))
            return d

        pristine = Checker(fresh(), ws, external_tools=False).run()
        if pristine:
            failures.append("the unmodified copy does not pass:\n    " + "\n    ".join(pristine))
        cases = mutations()
        for what, apply, expect in cases:
            d = fresh()
            if not apply(d):
                failures.append(f"{what}: the mutation no longer applies (update the self-test)")
                continue
            problems = Checker(d, ws, external_tools=False).run()
            if not any(expect in p for p in problems):
                got = "\n    ".join(problems) or "(no problem reported)"
                failures.append(f"{what}: not caught (expected a problem mentioning `{expect}`); got:\n    {got}")
            shutil.rmtree(d)
    for f in failures:
        print(f"{PROG} self-test: FAIL {f}")
    if failures:
        return 1
    print(f"{PROG} self-test: ok (the unmodified copy passes; {len(cases)} broken copies are each caught)")
    return 0


def main(argv: Iterable[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--deploy", type=Path, default=HERE, help="the deploy/ directory to check (default: this script's)")
    ap.add_argument("--workspace", type=Path, default=HERE.parent, help="the Cargo workspace the manifests deploy")
    ap.add_argument("--self-test", action="store_true", help="prove the checker catches broken manifests")
    ap.add_argument("--offline-only", action="store_true", help="skip kubectl kustomize and systemd-analyze")
    args = ap.parse_args(list(argv) if argv is not None else None)
    ws = Workspace(args.workspace.resolve())
    if args.self_test:
        return self_test(args.deploy.resolve(), ws)
    checker = Checker(args.deploy.resolve(), ws, external_tools=not args.offline_only)
    problems = checker.run()
    for n in checker.notes:
        print(f"{PROG}: note: {n}", file=sys.stderr)
    for p in problems:
        print(f"{PROG}: {p}")
    if problems:
        print(f"{PROG}: {len(problems)} problem(s)", file=sys.stderr)
        return 1
    print(f"{PROG}: ok ({checker.files_checked} files; binaries: {', '.join(sorted(ws.binaries))})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
