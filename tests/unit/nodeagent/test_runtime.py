"""Containers as processes: mounts at their mountPaths, cgroup kill, termination message."""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path

from accordion_dev.nodeagent import logserver, runtime
from accordion_dev.nodeagent.volumes import Mount


def _wait(proc: runtime.Process, timeout: float = 10) -> int:
    deadline = time.monotonic() + timeout
    while (rc := proc.poll()) is None:
        assert time.monotonic() < deadline, "process did not exit"
        time.sleep(0.02)
    return rc


def test_a_container_sees_its_volumes_at_the_mount_paths(tmp_path: Path) -> None:
    vol = tmp_path / "vol"
    vol.mkdir()
    (vol / "key").write_text("secret-bytes")
    term = tmp_path / "term"
    term.write_text("")
    target = f"/tmp/accordion-test-{uuid.uuid4().hex[:8]}"
    mounts = [Mount(vol, target, True, False), Mount(term, f"{target}-termlog", False, True)]
    isolate = runtime.can_isolate()
    script = f"cat {target}/key; echo; echo bye > {target}-termlog; echo $CUDA_VISIBLE_DEVICES; pwd"
    if not isolate:  # documented fallback: the map says where the volumes are
        script = 'echo "$ACCORDION_VOLUME_MAP"; pwd'
    log = tmp_path / "c.log"
    proc = runtime.spawn(
        ["sh", "-c", script],
        {"PATH": os.environ["PATH"], "CUDA_VISIBLE_DEVICES": "1"},
        str(tmp_path / "wd"),
        mounts,
        "pod-a",
        log,
        None,
        isolate,
    )
    assert _wait(proc) == 0
    out = log.read_text().splitlines()
    if isolate:
        assert out == ["secret-bytes", "1", str(tmp_path / "wd")]
        assert runtime.read_termination_message(term) == "bye"
        # The bind mount lived in the container's namespace only: the host sees an empty dir.
        assert not (Path(target) / "key").exists()
        os.rmdir(target)
        os.unlink(f"{target}-termlog")
    else:
        assert json.loads(out[0])[target] == str(vol)


def test_cgroup_kill_reaches_processes_that_left_the_process_group(tmp_path: Path) -> None:
    if not runtime.cgroup_ok():
        # Without cgroups the process group is the fallback: a plain child still dies.
        proc = runtime.spawn(
            ["sleep", "30"], {"PATH": os.environ["PATH"]}, "", [], "p", tmp_path / "l", None, False
        )
        proc.kill_all()
        assert _wait(proc) == -9
        return
    cg = runtime.CGROUP_ROOT / f"unit-{uuid.uuid4().hex[:8]}" / "c"
    pidfile = tmp_path / "daemon.pid"
    # setsid: the grandchild escapes the process group, as sshd sessions or daemons do.
    script = f"setsid sleep 30 & echo $! > {pidfile}; wait"
    proc = runtime.spawn(
        ["sh", "-c", script],
        {"PATH": os.environ["PATH"]},
        "",
        [],
        "p",
        tmp_path / "l",
        cg,
        runtime.can_isolate(),
    )
    deadline = time.monotonic() + 5
    while not pidfile.exists() or not pidfile.read_text().strip():
        assert time.monotonic() < deadline
        time.sleep(0.02)
    daemon = int(pidfile.read_text())
    assert daemon in runtime.cgroup_pids(cg)
    proc.kill_all()
    _wait(proc)
    deadline = time.monotonic() + 5
    while runtime.cgroup_pids(cg):
        assert time.monotonic() < deadline, "cgroup still has processes"
        time.sleep(0.02)
    runtime.remove_cgroup_tree(cg.parent)
    assert not cg.parent.exists()


def test_wrapper_script_stages_sources_then_mounts_and_execs_with_pdeathsig() -> None:
    mounts = [
        Mount(Path("/v/a"), "/data", False, False),
        Mount(Path("/v/t"), "/dev/termination-log", False, True),
    ]
    lines = runtime.wrapper_script(mounts, "/work", "pod-x", Path("/cg"), True).splitlines()
    assert lines[1] == "echo $$ > /cg/cgroup.procs"
    assert "hostname pod-x" in lines
    staged = lines.index("mount --bind /v/t /run/accordion-stage/1")
    assert lines.index("mount --bind /v/a /run/accordion-stage/0") < staged
    assert staged < lines.index("mount --bind /run/accordion-stage/0 /data")
    assert lines[-1] == 'exec setpriv --pdeathsig KILL -- "$@"'


