"""Command-line conventions: --version, -q / --log-level, help for every argument, documented exit
codes, and progress that is a bar only on a terminal and plain log lines everywhere else."""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import datagen
from datagen import progress as progress_mod
from datagen.cli import EXIT_CODES, build_parser
from datagen.train import cli as train_cli

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "datagen" / "assets" / "demo"
PROGRESS_LINE = re.compile(r"^INFO pairs: \d+/\d+ rows \(\d+%\), \d+ rows/s", re.M)


def _cli(*args, env=None, cwd=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([sys.executable, "-m", "datagen.cli", *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=300)


def _walk(parser: argparse.ArgumentParser, path: str):
    """Every (command path, action) of ``parser`` and of its sub-commands, recursively."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, sub in action.choices.items():
                yield f"{path} {name}", argparse.Action([name], name, help=helps.get(name))
                yield from _walk(sub, f"{path} {name}")
        else:
            yield path, action


def test_every_argument_of_every_command_has_help():
    parsers = [(build_parser(), "datagen")] + [(make(), f"datagen {name}") for name, make in train_cli.PARSERS.items()]
    missing = [f"{path}: {action.option_strings or action.dest}"
               for parser, path in parsers for path, action in _walk(parser, path)
               if not (action.help or "").strip() or action.help == argparse.SUPPRESS]
    assert not missing, "arguments without help text:\n" + "\n".join(missing)
    # the trainer's commands are all reachable from the top-level parser too
    assert set(train_cli.PARSERS) <= set(_subcommands(build_parser()))


def _subcommands(parser):
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices


def test_version_prints_the_package_version():
    r = _cli("--version")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"datagen {datagen.__version__}"


def test_exit_codes_are_documented_in_help_and_readme():
    r = _cli("--help")
    assert r.returncode == 0
    helptext = " ".join(r.stdout.split())
    readme = (ROOT / "README.md").read_text()
    for code, text in EXIT_CODES.items():
        assert re.search(rf"\b{code}\s+" + re.escape(" ".join(text.split())[:40]), helptext), code
        assert f"| {code} | {text} |" in readme, f"README's exit code table lacks {code}: {text}"
    # every status the CLI returns is in the table (exit code 6 was once returned but not documented)
    returned = {int(c) for c in re.findall(r"\breturn (\d+)\b", (ROOT / "datagen" / "cli.py").read_text())}
    assert returned <= set(EXIT_CODES), sorted(returned - set(EXIT_CODES))


def test_bad_usage_exits_2_and_missing_folder_exits_2():
    assert _cli("--log-level", "loud", "validate", "x.yaml").returncode == 2
    r = _cli("validate", "/no/such/recipe.yaml")
    assert r.returncode == 2 and "error:" in r.stderr


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    """The demo's COCO photographs as local files, cut into input shards of 4 rows (7 tasks)."""
    d = tmp_path_factory.mktemp("conv")
    (d / "r.yaml").write_text(f"""
name: conv
sources:
  - name: coco
    kind: coco
    captions: {DEMO}/annotations/captions_demo2017.json
    instances: {DEMO}/annotations/instances_demo2017.json
    images: {DEMO}/images
fetch: {{allow_local_files: true, max_side: 128}}
filters: {{quality: {{min_side: 64}}}}
synthesize: {{sources: [coco]}}
executor: {{shard_rows: 4}}
output: {{shard_max_count: 8, exports: [hf]}}  # datasets draws bars of its own
""")
    return d / "r.yaml"


def test_progress_off_a_terminal_is_plain_periodic_lines(recipe, tmp_path):
    err = tmp_path / "stderr.txt"
    with open(err, "w") as f:  # a file, as a CI log or `nohup` would capture it
        r = subprocess.run([sys.executable, "-m", "datagen.cli", "run", str(recipe), "--out", str(tmp_path / "o")],
                           stdout=subprocess.PIPE, stderr=f, text=True, timeout=300,
                           env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)})
    log = err.read_bytes()
    assert r.returncode == 0, log.decode()
    assert b"\r" not in log
    lines = PROGRESS_LINE.findall(log.decode())
    assert len(lines) >= 3, log.decode()  # 7 tasks of 4 rows: a line per 10% crossed, and the last
    assert "pairs: 28/28 rows (100%)" in log.decode()
    assert "stage1 shards: " in log.decode()


