"""Files in and out: input paths checked and all-or-nothing writes with errors naming the option
(files), reading video frame by frame (video), the MP4 writer (mp4), line plots as PNG (plot).
Imports nothing else from the core."""
