"""Files in and out: all-or-nothing writes with errors naming the option (files), the MP4 writer
(mp4), line plots as PNG (plot). Imports nothing else from the core."""
