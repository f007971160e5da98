"""The causal Wan2.1 DiT (dit), its 3D RoPE (rope), fp8 matmuls (fp8), CUDA-graph replay (graphs),
checkpoint loading and saving (checkpoint) and the built-in tiny random model (tiny). May import io."""
