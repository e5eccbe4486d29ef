"""The bottom layer: errors, registries, atomic file IO, images, the device/distributed resolver, run folders
and the config machinery. It imports nothing else of the toolkit."""
