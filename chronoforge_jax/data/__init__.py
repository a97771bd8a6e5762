"""Data: video decoding (decode.py); records, pipelines and data sets come next to it."""
