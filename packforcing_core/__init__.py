"""PackForcing core: plain PyTorch, never imports ComfyUI. Packages, lowest layer first (each may
import only the ones listed after it; tests/test_layout.py checks this):

    io        all-or-nothing file writes, MP4 writer, line plots        (nothing of the core)
    model     causal Wan2.1 DiT, RoPE, fp8, CUDA graphs, loading, tiny   io
    vae       streaming Wan2.1 VAE, its kernels, the tiny decoder        io
    cache     PackedCache (sink / mid / recent), sizes, compressors      model, io
    sampling  chunk-by-chunk generation, schedules, noise, prompts,      cache, model, vae, io
              start frames, state files
    training  compressor self-distillation, data, evaluation            sampling, cache, model, vae, io
    report    long-video health report                                   io, vae
    cli       `python -m packforcing_core` commands                      everything above
"""
