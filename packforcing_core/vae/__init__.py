"""The streaming Wan2.1 video VAE (model.py lists its modules), its Triton kernels (kernels) and the
tiny decoder (taehv). May import io."""
