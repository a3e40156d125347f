"""The last step of a container that runs from an image: chroot into its root filesystem, take
its user, groups and working directory, and exec its command (`runtime.image_wrapper_script`
execs this with `python -I -S`; stdlib only, nothing imported after the chroot).

    python -I -S enter.py ROOT UID GID GROUPS WORKDIR NO_NEW_PRIVS -- ARGV...

GROUPS: supplementary group ids, comma-separated (may be empty). NO_NEW_PRIVS: 1 sets the
no_new_privs bit (securityContext.allowPrivilegeEscalation: false), 0 leaves it. The
parent-death signal is set after the user change, which would clear it (prctl(2)): the container
still dies with its agent.
"""

import ctypes
import os
import signal
import sys
import warnings  # noqa: F401 (os.execvpe imports it lazily: nothing can be imported after the chroot)

PR_SET_PDEATHSIG = 1
PR_SET_NO_NEW_PRIVS = 38


def main(argv: list[str]) -> int:
    root, uid, gid, groups, workdir, nnp, sep, *cmd = argv
    if sep != "--" or not cmd:
        print("usage: enter.py ROOT UID GID GROUPS WORKDIR NNP -- ARGV...", file=sys.stderr)
        return 2
    libc = ctypes.CDLL(None, use_errno=True)
    os.chroot(root)
    os.chdir("/")
    os.setgroups([int(g) for g in groups.split(",") if g])
    os.setresgid(int(gid), int(gid), int(gid))
    os.setresuid(int(uid), int(uid), int(uid))
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL) != 0:
        print("enter: prctl(PR_SET_PDEATHSIG) failed", file=sys.stderr)
        return 128
    if nnp == "1" and libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        print("enter: prctl(PR_SET_NO_NEW_PRIVS) failed", file=sys.stderr)
        return 128
    try:
        os.chdir(workdir or "/")
    except OSError as e:
        print(f"enter: chdir to cwd ({workdir!r}) set in config.json failed: {e}", file=sys.stderr)
        return 128
    try:
        os.execvpe(cmd[0], cmd, dict(os.environ))  # noqa: S606 (exec, as a runtime does)
    except OSError as e:
        print(f'exec: "{cmd[0]}": {e.strerror}', file=sys.stderr)
        return 127 if isinstance(e, FileNotFoundError) else 126
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
