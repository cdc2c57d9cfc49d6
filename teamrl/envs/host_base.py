"""What the two vectors of host envs share (in-process or worker processes,
:mod:`teamrl.envs.host_env`; Ray actors, :mod:`teamrl.envs.host_ray`): their error and their
interface."""

from __future__ import annotations

from teamrl.envs.host_worker import TeamBuffers
from teamrl.envs.spec import TeamObs


class HostEnvError(RuntimeError):
    """A host environment or one of its worker processes failed; the message says which."""


class VectorEnvBase:
    """What every vector of host envs shares: reading observations out of ``buffers``, and
    closing on exit (subclasses define ``buffers`` and ``close``)."""

    buffers: TeamBuffers

    def observation(self, final: bool = False) -> TeamObs:
        """A copy of the current (or final) observation: TeamObs of [E, ...] NumPy arrays."""
        p = "final_" if final else ""
        b = self.buffers
        return TeamObs(*(getattr(b, p + name).copy() for name in ("obs", "state", "avail",
                                                                  "alive")))

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001
            pass
