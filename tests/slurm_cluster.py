"""A one-node Slurm cluster in a temporary directory, for the tests of job arrays (tests/test_runner_slurm.py).

It starts its own munged (own key, socket, pid, log and seed files), then slurmctld
and slurmd in the foreground with their own slurm.conf (free ports, state, spool,
pid and log files all in the directory), as root (SlurmUser=root), and stops exactly
the processes it started, by pid, whatever happened. It neither reads nor disturbs a
system munge or Slurm: clients find it through SLURM_CONF, which ``env`` sets.

Needs the Debian 12 packages slurmctld, slurmd, slurm-client and munge
(scripts/setup.sh installs them) and root.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

# The pids of the daemons of every cluster started and not yet stopped: tests/conftest.py's check for
# processes left behind by a test leaves them (and the jobs under them) to the fixture that stops them.
RUNNING: set[int] = set()

BINARIES = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "squeue", "scancel", "scontrol", "sinfo")


def _which(name: str) -> str | None:
    return shutil.which(name) or next((str(p) for d in ("/usr/sbin", "/sbin") if (p := Path(d) / name).exists()), None)


def missing_binaries() -> list[str]:
    return [b for b in BINARIES if _which(b) is None]


def _free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


class SlurmCluster:
    """munged + slurmctld + slurmd for one node (this host, CPUs=2) in ``root``."""

    def __init__(self, root: Path, cpus: int = 2) -> None:
        self.root = Path(root)
        self.cpus = cpus
        self.node = socket.gethostname().split(".")[0]
        self.procs: list[subprocess.Popen] = []
        self.conf = self.root / "slurm.conf"
        self.env = dict(os.environ, SLURM_CONF=str(self.conf))

    # -- starting --------------------------------------------------------------------------
    def start(self) -> SlurmCluster:
        r = self.root
        for d in ("munge", "state", "spool", "log"):
            (r / d).mkdir(parents=True, exist_ok=True)
        (r / "munge").chmod(0o700)
        key = r / "munge" / "munge.key"
        subprocess.run([_which("mungekey"), "--create", f"--keyfile={key}"], check=True, capture_output=True)
        key.chmod(0o600)
        self.socket = r / "munge" / "munge.sock"
        self._spawn(
            [
                _which("munged"),
                "-F",
                "-f",
                f"--socket={self.socket}",
                f"--key-file={key}",
                f"--pid-file={r / 'munge' / 'munged.pid'}",
                f"--log-file={r / 'log' / 'munged.log'}",
                f"--seed-file={r / 'munge' / 'munged.seed'}",
            ],
            "munged",
        )
        self._wait(lambda: self.socket.exists(), "munged's socket", r / "log" / "munged.log")
        ctld_port, d_port = _free_ports(2)
        self.conf.write_text(self._conf(ctld_port, d_port))
        self._spawn([_which("slurmctld"), "-D", "-i", "-f", str(self.conf)], "slurmctld")
        self._spawn([_which("slurmd"), "-D", "-f", str(self.conf), "-N", self.node], "slurmd")
        self._wait(self._node_idle, "the node to be idle", r / "log" / "slurmd.log", timeout=60)
        return self

    def _conf(self, ctld_port: int, d_port: int) -> str:
        r = self.root
        return "\n".join(
            [
                "ClusterName=savedeeptest",
                f"SlurmctldHost={self.node}(127.0.0.1)",
                "SlurmUser=root",
                "SlurmdUser=root",
                f"SlurmctldPort={ctld_port}",
                f"SlurmdPort={d_port}",
                "AuthType=auth/munge",
                "CredType=cred/munge",
                f"AuthInfo=socket={self.socket}",
                f"StateSaveLocation={r / 'state'}",
                f"SlurmdSpoolDir={r / 'spool'}",
                f"SlurmctldPidFile={r / 'slurmctld.pid'}",
                f"SlurmdPidFile={r / 'slurmd.pid'}",
                f"SlurmctldLogFile={r / 'log' / 'slurmctld.log'}",
                f"SlurmdLogFile={r / 'log' / 'slurmd.log'}",
                "ProctrackType=proctrack/linuxproc",
                "TaskPlugin=task/none",
                "JobAcctGatherType=jobacct_gather/none",
                "AccountingStorageType=accounting_storage/none",
                "SchedulerType=sched/backfill",
                "SelectType=select/cons_tres",
                "SelectTypeParameters=CR_Core",
                "MpiDefault=none",
                "ReturnToService=2",
                "SlurmctldTimeout=30",
                "SlurmdTimeout=30",
                "SchedulerParameters=sched_interval=1",
                "MinJobAge=600",
                "KillWait=5",
                "JobRequeue=1",
                f"NodeName={self.node} NodeAddr=127.0.0.1 CPUs={self.cpus} State=UNKNOWN",
                f"PartitionName=debug Nodes={self.node} Default=YES MaxTime=INFINITE State=UP",
                "",
            ]
        )

    def _spawn(self, argv: list[str], name: str) -> None:
        out = open(self.root / "log" / f"{name}.stdout", "wb")
        self.procs.append(
            subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=self.env, start_new_session=True)
        )
        RUNNING.add(self.procs[-1].pid)
        out.close()

    def _wait(self, ready, what: str, log: Path, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            dead = [p for p in self.procs if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                tail = log.read_text()[-3000:] if log.exists() else "(no log)"
                outs = "\n".join(f"{p.args[0]} exit {p.returncode}" for p in dead)
                raise RuntimeError(f"the test cluster did not start: waiting for {what}; {outs}\n{log}:\n{tail}")
            time.sleep(0.3)

    def _node_idle(self) -> bool:
        p = subprocess.run([_which("sinfo"), "-h", "-N", "-o", "%t"], capture_output=True, text=True, env=self.env)
        return p.returncode == 0 and p.stdout.strip() in ("idle", "mix", "alloc")

    # -- using -----------------------------------------------------------------------------
    def cmd(self, *argv: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        """Run a Slurm client command against this cluster."""
        return subprocess.run(
            [_which(argv[0]) or argv[0], *argv[1:]],
            capture_output=True,
            text=True,
            env=self.env,
            check=check,
            timeout=timeout,
        )

    def states(self, job: str) -> dict[str, str]:
        """{job id (ARRAY_TASK): state} of a job's tasks still known to slurmctld."""
        p = self.cmd("squeue", "-h", "-j", job, "-t", "all", "-r", "-o", "%i %T", check=False)
        return dict(line.split() for line in p.stdout.splitlines() if line.strip())

    def wait_done(self, job: str, timeout: float = 240) -> dict[str, str]:
        """Wait until no task of ``job`` is pending or running; return the final states."""
        deadline = time.monotonic() + timeout
        while True:
            st = self.states(job)
            if st and not any(
                s in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "SUSPENDED") for s in st.values()
            ):
                return st
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job} not done after {timeout} s: {st}")
            time.sleep(0.5)

    # -- stopping --------------------------------------------------------------------------
    def _job_processes(self) -> list[int]:
        """Processes that run under this cluster (slurmstepd and jobs): their environment names its slurm.conf."""
        mark = f"SLURM_CONF={self.conf}".encode()
        found = []
        for d in Path("/proc").iterdir():
            if d.name.isdigit() and int(d.name) != os.getpid() and int(d.name) not in {p.pid for p in self.procs}:
                try:
                    if mark in (d / "environ").read_bytes().split(b"\0"):
                        found.append(int(d.name))
                except OSError:
                    pass
        return found

    def stop(self) -> None:
        """Cancel this cluster's jobs, then stop exactly the daemons this object started, by pid.

        A test that failed may leave jobs running: they are cancelled first, and any
        process still running under this cluster afterwards (its environment names this
        cluster's slurm.conf, so it was started by it) is killed by pid.
        """
        if self.procs and all(p.poll() is None for p in self.procs):
            self.cmd("scancel", "--user", "root", check=False, timeout=30)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and self.cmd("squeue", "-h", check=False, timeout=30).stdout.strip():
                time.sleep(0.5)
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in reversed(self.procs):
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=5)
            RUNNING.discard(p.pid)
        self.procs = []
        for pid in self._job_processes():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
