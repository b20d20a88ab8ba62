"""Drop-in integrations of the fused decoder into other MLX projects."""
