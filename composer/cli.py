"""Command line: `python -m composer COMMAND` (also the `composer` console script).

Global flags (--registry, --config, --json, -v, -q, ...) go before or after the command.
Exit codes: composer/errors.py and the README. Every failure ends in one line,
`composer: error: WHAT; HOW TO FIX`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import traceback
from typing import Callable, Dict, List, Optional

from composer.errors import EXIT_INTERNAL, EXIT_OK, EXIT_STALE, EXIT_VERIFY, ComposerError, UsageError
from composer.settings import BUILDERS, load_settings
from composer.version import __version__

# Each command imports what it runs, in run(): a cache hit is a few registry requests, and
# importing every command's modules first took longer than the requests themselves.
LINEAGE_FORMATS = ("dot", "html", "mermaid", "svg")  # composer/catalog/compare.py RENDERERS (a test checks)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2, as for every other bad input
        raise UsageError(message, f"see '{self.prog} --help'")


def _globals(p: argparse.ArgumentParser, top: bool) -> None:
    """Flags every command takes, before or after the command's name. On a command they
    default to SUPPRESS, so a flag given before the command is not reset by the command."""
    d = {} if top else {"default": argparse.SUPPRESS}
    g = p.add_argument_group("global flags (before or after the command)")
    g.add_argument("--registry", help="HOST[:PORT][/PREFIX] where images and records live (COMPOSER_REGISTRY)", **d)
    g.add_argument("--config", help="path to composer.toml (COMPOSER_CONFIG; default ./composer.toml)", **d)
    g.add_argument("--ca-bundle", help="CA bundle for the index and registries; 'none' to disable (COMPOSER_CA_BUNDLE)", **d)
    g.add_argument("--insecure-registry", action="append", metavar="HOST", help="plain-HTTP registry host (loopback always is)", **d)
    g.add_argument("--json", action="store_true", help="print one JSON object on stdout", **d)
    g.add_argument("-v", "--verbose", action="store_true", help="say which registry requests are made (on stderr)", **d)
    g.add_argument("-q", "--quiet", action="store_true", help="no progress and no notes on stderr; errors only", **d)


def _build_flags(p: argparse.ArgumentParser, micromamba: bool = False) -> None:
    g = p.add_argument_group("build flags")
    g.add_argument("--builder", choices=BUILDERS, help="daemonless or a BuildKit front end (COMPOSER_BUILDER; default auto)")
    g.add_argument("--dockerfile-syntax", help="add '# syntax=IMAGE' to the Dockerfile (needs the builder to pull it)")
    g.add_argument("--progress", choices=("auto", "plain", "quiet"), help="build output (COMPOSER_PROGRESS; default auto)")
    if micromamba:
        g.add_argument("--micromamba", metavar="PATH", help="host micromamba for conda installs, bind-mounted into the build step (MAMBA_EXE)")


# name: (one-line help, examples)
COMMANDS: Dict[str, tuple] = {
    "record": ("register the image a run ran in (pinned by digest)", [
        "composer record --run TrainFlow/1 --image registry.example.com/models/model-a:1",
        "composer record --run TrainFlow/1 --image REPO@sha256:... --requirements freeze.txt --update"]),
    "build": ("compose an image: upstream environment + extras; prints REPO@sha256:...", [
        "composer build --upstream-run TrainFlow/1 --extra extras.txt --name explainer-a",
        "composer build --upstream-run TrainFlow/1 --extra extras.txt --name 'explainer-{model}-{run_id}' "
        "--var model=a --run-id ExplainerFlow/7",
        "composer build --upstream-run TrainFlow/1 --extra extras.txt --dry-run    # would it build? which builder?"]),
    "ref": ("print REPO@sha256:... for an environment name", ["composer ref explainer-a", "composer ref explainer-a@2"]),
    "show": ("an environment's record, as a summary (--json: the raw record)", ["composer show explainer-a", "composer show latest --json"]),
    "pull": ("at step start: resolve NAME, verify its record, pull the image / check the running environment",
             ["composer pull explainer-a", "composer pull explainer-a --no-docker"]),
    "diff": ("what changed between two environments: base, python, platform, packages", [
        "composer diff explainer-a@1 explainer-a@2", "composer diff TrainFlow/1 explainer-a    # a run and its explainer"]),
    "lineage": ("the chain from the base image through upstream runs to an environment", [
        "composer lineage explainer-a", "composer lineage explainer-a --format svg -o lineage.svg"]),
    "history": ("every version a name or alias pointed to (--run: every record a run has had)",
                ["composer history explainer-a", "composer history --run TrainFlow/1"]),
    "alias": ("point an alias (latest, stable, ...) at NAME or NAME@N; the move is recorded",
              ["composer alias stable explainer-a@3"]),
    "ls": ("list environments and aliases", ["composer ls", "composer --json ls"]),
    "gc": ("retire versions beyond the newest --keep of a name AND older than --older-than",
           ["composer gc --keep 5 --older-than 30 --dry-run"]),
    "rebuild": ("rebuild what a trigger made stale (every environment when no NAME is given)",
                ["composer rebuild --dry-run    # exit 10 when something is stale", "composer rebuild explainer-a"]),
    "export": ("write names, versions (NAME@N) or runs, with their records and history, to an OCI archive", [
        "composer export explainer-a explainer-b -o envs.tar", "composer export explainer-a@2 --without-base -o a2.tar"]),
    "import": ("restore an archive from composer export into a registry (--registry)", [
        "composer --registry backup.example.com/ml import envs.tar"]),
    "mirror": ("copy what another registry lacks, incrementally (HEAD first, mount where possible)", [
        "composer mirror --to backup.example.com/ml", "composer mirror --to backup.example.com/ml explainer-a"]),
    "check": ("walk names, records, images, layers and run records; exit 7 on anything missing or wrong", [
        "composer check", "composer check explainer-a --deep"]),
    "completion": ("print a shell completion script", ['eval "$(composer completion bash)"',
                                                       "composer completion zsh > ~/.zfunc/_composer"]),
}


def parser() -> argparse.ArgumentParser:
    top = _Parser(prog="composer", description="Compose container images from an upstream run's environment plus extras.",
                  epilog="run 'composer COMMAND --help' for a command's flags and examples",
                  formatter_class=argparse.RawDescriptionHelpFormatter)
    top.add_argument("--version", action="version", version=f"composer {__version__}")
    _globals(top, top=True)
    sub = top.add_subparsers(dest="command", parser_class=_Parser, metavar="COMMAND")

    def command(name: str) -> argparse.ArgumentParser:
        text, examples = COMMANDS[name]
        p = sub.add_parser(name, help=text, description=text, formatter_class=argparse.RawDescriptionHelpFormatter,
                           epilog="examples:\n" + "\n".join(f"  {e}" for e in examples))
        _globals(p, top=False)
        return p

    p = command("record")
    p.add_argument("--run", required=True, help="the upstream run's id, e.g. TrainFlow/1234")
    p.add_argument("--image", required=True, help="REGISTRY/REPO:TAG or REGISTRY/REPO@sha256:... it ran in")
    p.add_argument("--requirements", help="the run's pinned packages (pip freeze); default: read them from the image")
    p.add_argument("--update", action="store_true", help="re-record a run already recorded with another image (the old record stays in its history)")

    p = command("build")
    p.add_argument("--upstream-run", help="run whose environment to start from (a Metaflow run: Flow/Run[/step]); required")
    p.add_argument("--upstream-step", help="Metaflow step whose environment to use, when the run's steps used different ones")
    p.add_argument("--extra", help="requirements.txt, pyproject.toml or environment.yml with the extra packages; required")
    p.add_argument("--from-record", metavar="FILE", help="rebuild the composition a build record describes "
                   "(composer show NAME --json > FILE), instead of --upstream-run and --extra")
    p.add_argument("--name", help="environment name or template, e.g. 'explainer-{model}-{run_id}' (default compose-{upstream_run})")
    p.add_argument("--var", action="append", default=[], metavar="KEY=VALUE", help="value for a {KEY} in the name template")
    p.add_argument("--run-id", help="this run's id: fills {run_id} and records the environment for this run")
    p.add_argument("--update", action="store_true", help="let NAME move to a different composition")
    p.add_argument("--dry-run", action="store_true", help="lock and report (spec hash, cache hit, builder); build and push nothing")
    _build_flags(p, micromamba=True)

    for name, what in (("ref", "environment name, NAME@N or alias"), ("show", "environment name, NAME@N or alias")):
        command(name).add_argument("name", help=what)

    p = command("pull")
    p.add_argument("name", help="environment name, NAME@N or alias")
    p.add_argument("--no-docker", action="store_true", help="do not pull into a local Docker engine")
    p.add_argument("--progress", choices=("auto", "plain", "quiet"), help="pull output (COMPOSER_PROGRESS; default auto)")

    p = command("diff")
    p.add_argument("a", help="NAME, NAME@N, alias or run id")
    p.add_argument("b", help="NAME, NAME@N, alias or run id")

    p = command("lineage")
    p.add_argument("name", help="environment name, NAME@N or alias")
    p.add_argument("--format", choices=LINEAGE_FORMATS, default="mermaid", help="picture format (default mermaid)")
    p.add_argument("-o", "--output", metavar="FILE", help="write the picture to FILE (default: stdout)")

    p = command("history")
    p.add_argument("name", nargs="?", help="environment name or alias")
    p.add_argument("--run", help="list the records of this run id instead")

    p = command("alias")
    p.add_argument("alias", help="the alias to move, e.g. stable")
    p.add_argument("target", help="NAME or NAME@VERSION")

    command("ls")

    p = command("gc")
    p.add_argument("--keep", type=int, default=5, help="versions kept per name (default 5)")
    p.add_argument("--older-than", type=float, default=30.0, metavar="DAYS", help="only versions older than this (default 30)")
    p.add_argument("--dry-run", action="store_true", help="say what would go, delete nothing")

    p = command("rebuild")
    p.add_argument("names", nargs="*", metavar="NAME", help="environments to check (default: all)")
    p.add_argument("--dry-run", action="store_true", help=f"only report; exit {EXIT_STALE} when something is stale")
    _build_flags(p)

    p = command("export")
    p.add_argument("targets", nargs="*", metavar="NAME|NAME@N|RUN", help="what to export (default: every name)")
    p.add_argument("-o", "--output", required=True, metavar="FILE", help="the archive to write (an OCI image layout tar)")
    p.add_argument("--without-base", action="store_true", help="leave out the upstream image's layers (kept elsewhere)")

    p = command("import")
    p.add_argument("file", help="an archive composer export wrote")
    p.add_argument("--update", action="store_true", help="move names and runs that point elsewhere (recorded in their history)")

    p = command("mirror")
    p.add_argument("targets", nargs="*", metavar="NAME|NAME@N|RUN", help="what to mirror (default: every name)")
    p.add_argument("--to", required=True, metavar="HOST/PREFIX", help="the registry to copy to")
    p.add_argument("--update", action="store_true", help="move names and runs that point elsewhere there")

    p = command("check")
    p.add_argument("names", nargs="*", metavar="NAME", help="what to check (default: every name and run record)")
    p.add_argument("--deep", action="store_true", help="download every blob and check its digest (default: HEAD, size)")

    p = command("completion")
    p.add_argument("shell", choices=("bash", "zsh"), help="the shell to complete for")
    return top


def _settings(args: argparse.Namespace):
    progress = "quiet" if args.quiet else getattr(args, "progress", None)
    flags = {
        "registry": args.registry, "ca_bundle": args.ca_bundle, "insecure_registries": args.insecure_registry,
        "builder": getattr(args, "builder", None), "dockerfile_syntax": getattr(args, "dockerfile_syntax", None),
        "progress": progress, "micromamba": getattr(args, "micromamba", None),
    }
    return load_settings(flags, config_path=args.config)


def _vars(pairs: List[str]) -> Dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.isidentifier():
            raise UsageError(f"--var {pair!r} is not KEY=VALUE", "e.g. --var model=xgb")
        out[key] = value
    return out


def run(args: argparse.Namespace) -> dict:
    if args.command == "completion":
        return {"script": completion_script(parser(), args.shell)}
    settings = _settings(args)
    c = args.command
    from composer import metaflow_link  # noqa: F401  (registers Metaflow as a run source and pull hook)

    if c == "record":
        from composer.upstream.runs import record_run

        rec, digest = record_run(settings, args.run, args.image, args.requirements, update=args.update)
        return {"run": rec.run, "image": rec.image.pinned, "record": digest, "python": rec.python.version,
                "distributions": len(rec.distributions)}
    if c == "build" and args.from_record:
        if args.upstream_run or args.extra or args.dry_run:
            raise UsageError("--from-record takes the upstream and the extras from the record",
                             "drop --upstream-run, --extra and --dry-run")
        from composer.replay import build_from_record

        return build_from_record(settings, args.from_record, args.name, args.update, args.run_id)
    if c == "build" and not (args.upstream_run and args.extra):
        missing = " and ".join(f for f, v in (("--upstream-run", args.upstream_run), ("--extra", args.extra)) if not v)
        raise UsageError(f"build needs {missing}", "pass --upstream-run RUN --extra FILE, or --from-record FILE")
    if c in ("export", "import", "mirror"):
        from composer.catalog import transfer
    if c == "export":
        return transfer.export(settings, args.targets, args.output, args.without_base)
    if c == "import":
        return transfer.import_archive(settings, args.file, args.update)
    if c == "mirror":
        return transfer.mirror(settings, args.to, args.targets, args.update)
    if c == "check":
        from composer.catalog.check import check

        return check(settings, args.names, args.deep)
    if c == "build":
        from composer import pipeline

        how = pipeline.plan if args.dry_run else pipeline.build
        kw = {} if args.dry_run else {"update": args.update}
        out = how(settings, args.upstream_run, args.extra, args.name, _vars(args.var), args.run_id,
                  upstream_step=args.upstream_step, **kw)
        return out if args.dry_run else out.to_json()
    if c in ("history", "alias", "ls", "gc"):
        from composer.catalog import listing as catalog
    if c == "history":
        if args.run:
            from composer.upstream.runs import run_history

            return {"run": args.run, "versions": run_history(settings, args.run)}
        if not args.name:
            raise UsageError("history needs a NAME (or --run RUN)", "e.g. composer history explainer-a")
        return {"name": args.name, "versions": catalog.history(settings, args.name)}
    if c == "alias":
        return catalog.set_alias(settings, args.alias, args.target)
    if c == "ls":
        return {"environments": catalog.ls(settings)}
    if c == "gc":
        return catalog.gc(settings, args.keep, args.older_than, args.dry_run)
    if c == "rebuild":
        from composer.catalog.rebuild import rebuild

        return rebuild(settings, args.names, args.dry_run)
    if c == "pull":
        from composer.catalog.pull import pull

        return pull(settings, args.name, use_docker=not args.no_docker)
    if c in ("diff", "lineage"):
        from composer.catalog import compare
    if c == "diff":
        return compare.diff(settings, args.a, args.b)
    if c == "lineage":
        graph = compare.lineage(settings, args.name)
        picture = compare.RENDERERS[args.format](graph)
        if args.output:
            tmp = f"{args.output}.tmp-{os.getpid()}"
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(picture)
            os.replace(tmp, args.output)  # never a half-written picture
        return {**graph, "format": args.format, "picture": None if args.output else picture, "output": args.output}
    from composer.catalog import resolve

    ref, record, digest = resolve(settings, args.name)
    if c == "ref":
        return {"ref": ref, "record": digest}
    return {"ref": ref, "record_digest": digest, "record": record.to_json()}


# -- human output -------------------------------------------------------------------------------
def table(headers: List[str], rows: List[List[str]]) -> str:
    """Columns as wide as their widest cell (names reach 115 characters), two spaces apart."""
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    fmt = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([fmt(headers)] + [fmt(r) for r in rows])


def _show(out: dict) -> str:
    r = out["record"]
    lock = r["lock"]
    added = [p for p in lock["packages"] if p["name"] in set(lock.get("added") or [])]
    lines = [
        f"name:      {r['name']}",
        f"image:     {out['ref']}",
        f"record:    {out['record_digest']}",
        f"spec:      {r['spec_hash']} ({r['spec_version']})",
        f"upstream:  run {r['upstream']['run']} (record {r['upstream']['record'][:19]})",
        f"base:      {r['base']['repository']}{':' + r['base']['tag'] if r['base'].get('tag') else ''}@{r['base']['digest']}",
        f"python:    {r['python']['version']} at {r['python']['executable']} ({r['python']['kind']})",
        f"platform:  {r['platform']['os']}/{r['platform']['architecture']} ({r['platform']['python_platform']})",
        f"builder:   {r['builder']}, {r['created']}, composer {r['composer_version']}",
        f"extras:    {', '.join(lock['requirements']) or '(none)'}",
        f"added:     {', '.join(p['name'] + ' ' + p['version'] for p in added) or '(nothing)'}",
        f"locked:    {len(lock['packages'])} packages",
    ]
    if r.get("conda"):
        lines.append(f"conda:     {r['conda']['prefix']}: added {', '.join(r['conda'].get('added') or []) or '(nothing)'}")
    return "\n".join(lines)


def _diff(out: dict) -> str:
    lines = [f"{out['a']['name']} ({out['a']['kind']}) -> {out['b']['name']} ({out['b']['kind']})"]
    if out["identical"]:
        return lines[0] + ": the same image, nothing changed"
    for key in ("base", "python", "platform"):
        if out[key]:
            lines.append(f"{key}: {out[key]['from']} -> {out[key]['to']}")
    rows = []
    p = out["packages"]
    rows += [["+", x["name"], "", x["version"]] for x in p["added"]]
    rows += [["-", x["name"], x["version"], ""] for x in p["removed"]]
    rows += [["^", x["name"], x["from"], x["to"]] for x in p["upgraded"]]
    rows += [["v", x["name"], x["from"], x["to"]] for x in p["downgraded"]]
    rows += [["~", x["name"], x["from"], x["to"]] for x in p["changed"]]
    if rows:
        lines.append(table(["", "package", "before", "after"], sorted(rows, key=lambda r: r[1])))
    lines.append(f"{len(p['added'])} added, {len(p['removed'])} removed, {len(p['upgraded'])} upgraded, "
                 f"{len(p['downgraded'])} downgraded, {out['unchanged']} unchanged")
    return "\n".join(lines)


def _plan(out: dict) -> str:
    lines = [f"{out['name']}: {'cache hit: ' + out['ref'] if out['cached'] else 'would build with ' + str(out['builder'])}"
             + (f" (not daemonless: {out['builder_reason']})" if out.get("builder_reason") else ""),
             f"spec {out['spec_hash']} ({out['kind']}, {out['template']}) on {out['base']}",
             f"tag {out['tag']}"]
    lines.append(table(["adds", "version"], [[p["name"], p["version"]] for p in out["added"]]) if out["added"]
                 else "adds nothing (every extra is already in the upstream)")
    return "\n".join(lines)


def _transferred(command: str, out: dict) -> str:
    b, m = out["blobs"], out["manifests"]
    return (f"{command}ed into {out['registry']}: {m['written']} manifest(s) written, {m['present']} present; blobs "
            f"{b['uploaded'] + b['copied']} sent ({out['bytes'] / 1e6:.1f} MB), {b['mounted']} mounted, {b['present']} present"
            + "".join(f"\nkept {t} (already points elsewhere)" for t in out["tags"]["kept"]))


def _checked(out: dict) -> str:
    lines = [f"{p['problem']}: {p['what']} at {p['where']}" + (f" ({p['detail']})" if p["detail"] else "") for p in out["problems"]]
    c = out["checked"]
    return "\n".join(lines + [f"{'ok' if out['ok'] else f'{len(lines)} problem(s)'}: {c['names']} name(s), {c['images']} image(s), "
                              f"{c['blobs']} blob(s), {c['records']} record(s), {c['run_records']} run record(s) checked"])


HUMAN: Dict[str, Callable[[dict], str]] = {
    "export": lambda o: (f"exported {', '.join(o['names']) or 'nothing named'} ({len(o['runs'])} run record(s), "
                         f"{o['manifests']} manifests, {o['blobs']} blobs, {o['bytes'] / 1e6:.1f} MB) to {o['file']}"),
    "import": lambda o: _transferred("import", o),
    "mirror": lambda o: _transferred("mirror", o),
    "check": _checked,
    "ref": lambda o: o["ref"],
    "build": lambda o: _plan(o) if "kind" in o else o["ref"],
    "pull": lambda o: o["ref"],
    "show": _show,
    "diff": _diff,
    "lineage": lambda o: o["picture"].rstrip("\n") if o["picture"] else f"wrote {o['output']} ({o['format']})",
    "completion": lambda o: o["script"].rstrip("\n"),
    "history": lambda o: table(["version", "digest", "created", "reason", "alias of"],
                               [[str(v["version"]), v["digest"], v["created"], v["reason"], v["alias_of"] or ""]
                                for v in o["versions"]]),
    "alias": lambda o: f"{o['alias']} -> {o['alias_of']} ({o['ref']}, version {o['version']})",
    "ls": lambda o: table(["name", "digest", "upstream run", "base", "created", "size", "alias of"],
                          [[e["name"], e["digest"][:19], e["upstream_run"], e["base_digest"][:19], e["created"],
                            f"{e['size'] / 1e6:.1f} MB", e["alias_of"] or ""] for e in o["environments"]])
    if o["environments"] else "no environments",
    "gc": lambda o: "\n".join([f"{'would delete' if o['dry_run'] else 'deleted'} {d}" for d in o["deleted"]]
                              + [f"{'would delete' if o['dry_run'] else 'deleted'} {len(o['deleted'])} image(s); kept {o['kept']}"]),
    "rebuild": lambda o: "\n".join(f"{r['name']}: {r['status']}" + (f" ({'; '.join(r['reasons'])})" if r.get("reasons") else "")
                                   + (f" -> {r['ref']}" if r.get("ref") else "") + (f": {r['error']}" if r.get("error") else "")
                                   for r in o["results"]) or "no environments",
    "record": lambda o: f"recorded run {o['run']}: {o['image']} (python {o['python']}, {o['distributions']} distributions)",
}


def completion_script(top: argparse.ArgumentParser, shell: str) -> str:
    """A completion script made from the parser itself, so it never falls behind the commands."""
    sub = next(a for a in top._actions if isinstance(a, argparse._SubParsersAction))  # argparse has no public accessor
    words = {name: sorted(o for a in p._actions for o in a.option_strings) for name, p in sub.choices.items()}
    top_flags = sorted(o for a in top._actions for o in a.option_strings)
    cases = "\n".join(f"    {name}) opts=\"{' '.join(flags)}\" ;;" for name, flags in sorted(words.items()))
    script = f"""# composer {shell} completion (generated by `composer completion {shell}`)
