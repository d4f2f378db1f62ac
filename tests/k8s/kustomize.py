"""A renderer of the kustomize features k8s/ uses, so CI renders the manifests without kubectl:
`resources` (files and directories with a kustomization.yaml), `configMapGenerator` (literals,
files, options.labels, namespace; names without a hash suffix: `disableNameSuffixHash` must be
on), and `patches` holding JSON 6902 operations (add / replace / remove) with a kind + name
target. Anything else in a kustomization is refused, so a manifest change that needs more
fails here instead of rendering wrongly. tests/k8s/test_manifests.py compares the result with
`kubectl kustomize` where kubectl is installed."""

from __future__ import annotations

import copy
from pathlib import Path

import yaml

SUPPORTED = {"apiVersion", "kind", "resources", "configMapGenerator", "generatorOptions", "patches"}


def render(root: Path) -> list[dict]:
    kust = yaml.safe_load((root / "kustomization.yaml").read_text())
    unknown = set(kust) - SUPPORTED
    if unknown:
        raise NotImplementedError(f"{root}: kustomize fields this renderer does not do: {sorted(unknown)}")
    docs: list[dict] = []
    for r in kust.get("resources", []):
        p = root / r
        docs += render(p) if p.is_dir() else [d for d in yaml.safe_load_all(p.read_text()) if d]
    opts = kust.get("generatorOptions") or {}
    for gen in kust.get("configMapGenerator", []):
        if not (opts.get("disableNameSuffixHash") or (gen.get("options") or {}).get("disableNameSuffixHash")):
            raise NotImplementedError("name hash suffixes are not rendered: set disableNameSuffixHash")
        data = {}
        for lit in gen.get("literals", []):
            k, v = lit.split("=", 1)
            data[k] = v
        for f in gen.get("files", []):
            key, _, path = f.rpartition("=") if "=" in f else (Path(f).name, "", f)
            data[key] = (root / path).read_text()
        meta = {"name": gen["name"]}
        if gen.get("namespace"):
            meta["namespace"] = gen["namespace"]
        labels = {**(opts.get("labels") or {}), **((gen.get("options") or {}).get("labels") or {})}
        if labels:
            meta["labels"] = labels
        docs.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": data})
    for patch in kust.get("patches", []):
        t = patch["target"]
        hits = [d for d in docs if d["kind"] == t["kind"] and d["metadata"]["name"] == t["name"]]
        if len(hits) != 1:
            raise ValueError(f"patch target {t} matches {len(hits)} resources")
        for op in yaml.safe_load(patch["patch"]):
            json6902(hits[0], op)
    return docs


def json6902(doc: dict, op: dict) -> None:
    parts = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].strip("/").split("/")]
    parent = doc
    for p in parts[:-1]:
        parent = parent[int(p)] if isinstance(parent, list) else parent[p]
    last = parts[-1]
    value = copy.deepcopy(op.get("value"))
    if isinstance(parent, list):
        i = len(parent) if last == "-" else int(last)
        if op["op"] == "add":
            parent.insert(i, value)
        elif op["op"] == "replace":
            parent[i] = value
        elif op["op"] == "remove":
            del parent[i]
        else:
            raise NotImplementedError(op["op"])
    else:
        if op["op"] in ("replace", "remove") and last not in parent:
            raise KeyError(f"{op['op']} of a missing path {op['path']}")
        if op["op"] == "remove":
            del parent[last]
        elif op["op"] in ("add", "replace"):
            parent[last] = value
        else:
            raise NotImplementedError(op["op"])
