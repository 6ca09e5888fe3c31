"""The docs stay runnable (issue 26 item 7): every fenced shell command in README.md and docs/*.md
that calls the CLI parses with its parser (synopsis placeholders filled in), every repository path a
command or an inline code span names exists, the short commands run, every relative link and anchor
resolves, and every docs page is linked from the README."""

from __future__ import annotations

import contextlib
import io
import json
import re
import shlex
from pathlib import Path

import pytest
from helpers import run_cli  # tests/helpers.py

from metainf_core.cli import build_parser

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
SHELL_BLOCK = re.compile(r"^```(?:bash|sh|shell)\n(.*?)^```", re.DOTALL | re.MULTILINE)
# The synopses' placeholders (`fit DIR [--truncation K]`, `--test-task ID|ID,ID|all`), as a user fills them.
PLACEHOLDERS = {"DIR": "runs/my-run", "NEW_DIR": "runs/edited", "ID": "3", "IDS": "1,2", "K": "8", "X": "-1",
                "Y": "1", "J": "0", "N": "2", "FILE": "lds.json"}  # fmt: skip
# Folders a fresh clone does not hold (setup.sh's data, the user's runs, caches): outputs, not references.
NOT_TRACKED = {".venv", ".git", ".cache", "runs", "data", "__pycache__", ".pytest_cache"}
# Commands that finish in seconds, run for real (in this process: `python -m metainf_core ARGS`).
RUN_FOR_REAL = {"info", "--help"}


def commands() -> list[tuple[str, str]]:
    """(file, command line) for every line of every fenced shell block, continuations joined."""
    out = []
    for doc in DOCS:
        for block in SHELL_BLOCK.findall(doc.read_text(encoding="utf-8")):
            for line in block.replace("\\\n", " ").splitlines():
                if line.strip():
                    out.append((doc.relative_to(REPO).as_posix(), line.strip()))
    return out


def cli_argv(line: str) -> list[str] | None:
    """The arguments after ``-m metainf_core`` (python or torchrun), placeholders filled; None if
    the line does not call the CLI. ``[--opt V]`` counts as given, ``a|b`` as its first choice."""
    tokens = shlex.split(line, comments=True)
    if "metainf_core" not in tokens or tokens[tokens.index("metainf_core") - 1] != "-m":
        return None
    argv = []
    for tok in tokens[tokens.index("metainf_core") + 1 :]:
        tok = tok.strip("[]").split("|")[0]
        if tok != "...":
            argv.append(PLACEHOLDERS.get(tok, tok))
    return argv


def repo_paths(tokens: list[str], bare_scripts: bool = True) -> list[str]:
    """The tokens that name a file or folder of the repository: their first part is a tracked
    top-level folder, or (in commands, ``bare_scripts``) they are a top-level ``*.py``/``*.sh``."""
    tops = {p.name for p in REPO.iterdir() if p.is_dir()} - NOT_TRACKED
    found = []
    for tok in tokens:
        tok = tok.strip("[](),;:").split("=")[-1]
        if any(c in tok for c in "<>{}*…"):  # a pattern (paper/<row>/seed<k>/, data/*.json), not a path
            continue
        if ("/" in tok and tok.split("/")[0] in tops) or (bare_scripts and re.fullmatch(r"[\w-]+\.(py|sh)", tok)):
            found.append(tok)
    return found


def test_the_docs_have_commands_to_check():
    cli = [argv for _, line in commands() if (argv := cli_argv(line)) is not None]
    assert len(cli) >= 20 and {a[0] for a in cli} >= {"train", "info", "evaluate", "import", "fit", "rank", "reproduce"}


