"""Deep prefix tuning (``prefix``): learned key/value prefixes in the self-attention of every chosen layer."""

from mmpt.method_configs import PrefixConfig
from mmpt.methods.prefix.method import PrefixMethod

__all__ = ["PrefixConfig", "PrefixMethod"]
