"""The bounded KV cache: sizes and memory plan (config), PackedCache (packed: partitions, layout,
attention; mid: the compressed mid bank; switches: re-cache and cuts) and the mid-block compressors
(compressor). May import model and io."""
