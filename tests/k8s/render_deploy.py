"""Writes deploy/operator.yaml from the chart's default render (release "riffle" in
namespace "riffle-system"), without the Helm-only labels and with the Namespace first.

    .venv/bin/python tests/k8s/render_deploy.py

test_manifests.py checks that the file still matches the chart."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from k8s_tools import DEPLOY, NAMESPACE, RELEASE, dump_docs, helm_template, load_docs, strip_helm_labels  # noqa: E402

HEADER = f"""\
# Riffle operator for `kubectl apply -f deploy/operator.yaml`: namespace {NAMESPACE},
# ServiceAccount, RBAC (ClusterRole for Clusters, Topics and the objects made for them;
# Role for the leader-election Lease), metrics Service and Deployment.
#
# The riffle.dev CustomResourceDefinitions are not in this file: the operator
# server-side-applies them at startup (--apply-crds=true), or apply them yourself with
#   kubectl apply --server-side -f crds/
#
# Generated from charts/riffle (helm template {RELEASE} charts/riffle -n {NAMESPACE}) by
# tests/k8s/render_deploy.py; edit the chart and re-run that instead of editing this file.
"""


def expected_docs() -> list[dict]:
    namespace = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": NAMESPACE,
            "labels": {
                "app.kubernetes.io/name": "riffle",
                "app.kubernetes.io/part-of": "riffle",
                "pod-security.kubernetes.io/warn": "restricted",
                "pod-security.kubernetes.io/audit": "restricted",
            },
        },
    }
    return [namespace] + [strip_helm_labels(d) for d in load_docs(helm_template())]


def main() -> None:
    out = DEPLOY / "operator.yaml"
    out.write_text(HEADER + "---\n" + dump_docs(expected_docs()))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
