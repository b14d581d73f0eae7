"""A process cell for the runtime's tests: JSON lines on stdin and stdout, behaving as
argv[1] says. Well-behaved modes answer each request on its own thread, so replies may
come back in another order than the requests; hostile modes misbehave the way their
names say. argv[2], where given, marks every process this cell starts (in its command
line), so a test can look for leftovers in the process table.
"""

import json
import os
import subprocess
import sys
import threading
import time

MODE = sys.argv[1]
MARK = sys.argv[2] if len(sys.argv) > 2 else "cellbus-test-cell"
out_lock = threading.Lock()


def reply(request, payload=None, error=None):
    line = {"id": request["id"], "ok": error is None}
    if error is None:
        line["payload"] = payload
    else:
        line["error"] = error
    with out_lock:
        sys.stdout.write(json.dumps(line) + "\n")
        sys.stdout.flush()


def serve(request):
    verb, payload = request["verb"], request["payload"]
    if verb == "echo":
        reply(request, payload)
    elif verb == "sleep":
        time.sleep(payload["ms"] / 1000)
        reply(request, payload)
    elif verb == "fail":
        reply(request, error={"code": "bad_request", "message": "no", "details": {"why": "asked"}})
    elif verb == "log":
        print("a line for the logs", file=sys.stderr, flush=True)
        reply(request, payload)
    elif verb == "escape":
        # Leave the process group: the sandbox refuses.
        try:
            os.setsid()
            reply(request, {"escaped": True})
        except PermissionError:
            reply(request, {"escaped": False})
    elif verb == "env":
        reply(request, dict(os.environ))
    elif verb == "big":
        reply(request, "x" * payload["bytes"])
    elif verb == "big-error":
        reply(request, error={"code": "bad_request", "message": "x" * payload["bytes"]})
    elif verb == "write-log":
        sys.stderr.write(payload["text"] + "\n")
        sys.stderr.flush()
        reply(request, None)
    else:
        reply(request, error={"code": "unknown_verb", "message": verb})


def hostile(request):
    if MODE == "garbage":
        sys.stdout.write("this is not json\n")
        sys.stdout.flush()
    elif MODE == "huge-line":
        chunk = "x" * (1 << 20)
        for _ in range(100):
            sys.stdout.write(chunk)
        sys.stdout.write("\n")
        sys.stdout.flush()
    elif MODE == "close-stdout":
        sys.stdout.close()
        os.close(1)
        time.sleep(3600)
    elif MODE == "silent":
        time.sleep(3600)
    elif MODE == "spin":
        while True:
            pass
    elif MODE == "memory-hog":
        hoard = []
        while True:
            hoard.append(bytearray(16 << 20))
    elif MODE == "forked-hog":
        # Eight processes of 24 MiB each: every one is under a 64 MiB address-space limit,
        # together they are over a 64 MiB cgroup.
        for _ in range(8):
            if os.fork() == 0:
                held = bytes([1]) * (24 << 20)
                time.sleep(3600)
                os._exit(len(held) and 0)
        time.sleep(2)
        reply(request, {"children": 8})
    elif MODE == "fork-bomb":
        while True:
            try:
                os.fork()
            except OSError:
                time.sleep(0.01)
    elif MODE == "grandchild":
        # A child that outlives this process unless the sandbox takes it along.
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)", MARK])
        reply(request, {"left": "a grandchild"})


def main():
    if MODE == "exit-at-once":
        sys.exit(3)
    for line in sys.stdin:
        request = json.loads(line)
        if MODE == "well-behaved":
            threading.Thread(target=serve, args=(request,), daemon=True).start()
        else:
            hostile(request)


main()
