"""shardzip: lossless compression of image and raster datasets with learned models and rANS."""

__version__ = "0.1.0"
