"""The command's progress bar: by bytes, with rate and time left, on a terminal only, never with --quiet."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tensorbridge import cli
from tensorbridge.cli import main


class Terminal(io.StringIO):
    """stderr as a terminal would be: tqdm draws on it."""

    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli, "_PROGRESS_DELAY", 0.0)  # tests convert in milliseconds: show the bar anyway
    monkeypatch.setattr(cli, "_PROGRESS_INTERVAL", 0.0)


def source(tmp_path: Path) -> Path:
    path = tmp_path / "src.npz"
    np.savez(path, **{f"w{i}": np.full(1 << 18, i, np.float32) for i in range(4)})  # 4 x 1 MiB
    return path


@pytest.mark.parametrize("suffix", [".pt", ".safetensors", ".npz"])
def test_a_terminal_sees_bytes_rate_and_time_left_for_writing_and_verifying(tmp_path: Path, suffix: str) -> None:
    out, err = io.StringIO(), Terminal()
    code = main(["convert", str(source(tmp_path)), str(tmp_path / f"dst{suffix}"), "--verify"], out=out, err=err)
    assert code == 0, err.getvalue()
    text = err.getvalue()
    assert "converting" in text and "verifying" in text, text
    assert "4.00M/4.00M" in text  # bytes, 1024-based: the whole 4 MiB reached
    assert "B/s" in text and "<00:00" in text  # rate and time left
    assert text.endswith("\r") and text.rsplit("\r", 2)[-2].strip() == "", text  # the bar is cleared at the end
    assert out.getvalue().endswith("4 arrays, 4.0 MiB, verified bit for bit\n")


def test_a_pipe_or_a_file_gets_no_bar(tmp_path: Path) -> None:
    err = io.StringIO()  # isatty() is False
    assert main(["convert", str(source(tmp_path)), str(tmp_path / "d.pt"), "--verify"], out=io.StringIO(), err=err) == 0
    assert err.getvalue() == ""


def test_quiet_silences_the_bar_and_the_summary(tmp_path: Path) -> None:
    out, err = io.StringIO(), Terminal()
    assert (
        main(["convert", str(source(tmp_path)), str(tmp_path / "d.pt"), "--verify", "--quiet"], out=out, err=err) == 0
    )
    assert (out.getvalue(), err.getvalue()) == ("", "")


def test_errors_still_print_under_quiet_and_the_bar_is_gone_first(tmp_path: Path) -> None:
    err = Terminal()
    (tmp_path / "d.pt").write_bytes(b"")
    code = main(["convert", str(source(tmp_path)), str(tmp_path / "d.pt"), "--quiet"], out=io.StringIO(), err=err)
    assert code == 2 and err.getvalue().startswith("tensorbridge: error:"), err.getvalue()


def test_the_bar_follows_the_phases_it_is_given() -> None:
    err = Terminal()
    bar = cli._Progress(err, enabled=True)
    bar("convert", 0, 2048)
    bar("convert", 1024, 2048)
    assert bar.bar is not None and bar.bar.n == 1024 and bar.bar.total == 2048
    bar("verify", 512, 2048)  # a new phase: a new bar
    assert bar.bar.desc.startswith("verifying") and bar.bar.n == 512
    bar("verify", 4096, 2048)  # never past the total (tqdm would warn)
    assert bar.bar.n == 2048
    bar.close()
    assert bar.bar is None
    assert "converting" in err.getvalue() and "1.00k/2.00k" in err.getvalue()


def test_a_disabled_or_closed_stream_draws_nothing() -> None:
    closed = io.StringIO()
    closed.close()  # isatty() raises
    for bar in (cli._Progress(Terminal(), enabled=False), cli._Progress(closed, enabled=True)):
        bar("convert", 1, 2)
        assert bar.bar is None


def test_progress_moves_within_one_large_tensor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The writer is slowed so the size watcher sees the file grow while one tensor is written.
    from tensorbridge.files import convert as job
    from tensorbridge.files import steps
    from tensorbridge.files.npy_files import NPY

    np.save(tmp_path / "a.npy", np.arange(1 << 20, dtype=np.float64))  # one 8 MiB tensor
    real = NPY.write

    def slow(path: str, entries: Any, structure: Any, extra: Any) -> None:
        import os
        import time

        real(path, entries, structure, extra)
        size = os.path.getsize(path)
        with open(path, "r+b") as f:  # rewrite it in slices, pausing, so the size grows in steps
            data = f.read()
            f.seek(0)
            f.truncate()
            for i in range(0, size, size // 8):
                f.write(data[i : i + size // 8])
                f.flush()
                time.sleep(2 * steps.POLL_SECONDS)

    monkeypatch.setattr(NPY, "write", slow)
    calls: list[tuple[str, int, int]] = []
    job.convert(str(tmp_path / "a.npy"), str(tmp_path / "b.npy"), progress=lambda *c: calls.append(c))
    inside = [done for phase, done, total in calls if phase == "convert" and 0 < done < total]
    assert len(inside) >= 3, calls  # more than the one entry's before/after
    assert inside == sorted(inside) and calls[-1] == ("convert", 8 << 20, 8 << 20)