def test_quiet_drops_info_lines_before_or_after_the_command(recipe, tmp_path):
    for i, args in enumerate((["-q", "run", str(recipe)], ["run", str(recipe), "--quiet"])):
        r = _cli(*args, "--out", str(tmp_path / f"o{i}"))
        assert r.returncode == 0, r.stderr
        assert "INFO" not in r.stderr and "rows/s" not in r.stderr, r.stderr
        assert "stage1 samples" in r.stdout  # the summary is output, not a log line


def test_log_level_debug_shows_debug_lines(recipe, tmp_path):
    r = _cli("run", str(recipe), "--out", str(tmp_path / "o"), "--log-level", "debug")
    assert r.returncode == 0, r.stderr
    assert re.search(r"^DEBUG pairs: shard coco-\d+ done", r.stderr, re.M), r.stderr
    r = _cli("run", str(recipe), "--out", str(tmp_path / "o"))
    assert "DEBUG" not in r.stderr and "INFO" in r.stderr


# ----------------------------------------------------------------------------- the helper itself

class _Stream:
    def __init__(self, tty: bool):
        self.tty, self.text = tty, ""

    def isatty(self):
        return self.tty

    def write(self, s):
        self.text += s

    def flush(self):
        pass


@pytest.fixture
def info_logging():
    lg = logging.getLogger("datagen")
    old = lg.level
    lg.setLevel(logging.INFO)
    yield
    lg.setLevel(old)


def test_progress_is_a_bar_only_on_a_terminal(monkeypatch, info_logging):
    from tqdm import tqdm

    monkeypatch.setattr(sys, "stderr", _Stream(tty=True))
    bar = progress_mod.progress(10, "fetch")
    assert isinstance(bar, tqdm)
    bar.close()
    monkeypatch.setattr(sys, "stderr", _Stream(tty=False))
    assert isinstance(progress_mod.progress(10, "fetch"), progress_mod.LogProgress)
    logging.getLogger("datagen").setLevel(logging.WARNING)  # -q: no bar even on a terminal
    monkeypatch.setattr(sys, "stderr", _Stream(tty=True))
    assert isinstance(progress_mod.progress(10, "fetch"), progress_mod.LogProgress)


def test_log_progress_lines_every_tenth_and_every_interval(monkeypatch, caplog, info_logging):
    caplog.set_level(logging.INFO, logger="datagen.progress")
    monkeypatch.setenv("DATAGEN_PROGRESS_SECONDS", "1000")
    with progress_mod.progress(3000, "fetch") as bar:
        for _ in range(30):
            bar.update(100)
    msgs = [r.getMessage() for r in caplog.records if r.name == "datagen.progress"]
    assert len(msgs) == 10  # 10%, 20% ... 90%, then the closing line at 100%
    assert msgs[3].startswith("fetch: 1200/3000 rows (40%), ") and msgs[3].endswith(" rows/s")
    assert msgs[-1].startswith("fetch: 3000/3000 rows (100%), ")
    caplog.clear()
    monkeypatch.setenv("DATAGEN_PROGRESS_SECONDS", "0")  # every update is past the interval
    with progress_mod.progress(None, "sink", "sample") as bar:
        for _ in range(5):
            bar.update(1)
    msgs = [r.getMessage() for r in caplog.records if r.name == "datagen.progress"]
    assert [m.split(",")[0] for m in msgs] == ["sink: 1 samples", "sink: 2 samples", "sink: 3 samples",
                                              "sink: 4 samples", "sink: 5 samples", "sink: 5 samples"]


