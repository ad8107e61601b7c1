"""``slmops models``: import, init, shrink, list, show, lineage, alias, tag, remove, gc and verify artifacts."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from slmops.cli.common import JsonOpt, open_cli_store
from slmops.cli.flags import ConfigFlags, Flag, config_command
from slmops.cli.render import emit, err, esc, human_bytes, out, progress_bars
from slmops.errors import ConfigError, SlmopsError, StoreError
from slmops.models.gguf_import import FromGGUFConfig
from slmops.models.importer import ImportConfig
from slmops.models.init import InitConfig
from slmops.models.shrink import ShrinkConfig
from slmops.pipeline.inputs import import_ref, resolve_input
from slmops.stage.runner import RunResult, run_stage
from slmops.store.artifact import KINDS, Artifact
from slmops.store.refs import ModelRef
from slmops.store.registry import Store

app = typer.Typer(help="Artifacts in the registry: models, adapters, datasets, exports and reports.", no_args_is_help=True)


def result_dict(r: RunResult, name: str | None = None) -> dict[str, Any]:
    m = r.artifact.manifest
    return {
        "digest": m.digest, "kind": m.kind, "format": m.format, "cached": r.cached, "stage": r.stage,
        "name": f"{name}:{r.version}" if name and r.version else None, "path": str(r.artifact.path),
        "metrics": m.metrics, "meta": m.meta,
    }


def print_result(d: dict[str, Any]) -> None:
    state = "[dim]cached[/]" if d["cached"] else "[green]created[/]"
    label = d["name"] or f"sha256:{d['digest'][:12]}"
    out.print(f"{state} {d['kind']} [bold]{esc(label)}[/] ({d['stage']}) sha256:{d['digest'][:12]}", markup=True)
    for k, v in d["metrics"].items():
        if not isinstance(v, dict | list):
            out.print(f"  {k}: {v}")


@config_command(app, "import", config=ImportConfig, stage="models.import", panel=None,
                only=("allow_pickle",), only_why="set from PATH (the folder, and where it came from)",
                more={"hf_cfg": ConfigFlags(FromGGUFConfig, "models.from_gguf", prefix="hf__", flags={"dtype": Flag(note="with --to hf")})})
def import_(
    path: Annotated[str, typer.Argument(help="An HF model folder (safetensors), a .gguf file, pkg:PACKAGE (a model an installed package ships) or hf:org/name.")],
    name: Annotated[str, typer.Option("--name", "-n", help="Registry name to give it (a new version each time).")],
    to: Annotated[str, typer.Option("--to", help="auto: keep the format (a GGUF stays GGUF, run by llama.cpp); hf: dequantize a GGUF into a Hugging Face model (for fine-tuning, distillation, ONNX).")] = "auto",
    as_json: JsonOpt = False,
    *,
    cfg: dict[str, Any],
    hf_cfg: dict[str, Any],
) -> None:
    """Import a Hugging Face model folder or a GGUF file into the store (trust_remote_code is never enabled)."""
    with open_cli_store() as store, progress_bars(not as_json):
        r = import_ref(path, store, name=name, to=to, **cfg, **hf_cfg)
    emit(result_dict(r, name), as_json, print_result)


def _run(stage: str, inputs: dict[str, tuple[str | None, str]], cfg: dict[str, Any], name: str, as_json: bool) -> None:
    """Run a models stage on the inputs given (role -> (reference or None, kind)) and print its result."""
    with open_cli_store() as store, progress_bars(not as_json):
        arts = {role: resolve_input(ref, store, kind=kind) for role, (ref, kind) in inputs.items() if ref}
        r = run_stage(stage, arts, cfg, store=store, output_name=name)
    emit(result_dict(r, name), as_json, print_result)


@config_command(app, "init", config=InitConfig, stage="models.init", panel=None)
def init(
    name: Annotated[str, typer.Option("--name", "-n", help="Registry name for the new model.")],
    tokenizer_from: Annotated[str | None, typer.Option("--tokenizer-from", help="Dataset (ref or file) to train the BPE tokenizer on.")] = None,
    as_json: JsonOpt = False,
    *,
    cfg: dict[str, Any],
) -> None:
    """Create a randomly initialised model of a real architecture with a BPE tokenizer and chat template."""
    _run("models.init", {"data": (tokenizer_from, "dataset")}, cfg, name, as_json)


@config_command(app, "shrink", config=ShrinkConfig, stage="models.shrink", panel=None)
def shrink(
    teacher: Annotated[str, typer.Argument(help="The model to shrink: name, name:3, sha256:…, ./folder.")],
    name: Annotated[str, typer.Option("--name", "-n", help="Registry name for the student.")],
    calibration: Annotated[str | None, typer.Option("--calibration", help="Dataset (ref or file) of calibration text; default: the English prose of dataset-build.")] = None,
    as_json: JsonOpt = False,
    *,
    cfg: dict[str, Any],
) -> None:
    """Build a smaller model of the teacher's architecture and tokenizer, pruned by measured importance."""
    _run("models.shrink", {"model": (teacher, "model"), "data": (calibration, "dataset")}, cfg, name, as_json)


