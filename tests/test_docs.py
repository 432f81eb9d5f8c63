"""The doc-runner: every command and code block of README.md and docs/*.md runs, so the docs
cannot go stale.

How a document is read (conventions for everyone who writes docs):

* Fenced blocks run by their language tag:
    ``bash``, ``sh``, ``shell``  run with ``bash -euo pipefail`` (a failing line fails the block)
    ``python``, ``py``           run in a fresh ``python`` process
    ``toml``                     parsed (it must be valid TOML)
    ``text`` and any other tag   shown only (output, a folder tree, a language we do not run)
  An untagged fence is an error: tag it (``text`` when it is not code).
* The blocks of one document run in order in one scratch folder (a later block sees what an
  earlier one wrote, e.g. ``runs/sweep``), each in its own process, with ``NUMBA_NUM_THREADS=1``
  and ``MPLBACKEND=Agg``.
* Tiny settings: the ``noisysim`` on the blocks' PATH is a shim (``SHIM`` below) that appends
  ``TINY_SET`` as ``--set`` options to every ``run`` and ``sweep`` that does not ``--resume``
  (and ``--main`` to a bare ``noisysim run``, so that it stays the main job), and small sizes
  to ``bench``. So write commands at their real size. Python blocks run as written: keep
  them small (a few epochs of the shipped digits).
* The README's install prefix (``python3 -m venv .venv && . .venv/bin/activate && pip install
  SPEC &&``) is checked (the extras SPEC names exist in pyproject.toml) and dropped: the test
  runs in an installed environment and must not use the network. ``python -m pytest`` runs
  as ``--collect-only`` (the suite cannot run inside itself).
* Markers: an HTML comment alone on the line right before the fence.
    ``<!-- doc-runner: skip: REASON -->``  not run: a GPU-only, cluster, network or full-size
        command, or one that needs an interrupted run. Say why; at most ``MAX_SKIPS`` in all
        the docs (a test counts them), so prefer commands that run.
    ``<!-- doc-runner: needs-gpu -->``     run only where the cuda backend is usable.
* Inline commands (in single backticks) are checked without running them: ``noisysim ...``
  command lines parse with noisysim's own argument parser (a bare ``noisysim CMD`` or
  ``noisysim CMD SUB`` must name a command; bracketed optional parts of a synopsis,
  ``[FILE] [--set ...]``, are left out), ``python FILE ...`` / ``bash FILE`` name files that
  exist and options that appear in them, ``noisysim.module.name`` imports, and
  ``noisysim/...`` paths exist.
  Commands of other programs (pip, apt-get, h5clear) are not checked.

A failure names the document and line of the block and shows its output.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import os
import re
import shlex
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MAX_SKIPS = 4

#: Appended to every `noisysim run` / `noisysim sweep` of a block: 200 digits, 2 epochs.
TINY_SET = ["train.epochs=2", "data.n_train=200", "data.n_test=100", "train.batch_size=50",
            "backend.name=cpu"]
TINY_BENCH = ["--layers", "64,32,10", "--batch", "64", "--steps", "1"]

SHIM = f"""#!{sys.executable}
import sys
from noisysim.cli import main


def tiny(args):
    command = args[0] if args else ""
    if command in ("run", "sweep") and "--resume" not in args and "--help" not in args:
        if command == "run" and len(args) == 1:
            args.append("--main")                  # the bare main job stays the main job
        for s in {TINY_SET!r}:
            args += ["--set", s]
    elif command == "bench" and "--help" not in args:
        args += {TINY_BENCH!r}
    return args


if __name__ == "__main__":                         # sweeps start processes that import this
    sys.exit(main(tiny(sys.argv[1:])))
