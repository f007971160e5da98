"""The bounded KV cache: sizes and memory plan (config), PackedCache (packed) and the mid-block
compressors (compressor). May import model and io."""
