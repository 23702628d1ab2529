"""The supervisor of an instance group: the parent of its ``shardsockd``
processes, for as long as the group is up.

``shardsock up`` starts it in the background (``--foreground``: in the
command's own process, for systemd) once the device exists.  It starts one
instance per core, tells ``up`` when all are ready (or why one is not),
then waits on their pidfds.  An instance that dies is logged in
``supervisor.log``, marked in ``state.json`` and started again, at most
restart_limit times in restart_window_s (preload/config.py); after that it stays down and
``status`` reports it failed.  One that exits with status 0 was asked to
stop and is not restarted.  The programs attached to a dead instance see
its control connection close and get ECONNRESET on its sockets (the library,
shim/shim.c ss_instance_alive); they attach to the new one with new sockets.

The supervisor holds the group's doorbells (one eventfd per instance, by
which instances wake each other for forwarded frames) so that a restarted
instance gets the same ones.  A restarted tap instance's queue is the
device's last one (the kernel renumbers the queues when one closes), so
the steering rule may send its flows to another instance, which forwards
them (counter fwd_out): slower, never lost.

On SIGTERM it stops the instances (SIGTERM, SIGKILL after STOP_TIMEOUT_S)
and exits; ``shardsock down`` then removes the device and the files.
"""
import json
import os
import select
import signal
import subprocess
import sys
import time

STOP_TIMEOUT_S = 5.0


class StartError(Exception):
    """An instance did not become ready; the text says why."""


def log(cfg, text):
    from preload.instances import group_dir
    with open(os.path.join(group_dir(cfg), "supervisor.log"), "a") as f:
        f.write("%s %s\n" % (time.strftime("%Y-%m-%dT%H:%M:%S"), text))


def write_state(cfg, state):
    """Atomically: status and down read it while the supervisor writes."""
    from preload.instances import state_path
    tmp = state_path(cfg) + ".tmp"
    with open(tmp, "w") as f:
        json.dump(state, f, indent=2)
    os.replace(tmp, state_path(cfg))