@pytest.mark.parametrize("level", [logging.DEBUG, logging.WARNING])
def test_pool_workers_log_at_the_drivers_level_and_see_its_environment_as_it_is_now(tmp_path, level, monkeypatch):
    """A pool process starts with no logging set up: without the driver's level its progress and info
    lines were dropped, even with -v. It is forked from the fork server, which kept the environment it
    started with: the driver's environment of when the pool opens must reach it (a key set since)."""
    from datagen.core import executor, poolserver
    from datagen.core.steps import RunContext

    poolserver.prestart()
    monkeypatch.setenv("DATAGEN_TEST_LATE_VAR", f"set after the fork server started, level {level}")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    before = progress_mod.datagen_level()
    progress_mod.configure_logging(level)
    try:
        pool = executor.open_pool(1, RunContext(tmp_path, tmp_path))
    finally:
        progress_mod.configure_logging(before)
    with pool:
        assert pool.submit(progress_mod.datagen_level).result() == level
        assert pool.submit(os.getenv, "DATAGEN_TEST_LATE_VAR").result() == os.environ["DATAGEN_TEST_LATE_VAR"]
        assert pool.submit(os.getenv, "HF_HUB_OFFLINE").result() is None
        from multiprocessing import forkserver

        assert pool.submit(os.getppid).result() == forkserver._forkserver._forkserver_pid != os.getpid()


def test_a_pool_process_runs_its_exit_handlers_when_the_pool_closes(tmp_path):
    """A process forked from the fork server ends in os._exit; the exit handlers registered in it (the
    request caches' flush, temporary folders) must still run, as they did in a spawned process."""
    import atexit

    from datagen.core import executor
    from datagen.core.steps import RunContext

    marker = tmp_path / "the-workers-exit-handler-ran"
    with executor.open_pool(1, RunContext(tmp_path, tmp_path)) as pool:
        pool.submit(atexit.register, marker.touch).result()
        assert not marker.exists()
    assert marker.exists()


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_pool_processes_and_the_fork_server_end_when_the_driver_is_killed(tmp_path):
    """kill -9 of a run's driver left its pool processes waiting for work forever (spawned or forked),
    each holding its memory; now each ends when the driver's end of its sentinel pipe closes, and the
    fork server, which they kept alive, ends after them."""
    import time

    code = (
        "import os, sys, time\n"
        "from multiprocessing import forkserver\n"
        "from datagen.core import executor\n"
        "from datagen.core.steps import RunContext\n"
        "pool = executor.open_pool(2, RunContext(sys.argv[1], sys.argv[1]))\n"
        "busy = pool.submit(time.sleep, 60)\n"  # one worker mid-task, the other waiting for work
        "assert pool.submit(os.getpid).result() > 0\n"
        "print(sorted(pool._processes), forkserver._forkserver._forkserver_pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        pids_text, server = line.rsplit("]", 1)
        pids = {int(p) for p in pids_text.strip("[ ").split(",")} | {int(server)}
        assert len(pids) == 3 and all(_running(p) for p in pids)
    finally:
        proc.kill()
        proc.wait()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and any(_running(p) for p in pids):
        time.sleep(0.1)
    assert not [p for p in pids if _running(p)], "processes outlived their killed driver"


