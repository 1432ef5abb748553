"""Generation: `Engine` (KV cache, batched prefill/decode, sampling, stop rules, tool calls)."""

from pocketchat.engine.generate import Completion, Engine, KVCache, StreamEvent
from pocketchat.engine.sampling import SamplingParams

__all__ = ["Completion", "Engine", "KVCache", "SamplingParams", "StreamEvent"]
