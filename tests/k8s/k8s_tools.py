"""Helpers for the Kubernetes manifest checks: paths, helm (offline, in a private home),
YAML documents, and a JSON Schema made from a CRD's openAPIV3Schema."""

from __future__ import annotations

import atexit
import copy
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Iterable

import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "riffle"
DEPLOY = REPO / "deploy"
VENV_BIN = REPO / ".venv" / "bin"

# The generated CRDs. RIFFLE_CRD_DIR points the checks at another directory holding
# the same two files (for example a fresh `riffle-operator crd <dir>` output).
CRD_DIR = Path(os.environ.get("RIFFLE_CRD_DIR", REPO / "crds"))
CHART_CRD_DIR = CHART / "crds"
CRD_FILES = ("riffle.dev_clusters.yaml", "riffle.dev_topics.yaml")

# Kubernetes version whose built-in schemas the manifests are validated against: the
# oldest the chart supports that kubernetes-validate ships schemas for.
K8S_VERSION = "1.30.0"
# ...and the newest it ships, so removed or renamed fields show up too.
K8S_VERSIONS = (K8S_VERSION, "1.37.0")

# Operator release as deploy/operator.yaml is rendered from the chart.
RELEASE = "riffle"
NAMESPACE = "riffle-system"

# Labels that only make sense for a Helm release.
HELM_ONLY_LABELS = ("helm.sh/chart", "app.kubernetes.io/managed-by")


def tool(name: str) -> str:
    """Path of a tool installed by scripts/install-k8s-tools.sh."""
    local = VENV_BIN / name
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(
            f"{name} not found in .venv/bin or PATH: run `bash scripts/install-k8s-tools.sh`"
        )
    return found


_helm_home: str | None = None


def helm_env() -> dict[str, str]:
    """Environment for helm: cache, config and data in a private temporary directory, so
    that it runs offline and never touches a user's repositories or plugins."""
    global _helm_home
    if _helm_home is None:
        _helm_home = tempfile.mkdtemp(prefix="riffle-helm-")
        atexit.register(shutil.rmtree, _helm_home, True)
    env = dict(os.environ)
    for var, sub in (
        ("HELM_CACHE_HOME", "cache"),
        ("HELM_CONFIG_HOME", "config"),
        ("HELM_DATA_HOME", "data"),
    ):
        env[var] = os.path.join(_helm_home, sub)
    # No cluster is ever contacted.
    env["KUBECONFIG"] = os.path.join(_helm_home, "no-kubeconfig")
    return env


def run(cmd: list[str], env: dict[str, str] | None = None, timeout: int = 60) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, cwd=REPO)


def helm(*args: str) -> subprocess.CompletedProcess:
    return run([tool("helm"), *args], env=helm_env())


def set_args(values: dict[str, Any] | None) -> list[str]:
    """--set-json arguments for a flat dict of dotted keys."""
    out: list[str] = []
    for key, value in (values or {}).items():
        out += ["--set-json", f"{key}={json.dumps(value, separators=(',', ':'))}"]
    return out


def helm_template(
    values: dict[str, Any] | None = None,
    release: str = RELEASE,
    namespace: str = NAMESPACE,
    extra: Iterable[str] = (),
) -> str:
    proc = helm("template", release, str(CHART), "--namespace", namespace, *set_args(values), *extra)
    if proc.returncode != 0:
        raise AssertionError(f"helm template failed:\n{proc.stderr}")
    return proc.stdout


def load_docs(text: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(text) if d]


def key(doc: dict) -> tuple[str, str, str]:
    meta = doc.get("metadata", {})
    return doc["kind"], meta.get("namespace", ""), meta["name"]


def strip_helm_labels(doc: dict) -> dict:
    """The document without labels that belong to a Helm release."""
    doc = copy.deepcopy(doc)
    holders = [doc.get("metadata", {})]
    template = doc.get("spec", {}).get("template") if isinstance(doc.get("spec"), dict) else None
    if isinstance(template, dict):
        holders.append(template.get("metadata", {}))
    for meta in holders:
        labels = meta.get("labels") or {}
        for label in HELM_ONLY_LABELS:
            labels.pop(label, None)
    return doc


