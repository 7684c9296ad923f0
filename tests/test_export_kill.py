"""Issue 8: an export killed at any point leaves its output path holding the previous complete
bundle, unchanged, or nothing, or (killed after its final rename) the new complete bundle; the
previous bundle is never lost, and the next export to the path succeeds and clears what the
killed one left behind.

Each export runs in a child forked from a forkserver that imported torch & co. once (it runs no
torch op, so forking it is safe), and dies by SIGKILL either at a random time or, through an
audit hook, just before its Nth file-system mutation in the output's folder (mkdir, open for
writing, rename, the renameat2 swap, rmtree and its unlinks): every step, both renames included,
starting from a previous bundle, from nothing, and from what a kill between the portable path's
two renames leaves (the next export's sweep restoring it is killed at each of its steps too).
benchmarks/kill_export.py runs the same harness over more random times and prints the counts.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import multiprocessing
import os
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from edgespec.export import bundle
from edgespec.manifest import load_manifest

# installed modules only: Python 3.11's forkserver imports these before it gets sys.path
PRELOAD = ["edgespec.export.pipeline", "onnxruntime", "pytest", "transformers"]
TIMEOUT = 120  # seconds a child may take before the harness gives up on it
PREV_LEN, NEW_LEN = 32, 64  # max_len of the bundle already at the path / of the one exported
SWAPS = bundle._renameat2 is not None  # Linux: the swap path exists here
RENAMES = ("os.rename", "renameat2")  # os.replace / bundle._exchange's RENAME_EXCHANGE
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def _mutation(event: str, args: tuple, root: str) -> str | None:
    """The path a file-system-mutating audit event touches under root, else None."""
    if event in ("os.rename", "os.mkdir", "os.rmdir", "os.remove", "shutil.rmtree"):
        path = os.fsdecode(args[0])
        # rmtree unlinks by name relative to a dir_fd: the only relative ones made here
        under = path.startswith(root) or (not os.path.isabs(path) and args[-1] not in (None, -1))
        return path if under else None
    if event == "open" and not isinstance(args[0], int):
        path, mode, flags = os.fsdecode(args[0]), args[1], args[2]
        writes = any(c in mode for c in "wax+") if mode else bool(flags & _WRITE_FLAGS)
        return path if writes and path.startswith(root) else None
    if event == "renameat2":  # raised by _audited below (ctypes calls raise no event)
        return os.fsdecode(args[1]) if os.fsdecode(args[1]).startswith(root) else None
    return None


def _audited(renameat2):
    """renameat2 raising an audit event first, so the hook can kill just before the swap."""
    def call(*args):
        sys.audit("renameat2", *args)
        return renameat2(*args)
    return call


def _export_child(hf_dir: Path, out: Path, max_len: int, overwrite: bool, kill_at: int,
                  exchange: bool, conn) -> None:
    """Export hf_dir to out, SIGKILLing itself just before its kill_at-th mutation (0: never);
    sends "ready" first, then (events seen, seconds taken) if it gets to the end."""
    import threading
    import time

    import torch
    from tqdm import tqdm

    from edgespec.export.pipeline import ExportOptions, export_bundle

    torch.set_num_threads(1)  # a tiny model: more threads only spin, ~15 ms a matmul on 2 cores
    tqdm.set_lock(threading.RLock())  # not its multiprocessing one, which a kill would leak
    if bundle._renameat2 is not None:  # off: the portable path, two renames
        bundle._renameat2 = _audited(bundle._renameat2) if exchange else None
    root, events = str(out.parent), []

    def hook(event, args):
        path = _mutation(event, args, root)
        if path is not None:
            events.append((event, path))
            if len(events) == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)

    sys.addaudithook(hook)  # test code only: a child that dies at the hook's word
    conn.send("ready")
    start = time.perf_counter()
    export_bundle(hf_dir, out, ExportOptions(max_len=max_len, graph="plain", progress=False,
                                             overwrite=overwrite))
    conn.send((events, time.perf_counter() - start))


def _make_tiny_child(folder: Path, conn) -> None:
    from hf_tiny import make_tiny

    make_tiny("llama", folder)
    conn.send("done")


def tree_hash(folder: Path) -> str:
    """Names and bytes of everything under folder."""
    h = hashlib.sha256()
    for f in sorted(folder.rglob("*")):
        h.update(str(f.relative_to(folder)).encode() + b"\0")
        if f.is_file():
            h.update(f.read_bytes())
    return h.hexdigest()


def expected_outcome(k: int, events: list, start: str) -> str:
    """What the path holds after a kill just before event k (1-based) of a full run's events:
    the new bundle once the final rename ran; between the two renames of the portable path,
    nothing (the previous bundle is parked aside); from a parked start, nothing until the sweep
    moved the previous bundle back; before, what was there."""
    renames = [i for i, (event, _) in enumerate(events, 1) if event in RENAMES]
    if k > renames[-1]:
        return "new"
    if start == "parked":
        return "nothing" if k <= renames[0] else "previous"
    if start == "previous" and len(renames) == 2 and k == renames[-1]:
        return "nothing"
    return start


class KillHarness:
    """Kill exports of one tiny model into work/s/out, which at the start holds the previous
    bundle ("previous"), nothing, or nothing with the previous bundle parked beside it by an
    export killed between its two renames ("parked")."""

    def __init__(self, work: Path):
        self.ctx = multiprocessing.get_context("forkserver")
        self.ctx.set_forkserver_preload(PRELOAD)
        self.sandbox = work / "s"
        self.out = self.sandbox / "out"
        self.hf = work / "hf"
        self._run(_make_tiny_child, self.hf)
        self.prev, self.new = work / "prev", work / "new"
        for path, max_len in ((self.prev, PREV_LEN), (self.new, NEW_LEN)):
            self._run(_export_child, self.hf, path, max_len, False, 0, True)
            load_manifest(path)
        self.prev_hash, self.new_hash = tree_hash(self.prev), tree_hash(self.new)
        assert self.prev_hash != self.new_hash
        self.parked = work / "parked"  # the "parked" start, made once by a real kill
        events, _ = self.full_run(False, "previous")
        self.kill(False, "previous", kill_at=[i for i, (e, _) in enumerate(events, 1)
                                              if e == "os.rename"][-1], rerun=False)
        shutil.copytree(self.sandbox, self.parked, symlinks=True)

    def _run(self, target, *args, delay: float | None = None):
        """Run target(*args, conn) in a child; with a delay, SIGKILL it that many seconds after
        it says "ready" unless it finished first. Returns (exit code, its last message)."""
        recv, send = self.ctx.Pipe(duplex=False)
        child = self.ctx.Process(target=target, args=(*args, send))
        child.start()
        send.close()
        try:
            if delay is not None:
                assert recv.poll(TIMEOUT) and recv.recv() == "ready"
                if not recv.poll(delay):
                    child.kill()
            child.join(TIMEOUT)
            if child.exitcode is None:
                child.kill()
                raise AssertionError(f"{target.__name__}{args} hung")
            last = None
            while recv.poll():  # the message it sent last, if it lived to send one
                try:
                    last = recv.recv()
                except EOFError:
                    break
            if child.exitcode not in (0, -signal.SIGKILL):
                raise AssertionError(f"{target.__name__}{args} failed: exit {child.exitcode}")
            return child.exitcode, last
        finally:
            recv.close()

    def _reset(self, start: str) -> None:
        shutil.rmtree(self.sandbox, ignore_errors=True)
        if start == "parked":
            shutil.copytree(self.parked, self.sandbox, symlinks=True)
            return
        self.sandbox.mkdir()
        if start == "previous":
            shutil.copytree(self.prev, self.out)

    def _export(self, exchange: bool, kill_at: int = 0, delay: float | None = None):
        return self._run(_export_child, self.hf, self.out, NEW_LEN, True, kill_at, exchange,
                         delay=delay)

    def full_run(self, exchange: bool, start: str) -> tuple[list, float]:
        """One export that is not killed: its mutations (event, path) and its seconds."""
        self._reset(start)
        code, (events, seconds) = self._export(exchange)
        assert code == 0 and tree_hash(self.out) == self.new_hash
        return events, seconds

    def kill(self, exchange: bool, start: str, kill_at: int = 0, delay: float | None = None,
             rerun: bool = True) -> str:
        """Kill an export (just before mutation kill_at, or after delay seconds) and check what
        the path holds; rerun the export to it. Returns "previous", "nothing" or "new" (the
        bundle at the path), or "finished" if the export beat the timer; AssertionError if a
        rule is broken."""
        self._reset(start)
        code, _ = self._export(exchange, kill_at, delay)
        if code == 0:
            assert delay is not None, f"the export never reached mutation {kill_at}"
            outcome = "finished"
        else:
            outcome = self.check(start, exchange)
        if rerun:
            self.check_rerun(exchange)
        return outcome

    def check(self, start: str, exchange: bool) -> str:
        """The path holds the previous bundle unchanged, the new complete one, or nothing; and
        unless replaced by the new one, the previous bundle is at the path or parked whole in
        an `.old-` sibling."""
        parked = [tree_hash(p / self.out.name) for p in self.sandbox.glob(".out.old-*")
                  if (p / self.out.name).is_dir()]
        if not self.out.exists():
            assert not (start == "previous" and exchange and SWAPS), "the swap left it empty"
            assert start == "nothing" or self.prev_hash in parked, "the previous bundle is lost"
            return "nothing"
        got = tree_hash(self.out)
        assert got in (self.prev_hash, self.new_hash), f"half-written bundle: {self.listing()}"
        assert start != "nothing" or got == self.new_hash
        load_manifest(self.out)
        return "previous" if got == self.prev_hash else "new"

    def check_rerun(self, exchange: bool) -> None:
        """A re-run export to the path succeeds, and nothing of the killed one is left."""
        code, _ = self._export(exchange)
        assert code == 0 and tree_hash(self.out) == self.new_hash
        load_manifest(self.out)
        assert self.listing() == ["out"], "stale siblings left"

    def listing(self) -> list[str]:
        return sorted(p.name for p in self.sandbox.iterdir())


# (exchange, start): the portable path into nothing is the swap's (one rename, no swap)
SCENARIOS = [(True, "previous"), (False, "previous"), (True, "nothing"), (True, "parked")]
IDS = ["swap-over-previous", "two-renames-over-previous", "into-nothing", "restoring-parked"]
# the renames each makes: the swap; move aside + move in; move in; the sweep's move back + swap
RENAME_STEPS = [["renameat2"], ["os.rename"] * 2, ["os.rename"], ["os.rename", "renameat2"]]


@pytest.fixture(scope="module")
def kills(tmp_path_factory):
    return KillHarness(tmp_path_factory.mktemp("kill"))


@pytest.mark.parametrize("exchange,start,renames", [
    (*s, r) for s, r in zip(SCENARIOS, RENAME_STEPS)], ids=IDS)
def test_kill_before_every_mutation(kills, exchange, start, renames):
    events, _ = kills.full_run(exchange, start)
    if not SWAPS:  # no renameat2 here: the portable path's two renames instead of the swap
        renames = [r for step in renames for r in (["os.rename"] * 2 if step == "renameat2"
                                                   else [step])]
    assert [e for e, _ in events if e in RENAMES] == renames, events
    outcomes = [kills.kill(exchange, start, kill_at=k) for k in range(1, len(events) + 1)]
    assert outcomes == [expected_outcome(k, events, start) for k in range(1, len(events) + 1)]
    if start == "nothing":  # after its one rename, only the marked temporary folder goes
        assert set(outcomes) == {"nothing", "new"}
    else:
        assert {"previous", "new"} <= set(outcomes)


def test_kill_at_random_times(kills):
    """Timers anywhere in the export: model load, graph build, parity run, writes, renames."""
    rng = random.Random(8)
    tried = 0
    for exchange, start in SCENARIOS:
        _, seconds = kills.full_run(exchange, start)
        for _ in range(2):
            tried += kills.kill(exchange, start, delay=rng.uniform(0, seconds)) != "finished"
    assert tried >= 3  # most timers fire inside the export


def test_next_export_restores_a_parked_bundle(kills):
    """Killed between the portable path's two renames, the next export puts the previous bundle
    back before anything else (here it then refuses to overwrite it)."""
    kills._reset("parked")
    assert kills.check("parked", False) == "nothing"
    with pytest.raises(FileExistsError):
        with bundle.atomic_bundle(kills.out):
            pass
    assert tree_hash(kills.out) == kills.prev_hash and kills.listing() == ["out"]


def test_sweep_leaves_live_and_unloadable_leftovers(kills, caplog):
    """A live export's temporary folders are not touched; a dead one's parked folder that does
    not load is kept and named in a warning, not deleted."""
    kills._reset("nothing")
    dead = subprocess.Popen(["true"])
    dead.wait()
    live_tmp = kills.sandbox / f".out.tmp-{os.getpid()}-a"
    live_old = kills.sandbox / f".out.old-{os.getpid()}-b" / "out"
    junk = kills.sandbox / f".out.old-{dead.pid}-c" / "out"
    for folder in (live_tmp, live_old, junk):
        folder.mkdir(parents=True)
    (junk.parent / bundle.MARKER).write_text("")  # an export's (killed) parked folder
    shutil.copytree(kills.prev, live_old, dirs_exist_ok=True)
    with pytest.raises(RuntimeError), bundle.atomic_bundle(kills.out):
        raise RuntimeError("abandon this export")
    assert not kills.out.exists() and live_tmp.is_dir() and live_old.is_dir() and junk.is_dir()
    assert str(junk) in caplog.text


def test_without_the_swap_two_renames_do(tmp_path, monkeypatch):
    """Where renameat2 cannot swap (EINVAL: a filesystem without it), the portable path runs."""
    def unsupported(*args):
        ctypes.set_errno(errno.EINVAL)
        return -1

    monkeypatch.setattr(bundle, "_renameat2", unsupported)
    out = tmp_path / "b"
    out.mkdir()
    (out / "manifest.json").write_text('{"format": "edgespec-bundle"}')  # a (previous) bundle
    with bundle.atomic_bundle(out, overwrite=True) as tmp:
        (tmp / "new.txt").write_text("new")
    assert os.listdir(tmp_path) == ["b"] and os.listdir(out) == ["new.txt"]


def test_export_never_deletes_folders_it_did_not_make(tmp_path):
    """A user's `.NAME.tmp-<N>-...` / `.NAME.old-<N>-...` folders (N no live process) have the
    shape of an export's leftovers but not its marker: an export to NAME leaves them, whether
    it succeeds or fails."""
    dead = subprocess.Popen(["true"])
    dead.wait()
    mine = [tmp_path / ".notes.tmp-2024-backup", tmp_path / ".notes.old-1999-jan",
            tmp_path / f".notes.tmp-{dead.pid}-x"]
    for folder in mine:
        folder.mkdir()
        (folder / "diary.txt").write_text("mine")
    with pytest.raises(RuntimeError), bundle.atomic_bundle(tmp_path / "notes"):
        raise RuntimeError("a failed export")
    with bundle.atomic_bundle(tmp_path / "notes") as tmp:
        (tmp / "manifest.json").write_text("{}")
    assert all((f / "diary.txt").read_text() == "mine" for f in mine)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["notes", *(f.name for f in mine)])
    assert os.listdir(tmp_path / "notes") == ["manifest.json"]  # the marker stays outside
