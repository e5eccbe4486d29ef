"""Data the methods train on: the teacher-embedding cache, everything-mode labels, COCO instances, YOLO layout."""