_composer() {{
  local cur cmd opts i
  cur="${{COMP_WORDS[COMP_CWORD]}}"
  cmd=""
  for ((i = 1; i < COMP_CWORD; i++)); do
    case "${{COMP_WORDS[i]}}" in -*) ;; *) cmd="${{COMP_WORDS[i]}}"; break ;; esac
  done
  case "$cmd" in
{cases}
    *) opts="{' '.join(sorted(words))} {' '.join(top_flags)}" ;;
  esac
  COMPREPLY=( $(compgen -W "$opts" -- "$cur") )
}}
complete -F _composer composer
"""
    if shell == "zsh":
        script = "autoload -U +X bashcompinit && bashcompinit\n" + script
    return script


def _verbose() -> None:
    """-v: each registry request on stderr (origin, method, path, status, length), as
    composer.oci.http logs them."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("composer: request: %(message)s"))
    log = logging.getLogger("composer.http")
    log.addHandler(handler)
    log.setLevel(logging.DEBUG)


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    as_json = "--json" in argv
    quiet = "-q" in argv or "--quiet" in argv
    try:
        args = parser().parse_args(argv)
        if not args.command:
            raise UsageError("no command given", "run 'composer --help' for the commands")
        if args.verbose:
            _verbose()
        if not args.quiet:
            from composer.namesake import namesake_warning

            note = namesake_warning()
            if note:
                print(f"composer: warning: {note}", file=sys.stderr)
        out = run(args)
        text = json.dumps(out, sort_keys=True) if args.json else HUMAN[args.command](out)
    except ComposerError as exc:
        return _fail(exc.exit_code, exc.one_line(), as_json)
    except KeyboardInterrupt:
        return _fail(130, "interrupted", as_json)
    except Exception as exc:  # a bug: still one line, the traceback only on request
        if os.environ.get("COMPOSER_DEBUG"):
            traceback.print_exc()
        return _fail(EXIT_INTERNAL, f"internal error: {type(exc).__name__}: {exc}; rerun with COMPOSER_DEBUG=1 and report it", as_json)
    print(text)
    if args.command == "rebuild":
        for r in out["results"]:
            if r["status"] == "error":
                print(f"composer: error: {r['name']}: {r['error']}", file=sys.stderr)
        failed = [r for r in out["results"] if r["status"] == "error"]
        if failed:
            return failed[0]["exit_code"]
        if out["dry_run"] and out["changed"]:
            return EXIT_STALE
    if args.command == "check" and not out["ok"]:  # rot found
        return EXIT_VERIFY
    if args.command == "build" and not args.json and not quiet and "kind" not in out:
        state = "cache hit, nothing built" if out["cached"] else f"built with {out['builder']}"
        print(f"composer: {out['name']} -> {out['tag']} ({state}; record {out['record'][:19]})", file=sys.stderr)
    return EXIT_OK


def _fail(code: int, line: str, as_json: bool) -> int:
    line = " ".join(line.split())
    print(f"composer: error: {line}", file=sys.stderr)
    if as_json:
        print(json.dumps({"error": line, "exit_code": code}))
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
