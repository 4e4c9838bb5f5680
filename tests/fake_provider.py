"""Ray's fake multi-node provider, where a worker node whose raylet died is gone, as a preempted spot instance is.

Ray's own provider keeps such a node for good: its nodes never leave the `uninitialized` status (node updaters
are off), and the autoscaler only reaps nodes that reached `up-to-date`, so it never launches a replacement.
On a cloud the preempted instance disappears from the provider's list, which is what this one does.
"""

from __future__ import annotations

from ray._private.ray_constants import PROCESS_TYPE_RAYLET
from ray.autoscaler._private.fake_multi_node.node_provider import FakeMultiNodeProvider


class PreemptibleFakeProvider(FakeMultiNodeProvider):
    def non_terminated_nodes(self, tag_filters):
        with self.lock:
            for node_id, entry in list(self._nodes.items()):
                raylets = entry["node"].all_processes.get(PROCESS_TYPE_RAYLET, []) if "node" in entry else []
                if raylets and raylets[0].process.poll() is not None:
                    del self._nodes[node_id]
                    self._terminate_node(entry)
            return super().non_terminated_nodes(tag_filters)
