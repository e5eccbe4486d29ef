"""``distill demo``: a local web page that segments one image with several models side by side."""
