"""sam-distill: distil SAM into small models for phones and Jetson boards."""
__version__ = "0.1.0"
