"""Where measurements run: this machine, or a board reached over TVM RPC (a server or a tracker).

Both give the same three things: a device handle, a way to turn a built module into something
callable there (on a board: exported with the target's cross compiler, uploaded, loaded), and
``time`` (TVM's ``time_evaluator``: several repeats, each long enough to be timed, medians).
Calls over RPC have a session timeout and bounded retries; a board that stops answering raises a
``DeviceError`` naming it, and the caller keeps what was measured before.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import tvm
from tvm import relax, rpc

from hwq.errors import ConfigError, DeviceError
from hwq.lower.tvm_target import cross_fcompile
from hwq.target import Target

RETRIES = 2            # after the first try
SESSION_TIMEOUT_S = 600


def _quartiles(seconds) -> tuple[float, float, float]:
    ms = sorted(s * 1e3 for s in seconds)
    if len(ms) < 2:
        return ms[0], ms[0], ms[0]
    q = statistics.quantiles(ms, n=4, method="inclusive")
    return statistics.median(ms), q[0], q[2]


class LocalDevice:
    """This machine's CPU."""

    remote = None

    def __init__(self):
        self.dev = tvm.cpu()

    def describe(self) -> str:
        return "this machine"

    def load(self, executable, target: Target, name: str):
        """A built module, callable here."""
        return executable.mod if hasattr(executable, "mod") else executable

    def vm(self, executable, target: Target, name: str) -> relax.VirtualMachine:
        return relax.VirtualMachine(executable, self.dev)

    def tensor(self, a: np.ndarray):
        return tvm.runtime.tensor(a, device=self.dev)

    def empty(self, shape, dtype):
        return tvm.runtime.empty(shape, dtype, device=self.dev)

    def call(self, fn, what: str):
        return fn()


class RpcDevice(LocalDevice):
    """A board over TVM RPC: ``RpcDevice(host, port)`` for a server, ``RpcDevice(host, port, key=KEY)``
    through a tracker."""

    def __init__(self, host: str, port: int, key: str | None = None, timeout_s: float = SESSION_TIMEOUT_S):
        if not isinstance(port, int) or not 0 < port < 65536:
            raise ConfigError(f"RPC port {port!r} is not a TCP port (1..65535)")
        self.host, self.port, self.key, self.timeout_s = host, port, key, timeout_s
        self.remote = f"rpc {host}:{port}" + (f" key {key!r}" if key else "")
        self._dir = tempfile.TemporaryDirectory(prefix="hwq-rpc-")
        self._uploads = 0
        self.session = self.call(self._connect, "connect")
        self.dev = self.session.cpu()

    def _connect(self):
        if self.key is None:
            return rpc.connect(self.host, self.port, session_timeout=self.timeout_s)
        tracker = rpc.connect_tracker(self.host, self.port)
        return tracker.request(self.key, session_timeout=self.timeout_s)

    def describe(self) -> str:
        return self.remote

    def call(self, fn, what: str):
        """``fn()`` with bounded retries; a board that keeps failing is a ``DeviceError`` naming it."""
        last = None
        for attempt in range(RETRIES + 1):
            try:
                return fn()
            except (OSError, RuntimeError, TimeoutError) as e:   # TVM raises RuntimeError subclasses
                last = e
                time.sleep(0.5 * (attempt + 1))
        raise DeviceError(f"{self.describe()} failed to {what} after {RETRIES + 1} tries: "
                          f"{str(last).strip().splitlines()[-1] if str(last).strip() else type(last).__name__}")

    def _upload(self, executable, target: Target, name: str):
        # a fresh file name per upload: loading a second library under a name the session has
        # loaded already brings the server down (the dlopen'ed file is overwritten in place)
        self._uploads += 1
        path = Path(self._dir.name) / f"{name}-{self._uploads}.so"
        if target.is_cross:
            executable.export_library(str(path), fcompile=cross_fcompile(target))
        else:
            executable.export_library(str(path))
        self.call(lambda: self.session.upload(str(path)), f"receive {path.name}")
        return self.call(lambda: self.session.load_module(path.name), f"load {path.name}")

    def load(self, executable, target: Target, name: str):
        return self._upload(executable, target, name)

    def vm(self, executable, target: Target, name: str) -> relax.VirtualMachine:
        return relax.VirtualMachine(self._upload(executable, target, name), self.dev)


WARMUP_MS = 300


def time_function(device: LocalDevice, module, name: str, args, repeats: int = 7, min_repeat_ms: float = 20.0):
    """``(median, q1, q3)`` ms of ``module[name](*args)`` on ``device`` over ``repeats`` repeats."""
    return _timed(device, lambda **kw: module.time_evaluator(name, device.dev, **kw), args, repeats, min_repeat_ms,
                  f"run {name}")


def time_vm(device: LocalDevice, vm: relax.VirtualMachine, x: np.ndarray, repeats: int = 7,
            min_repeat_ms: float = 50.0):
    """``(median, q1, q3)`` ms of the VM's ``main`` on input ``x``: ``set_input`` + ``invoke_stateful``
    under ``time_evaluator``, the form that also works over RPC (calling ``vm["main"]`` there does not)."""
    vm.set_input("main", device.tensor(x))
    return _timed(device, lambda **kw: vm.time_evaluator("invoke_stateful", device.dev, **kw), ("main",), repeats,
                  min_repeat_ms, "run the model")


def vm_timer(device: LocalDevice, vm: relax.VirtualMachine, x: np.ndarray, min_repeat_ms: float = 50.0):
    """A function that times one repeat (>= ``min_repeat_ms`` of back-to-back runs) of the VM's
    ``main`` on ``x`` and returns its mean ms; the VM is warmed up once, here. Two such timers,
    called in alternation, compare two builds under the same conditions (``measure_ratio``)."""
    vm.set_input("main", device.tensor(x))
    make = lambda **kw: vm.time_evaluator("invoke_stateful", device.dev, **kw)    # noqa: E731
    warm = make(number=1, repeat=1, min_repeat_ms=WARMUP_MS)
    device.call(lambda: warm("main"), "run the model")
    f = make(number=1, repeat=1, min_repeat_ms=int(min_repeat_ms))
    return lambda: 1e3 * float(device.call(lambda: f("main").results, "run the model")[0])


def _timed(device, evaluator, args, repeats: int, min_repeat_ms: float, what: str):
    """The repeats of ``evaluator(...)(*args)`` after ``WARMUP_MS`` of untimed calls: the first calls
    pay for page faults, the thread pool's start, cold caches and the cores' clock ramping up
    (measured here: the first 20 ms ran 1.6x slower than the rest)."""
    warm = evaluator(number=1, repeat=1, min_repeat_ms=WARMUP_MS)
    device.call(lambda: warm(*args), what)
    f = evaluator(number=1, repeat=repeats, min_repeat_ms=int(min_repeat_ms))
    return _quartiles(device.call(lambda: f(*args).results, what))
