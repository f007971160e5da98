"""Chunk-by-chunk generation (sampler): flow schedule, seeded noise, prompt embeddings and prompt
schedules, start frames, resumable state files. May import cache, model, vae and io."""
