"""Every code block of the documentation runs, so a changed behaviour breaks the docs, not a user.

Pages: every ``docs/**/*.md`` and ``README.md`` (when present). Each page's blocks run in order,
in one fresh subprocess per page whose working directory is a new temporary directory:

- ```` ```python ```` (or ``py``) blocks run with ``exec`` in one namespace shared by the page's
  blocks; a block whose first line starts with ``>>>`` (or a ``pycon`` block) runs as a doctest in
  that namespace, its printed output compared.
- ```` ```bash ````, ``sh``, ``shell`` and ``console`` blocks that run a ``tensorbridge`` or
  ``python`` command run with ``bash -euo pipefail`` in the same directory (``console``: only the
  ``$ `` lines), so the page's earlier Python blocks can make the files they use. ``$TB_ROOT`` is
  the repository root (the sample checkpoint is ``$TB_ROOT/samples/checkpoint.pt``, and
  ``samples/`` in the directory links to the repository's, so ``samples/checkpoint.pt`` works
  as it does from the root: do not write there). A shell block
  that installs (``pip install``, ``python -m venv``) is a set-up recipe: it is syntax-checked
  with ``bash -n`` only.
- A fence marked ``no-run`` (```` ```python no-run ````) is compiled, not run; there may be at most
  ``MAX_NO_RUN`` of them in all.
- Other fences (``text``, ``yaml``...) are prose.

The subprocess runs with ``-W error``: tensorbridge never warns, so a warning a snippet provokes
is a failure unless the snippet catches it. A last test builds the site with
``mkdocs build --strict``, so a broken reference, link or anchor fails too.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
MAX_NO_RUN = 3
PAGE_TIMEOUT_S = 90

PYTHON_LANGS = {"python", "py", "python3", "pycon"}
SHELL_LANGS = {"bash", "sh", "shell", "console"}
FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^`\n]*)$")
RUNS_COMMAND = re.compile(r"(^|[;&|(]\s*|\$\s+)(tensorbridge|python3?)\b", re.MULTILINE)
INSTALLS = re.compile(r"\bpip3?\s+install\b|\b-m\s+venv\b|\bapt(-get)?\s+install\b")


@dataclass(frozen=True)
class Block:
    page: str
    line: int  # 1-based line of the opening fence
    lang: str
    flags: tuple[str, ...]
    source: str

    @property
    def no_run(self) -> bool:
        return "no-run" in self.flags

    @property
    def kind(self) -> str:
        """How the block is checked: python, doctest, shell, shell-syntax, compile, or prose."""
        if self.lang in PYTHON_LANGS:
            if self.no_run:
                return "compile"
            return "doctest" if self.lang == "pycon" or self.source.lstrip().startswith(">>>") else "python"
        if self.lang in SHELL_LANGS:
            script = self.shell_script
            if self.no_run or INSTALLS.search(script):
                return "shell-syntax"
            return "shell" if RUNS_COMMAND.search(script) else "prose"
        return "prose"

    @property
    def shell_script(self) -> str:
        if self.lang != "console":
            return self.source
        return "".join(line[2:] + "\n" for line in self.source.splitlines() if line.startswith("$ "))


def pages() -> list[Path]:
    found = sorted(DOCS.rglob("*.md")) if DOCS.is_dir() else []
    readme = ROOT / "README.md"
    return [*found, readme] if readme.is_file() else found


def blocks_of(path: Path) -> list[Block]:
    """The fenced blocks of one Markdown page, in order, dedented by their fence's indentation."""
    rel = path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else path.name
    lines = path.read_text(encoding="utf-8").splitlines()
    out: list[Block] = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence, info = m["indent"], m["fence"], m["info"].strip()
        words = info.split()
        lang = words[0].lower().lstrip("{.").rstrip("}") if words else ""
        body: list[str] = []
        j = i + 1
        while j < len(lines):
            stripped = lines[j].strip()
            if stripped.startswith(fence[0] * len(fence)) and set(stripped) == {fence[0]}:
                break
            line = lines[j]
            body.append(line[len(indent) :] if line.startswith(indent) else line.lstrip())
            j += 1
        out.append(Block(rel, i + 1, lang, tuple(w.lower() for w in words[1:]), "\n".join(body) + "\n"))
        i = j + 1
    return out


# Runs one page's blocks in order, in one namespace; prints which block failed and exits 1.
DRIVER = r"""
import doctest, json, subprocess, sys, traceback
with open(sys.argv[1], encoding="utf-8") as f:
    blocks = json.load(f)
ns = {"__name__": "__main__"}
for b in blocks:
    where = f"{b['page']}:{b['line']} ({b['kind']} block)"
    try:
        if b["kind"] == "python":
            exec(compile(b["source"], where, "exec"), ns)
        elif b["kind"] == "doctest":
            test = doctest.DocTestParser().get_doctest(b["source"], ns, where, b["page"], b["line"])
            runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
            runner.run(test, clear_globs=False)
            if runner.failures:
                raise AssertionError(f"{runner.failures} doctest example(s) failed")
        elif b["kind"] == "shell":
            done = subprocess.run(["bash", "-euo", "pipefail", "-c", b["source"]], capture_output=True, text=True)
            sys.stdout.write(done.stdout)
            if done.returncode:
                raise AssertionError(f"exit status {done.returncode}\n{done.stderr}")
    except BaseException:
        print(f"\nFAILED: {where}\n{b['source']}", file=sys.stderr)
        traceback.print_exc()
        sys.exit(1)
"""


