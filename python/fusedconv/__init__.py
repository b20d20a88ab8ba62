"""fusedconv: workspace-free fused GroupNorm+SiLU+upsample+conv3x3 primitives for MLX."""

from .ops import conv3x3, gn_silu_conv3x3, group_norm_stats

__version__ = "0.1.0"
__all__ = ["conv3x3", "gn_silu_conv3x3", "group_norm_stats", "__version__"]
