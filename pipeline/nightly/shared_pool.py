"""Every taken partition's remaining units through one dataflow and one actor pool; each partition switches as
soon as its own units are committed, oldest first."""

from __future__ import annotations

from ..batch import PlannedRun, plan_run, run_planned
from ..io.lease import LeaseLost
from .config import NightlyConfig
from .partition_work import PartitionWork, close_work, switch_partition


class _NothingLeft(Exception):
    """Every partition of the run is switched or failed: the dataflow is stopped."""


def run_together(config: NightlyConfig, works: list[PartitionWork]) -> None:
    """The remaining units of every taken partition through one dataflow and one actor pool; each partition
    switches as soon as its units are committed, oldest first. A partition whose lease is lost is failed and
    never switched (its units still flowing land in its staging, where the lease's next holder resumes them)."""
    live = [w for w in works if not w.done]
    by_pending = {id(w.pending): w for w in live if w.pending is not None}

    def switch_ready(in_order: bool = True) -> None:
        for w in live:
            if w.done:
                continue
            if w.pending is not None and not w.pending.complete:
                if in_order:
                    return  # oldest first: a later partition waits for this one
                continue
            try:
                switch_partition(config, w)
                close_work(w)
            except Exception as e:
                close_work(w, "failed", f"{type(e).__name__}: {e}")

    def on_unit(pending: PlannedRun) -> None:
        w = by_pending[id(pending)]
        try:
            if not w.done:
                w.lease.ensure_held()
        except LeaseLost as e:
            close_work(w, "failed", f"LeaseLost: {e}; stopped before its switch")
        switch_ready()
        if all(w.done for w in live):
            raise _NothingLeft  # cancel the dataflow: no partition wants its remaining units

    switch_ready()
    pendings = [w.pending for w in live if w.pending is not None and not w.done]
    try:
        if pendings:
            run_planned(pendings, pendings[0].config, on_unit)
        switch_ready()
    except _NothingLeft:
        pass
    except Exception as e:
        # The shared dataflow failed (a unit that cannot be read or written, say): the partitions that are
        # complete switch anyway, and each unfinished one is retried alone, so one bad partition fails only
        # itself and cannot block the newer ones night after night.
        switch_ready(in_order=False)
        shared_error = f"{type(e).__name__}: {e}"
        for w in live:
            if not w.done:
                _retry_alone(config, w, shared_error)
    finally:
        for w in live:
            close_work(w, "failed", "stopped before its switch")


def _retry_alone(config: NightlyConfig, w: PartitionWork, shared_error: str) -> None:
    """Finish one partition in a dataflow of its own, after the shared one failed."""
    try:
        w.lease.ensure_held()
        begun = plan_run(w.pending.config)  # a fresh look at what is committed
        w.pending = begun if isinstance(begun, PlannedRun) else None
        if w.pending is not None:
            run_planned([w.pending], w.pending.config, lambda p: w.lease.ensure_held())
        switch_partition(config, w)
        close_work(w)
    except Exception as e:
        close_work(w, "failed", f"{type(e).__name__}: {e} (retried alone after the shared dataflow failed: "
                            f"{shared_error})")
