"""`emo-render`: a portrait and an audio file to an MP4 without ComfyUI, through the same emo_core path as the
nodes (face detection, audio features, reference, chunked sampler), the SD 1.5 VAE in diffusers and PyAV.

cli.py parses the command; models.py finds and loads the files `emo-models fetch` placed; pipeline.py runs one
render; jobs.py runs a job list in emo-batch's format; progress.py draws the terminal line.
"""