@contextlib.contextmanager
def stored(ref: str) -> Iterator[tuple[Store, Artifact]]:
    """The store, open, and the artifact ``ref`` names in it (for the verbs that act on one artifact)."""
    with open_cli_store() as store:
        yield store, resolve_input(ref, store)


@app.command("ls")
def ls(
    kind: Annotated[str | None, typer.Option("--kind", help=f"Only this kind: {', '.join(KINDS)}.")] = None,
    all_: Annotated[bool, typer.Option("--all", "-a", help="Also unnamed artifacts (intermediate and cached).")] = False,
    as_json: JsonOpt = False,
) -> None:
    """List registered artifacts with their names, versions, aliases and tags."""
    if kind and kind not in KINDS:
        raise ConfigError(f"--kind {kind} is not a kind", fix=f"use one of {', '.join(KINDS)}")
    with open_cli_store() as store:
        rows = store.artifacts_list(kind=kind, named_only=not all_)
    emit(rows, as_json, _print_ls)


def _print_ls(rows: list[dict[str, Any]]) -> None:
    if not rows:
        err.print("no artifacts yet (try `slmops models init --name demo`)")
        return
    t = Table()
    for col in ("name", "kind", "format", "digest", "size", "aliases", "tags", "created"):
        t.add_column(col)
    for r in rows:
        label = f"{r['name']}:{r['version']}" if r["name"] else "-"
        t.add_row(label, r["kind"], r["format"], r["digest"][:12], human_bytes(r["size_bytes"]),
                  ",".join(r["aliases"]), ",".join(r["tags"]), r["created_at"])
    out.print(t)


@app.command()
def show(ref: Annotated[str, typer.Argument(help="name, name:3, name@alias, sha256:prefix or ./path")], as_json: JsonOpt = False) -> None:
    """Show an artifact's manifest, names, tags, parents and children."""
    with stored(ref) as (store, art):
        data = art.manifest.model_dump(mode="json")
        data.update(path=str(art.path), names=store.names_of(art.digest), tags=store.tags(art.digest),
                    children=[{"digest": d, "role": r} for d, r in store.children(art.digest)])
    emit(data, as_json, lambda d: out.print_json(data=d))