"""

RUN_LANGS = {"bash": "bash", "sh": "bash", "shell": "bash", "python": "python", "py": "python",
             "toml": "toml"}
MARKER = re.compile(r"^\s*<!--\s*doc-runner:\s*(skip|needs-gpu)\s*(?::\s*(.*?))?\s*-->\s*$")
INSTALL = re.compile(r"python3 -m venv \.venv && \. \.venv/bin/activate && "
                     r"pip install (\S+) && ")


@dataclass
class Block:
    doc: Path
    line: int          # of the opening fence, 1-based
    lang: str          # the tag, lower case ("" when untagged)
    code: str
    marker: str = ""   # "skip" | "needs-gpu" | ""
    reason: str = ""

    def where(self) -> str:
        doc = self.doc.relative_to(ROOT) if self.doc.is_relative_to(ROOT) else self.doc.name
        return f"{doc}:{self.line}"


def blocks(doc: Path) -> list[Block]:
    """The fenced blocks of a markdown file, with the marker on the line before each."""
    lines = doc.read_text(encoding="utf-8").splitlines()
    out, i = [], 0
    while i < len(lines):
        m = re.match(r"^(\s*)(```+|~~~+)\s*([\w+-]*)", lines[i])
        if not m:
            i += 1
            continue
        fence, start = m.group(2), i
        j = i + 1
        while j < len(lines) and not lines[j].strip().startswith(fence):
            j += 1
        prev = lines[start - 1] if start > 0 else ""
        mk = MARKER.search(prev)
        out.append(Block(doc, start + 1, m.group(3).lower(), "\n".join(lines[start + 1:j]),
                         mk.group(1) if mk else "", (mk.group(2) or "") if mk else ""))
        i = j + 1
    return out


def all_blocks() -> list[Block]:
    return [b for doc in DOCS for b in blocks(doc)]


def _cuda_usable() -> bool:
    try:
        from noisysim.backends import resolve_backend

        return resolve_backend("auto") == "cuda"
    except Exception:
        return False


def _extras() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return set(project.get("optional-dependencies", {}))


def _prepare_bash(code: str, where: str) -> str:
    """The block as it runs here: the install prefix checked and dropped, pytest collected."""
    for m in INSTALL.finditer(code):
        spec = m.group(1).strip("\"'")
        extras = set(re.findall(r"\[([\w,]+)\]", spec)[0].split(",")) if "[" in spec else set()
        assert extras <= _extras(), f"{where}: pip install {spec}: no such extra in pyproject"
    code = INSTALL.sub("", code)
    collect = f"python -m pytest -q --collect-only -p no:cacheprovider --rootdir={ROOT} {ROOT}/tests"
    return re.sub(r"python -m pytest -q\b", collect, code)


def _env(bin_dir: Path) -> dict:
    env = dict(os.environ)
    env["PATH"] = f"{bin_dir}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in [env.get("PYTHONPATH")] if p])
    env.update(NUMBA_NUM_THREADS="1", MPLBACKEND="Agg", PYTHONUNBUFFERED="1")
    return env


def _run_block(block: Block, cwd: Path, bin_dir: Path) -> None:
    where = block.where()
    runner = RUN_LANGS[block.lang]
    if runner == "toml":
        try:
            tomllib.loads(block.code)
        except tomllib.TOMLDecodeError as exc:
            pytest.fail(f"{where}: not valid TOML: {exc}")
        return
    if runner == "bash":
        argv = ["bash", "-euo", "pipefail", "-c", _prepare_bash(block.code, where)]
    else:
        argv = [sys.executable, "-c", block.code]
    p = subprocess.run(argv, cwd=cwd, env=_env(bin_dir), capture_output=True, text=True,
                       timeout=300)
    if p.returncode != 0:
        pytest.fail(f"{where}: the {block.lang} block failed (exit {p.returncode}); if it must "
                    f"not run here, mark it with <!-- doc-runner: skip: REASON -->\n--- code\n"
                    f"{block.code}\n--- stdout\n{p.stdout[-3000:]}\n--- stderr\n{p.stderr[-3000:]}")


@pytest.fixture(scope="module")
def bin_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("bin")
    shim = d / "noisysim"
    shim.write_text(SHIM)
    shim.chmod(0o755)
    return d


@pytest.mark.parametrize("doc", DOCS, ids=lambda d: d.name)
def test_every_code_block_of_the_document_runs(doc, bin_dir, tmp_path):
    ran = 0
    for block in blocks(doc):
        if block.lang not in RUN_LANGS or block.marker == "skip":
            continue
        if block.marker == "needs-gpu" and not _cuda_usable():
            continue
        _run_block(block, tmp_path, bin_dir)
        ran += 1
    runnable = [b for b in blocks(doc) if b.lang in RUN_LANGS and not b.marker]
    assert ran >= len(runnable)


def test_every_fence_is_tagged_and_markers_are_few_and_explained():
    found = all_blocks()
    untagged = [b.where() for b in found if not b.lang]
    assert not untagged, f"untagged fences (tag them, e.g. ```text): {untagged}"
    skips = [b for b in found if b.marker == "skip"]
    assert all(b.reason for b in skips), [b.where() for b in skips if not b.reason]
    assert len(skips) <= MAX_SKIPS, [f"{b.where()}: {b.reason}" for b in skips]
    # a marker must sit right before a fence, where the runner looks for it
    for doc in DOCS:
        lines = doc.read_text(encoding="utf-8").splitlines()
        for i, line in enumerate(lines):
            if MARKER.search(line):
                assert i + 1 < len(lines) and lines[i + 1].lstrip().startswith(("```", "~~~")), \
                    f"{doc.name}:{i + 1}: a doc-runner marker must be the line before a fence"


def test_the_runner_covers_the_readme():
    """The README's own blocks: its two opening commands, the command line, Python."""
    found = blocks(ROOT / "README.md")
    run = [b for b in found if b.lang in RUN_LANGS and b.marker != "skip"]
    assert "noisysim run" in run[0].code and "pytest" in run[1].code
    assert sum(b.lang == "python" for b in run) >= 3
    assert any("noisysim sweep" in b.code and "noisysim plot" in b.code for b in run)