def run_page(path: Path) -> subprocess.CompletedProcess[str]:
    blocks = [
        {"page": b.page, "line": b.line, "kind": b.kind, "source": b.shell_script if b.kind == "shell" else b.source}
        for b in blocks_of(path)
        if b.kind in {"python", "doctest", "shell"}
    ]
    with tempfile.TemporaryDirectory(prefix="tb-docs-") as tmp:
        spec = Path(tmp) / ".blocks.json"
        spec.write_text(json.dumps(blocks), encoding="utf-8")
        # `samples/checkpoint.pt` resolves as it does from the repository root (the README's set-up runs there).
        (Path(tmp) / "samples").symlink_to(ROOT / "samples", target_is_directory=True)
        env = dict(os.environ, TB_ROOT=str(ROOT), PYTHONHASHSEED="0")
        # `tensorbridge` and `python` in shell blocks are this interpreter's.
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        env.pop("PYTHONWARNINGS", None)
        try:
            return subprocess.run(
                [sys.executable, "-W", "error", "-c", DRIVER, str(spec)],
                cwd=tmp,
                env=env,
                capture_output=True,
                text=True,
                timeout=PAGE_TIMEOUT_S,
            )
        except subprocess.TimeoutExpired as err:
            return subprocess.CompletedProcess(err.cmd, 124, str(err.stdout or ""), f"timed out: {err}")


PAGES = pages()
PAGE_IDS = [p.relative_to(ROOT).as_posix() for p in PAGES]


@pytest.fixture(scope="session")
def page_runs(request: pytest.FixtureRequest) -> dict[str, Future[subprocess.CompletedProcess[str]]]:
    """Start every selected page at once (a page is mostly waiting for torch to import)."""
    selected = [
        item.callspec.params["page"]
        for item in request.session.items
        if getattr(item, "originalname", None) == "test_page_snippets_run" and hasattr(item, "callspec")
    ]
    pool = ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2))
    request.addfinalizer(pool.shutdown)
    return {page: pool.submit(run_page, ROOT / page) for page in dict.fromkeys(selected)}


@pytest.mark.parametrize("page", PAGE_IDS)
def test_page_snippets_run(page: str, page_runs: dict[str, Future[subprocess.CompletedProcess[str]]]) -> None:
    done = page_runs[page].result()
    assert done.returncode == 0, f"{page}: a snippet failed\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"


def test_docs_have_runnable_snippets() -> None:
    every = [b for p in PAGES for b in blocks_of(p)]
    kinds = [b.kind for b in every]
    assert kinds.count("python") + kinds.count("doctest") >= 30, "the docs lost their examples"
    assert kinds.count("shell") >= 1, "no command is run by the docs"
    # An unknown fence language or a misspelt flag would be skipped as prose without this.
    for b in every:
        assert b.lang in PYTHON_LANGS | SHELL_LANGS | {"", "text", "yaml", "toml", "json"}, (b.page, b.line, b.lang)
        assert set(b.flags) <= {"no-run"}, (b.page, b.line, b.flags)


def test_no_run_blocks_are_few_and_compile() -> None:
    no_run = [b for p in PAGES for b in blocks_of(p) if b.no_run]
    assert len(no_run) <= MAX_NO_RUN, [f"{b.page}:{b.line}" for b in no_run]
    for b in no_run:
        if b.lang in PYTHON_LANGS:
            compile(b.source, f"{b.page}:{b.line}", "exec")


def test_shell_setup_blocks_are_valid_bash() -> None:
    for b in (b for p in PAGES for b in blocks_of(p) if b.kind == "shell-syntax"):
        done = subprocess.run(["bash", "-n", "-c", b.shell_script], capture_output=True, text=True)
        assert done.returncode == 0, f"{b.page}:{b.line}: {done.stderr}"


def test_reference_covers_every_public_name() -> None:
    import tensorbridge

    reference = "".join(p.read_text(encoding="utf-8") for p in sorted((DOCS / "reference").glob("*.md")))
    documented = set(re.findall(r"^::: tensorbridge\.(\w+)\s*$", reference, re.MULTILINE))
    missing = sorted(set(tensorbridge.__all__) - documented - {"__version__"})
    assert not missing, f"names of tensorbridge.__all__ without a '::: tensorbridge.NAME' in docs/reference: {missing}"
    assert "__version__" in reference


def test_fence_parser(tmp_path: Path) -> None:
    page = tmp_path / "probe.md"
    lines = ["x", "", "```python", "a = 1", "```", "", "- item", ""]
    indented = ["    ```bash", "    tensorbridge --help", "    ```"]
    text = "\n".join([*lines, *indented, "", "```text", "out", "```", ""])
    page.write_text(text, encoding="utf-8")
    found = blocks_of(page)
    assert [(b.kind, b.source) for b in found] == [
        ("python", "a = 1\n"),
        ("shell", "tensorbridge --help\n"),
        ("prose", "out\n"),
    ]


def test_site_builds_strict(tmp_path: Path) -> None:
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings")
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    build = ["build", "--strict", "-q", "-f", str(ROOT / "mkdocs.yml"), "-d", str(tmp_path)]
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", *build],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "reference" / "conversions" / "index.html").is_file()
