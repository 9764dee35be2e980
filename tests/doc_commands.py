"""The ``python -m frcnn_lab.<entry>`` commands that README.md and docs/*.md show, and how the tests check them.

A command is found in a fenced ``bash`` block (backslash continuations joined, ``# comments`` dropped) or in an
inline code span that starts with ``python -m frcnn_lab.``. Checking it without running it:

- Hydra entry points (train, evaluate, predict, export, serve, browse): composed in this process as the CLI
  composes them, with ``--cfg job`` (Hydra prints the config and runs nothing). A sweep (``-m``) is composed as
  its first job. Placeholders a user fills in (``<run>``, ``<sweep dir>``) become a plain name, ``$PWD`` the
  working directory; files a block writes with a heredoc (``cat > f <<'YAML'``) are written there first.
- ``frcnn_lab.report``: run for real into a temporary folder; a placeholder folder becomes a committed study.
- ``frcnn_lab.data.openimages``: its argument parser reads the arguments (nothing is downloaded).
- ``frcnn_lab.convert``: its argument parser reads the arguments and the config it would write is composed.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

from support import REPO_ROOT

FENCE = re.compile(r"^[ \t]*```([\w-]*)[^\n]*\n(.*?)^[ \t]*```", flags=re.S | re.M)
PLACEHOLDER = re.compile(r"<[^<>\s'][^<>]*>")
HEREDOC = re.compile(r"cat > (\S+) <<'?(\w+)'?\n(.*?)\n\2$", flags=re.S | re.M)
SHELL_OPERATORS = {"&&", "||", "|", ";", "&"}
HYDRA_ENTRY_POINTS = {"frcnn_lab.train", "frcnn_lab.evaluate", "frcnn_lab.predict", "frcnn_lab.export",
                      "frcnn_lab.serve", "frcnn_lab.browse"}
REPORT_OPTIONS_WITH_VALUE = {"--plateau-window", "--plateau-tolerance", "--plateau-floor", "--target-difference",
                             "--rope", "--budget", "--step-costs", "--cost-budget"}
REPORT_FILE_OPTIONS = {"--step-costs"}  # a file of the repository, as the docs show it from its root
HYDRA_FLAGS_WITH_VALUE = {"--config-dir", "-cd", "--config-name", "-cn", "--config-path", "-cp", "--cfg", "-c",
                          "--package", "-p"}
STANDING_IN = "placeholder"
"""What a ``<placeholder>`` becomes: a plain name that any path or string key accepts."""
A_STUDY = REPO_ROOT / "experiments" / "findings" / "convergence" / "runs"
"""The runs a report command reads when the documented folder is a placeholder (3 committed runs)."""


@dataclass(frozen=True)
class Command:
    """One documented command: where it is shown, as shown, and the module and arguments it runs."""

    file: str
    line: int
    text: str
    module: str
    args: tuple[str, ...]
    heredocs: tuple[tuple[str, str], ...] = field(default=(), compare=False)

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"


def fenced_blocks(text: str) -> list[tuple[str, str, int]]:
    """(language, body, line of the body's first line) of every fenced block."""
    return [(m.group(1), m.group(2), text.count("\n", 0, m.start(2)) + 1) for m in FENCE.finditer(text)]


def sections(text: str) -> list[tuple[str, str, int]]:
    """(``## `` heading, body, line of the heading) of a markdown file, outside fenced blocks."""
    spans = [(m.start(), m.end()) for m in FENCE.finditer(text)]
    heads = [m for m in re.finditer(r"^## (.+)$", text, flags=re.M)
             if not any(a <= m.start() < b for a, b in spans)]
    return [(m.group(1).strip(), text[m.end(): heads[i + 1].start() if i + 1 < len(heads) else len(text)],
             text.count("\n", 0, m.start()) + 1) for i, m in enumerate(heads)]


def parse_command(text: str) -> tuple[str, tuple[str, ...]] | None:
    """``... python -m frcnn_lab.x a b  # comment`` -> ("frcnn_lab.x", ("a", "b")), or None if it is no such command.

    Environment assignments and wrappers before ``python`` (``OMP_NUM_THREADS=1 nice -n 10``) are left out, and the
    arguments end at a shell operator or redirection."""
    text = PLACEHOLDER.sub(STANDING_IN, text)
    try:
        tokens = shlex.split(text, comments=True)
    except ValueError:
        return None
    for i, token in enumerate(tokens[:-2]):
        if token.endswith("python") and tokens[i + 1] == "-m" and re.fullmatch(r"frcnn_lab(\.\w+)+", tokens[i + 2]):
            args = []
            for arg in tokens[i + 3:]:
                if arg in SHELL_OPERATORS or arg.startswith((">", "2>")):
                    break
                args.append(arg)
            return tokens[i + 2], tuple(args)
    return None


def logical_lines(body: str, first_line: int) -> list[tuple[int, str]]:
    """A block's lines with backslash continuations joined, each with the number of its first line."""
    lines, start, current = [], None, ""
    for number, line in enumerate(body.splitlines(), first_line):
        if start is None:
            start = number
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        lines.append((start, current + line))
        start, current = None, ""
    if current:
        lines.append((start, current))
    return lines


def block_commands(path: Path, body: str, first_line: int) -> list[Command]:
    heredocs = tuple((m.group(1), m.group(3) + "\n") for m in HEREDOC.finditer(body))
    body_without_heredocs = HEREDOC.sub("", body)
    found = []
    for number, line in logical_lines(body_without_heredocs, first_line):
        parsed = parse_command(line)
        if parsed:
            found.append(Command(relative(path), number, " ".join(line.split()), *parsed, heredocs=heredocs))
    return found


def relative(path: Path) -> str:
    return str(path.resolve().relative_to(REPO_ROOT))


def commands_in(path: Path, text: str | None = None, first_line: int = 1, inline: bool = True) -> list[Command]:
    """Every command of ``path`` (or of ``text``, a part of it starting at ``first_line``): fenced bash blocks, then
    inline code spans."""
    text = path.read_text() if text is None else text
    found = []
    for language, body, line in fenced_blocks(text):
        if language in ("bash", "sh", "shell", "console"):
            found += block_commands(path, body, first_line + line - 1)
    if inline:
        outside = FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)
        for m in re.finditer(r"`(python -m frcnn_lab\.[^`]*)`", outside):
            parsed = parse_command(" ".join(m.group(1).split()))
            if parsed:
                number = first_line + outside.count("\n", 0, m.start())
                found.append(Command(relative(path), number, " ".join(m.group(1).split()), *parsed))
    return found


