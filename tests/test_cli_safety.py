"""The command's safety: paths checked before any data moves, no writing outside DST, signals, exits, printing."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import textwrap
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import tensorbridge.files.output as output
from tensorbridge.cli import main
from tensorbridge.files import format_for

SAFETENSORS = type(format_for("x.safetensors"))


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.fixture
def src(tmp_path: Path) -> Path:
    path = tmp_path / "a.npz"
    np.savez(path, w=np.arange(6.0), b=np.ones(2, np.float32))
    return path


@pytest.fixture(params=["unnamed", "named", "named-no-proc"])
def tier(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Each way ``output.py`` creates the file: O_TMPFILE; a kept O_EXCL name; that name without /proc."""
    kind: str = request.param
    if kind == "unnamed" and not (output.USE_TMPFILE and output.PROC_FD):
        pytest.skip("no O_TMPFILE or /proc here")
    if kind == "named" and output.PROC_FD is None:
        pytest.skip("no /proc here")
    if kind != "unnamed":
        monkeypatch.setattr(output, "USE_TMPFILE", False)
    if kind == "named-no-proc":
        monkeypatch.setattr(output, "PROC_FD", None)
    yield kind


def hooked_write(monkeypatch: pytest.MonkeyPatch, before: Callable[[str], None]) -> None:
    """Run ``before(path)`` inside the safetensors writer, just before it writes ``path``."""
    real = SAFETENSORS.write

    def write(self: Any, path: str, *args: Any) -> None:
        before(path)
        real(self, path, *args)

    monkeypatch.setattr(SAFETENSORS, "write", write)


# ----------------------------------------------------------------------------------- paths


def test_a_missing_source_is_named(tmp_path: Path) -> None:
    code, _, err = run("convert", str(tmp_path / "gone.npz"), str(tmp_path / "b.npz"))
    assert code == 2 and err.count("\n") == 1, err
    assert f"convert at {tmp_path / 'gone.npz'}: the file does not exist" in err and "Errno" not in err
    assert listing(tmp_path) == []


def test_a_directory_as_source_says_it_is_one(tmp_path: Path) -> None:
    (tmp_path / "weights").mkdir()
    for argv in (
        ["convert", str(tmp_path / "weights"), str(tmp_path / "b.npz")],
        ["inspect", str(tmp_path / "weights")],
    ):
        code, _, err = run(*argv)
        assert code == 2 and "it is a directory, not a tensor file" in err and "suffix" not in err, err


def test_a_missing_parent_directory_is_named_before_reading(tmp_path: Path, src: Path) -> None:
    dst = tmp_path / "nowhere" / "b.safetensors"
    code, _, err = run("convert", str(src), str(dst))
    assert code == 2 and f"its directory {tmp_path / 'nowhere'} does not exist" in err, err
    assert ".tmp" not in err and listing(tmp_path) == ["a.npz"]


def test_force_onto_a_directory_is_refused_before_any_data_is_read(
    tmp_path: Path, src: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "out").mkdir()
    hooked_write(monkeypatch, lambda path: pytest.fail("the writer ran"))
    monkeypatch.setattr("tensorbridge.files.convert.read_archive", lambda *a: pytest.fail("the source was read"))
    code, _, err = run("convert", str(src), str(tmp_path / "out"), "--to", "safetensors", "--force")
    assert code == 2 and f"convert at {tmp_path / 'out'}: it is a directory" in err and ".tmp" not in err, err
    assert listing(tmp_path / "out") == [] and listing(tmp_path) == ["a.npz", "out"]


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="needs POSIX permissions and a non-root user")
def test_an_unwritable_directory_is_named(tmp_path: Path, src: Path) -> None:
    (tmp_path / "ro").mkdir(mode=0o555)
    code, _, err = run("convert", str(src), str(tmp_path / "ro" / "b.npz"))
    assert code == 2 and f"files cannot be created in {tmp_path / 'ro'} (permission denied)" in err, err


def test_a_dangling_symlink_destination_is_kept_without_force(tmp_path: Path, src: Path) -> None:
    dst = tmp_path / "b.safetensors"
    dst.symlink_to(tmp_path / "nothing-there")
    code, _, err = run("convert", str(src), str(dst))
    assert code == 2 and "dangling symbolic link" in err and "--force" in err, err
    assert dst.is_symlink() and not (tmp_path / "nothing-there").exists()
    assert run("convert", str(src), str(dst), "--force", "--quiet")[0] == 0
    assert not dst.is_symlink() and dst.is_file() and not (tmp_path / "nothing-there").exists()


def test_force_replaces_a_symlink_and_never_writes_through_it(tmp_path: Path, src: Path) -> None:
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"precious")
    dst = tmp_path / "b.safetensors"
    dst.symlink_to(outside)
    assert run("convert", str(src), str(dst), "--force", "--quiet")[0] == 0
    assert outside.read_bytes() == b"precious" and not dst.is_symlink()


# ----------------------------------------------------------------------------------- races