def test_the_fork_server_is_stopped_and_reaped(tmp_path):
    """``stop_pool_server`` (the console entry calls it) ends the server and waits for it: no process
    outlives the run, and the server's CPU (and its reaped workers') counts as this process's children's."""
    from multiprocessing import forkserver

    from datagen.core import executor, poolserver
    from datagen.core.steps import RunContext

    with executor.open_pool(1, RunContext(tmp_path, tmp_path)) as pool:
        assert pool.submit(os.getpid).result() > 0
    pid = forkserver._forkserver._forkserver_pid
    assert pid is not None
    poolserver.stop_pool_server()
    assert forkserver._forkserver._forkserver_pid is None
    with pytest.raises(ChildProcessError):  # reaped already: not a zombie left to init
        os.waitpid(pid, os.WNOHANG)
    poolserver.stop_pool_server()  # nothing running: a no-op
    with executor.open_pool(1, RunContext(tmp_path, tmp_path)) as pool:  # a later pool starts a new server
        assert pool.submit(os.getppid).result() == forkserver._forkserver._forkserver_pid != pid


def test_the_console_entry_runs_exit_handlers_flushes_output_and_keeps_the_exit_status(tmp_path):
    """``datagen.cli.entry`` skips the interpreter's teardown (os._exit) but not what must happen at exit:
    atexit handlers (the request caches' flush) run, buffered output arrives, the status is main()'s."""
    marker = tmp_path / "atexit-ran"
    code = ("import atexit, sys; from datagen import cli; "
            f"atexit.register(lambda: open({str(marker)!r}, 'w').write('yes')); "
            "sys.stdout.write('buffered, no newline'); sys.argv = ['datagen'] + sys.argv[1:]; cli.entry()")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    ok = subprocess.run([sys.executable, "-c", code, "--version"], capture_output=True, text=True, env=env, timeout=120)
    assert ok.returncode == 0 and marker.read_text() == "yes"
    assert ok.stdout.startswith("buffered, no newline") and datagen.__version__ in ok.stdout
    marker.unlink()
    bad = subprocess.run([sys.executable, "-c", code, "validate", str(tmp_path / "missing.yaml")], capture_output=True,
                         text=True, env=env, timeout=120)
    assert bad.returncode == 2 and "not found" in bad.stderr and marker.read_text() == "yes"


def test_the_fork_server_starts_before_the_recipe_is_validated_when_the_file_asks_for_a_pool(tmp_path, monkeypatch):
    """``datagen run`` reads the recipe file, and when it asks for a local pool starts the fork server
    before validating it (the server's 0.5 s of imports then overlap the 0.25 s that validation imports);
    a recipe without a pool never starts one, and the validated recipe, not the peek, has the last word."""
    from multiprocessing import forkserver

    import datagen.core.pipeline
    import datagen.recipe
    from datagen.cli import main
    from datagen.core import poolserver

    seen = []
    real = datagen.recipe.validate_recipe

    def running() -> bool:
        return forkserver._forkserver._forkserver_pid is not None

    def validate(resolved, file):
        seen.append(running())
        return real(resolved, file)

    def preflight(recipe, ctx):  # the first thing after the decision: stop the run here
        seen.append(running())
        raise datagen.recipe.RecipeError("stop here")

    monkeypatch.setattr(datagen.recipe, "validate_recipe", validate)
    monkeypatch.setattr(datagen.core.pipeline, "preflight", preflight)
    recipe = tmp_path / "r.yaml"
    cases = {"executor: {workers: 2}": [True, True], "executor: {workers: 1}": [False, False],
             "executor: {kind: ray, workers: 2}": [False, False],
             "executor: {workers: '2'}": [False, True]}  # the peek does not guess; validation coerces it
    try:
        for line, expected in cases.items():
            poolserver.stop_pool_server()
            seen.clear()
            recipe.write_text(f"name: t\nsources: [{{name: a, kind: laion, path: a.parquet}}]\n{line}\n")
            assert main(["run", str(recipe), "--out", str(tmp_path / "o")]) == 2
            assert seen == expected, line
        for extra, expected in ((["--set", "executor.workers=3"], [True, True]), (["--dry-run"], [False, False])):
            poolserver.stop_pool_server()
            seen.clear()
            recipe.write_text("name: t\nsources: [{name: a, kind: laion, path: a.parquet}]\n")
            assert main(["run", str(recipe), "--out", str(tmp_path / "o"), *extra]) == 2
            assert seen == expected, extra
    finally:
        poolserver.stop_pool_server()


