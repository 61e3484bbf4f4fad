"""What changed between two environments (`composer diff A B`), and where one came from
(`composer lineage NAME`): both read only records, never images.

An environment is named as a composed name (NAME, NAME@N, an alias) or as a recorded run id.
A composed environment's packages are its upstream's distributions (from the upstream run
record it was built on, by digest) with its lock on top: exactly what the image holds.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from packaging.version import InvalidVersion, Version

from composer.catalog import resolve
from composer.errors import NotFoundError, UsageError
from composer.model.records import BuildRecord, RunRecord
from composer.model.refs import check_name
from composer.oci import connect
from composer.settings import Settings
from composer.store import build_records_of, envs_repository, read_run_record, runs_repository
from composer.upstream.runs import load_run


@dataclass
class Environment:
    label: str  # as the user named it
    kind: str  # composed | run
    image: str  # REPO@sha256:...
    base: str  # REPO@sha256:... of what it starts from (a run: its own image)
    python: str
    platform: str
    packages: Dict[str, str] = field(default_factory=dict)
    record: Optional[BuildRecord] = None
    run: Optional[RunRecord] = None


def _platform(p) -> str:
    return "/".join(x for x in (p.os, p.architecture, p.variant) if x) + (f" ({p.python_platform})" if p.python_platform else "")


def _upstream_run_record(settings: Settings, record: BuildRecord) -> Optional[RunRecord]:
    got = read_run_record(connect(settings), runs_repository(settings), record.upstream_record)
    return got[0] if got else None


def environment(settings: Settings, text: str) -> Environment:
    """NAME, NAME@N or an alias (a composed environment), else a recorded run id."""
    try:
        check_name(text.partition("@")[0])
        ref, record, _ = resolve(settings, text)
    except (UsageError, NotFoundError) as exc:
        try:
            run, _ = load_run(settings, text)
        except NotFoundError:
            raise NotFoundError(f"{text!r} is neither an environment name nor a recorded run in {settings.registry}",
                                "see composer ls, or composer history --run RUN") from exc
        return Environment(text, "run", run.image.pinned, run.image.pinned, run.python.version, _platform(run.platform),
                           run.pins, run=run)
    upstream = _upstream_run_record(settings, record)
    packages = dict(upstream.pins) if upstream else {}
    packages.update({p.name: p.version for p in record.lock.packages})
    return Environment(text, "composed", ref, record.base.pinned, record.python.version, _platform(record.platform),
                       packages, record=record, run=upstream)


def _order(a: str, b: str) -> int:
    try:
        va, vb = Version(a), Version(b)
    except InvalidVersion:
        return 0
    return (va > vb) - (va < vb)


def diff(settings: Settings, a: str, b: str) -> dict:
    left, right = environment(settings, a), environment(settings, b)
    changes: Dict[str, List[dict]] = {"added": [], "removed": [], "upgraded": [], "downgraded": [], "changed": []}
    for name in sorted(set(left.packages) | set(right.packages)):
        was, now = left.packages.get(name), right.packages.get(name)
        if was == now:
            continue
        if was is None:
            changes["added"].append({"name": name, "version": now})
        elif now is None:
            changes["removed"].append({"name": name, "version": was})
        else:
            way = {1: "downgraded", -1: "upgraded"}.get(_order(was, now), "changed")
            changes[way].append({"name": name, "from": was, "to": now})
    same = lambda x, y: None if x == y else {"from": x, "to": y}  # noqa: E731
    return {
        "a": {"name": a, "kind": left.kind, "image": left.image}, "b": {"name": b, "kind": right.kind, "image": right.image},
        "image": same(left.image, right.image), "base": same(left.base, right.base),
        "python": same(left.python, right.python), "platform": same(left.platform, right.platform),
        "packages": changes, "unchanged": sum(1 for n in left.packages if left.packages[n] == right.packages.get(n)),
        "identical": left.image == right.image,
    }


# -- lineage -------------------------------------------------------------------------------------
@dataclass
class Node:
    id: str
    label: str
    kind: str  # environment | run | image
    detail: str = ""


def lineage(settings: Settings, name: str, depth: int = 20) -> dict:
    """The chain from the base image through upstream runs to name: nodes oldest first, edges
    labelled with what each step added."""
    nodes: List[Node] = []
    edges: List[Tuple[str, str, str]] = []
    env = environment(settings, name)
    if env.record is None:
        raise UsageError(f"{name!r} is a recorded run, not a composed environment", "run composer lineage on a name")
    reg, envs = connect(settings), envs_repository(settings)
    record: Optional[BuildRecord] = env.record
    current = Node(f"env:{record.image.digest}", record.name, "environment", record.image.digest[:19])
    nodes.append(current)
    while record is not None and depth > 0:
        depth -= 1
        added = ", ".join(f"{p.name} {p.version}" for p in record.lock.packages if p.name in record.lock.added)
        run_node = Node(f"run:{record.upstream_run}", record.upstream_run, "run", record.upstream_record[:19])
        nodes.append(run_node)
        edges.append((run_node.id, current.id, f"+ {added}" if added else "(nothing added)"))
        upstream = _upstream_run_record(settings, record)
        composed = (upstream.composed or {}) if upstream else {}
        parent = None
        if composed.get("name") and upstream is not None:
            parent = next((r for r, _ in build_records_of(reg, envs, upstream.image.digest) if r.name == composed["name"]), None)
        if parent is None:
            image = Node(f"image:{record.base.digest}", record.base.human_name, "image", record.base.digest[:19])
            nodes.append(image)
            edges.append((image.id, run_node.id, "ran in"))
            break
        current = Node(f"env:{parent.image.digest}", parent.name, "environment", parent.image.digest[:19])
        nodes.append(current)
        edges.append((current.id, run_node.id, "ran in"))
        record = parent
    nodes.reverse()
    edges.reverse()
    return {"name": name, "nodes": [n.__dict__ for n in nodes], "edges": [{"from": a, "to": b, "label": l} for a, b, l in edges]}


def _key(node_id: str, ids: Dict[str, str]) -> str:
    return ids.setdefault(node_id, f"n{len(ids)}")


def to_mermaid(graph: dict) -> str:
    ids: Dict[str, str] = {}
    shape = {"image": ('[("', '")]'), "run": ('(["', '"])'), "environment": ('["', '"]')}
    lines = ["flowchart TD"]
    for n in graph["nodes"]:
        left, right = shape[n["kind"]]
        text = f"{n['label']}<br/>{n['detail']}".replace('"', "'")
        lines.append(f"  {_key(n['id'], ids)}{left}{text}{right}")
    for e in graph["edges"]:
        label = e["label"][:120].replace('"', "'")
        lines.append(f'  {_key(e["from"], ids)} -->|"{label}"| {_key(e["to"], ids)}')
    return "\n".join(lines) + "\n"


def to_dot(graph: dict) -> str:
    ids: Dict[str, str] = {}
    quote = lambda s: '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'  # noqa: E731
    shape = {"image": "cylinder", "run": "ellipse", "environment": "box"}
    lines = ["digraph lineage {", "  rankdir=TB;"]
    for n in graph["nodes"]:
        lines.append(f"  {_key(n['id'], ids)} [shape={shape[n['kind']]}, label={quote(n['label'] + chr(10) + n['detail'])}];")
    for e in graph["edges"]:
        lines.append(f"  {_key(e['from'], ids)} -> {_key(e['to'], ids)} [label={quote(e['label'][:120])}];")
    return "\n".join(lines + ["}"]) + "\n"


def to_svg(graph: dict) -> str:
    """A self-contained picture (no renderer needed): the chain top to bottom, edge labels beside it."""
    width, box_h, gap = 720, 44, 56
    fill = {"image": "#e8eef7", "run": "#f5efe0", "environment": "#e3f2e6"}
    parts = []
    y = 16
    centers = {}
    for n in graph["nodes"]:
        parts.append(f'<rect x="40" y="{y}" width="360" height="{box_h}" rx="{22 if n["kind"] == "run" else 6}" '
                     f'fill="{fill[n["kind"]]}" stroke="#555"/>')
        parts.append(f'<text x="220" y="{y + 19}" text-anchor="middle" font-size="13">{html.escape(n["label"][:52])}</text>')
        parts.append(f'<text x="220" y="{y + 35}" text-anchor="middle" font-size="10" fill="#555">'
                     f'{html.escape(n["kind"])} {html.escape(n["detail"])}</text>')
        centers[n["id"]] = y
        y += box_h + gap
    for e in graph["edges"]:
        y1, y2 = centers[e["from"]] + box_h, centers[e["to"]]
        parts.append(f'<line x1="220" y1="{y1}" x2="220" y2="{y2 - 4}" stroke="#333" marker-end="url(#a)"/>')
        parts.append(f'<text x="232" y="{(y1 + y2) / 2 + 4}" font-size="11">{html.escape(e["label"][:70])}</text>')
    head = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{y}" font-family="sans-serif">'
            '<defs><marker id="a" markerWidth="8" markerHeight="8" refX="4" refY="4" orient="auto">'
            '<path d="M0,0 L8,4 L0,8 z" fill="#333"/></marker></defs>')
    return head + "".join(parts) + "</svg>\n"


def to_html(graph: dict) -> str:
    return (f"<!doctype html><meta charset=utf-8><title>lineage of {html.escape(graph['name'])}</title>"
            f"<h1 style='font-family:sans-serif'>lineage of {html.escape(graph['name'])}</h1>{to_svg(graph)}"
            f"<pre>{html.escape(to_mermaid(graph))}</pre>\n")


RENDERERS = {"mermaid": to_mermaid, "dot": to_dot, "svg": to_svg, "html": to_html}
