"""``datagen`` command line: run, validate, export, report, view, schema, train, eval.

    datagen run RECIPE [--out DIR] [--set key.path=value ...] [--dry-run] [--fresh]
    datagen retry-failed OUT [--reasons timeout,http_5xx,...]  fetch again only rows that failed for a passing reason
    datagen validate RECIPE [--set ...]          check a recipe without running it
    datagen export OUT --format llava|mplug_owl|sharegpt|hf [--dest DIR]
    datagen check OUT [--format F ...] [--tokenizer DIR] [--template llava_v1]  verify before training
    datagen report OUT                           OUT/report.html: funnel, rejects, families, plots, samples
    datagen view OUT [--port P]                  browse the samples at http://127.0.0.1:P/
    datagen schema [--check]                     (re)write schemas/recipe.schema.json
    datagen train CONFIG [...] / datagen eval ...  the bundled two-stage trainer
    datagen chat MODEL --image IMG ["question"]    talk to a trained model (REPL without a question)
    datagen export-model CKPT DEST [--adapter]     a Hugging Face folder of a trained model

Global options (-q, --log-level, -v) may come before or after the command.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import textwrap
from pathlib import Path

from datagen.progress import configure_logging

log = logging.getLogger("datagen")

# What each exit status means; also in the README ("Exit codes") and `datagen --help`.
EXIT_CODES = {
    0: "success",
    1: "`check` found problems, or `schema --check` found the schema out of date",
    2: "bad input: usage error, invalid recipe or config, missing file, missing optional extra, "
       "unavailable model weights, output folder in use by another run",
    3: "the run finished but its rows do not reconcile (in != kept + rejected)",
    4: "stopped: the translation service's quota is exhausted (DeepL HTTP 456); cached translations are kept: "
       "rerun when it is restored",
    5: "the run finished but `output.check` found problems in the shards or exports",
    6: "stopped: downloads failed above `fetch.max_failure_rate`; finished shards are kept: rerun to resume",
    130: "interrupted (Ctrl-C); finished shards are kept: rerun the same command to resume",
}
TRAIN_COMMANDS = ("train", "eval", "chat", "export-model")
GLOBAL_NOTE = "global options (before or after the command): -q, --log-level LEVEL, -v; exit codes: datagen --help"
LOG_LEVELS = ("debug", "info", "warning", "error")


def _wants_pool(executor) -> bool:
    """Whether a recipe's unvalidated ``executor`` section asks for a local pool; only decides how early
    the fork server starts (the validated recipe decides whether it stays)."""
    executor = executor if isinstance(executor, dict) else {}
    workers = executor.get("workers", 1)
    return executor.get("kind", "local") == "local" and isinstance(workers, int) and workers > 1


def _warm_up_tail() -> None:
    """What the run's serial end needs (polars for the barriers and sinks, the report's matplotlib: 0.5 s),
    imported during the first pool pass on the core its first finished process leaves free
    (``executor.while_waiting``); the driver leaves them out before that pass, so its pool starts sooner."""
    import polars  # noqa: F401

    from datagen.report import warm_up

    warm_up()


def _run(args: argparse.Namespace) -> int:
    # The recipe file first, read but not validated, and nothing else imported: when it asks for a pool,
    # the pool's fork server starts now, and its imports (0.5 s) run on another core while this one
    # validates the recipe (0.25 s of imports), imports the rest and reads the source.
    from datagen.core.poolserver import prestart, stop_pool_server
    from datagen.recipe import read_recipe, validate_recipe

    raw, resolved = read_recipe(args.recipe, args.set)
    if _wants_pool(resolved.get("executor")) and not args.dry_run:
        prestart()
    recipe = validate_recipe(resolved, args.recipe)
    if recipe.executor.kind == "local" and recipe.executor.workers > 1 and not args.dry_run:
        prestart()  # a no-op when the file said so already
    else:
        stop_pool_server()  # the file's executor section was not what it seemed (a no-op when none runs)
    from datagen.core.lock import RunLock
    from datagen.core.pipeline import clean_run_dir, preflight, run
    from datagen.core.storage import upload
    from datagen.core.steps import RunContext

    out = Path(args.out or recipe.out or f"out/{recipe.name}")
    recipe_path = Path(args.recipe)
    preflight(recipe, RunContext(out / "_run", recipe_path.resolve().parent, recipe.seed))  # before any file
    # The driver's Arrow work is single-threaded (sinks, merges): the system allocator gives freed
    # buffers back where mimalloc keeps them, 70 MB less peak RSS on bench_download's kit.
    import pyarrow as pa

    import datagen.core.nopandas  # noqa: F401  (pyarrow's first list -> array would import pandas: 0.2 s)

    pa.set_memory_pool(pa.system_memory_pool())
    if not args.dry_run:
        from datagen.core.executor import while_waiting

        while_waiting(_warm_up_tail)
    with RunLock(out):  # held from the first step to the last shard
        if args.fresh:
            clean_run_dir(out)
        state = run(recipe, recipe_path.resolve().parent, out, dry_run=args.dry_run, retry=getattr(args, "retry", None))
        if args.dry_run:
            print("dry run: no shards written")
            return 0
        from datagen.sinks.manifest import finish, summary

        manifest = finish(state, raw | ({"_overrides": args.set} if args.set else {}), recipe_path)
        report = _write_report(out, state.stage1_facts)  # before the upload, which copies it too
        good = manifest["counts"]["pairs"]["reconciled"] and manifest.get("check", {}).get("ok", True)
        uploaded = upload(out, recipe.output.upload_to) if recipe.output.upload_to and good else None
    print(summary(manifest))
    print(f"output: {out}/ (manifest.json, sizes.json, rejects.parquet, README.md)")
    print(f"report: {report}")
    if uploaded is not None:
        print(f"uploaded: {len(uploaded)} files to {recipe.output.upload_to}")
    if "check" in manifest:
        from datagen.check import Report

        print(Report.from_dict(manifest["check"]).text())
        if not manifest["check"]["ok"]:
            return 5
    return 0 if manifest["counts"]["pairs"]["reconciled"] else 3


def _retry_failed(args: argparse.Namespace) -> int:
    """The finished run's recipe (its manifest names it and its --set overrides), run again with the matching
    fetch rejects re-fetched first (datagen.fetch.retry)."""
    from datagen.fetch.retry import RetryPlan, parse_reasons
    from datagen.recipe import RecipeError

    out = Path(args.out)
    overrides = list(args.set)
    if args.recipe is None:
        manifest = out / "manifest.json"
        if not manifest.is_file():
            raise RecipeError(f"{manifest} not found: retry-failed needs a finished run, or --recipe RECIPE (the "
                              f"recipe the run used; an unfinished run resumes with `datagen run`)")
        m = json.loads(manifest.read_text())
        args.recipe = m["recipe_path"]
        overrides = list(m["recipe"].get("_overrides", [])) + overrides
        if not Path(args.recipe).is_file():
            raise RecipeError(f"{args.out}: the run's recipe {args.recipe!r} is not there (relative to where the "
                              f"run started?): pass --recipe PATH")
    if not (out / "_run" / "pairs").is_dir():
        raise RecipeError(f"{out}/_run/pairs not found: the fetched rows are gone (output.keep_intermediate: false?),"
                          f" so only a full `datagen run` can fetch again")
    try:
        plan = RetryPlan(parse_reasons(args.reasons))
    except ValueError as e:
        raise RecipeError(str(e)) from None
    args.set, args.dry_run, args.fresh, args.retry = overrides, False, False, plan
    code = _run(args)
    print(plan.report())
    return code


def _validate(args: argparse.Namespace) -> int:
    from datagen.recipe import load_recipe

    recipe, _ = load_recipe(args.recipe, args.set)
    print(f"{args.recipe}: valid recipe '{recipe.name}' with {len(recipe.sources)} source(s)")
    return 0


def _export(args: argparse.Namespace) -> int:
    from datagen.sinks.export import export

    dest = Path(args.dest or Path(args.out) / "export")
    for path in export(Path(args.out), dest, args.format, image_root=args.image_root):
        print(path)
    return 0


def _check(args: argparse.Namespace) -> int:
    from datagen.check import check

    if args.tokenizer:
        from datagen.extras import require

        require("datagen check --tokenizer", "train", ("transformers",))

    report = check(Path(args.out), args.format, args.tokenizer, args.template, args.max_len,
                   args.tokens_per_image, args.examples)
    print(json.dumps(report.to_dict(), indent=1, ensure_ascii=False) if args.json else report.text())
    return 0 if report.ok else 1


def _write_report(out: Path, stage1: dict | None = None) -> str:
    """The run's report.html; a report that fails is said, and does not fail a run whose shards are written.
    ``stage1``: what the stage-1 sink gathered for it (``datagen.report.read_shards``)."""
    from datagen.report import write_report

    try:
        return str(write_report(out, stage1=stage1))
    except Exception as e:  # noqa: BLE001 - the data is complete; the page about it is not worth losing it
        log.warning("report.html not written: %s: %s", type(e).__name__, e, exc_info=True)
        return f"not written ({type(e).__name__}: {e}); retry with `datagen report {out}`"


def _report(args: argparse.Namespace) -> int:
    from datagen.report import write_report

    print(write_report(Path(args.out)))
    return 0


def _view(args: argparse.Namespace) -> int:
    from datagen.view import make_server

    try:
        server = make_server(Path(args.out), args.port, max_samples=args.max_samples)
    except FileNotFoundError:
        raise  # no finished run there: exit 2 with its message
    except OSError as e:
        print(f"error: cannot serve on 127.0.0.1:{args.port}: {e.strerror or e}; pick another --port (0: any free one)",
              file=sys.stderr)
        return 2
    cut = f" (first {args.max_samples} of {', '.join(server.catalog.cut)})" if server.catalog.cut else ""
    print(f"datagen view: {len(server.catalog.samples)} samples of {args.out}{cut} at {server.url}  (Ctrl-C stops)",
          flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def _schema(args: argparse.Namespace) -> int:
    from datagen.schemas import recipe_schema_text, schema_path

    text = recipe_schema_text()
    path = schema_path("recipe")
    if args.check:
        if not path.exists() or path.read_text() != text:
            print(f"{path} is out of date: run `datagen schema`", file=sys.stderr)
            return 1
        print(f"{path} is up to date")
        return 0
    path.write_text(text)
    print(f"wrote {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    epilog = "exit codes:\n" + "\n".join(textwrap.fill(text, 79, initial_indent=f"  {code:>3}  ", subsequent_indent=" " * 7)
                                          for code, text in EXIT_CODES.items())
    p = argparse.ArgumentParser(prog="datagen", description=__doc__, epilog=epilog,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"%(prog)s {version()}",
                   help="print the package version and exit")
    for a in _global_options()._actions:
        if a.option_strings:  # the same options the pre-pass in main() takes out of argv
            p._add_action(a)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", help="one of:")

    r = sub.add_parser("run", help="run a recipe end to end")
    r.add_argument("recipe", help="the recipe YAML file")
    r.add_argument("--out", help="output folder (default: the recipe's `out`, else out/<name>)")
    r.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="override a recipe value (YAML-parsed), e.g. --set filters.clip=null; repeatable")
    r.add_argument("--dry-run", action="store_true", help="print LLM prompts etc. without calling services or writing shards")
    r.add_argument("--fresh", action="store_true", help="recompute every step (the request cache of LLM/DeepL/HTTP answers is kept)")
    r.set_defaults(fn=_run)

    rf = sub.add_parser("retry-failed", help="fetch again only the rows whose download failed for a reason that may "
                        "pass (timeouts, 5xx, DNS, stragglers...), and rebuild the output with them")
    rf.add_argument("out", help="a finished run's output folder")
    rf.add_argument("--reasons", help="reject reasons to retry, comma-separated; http_5xx/http_4xx name a class "
                    "(default: timeout,connection_error,dns_error,http_5xx,http_408,http_429,image_truncated,"
                    "straggler_timeout,host_backoff,robots_unreachable; 404, not_an_image, blocked_address, "
                    "opted_out only when named)")
    rf.add_argument("--recipe", help="the recipe of the run (default: the one its manifest names)")
    rf.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE",
                    help="more overrides after the run's own; keep to fetch watch settings (max_failure_rate...): "
                    "others change fingerprints and redo finished work")
    rf.set_defaults(fn=_retry_failed)

    v = sub.add_parser("validate", help="check a recipe against the schema")
    v.add_argument("recipe", help="the recipe YAML file")
    v.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="override a recipe value (YAML-parsed); repeatable")
    v.set_defaults(fn=_validate)

    e = sub.add_parser("export", help="write LLaVA / mPLUG-Owl / ShareGPT / HF datasets from a run's shards")
    e.add_argument("out", help="a run's output folder")
    e.add_argument("--format", required=True, choices=["llava", "mplug_owl", "sharegpt", "hf"],
                   help="the training format to write")
    e.add_argument("--dest", help="folder to write (default: <out>/export)")
    e.add_argument("--image-root", help="mplug_owl: write image paths as IMAGE_ROOT/images/... (default: relative to DEST)")
    e.set_defaults(fn=_export)

    c = sub.add_parser("check", help="verify a run or export before training: images, placeholders, roles, "
                       "template tokenisation; exit 1 on any problem")
    c.add_argument("out", help="a run's output folder (its shards and export/) or an export folder")
    c.add_argument("--format", action="append", choices=["wds", "llava", "mplug_owl", "sharegpt", "hf"],
                   help="check only these formats (repeatable; default: every one found)")
    c.add_argument("--tokenizer", help="a local tokenizer folder: render and tokenise every conversation")
    c.add_argument("--template", default="llava_v1", choices=["llava_v1", "vicuna_v1", "mplug_owl", "chatml"],
                   help="chat template to render conversations with, with --tokenizer (default: llava_v1)")
    c.add_argument("--max-len", type=int, default=2048, help="longest sequence the trainer keeps (tokens)")
    c.add_argument("--tokens-per-image", type=int, default=576, help="tokens one image takes (LLaVA-1.5: 576)")
    c.add_argument("--examples", type=int, default=3, help="examples shown per problem")
    c.add_argument("--json", action="store_true", help="print the report as JSON")
    c.set_defaults(fn=_check)

    rep = sub.add_parser("report", help="write OUT/report.html: one self-contained page with the run's plots and samples")
    rep.add_argument("out", help="a finished run's output folder")
    rep.set_defaults(fn=_report)

    vw = sub.add_parser("view", help="browse a run's samples in a local web page (images, conversations, filters)")
    vw.add_argument("out", help="a finished run's output folder")
    vw.add_argument("--port", type=int, default=8765, help="port on 127.0.0.1 (0: any free port; default 8765)")
    vw.add_argument("--max-samples", type=int, default=100_000, help="index at most this many samples per split")
    vw.set_defaults(fn=_view)

    s = sub.add_parser("schema", help="regenerate schemas/recipe.schema.json from the config models")
    s.add_argument("--check", action="store_true", help="fail if the file is out of date")
    s.set_defaults(fn=_schema)

    sub.add_parser("train", help="train a stage (see `datagen train --help`)", add_help=False)
    sub.add_parser("eval", help="evaluate a checkpoint (see `datagen eval --help`)", add_help=False)
    sub.add_parser("chat", help="chat with a trained model (see `datagen chat --help`)", add_help=False)
    sub.add_parser("export-model", help="export a trained model (see `datagen export-model --help`)", add_help=False)
    for name, sp in sub.choices.items():  # every command's --help points at the global options and exit codes
        if name not in TRAIN_COMMANDS:
            sp.epilog = (sp.epilog + "\n\n" if sp.epilog else "") + GLOBAL_NOTE
    return p


def version() -> str:
    from datagen import __version__

    return __version__


def _global_options() -> argparse.ArgumentParser:
    """Options every command takes, before or after the command name (main() takes them out first)."""
    g = argparse.ArgumentParser(prog="datagen", add_help=False, allow_abbrev=False)
    g.add_argument("-q", "--quiet", action="store_true",
                   help="print only warnings and errors: no progress bars or lines (same as --log-level warning)")
    g.add_argument("--log-level", choices=LOG_LEVELS, default=None,
                   help="level of datagen's log lines on stderr (default: info; other libraries: warning)")
    g.add_argument("-v", "--verbose", action="store_true", help="same as --log-level debug")
    return g


def setup_logging(opts: argparse.Namespace) -> None:
    """Log lines go to stderr; the level applies to the ``datagen`` loggers (progress lines included)."""
    level = opts.log_level or ("warning" if opts.quiet else "debug" if opts.verbose else "info")
    configure_logging(level)


def _train_command(command: str, rest: list[str]) -> int:
    """The trainer has its own argument parsers; hand it everything after the command."""
    from datagen.train import cli as train_cli

    if not {"-h", "--help"} & set(rest):
        from datagen.extras import require

        require(f"datagen {command}", "train")
    return train_cli.COMMANDS[command](rest)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    opts, argv = _global_options().parse_known_args(argv)
    if argv and argv[0] in TRAIN_COMMANDS:
        args = argparse.Namespace(fn=lambda a: _train_command(argv[0], argv[1:]))
    else:
        args = build_parser().parse_args(argv)
    setup_logging(opts)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        return args.fn(args)
    except KeyboardInterrupt:
        print("interrupted: finished shards are kept; rerun the same command to resume", file=sys.stderr)
        return 130
    except Exception as e:
        code = _known_error(e)
        if code is None:
            raise
        return code


def _known_error(e: Exception) -> int | None:
    """The exit status of an error the user can act on, its message printed; None for any other (a bug:
    its traceback shows). The classes are imported here, when one is raised: importing them up front
    (the Ray executor's module, the CLIP filter's, the recipe's) cost every command 0.3 s before its work."""
    from datagen.core.lock import FolderInUse
    from datagen.core.ray_executor import RayUnavailable
    from datagen.core.storage import UploadError
    from datagen.fetch.errors import FetchFailureRateExceeded
    from datagen.filters.clip import ClipWeightsUnavailable
    from datagen.recipe import RecipeError
    from datagen.sources.errors import InputFileError
    from datagen.translate.errors import BackendConfigError, QuotaExhausted

    if isinstance(e, QuotaExhausted):
        print(f"stopped: {e}", file=sys.stderr)
        return 4
    if isinstance(e, FetchFailureRateExceeded):
        print(f"stopped: {e}", file=sys.stderr)
        return 6
    if isinstance(e, (RecipeError, FileNotFoundError, InputFileError, ClipWeightsUnavailable, BackendConfigError,
                      FolderInUse, RayUnavailable, UploadError)):
        print(f"error: {e}", file=sys.stderr)
        return 2
    return None


def entry() -> None:
    """The console script and ``python -m datagen.cli``: ``main()``, then the exit handlers (request
    caches, Ray), flushed output, and ``os._exit``: the interpreter's teardown of every imported module
    (Arrow, Polars, matplotlib) cost about 0.3 s at the end of each ``datagen run``, for nothing."""
    code = main()
    import atexit

    if "datagen.core.poolserver" in sys.modules:  # before multiprocessing's exit handler removes its folder
        sys.modules["datagen.core.poolserver"].stop_pool_server()
    atexit._run_exitfuncs()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code or 0)


if __name__ == "__main__":
    entry()