@app.command()
def lineage(
    ref: Annotated[str, typer.Argument(help="The artifact to trace.")],
    down: Annotated[bool, typer.Option("--down", help="Show descendants instead of ancestors.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Show the tree of ancestors (what it was made from) or descendants (what was made from it)."""
    with stored(ref) as (store, art):
        tree = store.lineage(art.digest, direction="down" if down else "up")
        _add_external(store, tree)
    emit(tree, as_json, _print_tree)


def _add_external(store: Any, node: dict[str, Any]) -> None:
    """Put what an artifact came from outside the store (an HTTP teacher: its URL and model) on its node as ``external``."""
    if not node.get("missing"):
        try:
            teacher = store.get(node["digest"]).manifest.meta.get("teacher")
        except SlmopsError:
            teacher = None
        if isinstance(teacher, dict) and teacher.get("type") == "http":
            node["external"] = {"role": "teacher", "type": "http", "url": teacher.get("base_url"), "model": teacher.get("model")}
    for child in node["children"]:
        _add_external(store, child)


def _label(n: dict[str, Any]) -> Text:
    names = ", ".join(n["names"]) or "unnamed"
    role = (f"{n['role']}: ", "dim") if n.get("role") else ""
    return Text.assemble(role, (str(n["kind"]), "bold"), f" {names} ", (f"sha256:{n['digest'][:12]} via {n.get('stage') or '-'}", "dim"))


def _print_tree(root: dict[str, Any]) -> None:
    def add(t: Tree, n: dict[str, Any]) -> None:
        ext = n.get("external")
        if ext:
            t.add(Text.assemble((f"{ext['role']}:", "dim"), " ", ("http", "bold"), f" {ext.get('model') or '-'} ",
                                (f"at {ext.get('url') or '-'}", "dim")))
        for c in n["children"]:
            add(t.add(_label(c)), c)

    tree = Tree(_label(root))
    add(tree, root)
    out.print(tree)


@app.command()
def alias(
    target: Annotated[str, typer.Argument(help="NAME@ALIAS to set, e.g. support-bot@prod.")],
    version: Annotated[str | None, typer.Argument(help="What it points at: NAME:VERSION or a version number.")] = None,
    remove: Annotated[bool, typer.Option("--rm", help="Remove the alias.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Point an alias (prod, canary, …) at a version; re-pointing is how you roll back."""
    name, sep, al = target.partition("@")
    if not sep or not al:
        raise ConfigError(f"{target!r} is not NAME@ALIAS", fix="e.g. `slmops models alias bot@prod bot:3`")
    with open_cli_store() as store:
        if remove:
            ok = store.remove_alias(name, al)
            emit({"removed": ok, "alias": target}, as_json, lambda d: out.print(f"removed {target}" if ok else f"{target} was not set"))
            return
        if version is None:
            raise ConfigError("missing the version to point at", fix=f"e.g. `slmops models alias {target} {name}:1`")
        v = _parse_version(name, version)
        store.set_alias(name, al, v)
    emit({"alias": target, "version": v}, as_json, lambda d: out.print(f"{target} → {name}:{v}"))


def _parse_version(name: str, text: str) -> int:
    if text.isdigit():
        return int(text)
    ref = ModelRef.parse(text)
    if ref.scheme != "name" or ref.value != name or ref.version is None:
        raise ConfigError(f"{text!r} is not a version of {name}", fix=f"write {name}:N or N")
    return ref.version


@app.command()
def tag(
    ref: Annotated[str, typer.Argument(help="The artifact to tag.")],
    tag_: Annotated[str, typer.Argument(metavar="TAG", help="The tag.")],
    remove: Annotated[bool, typer.Option("--rm", help="Remove the tag.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Add (or with --rm remove) a tag on an artifact."""
    with stored(ref) as (store, art):
        if remove:
            store.untag(art.digest, tag_)
        else:
            store.tag(art.digest, tag_)
        tags = store.tags(art.digest)
    emit({"digest": art.digest, "tags": tags}, as_json, lambda d: out.print(f"sha256:{art.short} tags: {', '.join(tags) or '-'}"))


@app.command()
def rm(
    ref: Annotated[str, typer.Argument(help="The artifact to remove.")],
    force: Annotated[bool, typer.Option("--force", help="Also remove every artifact made from it.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Remove an artifact; refuses when others descend from it unless --force."""
    with stored(ref) as (store, art):
        removed = store.remove(art.digest, force=force)
    emit({"removed": removed}, as_json, lambda d: out.print(f"removed {len(removed)} artifact(s): " + ", ".join(x[:12] for x in removed)))


@app.command()
def gc(
    prune: Annotated[bool, typer.Option("--prune", help="Also delete artifacts that are not named, not tagged and not an ancestor of one that is.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only report what would be done.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Clean up after crashes: temp dirs, un-indexed directories (adopted if intact), and optionally unreferenced artifacts."""
    with open_cli_store() as store:
        report = store.gc(prune=prune, dry_run=dry_run)
    emit(report, as_json, lambda r: out.print("  ".join(f"{k}: {len(v)}" for k, v in r.items())))


@app.command()
def verify(
    refs: Annotated[list[str] | None, typer.Argument(help="Artifacts to check (default: all).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Re-hash artifacts and report any whose content changed since it was stored; exit 1 on tampering."""
    with open_cli_store() as store, progress_bars(not as_json):
        digests = [resolve_input(r, store).digest for r in refs] if refs else None
        results = store.verify(digests)
    emit(results, as_json, _print_verify)
    if not all(r["ok"] for r in results):
        bad = sum(not r["ok"] for r in results)
        raise StoreError(f"{bad} of {len(results)} artifact(s) failed verification", fix="see the rows marked FAIL above")


def _print_verify(rows: list[dict[str, Any]]) -> None:
    for r in rows:
        mark = ("ok  ", "green") if r["ok"] else ("FAIL", "red")
        out.print(Text.assemble(mark, f" sha256:{r['digest'][:12]} {', '.join(r['names'])} {r['problem'] or ''}"))
    if not rows:
        out.print("nothing stored yet")