def test_a_symlink_planted_at_the_temporary_name_is_not_followed(
    tmp_path: Path, src: Path, monkeypatch: pytest.MonkeyPatch, tier: str
) -> None:
    outside = tmp_path / "elsewhere" / "precious.bin"
    outside.parent.mkdir()
    outside.write_bytes(b"precious")
    dst = tmp_path / "b.safetensors"
    seen: list[list[str]] = []

    def plant(path: str) -> None:
        temporary = [n for n in listing(tmp_path) if n.endswith(".tmp")]
        seen.append(temporary)
        for name in temporary:  # what an attacker with write access to the directory could do
            os.unlink(tmp_path / name)
            os.symlink(outside, tmp_path / name)

    hooked_write(monkeypatch, plant)
    code, _, err = run("convert", str(src), str(dst), "--quiet")
    if tier == "unnamed":
        assert seen == [[]], "an O_TMPFILE file has no name to plant anything at"
    else:
        assert len(seen[0]) == 1
    if tier != "unnamed":
        # The held file lost its name, so it cannot be put in place: the conversion fails, DST untouched. With
        # /proc the writer wrote to the held file; without, it followed the planted link (caught, but too late).
        assert code == 2 and "was removed or replaced while it was being written" in err, err
        assert not dst.exists() and not dst.is_symlink()
        if tier == "named":
            assert outside.read_bytes() == b"precious", "nothing was written outside DST"
        return
    assert code == 0, err
    assert outside.read_bytes() == b"precious", "nothing was written outside DST"
    assert dst.is_file() and not dst.is_symlink()
    assert run("diff", str(src), str(dst))[0] == 0


def test_of_two_conversions_to_one_destination_exactly_one_succeeds(
    tmp_path: Path, src: Path, monkeypatch: pytest.MonkeyPatch, tier: str
) -> None:
    dst = tmp_path / "b.safetensors"
    other = tmp_path / "other.npz"
    np.savez(other, z=np.zeros(1))
    inner: list[tuple[int, str, str]] = []
    started: list[str] = []

    def race(path: str) -> None:
        if not started:  # the first conversion is writing: a second one starts and finishes meanwhile
            started.append(path)
            inner.append(run("convert", str(other), str(dst), "--quiet"))

    hooked_write(monkeypatch, race)
    code, _, err = run("convert", str(src), str(dst), "--quiet")
    assert inner[0][0] == 0, inner
    assert code == 2 and "the destination exists now (it appeared while converting)" in err, err
    assert [e.name for e in format_for(str(dst)).read(str(dst)).entries] == ["z"], "the first to finish is kept"
    assert listing(tmp_path) == ["a.npz", "b.safetensors", "other.npz"], "no temporary file is left"


def test_force_wins_the_race_and_leaves_nothing_behind(
    tmp_path: Path, src: Path, monkeypatch: pytest.MonkeyPatch, tier: str
) -> None:
    dst = tmp_path / "b.safetensors"

    def appear(path: str) -> None:
        dst.write_bytes(b"appeared")

    hooked_write(monkeypatch, appear)
    code, _, err = run("convert", str(src), str(dst), "--force", "--quiet")
    assert code == 0, err
    assert run("diff", str(src), str(dst))[0] == 0
    assert listing(tmp_path) == ["a.npz", "b.safetensors"]


def test_the_written_file_has_the_usual_permissions(tmp_path: Path, src: Path, tier: str) -> None:
    assert run("convert", str(src), str(tmp_path / "b.npz"), "--quiet")[0] == 0
    umask = os.umask(0o022)
    os.umask(umask)
    assert (tmp_path / "b.npz").stat().st_mode & 0o777 == 0o666 & ~umask


def test_writer_errors_name_the_destination_not_the_temporary_file(tmp_path: Path, src: Path, tier: str) -> None:
    code, _, err = run("convert", str(src), str(tmp_path / "b.npy"))  # .npy holds one array; two are given
    assert code == 2 and f"at {tmp_path / 'b.npy'}:" in err and "/proc/" not in err and ".tmp" not in err, err
    assert listing(tmp_path) == ["a.npz"]


# ----------------------------------------------------------------------------------- signals

_SLOW_CONVERT = textwrap.dedent(
    """
    import sys, time
    import tensorbridge.files.output as output
    output.USE_TMPFILE = sys.argv[1] == "unnamed"
    from tensorbridge.files import format_for
    fmt = type(format_for("x.safetensors"))
    real = fmt.write
    def write(self, *args):
        real(self, *args)
        print("written", flush=True)
        time.sleep(120)  # the signal arrives here, with the file written but not in place
    fmt.write = write
    from tensorbridge.cli import main
    raise SystemExit(main(sys.argv[2:]))
    """
)


