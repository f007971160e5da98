"""The DiT over several GPUs: head-parallel attention (DeepSpeed-Ulysses) on torch.distributed.

Every process holds the whole DiT and computes a share of each pass: its run of every latent frame's
tokens outside attention, its share of the heads inside it, with an all-to-all on each side of
self-attention (`ulysses.py`). Its PackedCache holds the K/V of its own heads for sink, mid bank and
recent; partitions, RoPE re-packing, compression and state files stay as on one GPU, on fewer heads.
What must agree across processes is made to: the top-k sums every rank's per-head affinities before
choosing (cache/mid.py), every rank gets the whole velocity after the head, noise comes from (seed,
chunk) everywhere, and what only the root can compute (VAE work, the compressor's branches, a start
latent) is broadcast from it. State files hold all heads: gathered on save, taken apart on load, so
one file resumes on any number of processes.

Launch: torchrun for the CLI (`group.py`); the ComfyUI pack starts its own worker processes
(`pool.py`). With one process nothing of this runs: `CausalWanModel.parallel` is None.
"""