@pytest.mark.parametrize(("doc", "line"), commands())
def test_command_parses_and_names_existing_files(doc, line):
    for path in repo_paths(shlex.split(line, comments=True)):
        assert (REPO / path).exists(), f"{doc}: `{line}` names {path}, which does not exist"
    if line.startswith("make "):
        target = shlex.split(line, comments=True)[1]
        assert re.search(rf"^{target}:", (REPO / "Makefile").read_text(encoding="utf-8"), re.MULTILINE), line
    argv = cli_argv(line)
    if argv is None or "--help" in argv:
        return
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            build_parser().parse_args(argv)
        except SystemExit:
            pytest.fail(f"{doc}: `{line}` does not parse as {argv}: {err.getvalue().strip()}")


@pytest.mark.parametrize(
    ("doc", "line"), [(d, ln) for d, ln in commands() if (cli_argv(ln) or [""])[0] in RUN_FOR_REAL]
)
def test_short_commands_run(doc, line):
    argv = cli_argv(line)
    result = run_cli(*argv)
    assert result.returncode == 0, f"{doc}: `{line}` exited {result.returncode}: {result.stderr}"
    if argv[0] == "info":  # the demo's metadata: docs/datasets-and-training.md's table (ProtoNet, 7,248 parameters)
        info = json.loads(result.stdout)
        assert (info["algorithm"], info["num_parameters"]) == ("protonet", 7248), info
    else:
        assert "info" in result.stdout and "reproduce" in result.stdout  # the usage lists the subcommands


def test_inline_paths_exist():
    """Paths in inline code (`metainf_core/influence/ihvp.py`): a rename must update the docs."""
    for doc in DOCS:
        for span in re.findall(r"`([^`\n]+)`", SHELL_BLOCK.sub("", doc.read_text(encoding="utf-8"))):
            for path in repo_paths(span.split(), bare_scripts=False):  # prose's `detect.py` is metainf_core's
                dotted = REPO / (path.rsplit(".", 1)[0] + ".py")  # tests/helpers.run_cli: a name in a file
                assert (REPO / path).exists() or dotted.is_file(), (
                    f"{doc.name}: `{span}` names {path}, which does not exist"
                )


def anchors(doc: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    heads = re.findall(r"^#+ (.+)$", SHELL_BLOCK.sub("", doc.read_text(encoding="utf-8")), re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in heads}


def test_relative_links_and_anchors_resolve():
    for doc in DOCS:
        for target in re.findall(r"\]\(([^)\s]+)\)", doc.read_text(encoding="utf-8")):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            dest = (doc.parent / path).resolve() if path else doc
            assert dest.exists(), f"{doc.name}: link to {target}: no such file"
            if anchor:
                assert anchor in anchors(dest), f"{doc.name}: link to {target}: no such heading in {dest.name}"


def test_every_docs_page_is_linked_from_the_readme():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    pages = sorted((REPO / "docs").glob("*.md"))
    assert len(pages) >= 8  # the topic pages of issue 26 item 7
    for page in pages:
        assert f"](docs/{page.name})" in readme, f"docs/{page.name} is not linked from README.md"
        assert "](../README.md)" in page.read_text(encoding="utf-8"), f"docs/{page.name} does not link back"


def test_the_suite_is_shared_out_as_docs_testing_says():
    """docs/testing.md: under `make test` each test file is one unit of work, and the files that start
    process groups or servers (conftest.PROCESS_FILES, named on the page) are one unit together."""
    from conftest import PROCESS_FILES, work_unit  # tests/conftest.py

    files = sorted(f"tests/{p.name}" for p in (REPO / "tests").glob("test_*.py"))
    page = (REPO / "docs" / "testing.md").read_text(encoding="utf-8")
    assert PROCESS_FILES and set(PROCESS_FILES) <= set(files)  # a renamed file would silently leave the unit
    assert all(f"`{f}`" in page for f in PROCESS_FILES)
    units = {f: work_unit(f"{f}::test_x[a::b]") for f in files}
    assert {units[f] for f in PROCESS_FILES} == {"processes"}
    assert len(set(units.values())) == len(files) - len(PROCESS_FILES) + 1