@pytest.mark.skipif(os.name != "posix", reason="POSIX signals")
@pytest.mark.parametrize("kind", ["unnamed", "named"])
@pytest.mark.parametrize(("sig", "status"), [("SIGTERM", 143), ("SIGHUP", 129), ("SIGINT", 130)])
def test_a_signal_removes_the_unfinished_file(tmp_path: Path, src: Path, sig: str, status: int, kind: str) -> None:
    dst = tmp_path / "b.safetensors"
    cmd = [sys.executable, "-c", _SLOW_CONVERT, kind, "convert", str(src), str(dst)]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "written\n", proc.communicate()
        if kind == "named":
            assert len([n for n in listing(tmp_path) if n.endswith(".tmp")]) == 1
        proc.send_signal(getattr(signal, sig))
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == status, err
    assert err == f"tensorbridge: interrupted by {sig}\n"
    assert listing(tmp_path) == ["a.npz"], "no DST, no temporary file"


def test_ctrl_c_before_the_command_starts_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted() -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr("tensorbridge.cli._parser", interrupted)
    code, out, err = run("inspect", "x.npz")
    assert (code, out, err) == (130, "", "tensorbridge: interrupted by SIGINT\n")


# ----------------------------------------------------------------------------------- printing


def test_a_non_utf8_destination_name_is_written_and_printed_escaped(tmp_path: Path, src: Path) -> None:
    name = os.fsdecode(b"\xff.npz")
    strict = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")  # a real stdout: errors="strict"
    assert main(["convert", str(src), str(tmp_path / name)], out=strict, err=io.StringIO()) == 0
    strict.flush()
    assert "\\xff.npz: 2 arrays" in strict.buffer.getvalue().decode()
    assert (tmp_path / name).is_file()
    code, _, err = run("convert", str(src), str(tmp_path / name))
    assert code == 2 and "\\xff.npz: the destination exists" in err, err


def test_quiet_prints_nothing_even_when_numpy_warns(tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # NumPy warns that it wrote format 3.0 (a non-latin-1 field name)
        np.save(tmp_path / "s.npy", np.zeros(2, dtype=[("中", "<i4")]))
    assert run("convert", str(tmp_path / "s.npy"), str(tmp_path / "t.npy"), "--quiet") == (0, "", "")
    code, out, err = run("convert", str(tmp_path / "s.npy"), str(tmp_path / "u.npy"))
    assert code == 0 and out.endswith("1 arrays, 8 B\n")
    assert err == "tensorbridge: warning: Stored array in format 3.0. It can only be read by NumPy >= 1.17\n"


def test_diff_of_string_arrays_compares_by_equality(tmp_path: Path) -> None:
    np.save(tmp_path / "a.npy", np.array(["ab", "cd", "ef"]))
    np.save(tmp_path / "b.npy", np.array(["ab", "cx", "ef"]))
    assert run("diff", str(tmp_path / "a.npy"), str(tmp_path / "a.npy")) == (0, "no differences\n", "")
    code, out, err = run("diff", str(tmp_path / "a.npy"), str(tmp_path / "b.npy"))
    assert (code, out, err) == (1, "data: values: 1 values differ\n1 names differ\n", "")
    code, out, _ = run("diff", str(tmp_path / "a.npy"), str(tmp_path / "b.npy"), "--json")
    assert code == 1 and '"max_abs": null' in out


@pytest.mark.parametrize("where", ["read", "load"])
@pytest.mark.parametrize("exc", [KeyError("x"), IndexError("y"), TypeError("z"), RuntimeError("bad zip")])
def test_what_a_reader_raises_on_a_malformed_file_is_a_file_error(
    tmp_path: Path, src: Path, monkeypatch: pytest.MonkeyPatch, where: str, exc: Exception
) -> None:
    npz = type(format_for("x.npz"))
    real = npz.read

    def read(self: Any, path: str) -> Any:
        if where == "read":
            raise exc
        archive = real(self, path)
        for i, e in enumerate(archive.entries):
            archive.entries[i] = type(e)(e.name, e.dtype, e.shape, lambda: (_ for _ in ()).throw(exc))
        return archive

    monkeypatch.setattr(npz, "read", read)
    for argv in (["convert", str(src), str(tmp_path / "b.safetensors")], ["diff", str(src), str(src)]):
        code, _, err = run(*argv)
        assert code == 2 and err.startswith(f"tensorbridge: error: reading at {src}:"), err
        assert "unexpected" not in err and type(exc).__name__ in err
    assert listing(tmp_path) == ["a.npz"]


_LAUNCH = """
import os, signal, sys, time

class Stop:  # a signal that arrives while tensorbridge (and torch) are still importing
    def find_spec(self, name, path=None, target=None):
        if name == "tensorbridge":
            os.kill(os.getpid(), getattr(signal, sys.argv[1]))
            time.sleep(5)
        return None

sys.meta_path.insert(0, Stop())
import tensorbridge_launch
sys.exit(tensorbridge_launch.main())
"""


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize(("name", "status"), [("SIGINT", 130), ("SIGTERM", 143)])
def test_a_signal_during_start_up_ends_without_a_traceback(name: str, status: int) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", _LAUNCH, name], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == status, proc.stderr
    assert proc.stderr == f"tensorbridge: interrupted by {name}\n"