def test_stage_and_shadowing_checks() -> None:
    m = [Mount(Path("/s"), "/run", False, False)]
    assert runtime.stage_dir(m) == "/var/lib/accordion-stage"
    assert runtime.shadowing([Mount(Path("/s"), "/work/", False, False)], [Path("/work/main")])
    assert runtime.shadowing([Mount(Path("/s"), "/", False, False)], [Path("/usr")])
    assert not runtime.shadowing([Mount(Path("/s"), "/work2", False, False)], [Path("/work")])


def test_a_mount_over_an_ancestor_of_another_source_does_not_hide_it(tmp_path: Path) -> None:
    if not runtime.can_isolate():
        assert runtime.wrapper_script([], "", "p", None, False).endswith('exec "$@"')
        return
    scratch, keys = tmp_path / "scratch", tmp_path / "keys"
    scratch.mkdir()
    keys.mkdir()
    (keys / "k").write_text("key-material")
    covering = "/" + tmp_path.parts[1]  # e.g. /tmp: covers the source of the second mount
    mounts = [
        Mount(scratch, covering, False, False),
        Mount(keys, "/etc/accordion-test", True, False),
    ]
    log = tmp_path / "c.log"
    proc = runtime.spawn(
        ["sh", "-c", f"cat /etc/accordion-test/k; echo; ls {covering} | wc -l"],
        {"PATH": "/usr/bin:/bin"},
        "",
        mounts,
        "p",
        log,
        None,
        True,
    )
    rc = _wait(proc)
    os.rmdir("/etc/accordion-test")
    assert rc == 0, log.read_text()
    assert log.read_text().split() == ["key-material", "0"]  # and the covering emptyDir is empty


def test_fallback_to_logs_takes_the_tail(tmp_path: Path) -> None:
    log = tmp_path / "l"
    log.write_text("".join(f"line {i}\n" for i in range(200)))
    tail = runtime.log_tail(log, lines=3)
    assert tail == "line 197\nline 198\nline 199"
    assert runtime.log_tail(tmp_path / "missing") == ""


def test_log_endpoint_tail_and_lookup(tmp_path: Path) -> None:
    assert logserver.tail_bytes(b"a\nb\nc\n", 2) == b"b\nc\n"
    assert logserver.tail_bytes(b"a\nb\n", -1) == b"a\nb\n"
    assert logserver.tail_bytes(b"a\nb\n", 0) == b""
    old, new = tmp_path / "ns_p_uid1", tmp_path / "ns_p_uid2"
    old.mkdir()
    new.mkdir()
    (new / "main.log").write_text("x")
    os.utime(old, (1, 1))
    assert logserver.find_log(tmp_path, "ns", "p", "main") == new / "main.log"
    assert logserver.find_log(tmp_path, "ns", "p", "other") is None
    assert logserver.find_log(tmp_path, "ns", "q", "main") is None


def test_a_container_over_its_memory_limit_is_oom_killed(tmp_path: Path) -> None:
    root = runtime.memory_cgroup_root()
    hog = ["python3", "-c", "x = bytearray(300 * 2**20); print('survived')"]
    env = {"PATH": os.environ["PATH"]}
    if root is None:  # no writable memory cgroup: no limit, no OOMKilled
        proc = runtime.spawn(hog, env, "", [], "p", tmp_path / "l", None, False, None)
        assert _wait(proc, 30) == 0
        assert not proc.oom_killed()
        return
    memcg = root / f"unit-{uuid.uuid4().hex[:8]}"
    proc = runtime.spawn(
        hog, env, "", [], "p", tmp_path / "l", None, runtime.can_isolate(), (memcg, 64 * 2**20)
    )
    rc = _wait(proc, 30)
    assert rc == -9
    assert proc.oom_killed()
    assert "survived" not in (tmp_path / "l").read_text()
    runtime.remove_cgroup_tree(memcg)
    assert not memcg.exists()


def test_a_mount_over_the_checkout_parent_restores_the_checkout() -> None:
    """An emptyDir at /tmp with the checkout at /tmp/ci-clone (as in CI's fresh clone)."""
    mounts = [Mount(Path("/pods/x/tmp"), "/tmp", False, False)]
    fixed = runtime.restore_shadowed(mounts, [Path("/tmp/ci-clone"), Path("/usr")])
    assert fixed[-1] == Mount(Path("/tmp/ci-clone"), "/tmp/ci-clone", False, False)
    assert runtime.shadowing(fixed, [Path("/tmp/ci-clone"), Path("/usr")]) == []
    script = runtime.wrapper_script(fixed, "", "pod", None, isolate=True)
    # the checkout is staged before /tmp is covered, then bound back over it
    lines = script.splitlines()
    staged = lines.index("mount --bind /tmp/ci-clone /run/accordion-stage/1")
    covered = lines.index("mount --bind /run/accordion-stage/0 /tmp")
    restored = lines.index("mount --bind /run/accordion-stage/1 /tmp/ci-clone")
    assert staged < covered < restored