class Supervisor:
    def __init__(self, cfg, state, argv_of):
        """argv_of(k, core): the instance's command line, without
        --doorbells and --ready-fd."""
        self.cfg, self.state, self.argv_of = cfg, state, argv_of
        n = len(state["instances"])
        # one doorbell per instance when there are several (core/daemon/fwd.c)
        self.doorbells = [os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC) for _ in range(n)] if n > 1 else []
        self.procs = {}     # instance -> Popen
        self.pidfds = {}    # pidfd -> instance
        self.deaths = {k: [] for k in range(n)}
        self.stopping = False

    def spawn(self, k):
        """Starts instance k; returns (Popen, read end of its ready pipe)."""
        from preload.instances import group_dir
        inst = self.state["instances"][k]
        args = self.argv_of(k, inst["core"])
        if self.doorbells:
            args += ["--doorbells", ",".join(map(str, self.doorbells))]
        r, w = os.pipe()
        with open(os.path.join(group_dir(self.cfg), "instance-%d.log" % k), "a") as logf:
            # systemd's socket is the supervisor's to speak on, not the instances'
            env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
            p = subprocess.Popen(args + ["--ready-fd", str(w)], pass_fds=(w, *self.doorbells), env=env,
                                 stdin=subprocess.DEVNULL, stdout=logf, stderr=logf, start_new_session=True)
        os.close(w)
        self.procs[k] = p
        inst["pid"] = p.pid
        return p, r

    def wait_ready(self, k, r, deadline):
        from preload.instances import group_dir
        try:
            left = max(0.0, deadline - time.monotonic())
            ready = select.select([r], [], [], left)[0] and os.read(r, 16) == b"ready\n"
        finally:
            os.close(r)
        if not ready:
            with open(os.path.join(group_dir(self.cfg), "instance-%d.log" % k)) as f:
                lines = f.read().strip().splitlines()
            why = lines[-1] if lines else "no answer within %ss" % self.cfg["ready_timeout_s"]
            raise StartError("instance %d (core %d) did not become ready: %s"
                             % (k, self.state["instances"][k]["core"], why))
        self.state["instances"][k]["state"] = "running"
        self.pidfds[os.pidfd_open(self.procs[k].pid)] = k

    def start_all(self):
        """Every instance, ready; on failure none is left running."""
        deadline = time.monotonic() + self.cfg["ready_timeout_s"]
        # A fanout group numbers its members in the order they join, and the
        # steering rule names instances by number: afpacket instances start
        # one after another.  The others start together.
        in_order = self.state["backend"] == "afpacket"
        try:
            pending = []
            for k in range(len(self.state["instances"])):
                p, r = self.spawn(k)
                if in_order:
                    self.wait_ready(k, r, deadline)
                else:
                    pending.append((k, r))
            for k, r in pending:
                self.wait_ready(k, r, deadline)
        except BaseException:
            self.stop()
            raise

    def restart(self, k):
        now = time.monotonic()
        window, limit = self.cfg["restart_window_s"], self.cfg["restart_limit"]
        recent = [t for t in self.deaths[k] if now - t < window]
        self.deaths[k] = recent + [now]
        inst = self.state["instances"][k]
        if len(recent) >= limit:
            inst["state"] = "failed"
            log(self.cfg, "instance %d: %d restarts in %gs (restart_limit); left down" % (k, len(recent), window))
            return
        inst["restarts"] = inst.get("restarts", 0) + 1
        try:
            p, r = self.spawn(k)
            self.wait_ready(k, r, time.monotonic() + self.cfg["ready_timeout_s"])
            log(self.cfg, "instance %d restarted (pid %d)" % (k, p.pid))
        except StartError as e:
            inst["state"] = "failed"
            log(self.cfg, "instance %d: restart failed: %s" % (k, e))
            p = self.procs.get(k)
            if p and p.poll() is None:
                p.kill()
                p.wait()

    def loop(self):
        """Until SIGTERM (or SIGINT): restarts instances that die."""
        wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wake_w)

        def on_stop(signum, frame):
            self.stopping = True
        signal.signal(signal.SIGTERM, on_stop)
        signal.signal(signal.SIGINT, on_stop)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        try:
            while not self.stopping:
                ready = select.select([wake_r, *self.pidfds], [], [])[0]
                for fd in ready:
                    if fd == wake_r:
                        os.read(wake_r, 512)
                        continue
                    k = self.pidfds.pop(fd)
                    os.close(fd)
                    rc = self.procs[k].wait()
                    how = "signal %d" % -rc if rc < 0 else "status %d" % rc
                    inst = self.state["instances"][k]
                    inst["last_exit"] = how
                    if rc == 0:
                        # asked to stop (its control request "stop"): as
                        # systemd's Restart=on-failure, not restarted
                        inst["state"] = "stopped"
                        log(self.cfg, "instance %d (pid %d) stopped" % (k, inst["pid"]))
                    else:
                        inst["state"] = "dead"
                        log(self.cfg, "instance %d (pid %d) died: %s" % (k, inst["pid"], how))
                        if not self.stopping:
                            self.restart(k)
                    write_state(self.cfg, self.state)
        finally:
            signal.set_wakeup_fd(-1)
            os.close(wake_r)
            os.close(wake_w)
            self.stop()

    def stop(self):
        for p in self.procs.values():
            if p.poll() is None:
                p.terminate()
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for p in self.procs.values():
            try:
                p.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for fd in list(self.pidfds):
            os.close(fd)
        self.pidfds.clear()
        for fd in self.doorbells:
            os.close(fd)
        self.doorbells = []


def main():
    """The background supervisor: python3 -m preload.supervisor STATE READY_FD.
    STATE: the group's state.json as up wrote it (instances without pids);
    it answers "ready" or "error: why" on READY_FD."""
    from preload.instances import instance_argv, load_config_of_state
    state_file, ready_fd = sys.argv[1], int(sys.argv[2])
    with open(state_file) as f:
        state = json.load(f)
    cfg = load_config_of_state(state)
    sup = Supervisor(cfg, state, lambda k, core: instance_argv(cfg, state, k, core))
    try:
        sup.start_all()
    except StartError as e:
        os.write(ready_fd, ("error: %s\n" % e).encode())
        return 1
    state["supervisor_pid"] = os.getpid()
    write_state(cfg, state)
    os.write(ready_fd, b"ready\n")
    os.close(ready_fd)
    log(cfg, "group %s up: %d instances" % (cfg["group"], len(state["instances"])))
    sup.loop()
    log(cfg, "stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
