"""Command line: python -m composer {record,build,ref,show}. Exit codes: see errors.py / README."""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from typing import Dict, List, Optional

from composer import metaflow_link  # noqa: F401  (imported to register Metaflow as a run source and pull hook)
from composer import pipeline
from composer.catalog import listing as catalog
from composer.catalog import resolve
from composer.catalog.pull import pull
from composer.catalog.rebuild import rebuild
from composer.catalog import transfer
from composer.catalog.check import check
from composer.errors import EXIT_INTERNAL, EXIT_OK, EXIT_STALE, EXIT_VERIFY, ComposerError, UsageError
from composer.replay import build_from_record
from composer.settings import BUILDERS, load_settings
from composer.upstream.runs import record_run, run_history
from composer.version import __version__


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2, as for every other bad input
        raise UsageError(f"{self.prog}: {message}", f"see '{self.prog} --help'")


def _common(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("settings (flags > COMPOSER_* environment > composer.toml)")
    g.add_argument("--registry", help="HOST[:PORT][/PREFIX] where images and records live (COMPOSER_REGISTRY)")
    g.add_argument("--builder", choices=BUILDERS, help="BuildKit front end to use (COMPOSER_BUILDER; default auto)")
    g.add_argument("--config", help="path to composer.toml (COMPOSER_CONFIG; default ./composer.toml)")
    g.add_argument("--ca-bundle", help="CA bundle for the index and registries; 'none' to disable (COMPOSER_CA_BUNDLE)")
    g.add_argument("--insecure-registry", action="append", help="plain-HTTP registry host (loopback always is)")
    g.add_argument("--dockerfile-syntax", help="add '# syntax=IMAGE' to the Dockerfile (needs the builder to pull it)")
    g.add_argument("--progress", choices=("auto", "plain", "quiet"), help="build output (COMPOSER_PROGRESS)")
    p.add_argument("--json", action="store_true", help="print a JSON object on stdout")


def parser() -> argparse.ArgumentParser:
    top = _Parser(prog="composer", description="Compose container images from an upstream run's environment plus extras.")
    top.add_argument("--version", action="version", version=f"composer {__version__}")
    sub = top.add_subparsers(dest="command", parser_class=_Parser, metavar="COMMAND")

    p = sub.add_parser("record", help="register the image a run ran in (pinned by digest)")
    p.add_argument("--run", required=True, help="the upstream run's id, e.g. TrainFlow/1234")
    p.add_argument("--image", required=True, help="REGISTRY/REPO:TAG or REGISTRY/REPO@sha256:... it ran in")
    p.add_argument("--requirements", help="the run's pinned packages (pip freeze); default: read them from the image")
    p.add_argument("--update", action="store_true", help="re-record a run already recorded with another image (the old record stays in its history)")
    _common(p)

    p = sub.add_parser("build", help="compose an image: upstream environment + extras; prints its digest")
    p.add_argument("--upstream-run", help="run whose environment to start from (a Metaflow run: Flow/Run[/step])")
    p.add_argument("--upstream-step", help="Metaflow step whose environment to use, when the run's steps used different ones")
    p.add_argument("--extra", help="requirements.txt or pyproject.toml with the extra packages")
    p.add_argument("--name", help="environment name or template, e.g. 'explainer-{model}-{run_id}' (default compose-{upstream_run})")
    p.add_argument("--var", action="append", default=[], metavar="KEY=VALUE", help="value for a {KEY} in the name template")
    p.add_argument("--run-id", help="this run's id: fills {run_id} and records the environment for this run")
    p.add_argument("--update", action="store_true", help="let NAME move to a different composition")
    p.add_argument("--micromamba", metavar="PATH", help="host micromamba for conda installs, bind-mounted into the build step (MAMBA_EXE)")
    # -- disaster recovery (issue 13): build --from-record --------------------------------------
    p.add_argument("--from-record", metavar="FILE", help="rebuild the composition a build record describes "
                   "(composer show NAME --json > FILE); instead of --upstream-run and --extra")
    _common(p)

    for cmd, text in (("ref", "print REPO@sha256:... for an environment name"), ("show", "print an environment's record")):
        p = sub.add_parser(cmd, help=text)
        p.add_argument("name")
        _common(p)

    p = sub.add_parser("history", help="every version a name or alias has pointed to (--run: every record a run has had)")
    p.add_argument("name", nargs="?")
    p.add_argument("--run", help="list the records of this run id instead")
    _common(p)

    p = sub.add_parser("alias", help="point an alias (latest, stable, ...) at NAME or NAME@N; the move is recorded")
    p.add_argument("alias")
    p.add_argument("target", help="NAME or NAME@VERSION")
    _common(p)

    p = sub.add_parser("ls", help="list environments: name, digest, upstream run, base digest, created, size")
    _common(p)

    p = sub.add_parser("gc", help="retire old versions: beyond the newest --keep of a name AND older than --older-than")
    p.add_argument("--keep", type=int, default=5, help="versions kept per name (default 5)")
    p.add_argument("--older-than", type=float, default=30.0, metavar="DAYS", help="only versions older than this (default 30)")
    p.add_argument("--dry-run", action="store_true", help="say what would go, delete nothing")
    _common(p)

    p = sub.add_parser("rebuild", help="rebuild what a trigger made stale (every environment when no NAME is given)")
    p.add_argument("names", nargs="*", metavar="NAME")
    p.add_argument("--dry-run", action="store_true", help=f"only report; exit {EXIT_STALE} when something is stale")
    _common(p)

    p = sub.add_parser("pull", help="at step start: resolve NAME, verify its record, pull the image / check the running environment")
    p.add_argument("name")
    p.add_argument("--no-docker", action="store_true", help="do not pull into a local Docker engine")
    _common(p)

    # -- disaster recovery (issue 13): export, import, mirror, check ----------------------------
    p = sub.add_parser("export", help="write names, versions (NAME@N) or runs, with their records and history, to an OCI archive")
    p.add_argument("targets", nargs="*", metavar="NAME|NAME@N|RUN", help="what to export (default: every name)")
    p.add_argument("-o", "--output", required=True, metavar="FILE", help="the archive to write (an OCI image layout tar)")
    p.add_argument("--without-base", action="store_true", help="leave out the upstream image's layers (kept elsewhere)")
    _common(p)
    p = sub.add_parser("import", help="restore an archive from composer export into a registry (--registry)")
    p.add_argument("file")
    p.add_argument("--update", action="store_true", help="move names and runs that point elsewhere (recorded in their history)")
    _common(p)
    p = sub.add_parser("mirror", help="copy what another registry lacks, incrementally (HEAD first, mount where possible)")
    p.add_argument("targets", nargs="*", metavar="NAME|NAME@N|RUN", help="what to mirror (default: every name)")
    p.add_argument("--to", required=True, metavar="HOST/PREFIX", help="the registry to copy to")
    p.add_argument("--update", action="store_true", help="move names and runs that point elsewhere there")
    _common(p)
    p = sub.add_parser("check", help=f"walk names, records, images, layers and run records; exit {EXIT_VERIFY} on anything missing or wrong")
    p.add_argument("names", nargs="*", metavar="NAME", help="what to check (default: every name and run record)")
    p.add_argument("--deep", action="store_true", help="download every blob and check its digest (default: HEAD, size)")
    _common(p)
    return top


def _settings(args: argparse.Namespace):
    flags = {
        "registry": args.registry,
        "builder": args.builder,
        "ca_bundle": args.ca_bundle,
        "insecure_registries": args.insecure_registry,
        "dockerfile_syntax": args.dockerfile_syntax,
        "progress": args.progress,
        "micromamba": getattr(args, "micromamba", None),
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
    settings = _settings(args)
    if args.command == "record":
        rec, digest = record_run(settings, args.run, args.image, args.requirements, update=args.update)
        return {"run": rec.run, "image": rec.image.pinned, "record": digest, "python": rec.python.version,
                "distributions": len(rec.distributions)}
    # -- disaster recovery (issue 13) ----------------------------------------------------------
    if args.command == "build" and args.from_record:
        if args.upstream_run or args.extra:
            raise UsageError("--from-record takes the upstream and the extras from the record",
                             "drop --upstream-run and --extra")
        return build_from_record(settings, args.from_record, args.name, args.update, args.run_id)
    if args.command == "export":
        return transfer.export(settings, args.targets, args.output, args.without_base)
    if args.command == "import":
        return transfer.import_archive(settings, args.file, args.update)
    if args.command == "mirror":
        return transfer.mirror(settings, args.to, args.targets, args.update)
    if args.command == "check":
        return check(settings, args.names, args.deep)
    if args.command == "build" and not (args.upstream_run and args.extra):
        raise UsageError("build needs --upstream-run and --extra (or --from-record FILE)", "see 'composer build --help'")
    # -------------------------------------------------------------------------------------------
    if args.command == "build":
        result = pipeline.build(settings, args.upstream_run, args.extra, args.name, _vars(args.var), args.run_id, args.update,
                               upstream_step=args.upstream_step)
        return result.to_json()
    if args.command in ("history", "alias", "ls", "gc"):
        if args.command == "history":
            if args.run:
                return {"run": args.run, "versions": run_history(settings, args.run)}
            if not args.name:
                raise UsageError("history needs a NAME (or --run RUN)", "e.g. composer history explainer-a")
            return {"name": args.name, "versions": catalog.history(settings, args.name)}
        if args.command == "alias":
            return catalog.set_alias(settings, args.alias, args.target)
        if args.command == "ls":
            return {"environments": catalog.ls(settings)}
        return catalog.gc(settings, args.keep, args.older_than, args.dry_run)
    if args.command == "rebuild":
        return rebuild(settings, args.names, args.dry_run)
    if args.command == "pull":
        return pull(settings, args.name, use_docker=not args.no_docker)
    ref, record, digest = resolve(settings, args.name)
    if args.command == "ref":
        return {"ref": ref, "record": digest}
    return {"ref": ref, "record_digest": digest, "record": record.to_json()}


def _human(command: str, out: dict) -> str:
    # -- disaster recovery (issue 13) ----------------------------------------------------------
    if command == "export":
        return (f"exported {', '.join(out['names']) or 'nothing named'} ({len(out['runs'])} run record(s), {out['manifests']} manifests, "
                f"{out['blobs']} blobs, {out['bytes'] / 1e6:.1f} MB) to {out['file']}")
    if command in ("import", "mirror"):
        b, m = out["blobs"], out["manifests"]
        return (f"{command}ed into {out['registry']}: {m['written']} manifest(s) written, {m['present']} present; blobs "
                f"{b['uploaded'] + b['copied']} sent ({out['bytes'] / 1e6:.1f} MB), {b['mounted']} mounted, {b['present']} present"
                + "".join(f"\nkept {t} (already points elsewhere)" for t in out["tags"]["kept"]))
    if command == "check":
        lines = [f"{p['problem']}: {p['what']} at {p['where']}" + (f" ({p['detail']})" if p["detail"] else "") for p in out["problems"]]
        c = out["checked"]
        return "\n".join(lines + [f"{'ok' if out['ok'] else f'{len(lines)} problem(s)'}: {c['names']} name(s), {c['images']} image(s), "
                                  f"{c['blobs']} blob(s), {c['records']} record(s), {c['run_records']} run record(s) checked"])
    # -------------------------------------------------------------------------------------------
    if command == "ref":
        return out["ref"]
    if command == "history":
        return "\n".join(f"{v['version']:>4}  {v['digest']}  {v['created']}  {v['reason']}"
                         + (f" -> {v['alias_of']}" if v["alias_of"] else "") for v in out["versions"])
    if command == "alias":
        return f"{out['alias']} -> {out['alias_of']} ({out['ref']}, version {out['version']})"
    if command == "ls":
        rows = [f"{e['name']:<40} {e['digest'][:19]}  {e['upstream_run']:<24} {e['base_digest'][:19]}  "
                f"{e['created']}  {e['size'] / 1e6:8.1f} MB" + (f"  (alias of {e['alias_of']})" if e["alias_of"] else "")
                for e in out["environments"]]
        return "\n".join(rows) or "no environments"
    if command == "gc":
        verb = "would delete" if out["dry_run"] else "deleted"
        return "\n".join([f"{verb} {d}" for d in out["deleted"]] + [f"{verb} {len(out['deleted'])} image(s); kept {out['kept']}"])
    if command == "rebuild":
        return "\n".join(f"{r['name']}: {r['status']}" + (f" ({'; '.join(r['reasons'])})" if r.get("reasons") else "")
                         + (f" -> {r['ref']}" if r.get("ref") else "") + (f": {r['error']}" if r.get("error") else "")
                         for r in out["results"]) or "no environments"
    if command == "show":
        return json.dumps(out["record"], indent=2, sort_keys=True)
    if command in ("build", "pull"):
        return out["ref"]
    return f"recorded run {out['run']}: {out['image']} (python {out['python']}, {out['distributions']} distributions)"


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    as_json = "--json" in argv
    try:
        args = parser().parse_args(argv)
        if not args.command:
            raise UsageError("no command given", "run 'composer --help' for the commands")
        out = run(args)
    except ComposerError as exc:
        return _fail(exc.exit_code, exc.one_line(), as_json)
    except KeyboardInterrupt:
        return _fail(130, "interrupted", as_json)
    except Exception as exc:  # a bug: still one line, the traceback only on request
        if os.environ.get("COMPOSER_DEBUG"):
            traceback.print_exc()
        return _fail(EXIT_INTERNAL, f"internal error: {type(exc).__name__}: {exc}; rerun with COMPOSER_DEBUG=1 and report it", as_json)
    if args.json:
        print(json.dumps(out, sort_keys=True))
    else:
        print(_human(args.command, out))
    if args.command == "rebuild":
        for r in out["results"]:
            if r["status"] == "error":
                print(f"composer: error: {r['name']}: {r['error']}", file=sys.stderr)
        failed = [r for r in out["results"] if r["status"] == "error"]
        if failed:
            return failed[0]["exit_code"]
        if out["dry_run"] and out["changed"]:
            return EXIT_STALE
    if args.command == "check" and not out["ok"]:  # disaster recovery (issue 13): rot found
        return EXIT_VERIFY
    if args.command == "build" and not args.json:
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