class _IndentedDumper(yaml.SafeDumper):
    """Indents block sequences under their key, as the chart templates do."""

    def increase_indent(self, flow: bool = False, indentless: bool = False):  # noqa: D401
        return super().increase_indent(flow, False)


class _FlowList(list):
    """A list written inline: [a, b, c]."""


_IndentedDumper.add_representer(
    _FlowList, lambda dumper, data: dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=True)
)

# Keys of RBAC rules, written inline as in the chart.
_RULE_KEYS = ("apiGroups", "resources", "resourceNames", "verbs")


def _inline_rule_lists(doc: dict) -> dict:
    doc = copy.deepcopy(doc)
    for rule in doc.get("rules") or []:
        for k in _RULE_KEYS:
            if k in rule:
                rule[k] = _FlowList(rule[k])
    return doc


def dump_docs(docs: Iterable[dict]) -> str:
    return "---\n".join(
        yaml.dump(_inline_rule_lists(d), Dumper=_IndentedDumper, sort_keys=False, default_flow_style=False, width=100)
        for d in docs
    )


# ---------------------------------------------------------------------------------------
# CRD openAPIV3Schema -> JSON Schema


def _to_json_schema(node: Any) -> Any:
    """Turns one structural-schema node into JSON Schema:
    - `nullable: true` admits null (JSON Schema ignores `nullable`);
    - `x-kubernetes-int-or-string` becomes an integer-or-string choice;
    - an object with `properties` and no `additionalProperties` or
      `x-kubernetes-preserve-unknown-fields` rejects unknown fields, as the API server
      does with strict field validation (kubectl's default), instead of pruning them."""
    if isinstance(node, list):
        return [_to_json_schema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: v for k, v in node.items()}
    if isinstance(out.get("properties"), dict):
        out["properties"] = {k: _to_json_schema(v) for k, v in out["properties"].items()}
    if isinstance(out.get("additionalProperties"), dict):
        out["additionalProperties"] = _to_json_schema(out["additionalProperties"])
    for k in ("items", "not"):
        if isinstance(out.get(k), dict):
            out[k] = _to_json_schema(out[k])
    for k in ("anyOf", "oneOf", "allOf"):
        if isinstance(out.get(k), list):
            out[k] = _to_json_schema(out[k])
    if out.get("x-kubernetes-int-or-string") and "anyOf" not in out and "type" not in out:
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if (
        out.get("type") == "object"
        and "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    if out.pop("nullable", False):
        if "type" in out:
            types = out["type"] if isinstance(out["type"], list) else [out["type"]]
            out["type"] = types + ["null"]
            if "enum" in out:
                out["enum"] = list(out["enum"]) + [None]
        elif "anyOf" in out:
            out["anyOf"] = list(out["anyOf"]) + [{"type": "null"}]
    return out


def crd_json_schema(crd: dict) -> dict:
    """JSON Schema of a whole custom resource of the CRD's storage version."""
    spec = crd["spec"]
    (version,) = [v for v in spec["versions"] if v.get("storage")]
    schema = _to_json_schema(copy.deepcopy(version["schema"]["openAPIV3Schema"]))
    props = schema.setdefault("properties", {})
    props["apiVersion"] = {"const": f"{spec['group']}/{version['name']}"}
    props["kind"] = {"const": spec["names"]["kind"]}
    props["metadata"] = {
        "type": "object",
        "properties": {
            "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 63},
            "namespace": {"type": "string"},
            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
        },
        "required": ["name"],
    }
    schema["required"] = sorted(set(schema.get("required", [])) | {"apiVersion", "kind", "metadata"})
    schema["type"] = "object"
    schema["additionalProperties"] = False
    schema["$schema"] = "http://json-schema.org/draft-07/schema#"
    return schema


def crd_paths() -> list[Path]:
    return [CRD_DIR / f for f in CRD_FILES]


def crds_present() -> bool:
    return all(p.is_file() for p in crd_paths())
