"""The embedded database server: a SecantusDB process (a MongoDB-wire server, GPL, run as a separate
process and never imported), one per data folder (SEARCHFORMER_DB_DIR, default
~/.cache/searchformer/db), started detached on first use under a file lock so that it outlives the
command and serves the next ones, its address recorded in the folder; restarted at the same address
when it died, stopped on request."""
import contextlib
import ctypes
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from errors import StoreError


def db_dir():
    root = os.environ.get("SEARCHFORMER_DB_DIR")
    if root:
        return Path(root).expanduser().absolute()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "searchformer" / "db"


def server_exe():
    # prefer the script installed beside this interpreter (a venv that is not activated)
    local = Path(sys.executable).parent / "secantusd-py"
    exe = str(local) if local.exists() else shutil.which("secantusd-py")
    if exe is None:
        raise StoreError("secantusd-py not found: pip install -r requirements.txt, or set MONGODB_URI")
    return exe


def port_open(host, port, timeout=1.0):
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (exited, not yet reaped by the process that started it) is not alive
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def serves(pid, folder):
    """Whether pid is the SecantusDB server of this data folder (not a process that reused its pid)."""
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return not Path("/proc/self").exists()  # no /proc to tell: trust the record
    return any(b"secantusd" in c for c in cmd) and str(Path(folder) / "data").encode() in cmd


def server_info(folder=None):
    """The recorded embedded server of a data folder, with 'up' telling whether it answers."""
    folder = Path(folder or db_dir())
    try:
        info = json.loads((folder / "server.json").read_text())
    except (OSError, ValueError):
        return None
    info["up"] = pid_alive(info["pid"]) and serves(info["pid"], folder) and port_open(info["host"], info["port"])
    return info


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_free(port):
    """Whether a server could listen on this local port now (as servers do, past old connections' TIME_WAIT)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return True
        except (OSError, OverflowError, TypeError):
            return False


def start_server(folder, port, wait_s):
    cmd = [server_exe(), "--standalone", "--sync-on-commit", "--host", "127.0.0.1",
           "--port", str(port), "--storage-path", str(folder / "data"), "--log-level", "WARNING"]
    with open(folder / "server.log", "ab") as log:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                start_new_session=True, close_fds=True)  # outlives this process
    deadline = time.monotonic() + wait_s
    while not port_open("127.0.0.1", port, timeout=0.5):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            tail = (folder / "server.log").read_text(errors="replace").strip().splitlines()[-1:]
            raise StoreError(f"the embedded server did not start (see {folder / 'server.log'}): "
                             f"{tail[0] if tail else 'no output'}")
        time.sleep(0.1)
    return proc


def embedded_address(folder=None, start=True, wait_s=60.0):
    """host:port of the folder's server, starting it (detached, under a file lock) when it is not up."""
    folder = Path(folder or db_dir())
    try:
        folder.mkdir(parents=True, exist_ok=True)
        lock = open(folder / "server.lock", "w")
    except OSError as e:
        raise StoreError(f"cannot use the database folder {folder} ({e.strerror}): set SEARCHFORMER_DB_DIR to a "
                         f"writable folder, or MONGODB_URI") from None
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # several ranks may arrive at once: one starts, the rest wait
        info = server_info(folder)
        if info and info["up"]:
            return f"{info['host']}:{info['port']}"
        if not start:
            raise StoreError(f"the embedded server of {folder} is not running")
        # a restarted server keeps its address when it can, so that running clients find it again
        port = info["port"] if info and port_free(info["port"]) else free_port()
        proc = start_server(folder, port, wait_s)
        info = {"pid": proc.pid, "host": "127.0.0.1", "port": port, "started": time.time()}
        tmp = folder / "server.json.tmp"
        tmp.write_text(json.dumps(info))
        os.replace(tmp, folder / "server.json")
        return f"127.0.0.1:{port}"


def signal_main_thread(pid, sig):
    """Signal a process's main thread. Python runs signal handlers there only, and a signal sent to
    the process may land on another thread and leave a main thread blocked in a wait asleep: the
    server's then never shuts down."""
    tgkill = getattr(ctypes.CDLL(None), "tgkill", None) if sys.platform.startswith("linux") else None
    if tgkill is None or tgkill(pid, pid, sig) != 0:
        os.kill(pid, sig)


def stop_embedded(folder=None, wait_s=5.0):
    """Stop the folder's server; returns False when none was running.

    SIGTERM to its main thread, then SIGKILL after wait_s (a kill loses nothing it committed: it
    syncs on commit)."""
    folder = Path(folder or db_dir())
    with open(folder / "server.lock", "w") if folder.exists() else open(os.devnull, "w") as lock:
        if folder.exists():
            fcntl.flock(lock, fcntl.LOCK_EX)
        info = server_info(folder)
        if not info or not pid_alive(info["pid"]) or not serves(info["pid"], folder):
            (folder / "server.json").unlink(missing_ok=True)  # stale: never signal a reused pid
            return False
        signal_main_thread(info["pid"], signal.SIGTERM)
        deadline = time.monotonic() + wait_s
        while pid_alive(info["pid"]) and time.monotonic() < deadline:
            time.sleep(0.1)
        if pid_alive(info["pid"]):
            with contextlib.suppress(ProcessLookupError):
                os.kill(info["pid"], signal.SIGKILL)
            while pid_alive(info["pid"]) and time.monotonic() < deadline + 5:
                time.sleep(0.05)
        (folder / "server.json").unlink(missing_ok=True)
        return True
