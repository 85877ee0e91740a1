"""Plain ``nn.Module`` models and their parts (no Lightning imports)."""

from sfpp.models.attention import build_attention_backend
from sfpp.models.causal_wan import CausalWanDiT, build_model
from sfpp.models.config import CausalWanConfig
from sfpp.models.critic import ScoreCritic
from sfpp.models.flavours import FLAVOURS
from sfpp.models.frame_mask import FrameAttentionPattern
from sfpp.models.kv_cache import RollingKVCache
from sfpp.models.rope import Rope3D
from sfpp.models.wan import WanWeightsError, build_from_pretrained, load_wan_weights, save_wan_weights

__all__ = [
    "FLAVOURS",
    "CausalWanConfig",
    "CausalWanDiT",
    "FrameAttentionPattern",
    "Rope3D",
    "RollingKVCache",
    "WanWeightsError",
    "build_attention_backend",
    "build_from_pretrained",
    "build_model",
    "load_wan_weights",
    "save_wan_weights",
    "ScoreCritic",
]