def test_reading_a_recipe_and_starting_the_fork_server_import_no_model_and_no_dataframe_library():
    """What ``datagen run`` does before its pool's fork server starts stays light: reading the recipe
    file (YAML, overrides, ${VAR}) imports neither the recipe model nor Arrow, Polars or pandas, and the
    fork-server module is standard library only; validating the recipe does not import Polars either
    (the driver needs it only after its first pass), and the fetch step's class, which the driver needs
    for the pass's fingerprint, comes without the network stack (the pool's processes download)."""
    code = ("import sys, datagen.recipe as r, datagen.core.poolserver\n"
            "r.read_recipe(sys.argv[1], ['executor.workers=2'])\n"
            "heavy = {'datagen.config', 'pydantic', 'pyarrow', 'polars', 'pandas', 'numpy'}\n"
            "print('READ', sorted(heavy & set(sys.modules)))\n"
            "r.load_recipe(sys.argv[1])\n"
            "print('VALIDATED', sorted({'polars', 'imagehash', 'pandas', 'aiohttp'} & set(sys.modules)))\n"
            "import datagen.core.pipeline, datagen.fetch.step\n"  # the pass's fingerprint needs the step class
            "print('FETCH STEP', sorted({'polars', 'aiohttp', 'yarl'} & set(sys.modules)))\n")
    r = subprocess.run([sys.executable, "-c", code, str(ROOT / "recipes" / "demo.yaml")], capture_output=True,
                       text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr
    assert "READ []" in r.stdout and "VALIDATED []" in r.stdout and "FETCH STEP []" in r.stdout, r.stdout


def test_a_run_and_its_pool_processes_never_import_pandas(tmp_path):
    """pyarrow imports pandas on its first list -> array, only to tell whether it was handed a pandas object
    (0.2 s in the driver's path to its first task, 40 MB in each process); ``datagen.core.nopandas`` makes
    it look once while pandas cannot be imported. A whole run, with a pool, then leaves pandas out of the
    driver and of a process forked from the same server after building a table; pyarrow still converts to
    and from pandas when asked, pandas types included."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"""
name: np
sources:
  - name: laion
    kind: laion
    path: {DEMO}/laion_demo.parquet
fetch: {{allow_local_files: true, max_side: 64}}
executor: {{shard_rows: 4, workers: 2}}
output: {{shard_max_count: 8}}
""")
    code = (
        "import sys\n"
        "from datagen import cli\n"
        "from datagen.core import executor\n"
        "from datagen.core.steps import RunContext\n"
        "assert cli.main(['run', sys.argv[1], '--out', sys.argv[2]]) == 0\n"
        "with executor.open_pool(1, RunContext(sys.argv[2], sys.argv[2])) as pool:\n"
        "    worker = pool.submit(eval, \"__import__('pyarrow').Table.from_pylist([{'a': 1}]).num_rows == 1 "
        "and 'pandas' in __import__('sys').modules\").result()\n"
        "print('DRIVER', 'pandas' in sys.modules, 'WORKER', worker)\n"
        "import pyarrow as pa\n"
        "df = pa.table({'a': [1, 2]}).to_pandas()\n"
        "import pandas as pd\n"
        "print('AFTER', type(df).__name__, pa.array(pd.Series(pd.Categorical(['x', 'y']))).type)\n"
    )
    r = subprocess.run([sys.executable, "-c", code, str(recipe), str(tmp_path / "o")], capture_output=True,
                       text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr
    assert "DRIVER False WORKER False" in r.stdout, r.stdout
    assert "AFTER DataFrame dictionary<" in r.stdout, r.stdout  # a categorical Series, seen as pandas
    assert json.loads((tmp_path / "o" / "manifest.json").read_text())["counts"]["pairs"]["reconciled"]
