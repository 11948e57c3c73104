"""savedeep: save the activations of a Caffe CNN's blobs for every image of a directory."""

__version__ = "0.1.0"
