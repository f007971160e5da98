"""The streaming Wan2.1 video VAE, its Triton kernels (kernels) and the tiny decoder (taehv).
May import io."""
