"""fusedconv: workspace-free fused GroupNorm+SiLU+upsample+conv3x3 primitives for MLX."""

from .ops import attention, conv3x3, gn_silu_conv3x3, group_norm_stats, linear, pixel_norm_stats

__version__ = "0.1.0"
__all__ = ["attention", "conv3x3", "gn_silu_conv3x3", "group_norm_stats", "linear", "load_decoder",
           "pixel_norm_stats", "__version__"]


def __getattr__(name):
    # The decoder stack imports lazily so that `import fusedconv` stays light.
    if name == "load_decoder":
        from .vae import load_decoder

        return load_decoder
    raise AttributeError(name)