def test_the_runner_fails_on_a_broken_block_and_reads_markers(tmp_path, bin_dir):
    doc = tmp_path / "x.md"
    doc.write_text("```bash\nnoisysim inspect missing.h5\n```\n"
                   "<!-- doc-runner: skip: a demo -->\n```bash\nfalse\n```\n"
                   "```text\nfalse\n```\n```\nuntagged\n```\n")
    found = blocks(doc)
    with pytest.raises(pytest.fail.Exception, match=r"x.md:1: the bash block failed \(exit 2\)"):
        _run_block(found[0], tmp_path, bin_dir)
    assert (found[1].marker, found[1].reason, found[1].code) == ("skip", "a demo", "false")
    assert [b.lang for b in found] == ["bash", "bash", "text", ""]
    assert "unrecognized arguments: --no-such" in _parses(["run", "--no-such"])


# -- inline commands ------------------------------------------------------------------------
INLINE = re.compile(r"(?<!`)`([^`\n]+)`(?!`)")


def inline_spans() -> list[tuple[str, str]]:
    out = []
    for doc in DOCS:
        text = re.sub(r"```.*?```", "", doc.read_text(encoding="utf-8"), flags=re.S)
        for m in INLINE.finditer(text):
            out.append((f"{doc.name}:{text.count(chr(10), 0, m.start()) + 1}", m.group(1)))
    return out


def _parses(argv: list[str]) -> str | None:
    """None when noisysim's parser accepts ``argv``, else what it printed."""
    from noisysim.cli import _parser

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            _parser().parse_args(argv)
        except SystemExit as exc:
            return None if exc.code == 0 else err.getvalue().strip() or f"exit {exc.code}"
    return None


def _subcommand(words: list[str]) -> bool:
    """Whether ``words`` is a path of noisysim's (sub)commands: ``["noise", "fit"]``."""
    from noisysim.cli import _parser

    parser = _parser()
    for word in words:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs or word not in subs[0].choices:
            return False
        parser = subs[0].choices[word]
    return bool(words)


def test_inline_commands_parse_and_name_what_exists():
    problems, checked = [], 0
    for where, span in inline_spans():
        words = span.split()
        if not words:
            continue
        if words[0] == "noisysim" and len(words) >= 2:
            checked += 1
            if _subcommand(words[1:]):
                continue  # names a command (`noisysim noise fit`), not a command line
            if len(words) == 2:
                problems.append(f"{where}: `{span}`: no command {words[1]!r}")
            else:
                # a usage synopsis: optional parts in brackets ([FILE] [--set ...]) are left out
                synopsis = re.sub(r"\s\[(?:[A-Z]|-)[^\]]*\]", "", span)
                err = _parses(shlex.split(synopsis)[1:])
                if err:
                    problems.append(f"{where}: `{span}`: {err.splitlines()[-1]}")
        elif words[0] in ("python", "bash") and len(words) >= 2 and "/" in words[1]:
            checked += 1
            script = ROOT / words[1]
            if not script.is_file():
                problems.append(f"{where}: `{span}`: no file {words[1]}")
                continue
            source = script.read_text()
            for opt in re.findall(r"(--[\w-]+)", span):
                if opt not in source:
                    problems.append(f"{where}: `{span}`: {words[1]} has no option {opt}")
        elif re.fullmatch(r"noisysim(\.\w+)+", span):
            checked += 1
            parts = span.split(".")
            for cut in range(len(parts), 0, -1):
                try:
                    obj = importlib.import_module(".".join(parts[:cut]))
                    break
                except ImportError:
                    continue
            try:
                for attr in parts[cut:]:
                    obj = getattr(obj, attr)
            except AttributeError:
                problems.append(f"{where}: `{span}` does not exist")
        elif re.fullmatch(r"noisysim/[\w./-]*", span):
            checked += 1
            if not (ROOT / span).exists():
                problems.append(f"{where}: `{span}` does not exist")
    assert checked > 20 and not problems, "\n".join(problems)


def test_shipped_files_point_only_to_files_in_the_repository():
    """Model files, experiments, the package and the docs cite papers, not files that live
    outside the repository (a SCIENCE.md or a development machine's absolute path)."""
    files = [*(ROOT / "noisysim").rglob("*.py"), *(ROOT / "noisysim").rglob("*.toml"),
             *(ROOT / "experiments").glob("*.*"), *DOCS]
    bad = [f"{f.relative_to(ROOT)}:{i}" for f in files if f.suffix in (".py", ".toml", ".md", ".sh")
           for i, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1)
           if "SCIENCE.md" in line or re.search(r"(?<![\w.])/(work|home|Users)/", line)]
    assert not bad, bad
