"""A hostile process cell: each verb is one attempt to get out of its trust domain. The
request's payload says where things are (the runtime's pid, another cell's pid, files,
ports), as if the attacker knew everything; the reply says whether the attempt was
blocked and how. A test asserts every attempt fails, and that the `own-*` controls,
which a confined cell may do, succeed.
"""

import ctypes
import errno
import json
import os
import signal
import socket
import sys
import threading
import time

libc = ctypes.CDLL(None, use_errno=True)
out = threading.Lock()
held = []


def reply(request, payload):
    with out:
        sys.stdout.write(json.dumps({"id": request["id"], "ok": True, "payload": payload}) + "\n")
        sys.stdout.flush()


def attempt(action):
    """Runs `action`; blocked when it raises."""
    try:
        done = action()
        return {"blocked": False, "how": repr(done)[:200]}
    except Exception as error:  # every refusal is an answer here
        return {"blocked": True, "how": f"{type(error).__name__}: {error}"[:200]}


def syscall(number, *args):
    result = libc.syscall(number, *args)
    if result == -1:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
    return result


def read(path):
    with open(path, "rb") as file:
        return len(file.read())


def write(path):
    with open(path, "wb") as file:
        file.write(b"attacker was here")
    return path


def connect_tcp(port):
    with socket.create_connection(("127.0.0.1", port), timeout=2) as connection:
        connection.sendall(b"SUB cbs.victim.echo victim 666\r\n")
        return "connected"


def connect_unix(path):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as unix:
        unix.connect(path)
        return "connected"


def connect_abstract(name):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as unix:
        unix.connect("\0" + name)
        return "connected"


def exhaust(seconds):
    """Starts threads until the kernel refuses one, holding them for `seconds`."""
    started = 0

    def hold():
        time.sleep(seconds)

    while started < 100_000:
        try:
            thread = threading.Thread(target=hold, daemon=True)
            thread.start()
            held.append(thread)
            started += 1
        except RuntimeError:
            return started
    return started


def leave_behind(mark):
    """A daemon that tries to leave the group and session, and a child that stops
    itself: both should die with the cell's runtime."""
    if os.fork() == 0:
        try:
            os.setsid()
        except OSError:
            pass
        if os.fork() == 0:
            os.execvp("python3", ["python3", "-c", "import time; time.sleep(3600)", mark])
        os._exit(0)
    stopped = os.fork()
    if stopped == 0:
        os.execvp("python3", ["python3", "-c", "import os, signal; os.kill(os.getpid(), signal.SIGSTOP)", mark])
    return "left a daemon and a stopped child"


def status():
    fields = {}
    with open("/proc/self/status") as file:
        for line in file:
            name, _, value = line.partition(":")
            fields[name] = value.strip()
    return {
        "uid": os.getuid(),
        "gid": os.getgid(),
        "groups": os.getgroups(),
        "capEff": fields["CapEff"],
        "capPrm": fields["CapPrm"],
        "capInh": fields["CapInh"],
        "capAmb": fields["CapAmb"],
        "noNewPrivs": fields["NoNewPrivs"],
        "home": os.environ.get("HOME"),
        "tmp": os.environ.get("TMPDIR"),
        "env": sorted(os.environ),
    }


def serve(request):
    verb, p = request["verb"], request["payload"]
    if verb == "status":
        return reply(request, status())
    attempts = {
        "environ": lambda: read(f"/proc/{p['runtime']}/environ"),
        "runtime-memory": lambda: read(f"/proc/{p['runtime']}/mem"),
        "signal-runtime": lambda: os.kill(p["runtime"], signal.SIGSTOP),
        "stop-supervisor": lambda: os.kill(os.getppid(), signal.SIGSTOP),
        "kill-victim": lambda: os.kill(p["victim"], signal.SIGKILL),
        "victim-environ": lambda: read(f"/proc/{p['victim']}/environ"),
        "ptrace-victim": lambda: syscall(101, 16, p["victim"], 0, 0),  # PTRACE_ATTACH
        "write-cache": lambda: write(os.path.join(p["cache"], "planted")),
        "list-cache": lambda: os.listdir(p["cache"]),
        "swap-executable": lambda: write(p["executable"]),
        "replace-executable": lambda: os.replace(write(os.path.join(os.environ["HOME"], "evil")), p["executable"]),
        "read-executable": lambda: read(p["executable"]),
        "token": lambda: read(p["token"]),
        "victim-home": lambda: os.listdir(p["victimHome"]),
        "write-victim-home": lambda: write(os.path.join(p["victimHome"], "planted")),
        "write-tmp": lambda: write("/tmp/cellbus-attacker-was-here"),
        "write-dev-shm": lambda: write("/dev/shm/cellbus-attacker-was-here"),
        "list-tmp": lambda: os.listdir("/tmp"),
        "nats": lambda: connect_tcp(p["natsPort"]),
        "udp": lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"x", ("127.0.0.1", p["natsPort"])),
        "netlink": lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0),
        "abstract-socket": lambda: connect_abstract(p["abstract"]),
        "unix-socket": lambda: connect_unix(p["unixSocket"]),
        "unix-datagram": lambda: socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(b"x", p["unixDatagram"]),
        "setuid-root": lambda: os.setuid(0),
        "user-namespace": lambda: syscall(272, 0x10000000),  # unshare(CLONE_NEWUSER)
        "io-uring": lambda: syscall(425, 8, ctypes.create_string_buffer(120)),
        "leave-group": lambda: os.setsid(),
        "own-home": lambda: write(os.path.join(os.environ["HOME"], "mine")),
        "own-tmp": lambda: write(os.path.join(os.environ["TMPDIR"], "mine")),
    }
    if verb == "exhaust":
        return reply(request, {"threads": exhaust(p["seconds"])})
    if verb == "leave-behind":
        return reply(request, {"how": leave_behind(p["mark"])})
    if verb == "attempt":
        return reply(request, {name: attempt(attempts[name]) for name in p["attempts"]})
    reply(request, {"unknown": verb})


def main():
    for line in sys.stdin:
        request = json.loads(line)
        threading.Thread(target=serve, args=(request,), daemon=True).start()


main()
