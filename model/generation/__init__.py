"""Generation for any model with the `Seq2Seq` interface (it never imports the model class): settings resolved as
transformers does, logits rules, greedy/sampling/beam search, the decode loop and its caches, in-flight batching,
the device policies, the one-token decode steps."""

from .calls import DEFAULT_BATCH_TOKENS, batches, check_caps, generate, too_long
from .decode_policy import GPU, POLICIES, DecodePolicy, policy_for
from .decode_steps import DecodeStep, Seq2Seq, compiled_decode_step, decode_step, static_decode_step
from .inflight import table_places
from .kv_cache import CacheWrite, KVCache
from .segments import Segments
from .settings import Plan, check_generation
from .stats import DecodeStats

__all__ = ["DEFAULT_BATCH_TOKENS", "GPU", "POLICIES", "CacheWrite", "DecodePolicy", "DecodeStats", "DecodeStep",
           "KVCache", "Plan", "Segments", "Seq2Seq", "batches", "check_caps", "check_generation",
           "compiled_decode_step", "decode_step", "generate", "policy_for", "static_decode_step", "table_places",
           "too_long"]