def first_job(args: tuple[str, ...]) -> list[str]:
    """The arguments of a sweep's first job: ``-m`` dropped, each swept key at its first value."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    flags, overrides, rest = [], [], iter(args)
    for arg in rest:
        if arg in ("-m", "--multirun"):
            continue
        if arg in HYDRA_FLAGS_WITH_VALUE:
            flags += [arg, next(rest)]
        elif arg.startswith("-"):
            flags.append(arg)
        else:
            overrides.append(arg)
    parsed = OverridesParser.create().parse_overrides(overrides)
    jobs = []
    for text, override in zip(overrides, parsed, strict=True):
        if override.is_sweep_override():
            value = next(iter(override.sweep_string_iterator()))
            jobs.append(f"{override.get_key_element()}={value}")
        else:
            jobs.append(text)
    return flags + jobs


def compose_with_hydra(module: str, args: list[str]) -> tuple[int, str]:
    """``python -m module *args --cfg job`` in this process -> (exit code, stdout + stderr)."""
    from hydra.core.global_hydra import GlobalHydra

    main = importlib.import_module(module).main
    argv, out = sys.argv, io.StringIO()
    sys.argv = [module, *args, "--cfg", "job"]
    code = 0
    GlobalHydra.instance().clear()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            main()
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
        if not isinstance(exit_.code, int | None):
            out.write(str(exit_.code))
    finally:
        sys.argv = argv
        GlobalHydra.instance().clear()
    return code, out.getvalue()


def report_argv(args: tuple[str, ...], output: Path) -> list[str]:
    """A documented report command's arguments, its folder a committed study when it is a placeholder (or the
    repository's folder it names), its output ``output`` (replaced, so nothing in the repository is written)."""
    argv, rest = [], iter(args)
    for arg in rest:
        if arg == "--output":
            next(rest)
        elif arg.startswith("--output="):
            continue
        elif arg in REPORT_OPTIONS_WITH_VALUE:
            value = next(rest)
            argv += [arg, str(REPO_ROOT / value) if arg in REPORT_FILE_OPTIONS else value]
        elif arg.startswith("-"):
            argv.append(arg)
        elif STANDING_IN in arg:
            argv.append(str(A_STUDY))
        else:
            argv.append(str(REPO_ROOT / arg))  # a folder of the repository, as the docs show it from its root
    return [*argv, "--output", str(output), "--overwrite"]


def check(command: Command, workdir: Path) -> tuple[bool, str]:
    """(whether ``command`` composes / runs on its tiny budget, what it printed), in ``workdir``."""
    for name, content in command.heredocs:
        target = workdir / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content)
    args = tuple(arg.replace("$PWD", str(workdir)) for arg in command.args)
    if command.module in HYDRA_ENTRY_POINTS:
        code, output = compose_with_hydra(command.module, first_job(args))
        return code == 0 and bool(output.strip()), output
    if command.module == "frcnn_lab.report":
        from frcnn_lab.report.cli import main as report

        out = io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            try:
                code = report(report_argv(args, workdir / "report"))
            except SystemExit as exit_:
                code = exit_.code
        return code == 0, out.getvalue()[-3000:]
    if command.module == "frcnn_lab.data.openimages":
        from frcnn_lab.data.openimages import parse_args

        out = io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            try:
                parse_args(list(args))
            except SystemExit as exit_:
                return exit_.code in (0, None), out.getvalue()
        return True, out.getvalue()
    if command.module == "frcnn_lab.convert":
        from frcnn_lab.convert import converted_config, parse_args

        out = io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            try:
                parsed = parse_args(list(args))
            except SystemExit as exit_:
                return exit_.code in (0, None), out.getvalue()
        converted_config(parsed.backbone, parsed.overrides)  # the config it would write, composed and checked
        return True, out.getvalue()
    return False, f"{command.module}: not an entry point these tests know"


def slug(heading: str) -> str:
    """GitHub's anchor of a markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def broken_links(path: Path) -> list[str]:
    """Relative links of ``path`` whose file, or whose ``#anchor`` in a markdown file, does not exist."""
    text = FENCE.sub("", path.read_text())
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue
        file, _, anchor = target.partition("#")
        resolved = (path.parent / file).resolve() if file else path
        if not resolved.exists():
            broken.append(target)
        elif anchor and resolved.suffix == ".md":
            headings = re.findall(r"^#+ (.+)$", FENCE.sub("", resolved.read_text()), flags=re.M)
            if anchor not in {slug(h) for h in headings}:
                broken.append(target)
    return broken
